//! `discover[]` entries that read their children for them, so that one
//! call is ever in flight for the whole parent and the upstreams found make
//! none of their own: etcd v2 (a full read of the parent with every member,
//! then one recursive long poll whose events go to the upstream they
//! concern as deltas) and etcd v3 without a watch (the keys-only listing,
//! then transactions reading the children whose mark moved).

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use crate::sansio::config::PluginConfig;
use crate::sansio::registry::HttpResponse;
use crate::sansio::shared::keys::cds_key;
use crate::sansio::shared::names;
use crate::sansio::shared::snapshot;
use crate::sansio::shared::status::DiscoveryRecord;
use crate::sansio::shared::store::{MemoryStore, SharedStore, StoreRules};
use crate::sansio::sync::poller::{Action, Dispatch, Leadership, Poller, DISCOVERY_CALLER};
use crate::sansio::tests::testkit::{EtcdScript, EtcdV2Script};

const ENVOY: &str = r#"{"discover":[{"registry":{"type":"etcd_v2","target":"etcd","prefix":"/upstreams/",
    "wait_ms":20000},"interval_ms":10000,"timeout_ms":1000,"defaults":{"interval_ms":1000}}]}"#;

/// The poller and the one call it has out (if any).
struct Rig {
    p: Poller,
    store: MemoryStore,
    etcd: EtcdV2Script,
    pending: Vec<Dispatch>,
    /// Every call sent, in order.
    sent: Vec<Dispatch>,
}

