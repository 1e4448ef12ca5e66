//! Simulated nginx workers against an in-memory shared zone with
//! ngx_wasm_module's rules (CAS on every set, CRC32-keyed entries, zone
//! emptied on reload): leader election, takeover, reload, extra ticks left
//! behind by traps, and key collisions. Virtual time that jumps to the
//! next deadline of any worker, as quinn-proto's test pair does; scripted
//! etcd.

use super::testkit::EtcdScript;
use crate::sansio::config::PluginConfig;
use crate::sansio::pick::picker::{UpstreamPicker, ViewSource};
use crate::sansio::registry::HttpResponse;
use crate::sansio::shared::keys::snapshot_key;
use crate::sansio::shared::store::{crc32, MemoryStore, StoreRules};
use crate::sansio::sync::poller::{Action, Leadership, Poller};

// On wasm32 the same tests run under wasm-bindgen-test.
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const TICK: u64 = 50;
const LEASE: u64 = 1000;

fn config(names: &[&str]) -> PluginConfig {
    let ups: Vec<String> = names
        .iter()
        .map(|n| {
            format!(
                r#"{{"name":"{n}","registry":{{"type":"etcd_v3","target":"127.0.0.1:2379","prefix":"/upstreams/web/"}},
                "interval_ms":200,"backoff_max_ms":1000,"fallback":["127.0.0.1:9999"]}}"#
            )
        })
        .collect();
    let json =
        format!(r#"{{"host":"nginx","lease_ms":{LEASE},"pick":"{}","upstreams":[{}]}}"#, names[0], ups.join(","));
    PluginConfig::parse(json.as_bytes()).unwrap()
}

struct Worker {
    id: u64,
    node: Poller,
    pickers: Vec<UpstreamPicker>,
    alive: bool,
    /// Ticks per round: a trap leaves an extra tick timer behind.
    ticks_per_round: u32,
}

struct World {
    zone: MemoryStore,
    etcd: EtcdScript,
    workers: Vec<Worker>,
    now: u64,
    config: PluginConfig,
    /// (round time, worker id) of every registry call.
    calls: Vec<(u64, u64)>,
    next_worker_id: u64,
}

impl World {
    fn new(n: usize, names: &[&str]) -> World {
        let mut w = World {
            zone: MemoryStore::new(StoreRules::NgxWasm),
            etcd: EtcdScript::new(),
            workers: Vec::new(),
            now: 1_000_000,
            config: config(names),
            calls: Vec::new(),
            next_worker_id: 1,
        };
        for _ in 0..n {
            w.spawn();
        }
        w
    }

    fn spawn(&mut self) {
        let id = self.next_worker_id;
        self.next_worker_id += 1;
        let node = Poller::new(&self.config, Leadership::Lease { me: id, ttl_ms: LEASE }, id);
        let pickers = self.config.upstreams.iter().map(|u| UpstreamPicker::new(u, id)).collect();
        self.workers.push(Worker { id, node, pickers, alive: true, ticks_per_round: 1 });
    }

    /// What `nginx -s reload` does: the zone is emptied, old workers go,
    /// new ones start.
    fn reload(&mut self, n: usize) {
        self.zone.clear();
        self.workers.clear();
        for _ in 0..n {
            self.spawn();
        }
    }

    /// Carries out worker `i`'s actions: etcd answers every call at once.
    fn carry_out(&mut self, i: usize) {
        while let Some(action) = self.workers[i].node.poll_action() {
            let Action::Dispatch(call) = action else {
                panic!("an nginx worker asked for {action:?}");
            };
            self.calls.push((self.now, self.workers[i].id));
            let body = self.etcd.answer(&call.request);
            let response = HttpResponse { status: Some(200), headers: &[], body: &body, body_size: body.len() };
            self.workers[i].node.handle_response(self.now, call.upstream, call.id, response);
        }
        self.workers[i].node.flush(&mut self.zone);
    }

    /// Jumps to the next deadline of any live worker (never back in time)
    /// and runs every worker that is due, then refreshes every worker's
    /// pickers, as their ticks do.
    fn step(&mut self) {
        let next = self.workers.iter().filter(|w| w.alive).filter_map(|w| w.node.poll_timeout()).min();
        self.now = self.now.max(next.unwrap_or(self.now + TICK));
        for i in 0..self.workers.len() {
            if !self.workers[i].alive || self.workers[i].node.poll_timeout().is_none_or(|t| t > self.now) {
                continue;
            }
            for _ in 0..self.workers[i].ticks_per_round {
                self.workers[i].node.handle_timeout(&mut self.zone, self.now);
                self.carry_out(i);
            }
        }
        let now = self.now;
        for w in self.workers.iter_mut().filter(|w| w.alive) {
            for p in &mut w.pickers {
                p.refresh(&self.zone, now);
            }
        }
    }

    /// Runs until `ms` of virtual time have passed.
    fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.step();
        }
    }

    fn pollers_since(&self, t: u64) -> Vec<u64> {
        let mut ids: Vec<u64> = self.calls.iter().filter(|(at, _)| *at >= t).map(|(_, id)| *id).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The addresses each live worker's picker for upstream 0 picks over a few requests.
    fn picks(&mut self) -> Vec<Vec<String>> {
        self.workers
            .iter_mut()
            .filter(|w| w.alive)
            .map(|w| {
                let mut got: Vec<String> = (0..4).filter_map(|_| w.pickers[0].pick(None)).map(|p| p.address).collect();
                got.sort();
                got.dedup();
                got
            })
            .collect()
    }
}