impl Rig {
    fn new(json: &str) -> Rig {
        let config = PluginConfig::parse(json.as_bytes()).unwrap();
        Rig {
            p: Poller::new(&config, Leadership::Singleton, 7),
            store: MemoryStore::new(StoreRules::Envoy),
            etcd: EtcdV2Script::new(),
            pending: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn take_calls(&mut self) {
        while let Some(action) = self.p.poll_action() {
            match action {
                Action::Dispatch(d) => {
                    self.sent.push(d.clone());
                    self.pending.push(d);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(self.pending.len() <= 1, "more than one call in flight: {:?}", self.pending);
        assert!(self.pending.iter().all(|d| d.upstream >= DISCOVERY_CALLER), "a found upstream called etcd itself");
    }

    /// Answers what etcd can answer now (a long poll with no event stays
    /// out), until nothing more is; fires due timers up to `now` first.
    fn settle(&mut self, now: u64) {
        while let Some(due) = self.p.poll_timeout().filter(|d| *d <= now) {
            self.p.handle_timeout(&mut self.store, due);
            self.take_calls();
        }
        loop {
            self.take_calls();
            let Some(call) = self.pending.first().cloned() else { break };
            let Some((status, headers, body)) = self.etcd.answer(&call.request) else { break };
            self.pending.clear();
            self.p.handle_response(now, call.upstream, call.id, HttpResponse::new(Some(status), &headers, &body));
        }
        self.p.flush(&mut self.store);
    }

    /// The long poll out runs to its timeout (Envoy answers 504).
    fn time_out(&mut self, now: u64) {
        let call = self.pending.pop().expect("a call out");
        self.p.handle_response(now, call.upstream, call.id, HttpResponse::new(Some(504), &[], b""));
        self.settle(now);
    }

    fn members(&self, name: &str) -> Vec<String> {
        let s = snapshot::read(&self.store, name).unwrap().unwrap();
        s.members.iter().map(|m| m.addr.to_string()).collect()
    }

    fn found(&self) -> Vec<String> {
        names::read(&self.store as &dyn SharedStore, &cds_key()).unwrap().unwrap_or_default()
    }

    fn last_path(&self) -> &str {
        self.sent.last().map_or("", |d| d.request.path.as_str())
    }
}

#[test]
fn one_full_read_then_one_long_poll_for_every_upstream_found() {
    let mut r = Rig::new(ENVOY);
    r.etcd.put("/upstreams/web/10.0.0.1:80", "{}");
    r.etcd.put("/upstreams/web/10.0.0.2:80", r#"{"weight":2}"#);
    r.etcd.put("/upstreams/api/10.0.1.1:80", "{}");
    r.settle(0);
    assert_eq!(r.found(), ["api", "web"]);
    assert_eq!(r.members("web"), ["10.0.0.1:80", "10.0.0.2:80"]);
    assert_eq!(r.members("api"), ["10.0.1.1:80"]);
    let paths: Vec<&str> = r.sent.iter().map(|d| d.request.path.as_str()).collect();
    let next = r.etcd.index() + 1;
    assert_eq!(
        paths,
        [
            "/v2/keys/upstreams?recursive=true".to_string(),
            format!("/v2/keys/upstreams?wait=true&recursive=true&waitIndex={next}")
        ]
    );
    // The long poll holds until the next full read is due, at most wait_ms.
    assert_eq!(r.sent.last().unwrap().timeout_ms, 1000 + 10_000);

    // A change under one child is applied to that upstream alone, and the
    // watch goes on from just after it: no read of any upstream.
    r.etcd.put("/upstreams/web/10.0.0.3:80", "{}");
    r.settle(100);
    assert_eq!(r.members("web"), ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
    r.etcd.put("/upstreams/api/10.0.1.2:80", "{}");
    r.etcd.delete("/upstreams/api/10.0.1.1:80");
    r.settle(200);
    assert_eq!(r.members("api"), ["10.0.1.2:80"], "the put, then the delete, in order");
    let paths: Vec<&str> = r.sent.iter().map(|d| d.request.path.as_str()).collect();
    assert_eq!(paths.len(), 5, "one long poll per change, nothing else: {paths:?}");
    assert!(r.last_path().ends_with(&format!("waitIndex={}", r.etcd.index() + 1)), "{}", r.last_path());

    // The long poll runs out: watched again at once from the same index.
    let before = r.sent.len();
    r.time_out(11_000);
    assert!(r.last_path().contains("recursive=true"), "{}", r.last_path());
    assert_eq!(r.sent.len(), before + 2, "the full read fell due: read, then watch again");
}

#[test]
fn a_new_child_a_removed_child_and_a_cleared_history_are_read_in_full() {
    let mut r = Rig::new(ENVOY);
    r.etcd.put("/upstreams/web/10.0.0.1:80", "{}");
    r.etcd.put("/upstreams/api/10.0.1.1:80", "{}");
    r.settle(0);
    assert_eq!(r.found(), ["api", "web"]);

    // A key under a child not found yet: the parent is read in full.
    r.etcd.put("/upstreams/new/10.0.2.1:80", "{}");
    r.settle(100);
    assert_eq!(r.found(), ["api", "new", "web"]);
    assert_eq!(r.members("new"), ["10.0.2.1:80"]);

    // `rm -r` of a child: a directory event, read in full; the removal
    // waits for a later full read to confirm (interval_ms 10 s).
    r.etcd.delete_dir("/upstreams/api");
    r.settle(200);
    assert_eq!(r.found(), ["api", "new", "web"], "held");
    r.settle(10_200);
    r.time_out(10_200);
    assert_eq!(r.found(), ["new", "web"], "confirmed");

    // etcd forgot the history the watch waits from (401): read in full.
    let full_reads = |r: &Rig| r.sent.iter().filter(|d| d.request.path.ends_with("?recursive=true")).count();
    let reads = full_reads(&r);
    r.etcd.put("/upstreams/web/10.0.0.2:80", "{}");
    r.etcd.clear_history();
    r.settle(10_300);
    assert_eq!(full_reads(&r), reads + 1);
    assert_eq!(r.members("web"), ["10.0.0.1:80", "10.0.0.2:80"]);
}

#[test]
fn a_mass_removal_seen_by_a_full_read_is_held_until_a_later_one_confirms_it() {
    let mut r = Rig::new(ENVOY);
    for i in 1..=4 {
        r.etcd.put(&format!("/upstreams/web/10.0.0.{i}:80"), "{}");
    }
    r.settle(0);
    assert_eq!(r.members("web").len(), 4);
    // Three of four gone while the history was lost: the full read that
    // follows the 401 would remove 75 % (over max_removal_share): held.
    for i in 1..=3 {
        r.etcd.delete(&format!("/upstreams/web/10.0.0.{i}:80"));
    }
    r.etcd.clear_history();
    r.settle(100);
    assert_eq!(r.members("web").len(), 4, "held");
    // The confirming full read comes interval_ms (1 s, the defaults) after
    // the hold: the long poll out meanwhile holds no longer than that.
    let watch = r.sent.last().unwrap().clone();
    assert!(watch.request.path.contains("wait=true"), "{}", watch.request.path);
    assert!(watch.timeout_ms <= 1000 + 1000, "{}", watch.timeout_ms);
    r.time_out(1_100);
    assert_eq!(r.members("web"), ["10.0.0.4:80"], "confirmed by the full read 1 s later");
}

const NGINX: &str = r#"{"host":"nginx","discover":[{"registry":{"type":"etcd_v2","target":"127.0.0.1:2379",
    "prefix":"/upstreams/","wait_ms":20000},"interval_ms":10000,"timeout_ms":1000}]}"#;

/// One nginx worker's poller and its call out.
struct Worker {
    p: Poller,
    pending: Option<Dispatch>,
    calls: usize,
}

impl Worker {
    fn step(&mut self, store: &mut MemoryStore, etcd: &EtcdV2Script, now: u64) {
        if self.p.poll_timeout().is_some_and(|d| d <= now) {
            self.p.handle_timeout(store, now);
        }
        loop {
            while let Some(action) = self.p.poll_action() {
                let Action::Dispatch(d) = action else { panic!("unexpected {action:?}") };
                assert!(self.pending.is_none(), "two calls in flight in one worker");
                assert!(d.upstream >= DISCOVERY_CALLER, "a found upstream called etcd itself");
                self.calls += 1;
                self.pending = Some(d);
            }
            let Some(call) = self.pending.clone() else { break };
            let Some((status, headers, body)) = etcd.answer(&call.request) else { break };
            self.pending = None;
            self.p.handle_response(now, call.upstream, call.id, HttpResponse::new(Some(status), &headers, &body));
        }
        self.p.flush(store);
    }
}

#[test]
fn on_nginx_one_worker_reads_and_watches_the_parent_and_another_takes_over() {
    let mut etcd = EtcdV2Script::new();
    etcd.put("/upstreams/web/10.0.0.1:80", "{}");
    etcd.put("/upstreams/api/10.0.1.1:80", "{}");
    let mut store = MemoryStore::new(StoreRules::NgxWasm);
    let cfg = PluginConfig::parse(NGINX.as_bytes()).unwrap();
    let worker =
        |me: u64| Worker { p: Poller::new(&cfg, Leadership::Lease { me, ttl_ms: 3000 }, me), pending: None, calls: 0 };
    let (mut a, mut b) = (worker(1), worker(2));
    for now in (0..=2500).step_by(10) {
        a.step(&mut store, &etcd, now);
        b.step(&mut store, &etcd, now);
    }
    assert_eq!(a.calls, 2, "a leads: one full read, then the long poll it still has out");
    assert_eq!(b.calls, 0, "b never calls the registry");
    assert_eq!(b.p.name(0), "api", "b adopted a's listing");
    etcd.put("/upstreams/web/10.0.0.2:80", "{}");
    a.step(&mut store, &etcd, 2510);
    assert_eq!(snapshot::read(&store, "web").unwrap().unwrap().members.len(), 2, "through a's watch");
    // Worker a dies with its long poll out; b takes over once a's lease
    // runs out, with a full read of its own.
    etcd.put("/upstreams/web/10.0.0.3:80", "{}");
    for now in (2520..=9000).step_by(10) {
        b.step(&mut store, &etcd, now);
    }
    assert_eq!(b.calls, 2, "b: one full read, then its long poll");
    assert_eq!(snapshot::read(&store, "web").unwrap().unwrap().members.len(), 3);
}

#[test]
fn a_short_interval_never_makes_a_loop_of_calls() {
    // Full reads every 300 ms asked for: the long poll still holds a second
    // between them, so an idle minute costs tens of calls, not thousands.
    let json = ENVOY.replace(r#""interval_ms":10000"#, r#""interval_ms":300"#);
    let mut r = Rig::new(&json);
    r.etcd.put("/upstreams/web/10.0.0.1:80", "{}");
    let mut now = 0;
    r.settle(now);
    while now < 60_000 {
        let held = r.pending.first().expect("a long poll out").timeout_ms;
        now += held;
        // The host's tick at the very millisecond the host ends the call.
        r.settle(now);
        r.time_out(now);
    }
    let record = DiscoveryRecord::read_all(&r.store).pop().unwrap();
    assert_eq!(record.listings_failed, 0, "a long poll ended by its timeout is no failure");
    let (full, polls) = r.sent.iter().partition::<Vec<&Dispatch>, _>(|d| d.request.path.ends_with("?recursive=true"));
    assert!(full.len() <= 31 && polls.len() <= 31, "{} full reads, {} long polls in a minute", full.len(), polls.len());
    assert!(full.len() >= 20, "the full reads still come about every {} ms: {}", 2000, full.len());
    assert_eq!(r.members("web"), ["10.0.0.1:80"]);
}

const V3: &str = r#"{"discover":[{"registry":{"type":"etcd_v3","target":"etcd","prefix":"/upstreams/"},
    "interval_ms":1000,"timeout_ms":1000,"defaults":{"interval_ms":600000}}]}"#;

/// Runs the poller to `until`, answering each call at once from `etcd`;
/// returns the paths of the calls, checking none is sent while another is out.
fn run_v3(p: &mut Poller, store: &mut MemoryStore, etcd: &EtcdScript, until: u64) -> Vec<String> {
    let mut paths = Vec::new();
    while let Some(due) = p.poll_timeout().filter(|d| *d <= until) {
        p.handle_timeout(store, due);
        loop {
            let calls: Vec<Dispatch> = std::iter::from_fn(|| p.poll_action())
                .filter_map(|a| match a {
                    Action::Dispatch(d) => Some(d),
                    _ => None,
                })
                .collect();
            assert!(calls.len() <= 1, "{} calls at once", calls.len());
            let Some(call) = calls.into_iter().next() else { break };
            assert!(call.upstream >= DISCOVERY_CALLER, "a found upstream called etcd itself");
            paths.push(call.request.path.clone());
            let body = etcd.answer(&call.request);
            p.handle_response(due, call.upstream, call.id, HttpResponse::new(Some(200), &[], &body));
        }
        p.flush(store);
    }
    paths
}

#[test]
fn etcd_v3_without_a_watch_reads_the_children_whose_mark_moved_in_transactions() {
    let mut etcd = EtcdScript::new();
    for u in 0..300 {
        etcd.put_key(&format!("/upstreams/u{u}/10.0.0.1:80"), "{}");
    }
    let mut store = MemoryStore::new(StoreRules::Envoy);
    let mut p = Poller::new(&PluginConfig::parse(V3.as_bytes()).unwrap(), Leadership::Singleton, 7);
    let paths = run_v3(&mut p, &mut store, &etcd, 0);
    // One listing, then every child read: 300 in transactions of 128.
    assert_eq!(paths, ["/v3/kv/range", "/v3/kv/txn", "/v3/kv/txn", "/v3/kv/txn"]);
    assert_eq!(names::read(&store as &dyn SharedStore, &cds_key()).unwrap().unwrap().len(), 300);
    assert_eq!(snapshot::read(&store, "u7").unwrap().unwrap().members.len(), 1);

    // One child changes: the next listing sees its mark move and reads it alone.
    etcd.put_key("/upstreams/u7/10.0.0.2:80", "{}");
    let paths = run_v3(&mut p, &mut store, &etcd, 1000);
    assert_eq!(paths, ["/v3/kv/range", "/v3/kv/txn"]);
    assert_eq!(snapshot::read(&store, "u7").unwrap().unwrap().members.len(), 2);
    // Nothing changes: a listing a second, nothing else.
    let paths = run_v3(&mut p, &mut store, &etcd, 3000);
    assert_eq!(paths, ["/v3/kv/range", "/v3/kv/range"]);
}

#[test]
fn etcd_v3_without_a_watch_confirms_a_held_removal_by_reading_that_child_again() {
    let json = V3.replace(r#""interval_ms":600000"#, r#""interval_ms":5000"#);
    let mut etcd = EtcdScript::new();
    for m in 1..=4 {
        etcd.put_key(&format!("/upstreams/web/10.0.0.{m}:80"), "{}");
    }
    let mut store = MemoryStore::new(StoreRules::Envoy);
    let mut p = Poller::new(&PluginConfig::parse(json.as_bytes()).unwrap(), Leadership::Singleton, 7);
    run_v3(&mut p, &mut store, &etcd, 0);
    for m in 1..=3 {
        etcd.put_key(&format!("/upstreams/web/10.0.0.{m}:80"), "");
    }
    let mut gone = EtcdScript::new();
    for _ in 0..20 {
        gone.touch_elsewhere();
    }
    gone.put_key("/upstreams/web/10.0.0.4:80", "{}");
    run_v3(&mut p, &mut store, &gone, 1000);
    assert_eq!(snapshot::read(&store, "web").unwrap().unwrap().members.len(), 4, "75 % removed: held");
    // The listing's mark does not move again, yet the hold's own read comes
    // interval_ms (5 s) after it.
    let paths = run_v3(&mut p, &mut store, &gone, 6000);
    assert!(paths.iter().any(|p| p == "/v3/kv/txn"), "{paths:?}");
    assert_eq!(snapshot::read(&store, "web").unwrap().unwrap().members.len(), 1, "confirmed");
}