#[test]
fn one_worker_polls_and_every_worker_routes_by_it() {
    let mut w = World::new(4, &["web"]);
    w.etcd.put("10.0.0.1:80", "{}");
    w.etcd.put("10.0.0.2:80", "{}");
    w.run_for(2000);
    assert_eq!(w.pollers_since(0).len(), 1, "one poller per instance, not per worker");
    // About one probe per 200 ms interval, not four.
    let calls = w.calls.len();
    assert!((8..=16).contains(&calls), "{calls} registry calls in 2 s");
    for got in w.picks() {
        assert_eq!(got, ["10.0.0.1:80", "10.0.0.2:80"]);
    }
}

#[test]
fn another_worker_takes_over_within_a_lease_when_the_leader_stops() {
    let mut w = World::new(3, &["web"]);
    w.etcd.put("10.0.0.1:80", "{}");
    w.run_for(500);
    let leader = w.pollers_since(0)[0];
    let idx = w.workers.iter().position(|x| x.id == leader).unwrap();
    w.workers[idx].alive = false;
    let stopped_at = w.now;
    w.etcd.put("10.0.0.3:80", "{}");
    // Within one lease period plus a tick, someone else polls...
    let mut took_over_at = None;
    while w.now < stopped_at + 2 * LEASE {
        w.step();
        if let Some(&(at, id)) = w.calls.iter().find(|(at, id)| *at > stopped_at && *id != leader) {
            took_over_at = Some(at);
            assert_ne!(id, leader);
            break;
        }
    }
    let took_over_at = took_over_at.expect("no takeover");
    assert!(took_over_at - stopped_at <= LEASE + TICK, "takeover after {} ms", took_over_at - stopped_at);
    // ...and the change made meanwhile reaches every live worker.
    w.run_for(500);
    for got in w.picks() {
        assert_eq!(got, ["10.0.0.1:80", "10.0.0.3:80"]);
    }
}

#[test]
fn after_a_reload_workers_serve_the_fallback_then_fetch_at_once() {
    let mut w = World::new(2, &["web"]);
    w.etcd.put("10.0.0.1:80", "{}");
    w.run_for(250);
    w.reload(2);
    // Before their first tick the new workers have nothing but the config.
    for p in w.workers.iter_mut().flat_map(|x| x.pickers.iter_mut()) {
        p.refresh(&w.zone, w.now);
        assert_eq!(p.source(), ViewSource::Fallback);
        assert_eq!(p.pick(None).unwrap().address, "127.0.0.1:9999");
    }
    let (reload_at, calls_before) = (w.now, w.calls.len());
    w.step();
    // At their first tick: elected, fetched, published, picked up.
    assert_eq!(w.now, reload_at, "no wait: the new workers' elections are due at once");
    let mut new_pollers: Vec<u64> = w.calls[calls_before..].iter().map(|(_, id)| *id).collect();
    new_pollers.dedup();
    assert_eq!(new_pollers.len(), 1, "{new_pollers:?}");
    for got in w.picks() {
        assert_eq!(got, ["10.0.0.1:80"]);
    }
}

#[test]
fn extra_tick_timers_left_by_traps_do_not_double_the_calls() {
    let mut w = World::new(2, &["web"]);
    w.etcd.put("10.0.0.1:80", "{}");
    for x in &mut w.workers {
        x.ticks_per_round = 3;
    }
    w.run_for(2000);
    let calls = w.calls.len();
    assert!((8..=16).contains(&calls), "{calls} registry calls in 2 s with tripled ticks");
}

#[test]
fn colliding_keys_never_route_to_the_other_upstreams_members() {
    // Found offline: their snapshot keys have the same CRC32, so on nginx
    // they share one entry of the zone and overwrite each other.
    let (a, b) = ("u239789", "u14000040");
    assert_eq!(crc32(snapshot_key(a).as_bytes()), crc32(snapshot_key(b).as_bytes()));
    let mut w = World::new(2, &[a, b]);
    w.etcd.put_key(&format!("/upstreams/{a}/10.0.0.1:80"), "{}");
    w.etcd.put_key(&format!("/upstreams/{b}/10.0.0.2:80"), "{}");
    for round in 0..40 {
        w.run_for(TICK);
        if round % 10 == 5 {
            // Changes keep both writing into the shared entry.
            w.etcd.put_key(&format!("/upstreams/{a}/10.0.0.1:80"), &format!(r#"{{"weight":{}}}"#, round + 1));
            w.etcd.put_key(&format!("/upstreams/{b}/10.0.0.2:80"), &format!(r#"{{"weight":{}}}"#, round + 1));
        }
        for x in &mut w.workers {
            for (p, own) in x.pickers.iter_mut().zip(["10.0.0.1:80", "10.0.0.2:80"]) {
                for _ in 0..3 {
                    if let Some(picked) = p.pick(None) {
                        // Its own member or its fallback; never the other upstream's.
                        assert!(
                            picked.address == own || picked.address == "127.0.0.1:9999",
                            "{} picked {}",
                            p.name(),
                            picked.address
                        );
                    }
                }
            }
        }
    }
    // The entry holds one of them; read as the other, it is refused.
    let owner = w.zone.owner_of(&snapshot_key(a)).unwrap().to_string();
    let holder = crate::sansio::shared::snapshot::read(&w.zone, a).map(|s| s.map(|s| s.members.len()));
    let other = crate::sansio::shared::snapshot::read(&w.zone, b).map(|s| s.map(|s| s.members.len()));
    assert!(holder.is_err() != other.is_err(), "exactly one of them can read the entry (created by {owner})");
}

#[test]
fn nginx_nodes_never_open_grpc_streams() {
    // ngx_wasm_module has no gRPC: the config refuses grpc_target with
    // host nginx, and a node built from an nginx config opens no watch.
    let mut w = World::new(2, &["web"]);
    for _ in 0..20 {
        // `carry_out` panics on any action but a registry call.
        w.step();
    }
    assert!(w.now > 1_000_000, "time moved");
}
