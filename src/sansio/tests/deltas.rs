//! Changes applied as changes (issue 10): etcd v3 watch events and etcd
//! v2 long-poll answers change an upstream's member list without a full
//! read, and the list they give is the one a full read of the same keys
//! gives. A scripted etcd (v3 range answers and watch messages, v2 keys
//! answers and long-poll events, from one keyspace with revisions) drives
//! a machine that applies changes and, beside it, one that reads
//! everything on every poll; both must hand out the same members and count
//! the same updates, refusals and holds, while the first reads nothing
//! for a change.

use crate::sansio::model::member_set::MemberSet;
use crate::sansio::registry::etcd_v2::EtcdV2Adapter;
use crate::sansio::registry::etcd_v3::EtcdV3Adapter;
use crate::sansio::registry::etcd_watch::{self, decode_response, Event, EventKind, WatchMessage, WatchResponse};
use crate::sansio::registry::{AdapterError, HttpRequest, HttpResponse, Poll, RegistryAdapter};
use crate::sansio::shared::snapshot;
use crate::sansio::shared::store::{MemoryStore, StoreRules};
use crate::sansio::sync::machine::{SyncConfig, SyncEvent, SyncMachine};
use crate::sansio::sync::poller::{Action, Leadership, Poller};
use crate::sansio::util::base64;
use crate::sansio::util::rng::Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;

// On wasm32 the same tests run under wasm-bindgen-test.
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const PREFIX: &str = "/upstreams/web/";

/// One write of a transaction.
#[derive(Debug, Clone)]
enum Op {
    Put(String, String),
    Delete(String),
    /// etcd v2 only: a recursive delete of a folder under the prefix.
    DeleteDir(String),
}

/// A scripted etcd: one keyspace, a revision (v3) / index (v2) moved by
/// every transaction, and the history of events.
struct Etcd {
    keys: BTreeMap<String, (String, i64)>,
    revision: i64,
    /// (revision, event) in order; a transaction's events share a revision.
    history: Vec<(i64, Event)>,
    /// The v2 events: (index, action, key, value, dir).
    v2_history: Vec<(i64, &'static str, String, String, bool)>,
    /// The revision up to which the watch has delivered.
    delivered: i64,
    range_calls: usize,
}

impl Etcd {
    fn new() -> Etcd {
        Etcd {
            keys: BTreeMap::new(),
            revision: 1,
            history: Vec::new(),
            v2_history: Vec::new(),
            delivered: 1,
            range_calls: 0,
        }
    }

    /// One transaction: every write at the same revision (v2 has no
    /// transactions: one index per write there).
    fn txn(&mut self, ops: &[Op]) {
        self.revision += 1;
        let rev = self.revision;
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    self.keys.insert(k.clone(), (v.clone(), rev));
                    let event = Event {
                        kind: EventKind::Put,
                        key: k.clone().into_bytes(),
                        value: v.clone().into_bytes(),
                        mod_revision: rev,
                    };
                    self.history.push((rev, event));
                    self.v2_history.push((rev, "set", k.clone(), v.clone(), false));
                }
                Op::Delete(k) => {
                    if self.keys.remove(k).is_some() {
                        let event = Event {
                            kind: EventKind::Delete,
                            key: k.clone().into_bytes(),
                            value: vec![],
                            mod_revision: rev,
                        };
                        self.history.push((rev, event));
                        self.v2_history.push((rev, "delete", k.clone(), String::new(), false));
                    }
                }
                Op::DeleteDir(dir) => {
                    let under: Vec<String> =
                        self.keys.keys().filter(|k| k.starts_with(&format!("{dir}/"))).cloned().collect();
                    for k in &under {
                        self.keys.remove(k);
                        let event = Event {
                            kind: EventKind::Delete,
                            key: k.clone().into_bytes(),
                            value: vec![],
                            mod_revision: rev,
                        };
                        self.history.push((rev, event));
                    }
                    if !under.is_empty() {
                        self.v2_history.push((rev, "delete", dir.clone(), String::new(), true));
                    }
                }
            }
        }
    }

    /// The JSON gateway's answer to a range request (a full read or a probe).
    fn range(&mut self, request: &HttpRequest) -> Vec<u8> {
        self.range_calls += 1;
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let prefix = String::from_utf8(base64::decode(body["key"].as_str().unwrap()).unwrap()).unwrap();
        let mut kvs: Vec<(&String, &(String, i64))> =
            self.keys.iter().filter(|(k, _)| k.starts_with(&prefix)).collect();
        let count = kvs.len();
        let probe = body.get("sort_target").is_some();
        if probe {
            kvs.sort_by_key(|(_, (_, rev))| std::cmp::Reverse(*rev));
            kvs.truncate(1);
        }
        let list: Vec<Value> = kvs
            .iter()
            .map(|(k, (v, rev))| {
                let mut kv = json!({"key": base64::encode(k.as_bytes()), "mod_revision": rev.to_string()});
                if !probe && !v.is_empty() {
                    kv["value"] = json!(base64::encode(v.as_bytes()));
                }
                kv
            })
            .collect();
        let mut answer = json!({"header": {"cluster_id": "1", "revision": self.revision.to_string()}});
        if !list.is_empty() {
            answer["kvs"] = json!(list);
            answer["count"] = json!(count.to_string());
            if probe && count > 1 {
                answer["more"] = json!(true);
            }
        }
        answer.to_string().into_bytes()
    }

    fn is_probe(request: &HttpRequest) -> bool {
        String::from_utf8_lossy(&request.body).contains("sort_target")
    }

    fn created(&mut self, watch_id: u64) -> Vec<u8> {
        self.delivered = self.revision;
        etcd_watch::encode_response(&WatchResponse {
            watch_id,
            message: WatchMessage::Created,
            revision: self.revision,
            compact_revision: 0,
            fragment: false,
            events: vec![],
        })
    }

    /// What the watch on PREFIX sends for the transactions since the last
    /// delivery: one message per revision.
    fn watch_messages(&mut self, watch_id: u64) -> Vec<Vec<u8>> {
        let mut by_rev: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
        for (rev, e) in &self.history {
            if *rev > self.delivered && e.key.starts_with(PREFIX.as_bytes()) {
                by_rev.entry(*rev).or_default().push(e.clone());
            }
        }
        self.delivered = self.revision;
        by_rev
            .into_iter()
            .map(|(rev, events)| {
                etcd_watch::encode_response(&WatchResponse {
                    watch_id,
                    message: WatchMessage::Events(events.len()),
                    revision: rev,
                    compact_revision: 0,
                    fragment: false,
                    events,
                })
            })
            .collect()
    }

    /// The v2 answer to `request`: a recursive read, or a long poll
    /// (`None`: nothing at or after its waitIndex yet, it stays held).
    fn v2(&mut self, request: &HttpRequest) -> Option<V2Answer> {
        let headers = vec![("X-Etcd-Index".to_string(), self.revision.to_string())];
        let Some((_, wait)) = request.path.split_once("waitIndex=") else {
            self.range_calls += 1;
            let nodes: Vec<Value> = self
                .keys
                .iter()
                .filter(|(k, _)| k.starts_with(PREFIX))
                .map(|(k, (v, rev))| json!({"key": k, "value": v, "modifiedIndex": rev, "createdIndex": rev}))
                .collect();
            let mut node = json!({"key": PREFIX.trim_end_matches('/'), "dir": true});
            if !nodes.is_empty() {
                node["nodes"] = json!(nodes);
            }
            return Some((200, headers, json!({"action": "get", "node": node}).to_string().into_bytes()));
        };
        let wait: i64 = wait.parse().unwrap();
        let (index, action, key, value, dir) =
            self.v2_history.iter().find(|(i, _, k, _, _)| *i >= wait && k.starts_with(PREFIX))?.clone();
        let mut node = json!({"key": key, "modifiedIndex": index, "createdIndex": index});
        if dir {
            node["dir"] = json!(true);
        } else if action == "set" {
            node["value"] = json!(value);
        }
        Some((200, headers, json!({"action": action, "node": node}).to_string().into_bytes()))
    }
}

/// A v2 answer: status, headers, body.
type V2Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// etcd v2 as it was before changes were applied: a long-poll answer
/// only says "changed", and the machine reads everything at once. The
/// reference the v2 test holds the changes to.
struct ReadOnEvents(EtcdV2Adapter);

impl RegistryAdapter for ReadOnEvents {
    fn request(&self) -> HttpRequest {
        self.0.request()
    }
    fn parse(&mut self, response: &HttpResponse<'_>) -> Result<Poll, AdapterError> {
        match self.0.parse(response) {
            Ok(Poll::Delta(_)) => {
                self.0.reset();
                Ok(Poll::Changed)
            }
            other => other,
        }
    }
    fn reset(&mut self) {
        self.0.reset();
    }
    fn hold_ms(&self) -> u64 {
        self.0.hold_ms()
    }
    fn long_polls(&self) -> bool {
        true
    }
}

fn config() -> SyncConfig {
    SyncConfig {
        name: "web".into(),
        interval_ms: 1000,
        timeout_ms: 3000,
        backoff_max_ms: 8000,
        max_body_bytes: 1 << 20,
        allow_empty: false,
        max_removal_share: 0.5,
        fallback: MemberSet::new(),
        extra_headers: Vec::new(),
    }
}

/// Sends every call due at `now` and answers it (v3), until none is left;
/// the number of full reads among them.
fn run_v3(m: &mut SyncMachine, etcd: &mut Etcd, now: u64) -> usize {
    m.handle_timeout(now);
    let mut fetches = 0;
    while let Some(out) = m.poll_transmit(now) {
        fetches += usize::from(!Etcd::is_probe(&out.request));
        let body = etcd.range(&out.request);
        m.handle_response(now, out.id, HttpResponse::new(Some(200), &[], &body));
    }
    fetches
}

const VALUES: &[&str] =
    &["{}", r#"{"weight":3}"#, r#"{"down":1}"#, r#"{"backup":1,"zone":"z1"}"#, "not json", "", r#"{"weight":"heavy"}"#];

fn member_key(i: u64) -> String {
    format!("{PREFIX}10.0.0.{i}:80")
}

/// 1 to 3 random writes: members of 16 addresses, the same address under
/// a second key, keys that are no member, keys of another prefix, and now
/// and then most members at once (past `max_removal_share`).
fn random_ops(rng: &mut Rng, etcd: &Etcd, v2: bool) -> Vec<Op> {
    let mut ops = Vec::new();
    for _ in 0..=rng.up_to(2) {
        let value = VALUES[rng.up_to(VALUES.len() as u64 - 1) as usize].to_string();
        let op = match rng.up_to(19) {
            0..=7 => Op::Put(member_key(rng.up_to(15) + 1), value),
            8..=12 => Op::Delete(member_key(rng.up_to(15) + 1)),
            13 => Op::Put(format!("{PREFIX}sub/10.0.0.{}:80", rng.up_to(3) + 1), value),
            14 => Op::Delete(format!("{PREFIX}sub/10.0.0.{}:80", rng.up_to(3) + 1)),
            15 => Op::Put(format!("{PREFIX}nonsense{}", rng.up_to(2)), value),
            16 => Op::Put(format!("/upstreams/other/10.0.0.{}:80", rng.up_to(3)), value),
            17 if v2 => Op::DeleteDir(format!("{PREFIX}sub")),
            _ => {
                // Most members at once.
                let keys: Vec<String> = etcd.keys.keys().filter(|k| k.starts_with(PREFIX)).cloned().collect();
                ops.extend(keys.into_iter().filter(|_| rng.up_to(9) < 8).map(Op::Delete));
                continue;
            }
        };
        ops.push(op);
    }
    ops
}

/// What both machines must agree on.
fn outcome(m: &SyncMachine) -> (Option<MemberSet>, u64, u64, u64, u64, bool) {
    let s = m.stats();
    (
        m.published().map(|p| p.members.clone()),
        s.updates_applied,
        s.updates_refused,
        s.updates_held,
        s.bad_entries,
        s.held,
    )
}

#[test]
fn watch_events_give_the_members_a_full_read_gives_without_reading() {
    let mut changes_without_read = 0;
    for seed in 0..24 {
        let mut rng = Rng::new(seed);
        let mut etcd = Etcd::new();
        for i in 1..=10 {
            etcd.txn(&[Op::Put(member_key(i), "{}".into())]);
        }
        let mut deltas = SyncMachine::new(config(), Box::new(EtcdV3Adapter::new(PREFIX)), 1);
        // The reference: no watch, so every change it sees is read in full
        // (its probe finds it, then it reads everything).
        let mut reads = SyncMachine::new(config(), Box::new(EtcdV3Adapter::new(PREFIX)), 1);
        // The watch is created, then the first read: it follows on from the read at once.
        let created = etcd.created(1);
        deltas.handle_watch(0, &decode_response(&created).unwrap());
        assert_eq!(run_v3(&mut deltas, &mut etcd, 0), 1);
        run_v3(&mut reads, &mut etcd, 0);
        assert_eq!(outcome(&deltas), outcome(&reads));
        for step in 1..=60u64 {
            let now = step * 1000;
            let ops = random_ops(&mut rng, &etcd, false);
            etcd.txn(&ops);
            let held_before = deltas.stats().held || deltas.refusing();
            let before = etcd.range_calls;
            for message in etcd.watch_messages(1) {
                deltas.handle_watch(now, &decode_response(&message).unwrap());
            }
            let applied_at_once = etcd.range_calls == before;
            let fetches = run_v3(&mut deltas, &mut etcd, now);
            let reference_reads = run_v3(&mut reads, &mut etcd, now);
            assert_eq!(outcome(&deltas), outcome(&reads), "seed {seed} step {step} after {ops:?}");
            if !held_before && !deltas.stats().held && applied_at_once {
                // The interval's probe agrees with the changes applied: nothing read in full.
                assert_eq!(fetches, 0, "seed {seed} step {step} after {ops:?}");
                changes_without_read += usize::from(reference_reads > 0);
            }
        }
    }
    assert!(changes_without_read > 24 * 20, "{changes_without_read} changes applied without a read");
}

/// The v2 machine: every long poll due is sent and answered while etcd has
/// an event for it; the last one stays out (etcd holds it). Returns the
/// number of full reads.
fn run_v2(m: &mut SyncMachine, etcd: &mut Etcd, out: &mut Option<(u64, HttpRequest)>, now: u64) -> usize {
    m.handle_timeout(now);
    let mut reads = 0;
    loop {
        if out.is_none() {
            *out = m.poll_transmit(now).map(|o| (o.id, o.request));
        }
        let Some((id, request)) = out.take() else {
            return reads;
        };
        reads += usize::from(!request.path.contains("waitIndex"));
        match etcd.v2(&request) {
            Some((status, headers, body)) => {
                m.handle_response(now, id, HttpResponse::new(Some(status), &headers, &body))
            }
            None => {
                *out = Some((id, request));
                return reads;
            }
        }
    }
}

#[test]
fn v2_long_poll_events_give_the_members_a_full_read_gives_without_reading() {
    let mut changes_without_read = 0;
    for seed in 0..24 {
        let mut rng = Rng::new(seed);
        let mut etcd = Etcd::new();
        for i in 1..=10 {
            etcd.txn(&[Op::Put(member_key(i), "{}".into())]);
        }
        let mut deltas = SyncMachine::new(config(), Box::new(EtcdV2Adapter::new(PREFIX, 100_000_000)), 1);
        let mut reads = SyncMachine::new(config(), Box::new(ReadOnEvents(EtcdV2Adapter::new(PREFIX, 100_000_000))), 1);
        let (mut held_call, mut reads_call) = (None, None);
        assert_eq!(run_v2(&mut deltas, &mut etcd, &mut held_call, 0), 1);
        run_v2(&mut reads, &mut etcd, &mut reads_call, 0);
        for step in 1..=60u64 {
            let now = step * 1000;
            // v2 has no transactions: one write per step, so each event is a state a full read can see.
            let ops = random_ops(&mut rng, &etcd, true);
            let ops = ops[..1].to_vec();
            etcd.txn(&ops);
            let held_before = deltas.stats().held || deltas.refusing();
            let fetches = run_v2(&mut deltas, &mut etcd, &mut held_call, now);
            let before = etcd.range_calls;
            run_v2(&mut reads, &mut etcd, &mut reads_call, now);
            let reference_reads = etcd.range_calls - before;
            assert_eq!(outcome(&deltas), outcome(&reads), "seed {seed} step {step} after {ops:?}");
            let dir = matches!(ops.first(), Some(Op::DeleteDir(_)));
            if !held_before && !deltas.stats().held && !dir {
                assert_eq!(fetches, 0, "seed {seed} step {step} after {ops:?}");
                // A change the reference had to read in full.
                changes_without_read += usize::from(reference_reads > 0);
            }
            if dir && etcd.v2_history.last().is_some_and(|e| e.4 && e.0 == etcd.revision) {
                assert!(fetches >= 1, "a recursive delete is read in full");
            }
        }
    }
    assert!(changes_without_read > 24 * 20, "{changes_without_read} changes applied without a read");
}

/// The poller's config: one etcd v3 upstream with the gRPC watch.
fn watched_poller() -> Poller {
    let json = format!(
        r#"{{"upstreams":[{{"name":"web","registry":{{"type":"etcd_v3","target":"etcd","prefix":"{PREFIX}","grpc_target":"etcd_grpc"}},"interval_ms":30000}}]}}"#
    );
    Poller::new(&crate::sansio::config::PluginConfig::parse(json.as_bytes()).unwrap(), Leadership::Singleton, 1)
}

/// Carries out every action (answering calls from `etcd`); the number of registry calls.
fn settle(p: &mut Poller, etcd: &mut Etcd, store: &mut MemoryStore, now: u64) -> usize {
    let mut calls = 0;
    while let Some(action) = p.poll_action() {
        if let Action::Dispatch(d) = action {
            calls += 1;
            let body = etcd.range(&d.request);
            p.handle_response(now, d.upstream, d.id, HttpResponse::new(Some(200), &[], &body));
        }
    }
    p.flush(store);
    calls
}

fn published(store: &MemoryStore) -> Vec<String> {
    let snap = snapshot::read(store, "web").unwrap().unwrap();
    snap.members.iter().map(|m| m.addr.to_string()).collect()
}

#[test]
fn through_the_poller_an_event_is_published_with_no_registry_call() {
    let mut etcd = Etcd::new();
    etcd.txn(&[Op::Put(member_key(1), "{}".into())]);
    let mut store = MemoryStore::new(StoreRules::Envoy);
    let mut p = watched_poller();
    p.handle_timeout(&mut store, 0);
    assert_eq!(settle(&mut p, &mut etcd, &mut store, 0), 1, "the first full read");
    let created = etcd.created(1);
    p.handle_watch_message(10, 0, &created);
    assert_eq!(settle(&mut p, &mut etcd, &mut store, 10), 1, "a probe settles that the watch follows on");
    let version = snapshot::read_version(&store, "web");

    etcd.txn(&[Op::Put(member_key(2), r#"{"weight":2}"#.into())]);
    for m in etcd.watch_messages(1) {
        p.handle_watch_message(20, 0, &m);
    }
    assert_eq!(settle(&mut p, &mut etcd, &mut store, 20), 0, "applied without a call");
    assert_eq!(published(&store), ["10.0.0.1:80", "10.0.0.2:80"]);
    assert!(snapshot::read_version(&store, "web") > version, "a new snapshot version");

    etcd.txn(&[Op::Delete(member_key(1))]);
    for m in etcd.watch_messages(1) {
        p.handle_watch_message(30, 0, &m);
    }
    assert_eq!(settle(&mut p, &mut etcd, &mut store, 30), 0);
    assert_eq!(published(&store), ["10.0.0.2:80"]);

    // A message that does not decode: every upstream on the stream reads again.
    p.handle_watch_message(40, 0, &[0x5a, 0x09, 0x01]);
    etcd.txn(&[Op::Put(member_key(3), "{}".into())]);
    assert_eq!(settle(&mut p, &mut etcd, &mut store, 40), 1, "a full read");
    assert_eq!(published(&store), ["10.0.0.2:80", "10.0.0.3:80"]);
    let _ = etcd.watch_messages(1); // already in that read: applying it changes nothing
                                    // The stream closes: nothing is applied until a new watch follows on from a read.
    p.handle_watch_closed(50, 0);
    etcd.txn(&[Op::Put(member_key(4), "{}".into())]);
    let lost = etcd.watch_messages(1);
    assert_eq!(settle(&mut p, &mut etcd, &mut store, 50), 0);
    p.handle_timeout(&mut store, 51);
    let reopened = std::iter::from_fn(|| p.poll_action()).any(|a| matches!(a, Action::OpenWatch(_)));
    assert!(reopened);
    let created = etcd.created(1);
    p.handle_watch_message(60, 0, &created);
    // The gap (the put of 10.0.0.4 the closed stream never brought) is found by the probe and read.
    assert_eq!(settle(&mut p, &mut etcd, &mut store, 60), 2, "probe, then full read");
    assert_eq!(published(&store), ["10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]);
    drop(lost);
}

#[test]
fn a_compacted_or_canceled_watch_reads_everything_and_the_watch_is_created_again() {
    let mut etcd = Etcd::new();
    etcd.txn(&[Op::Put(member_key(1), "{}".into())]);
    let mut store = MemoryStore::new(StoreRules::Envoy);
    let mut p = watched_poller();
    p.handle_timeout(&mut store, 0);
    settle(&mut p, &mut etcd, &mut store, 0);
    let created = etcd.created(1);
    p.handle_watch_message(10, 0, &created);
    settle(&mut p, &mut etcd, &mut store, 10);
    let before = etcd.range_calls;
    let compacted = etcd_watch::encode_response(&WatchResponse {
        watch_id: 1,
        message: WatchMessage::Canceled("etcdserver: mvcc: required revision has been compacted".into()),
        revision: etcd.revision,
        compact_revision: etcd.revision,
        fragment: false,
        events: vec![],
    });
    p.handle_watch_message(20, 0, &compacted);
    let actions: Vec<Action> = std::iter::from_fn(|| p.poll_action()).collect();
    assert!(actions.contains(&Action::SendWatch { stream: 0, message: etcd_watch::create_request(PREFIX, 1) }));
    let fetch = actions.iter().find_map(|a| match a {
        Action::Dispatch(d) => Some(d.clone()),
        _ => None,
    });
    let fetch = fetch.expect("a registry call at once");
    assert!(!Etcd::is_probe(&fetch.request), "a full read, not a probe");
    let body = etcd.range(&fetch.request);
    p.handle_response(20, 0, fetch.id, HttpResponse::new(Some(200), &[], &body));
    assert_eq!(etcd.range_calls, before + 1);
}

/// A machine that has read `n` members and whose watch follows on from the read.
fn watching_machine(etcd: &mut Etcd, n: u64, cfg: SyncConfig) -> SyncMachine {
    for i in 1..=n {
        etcd.txn(&[Op::Put(member_key(i), "{}".into())]);
    }
    let mut m = SyncMachine::new(cfg, Box::new(EtcdV3Adapter::new(PREFIX)), 1);
    let created = etcd.created(1);
    m.handle_watch(0, &decode_response(&created).unwrap());
    assert_eq!(run_v3(&mut m, etcd, 0), 1);
    m
}

fn deliver(m: &mut SyncMachine, etcd: &mut Etcd, now: u64) {
    for message in etcd.watch_messages(1) {
        m.handle_watch(now, &decode_response(&message).unwrap());
    }
}

#[test]
fn a_change_removing_more_than_the_share_is_held_until_a_full_read_confirms_it() {
    let mut etcd = Etcd::new();
    let mut m = watching_machine(&mut etcd, 10, config());
    let deletes: Vec<Op> = (1..=8).map(|i| Op::Delete(member_key(i))).collect();
    etcd.txn(&deletes);
    deliver(&mut m, &mut etcd, 500);
    let events: Vec<SyncEvent> = std::iter::from_fn(|| m.poll_event()).collect();
    assert!(events.contains(&SyncEvent::Held { removed: 8, of: 10 }), "{events:?}");
    assert_eq!(m.published().unwrap().members.len(), 10, "nothing removed yet");
    assert_eq!(m.poll_timeout(), 1500, "the confirming read interval_ms after the change");
    // Meanwhile a change brings one back: read in full, too early to confirm.
    etcd.txn(&[Op::Put(member_key(11), "{}".into())]);
    deliver(&mut m, &mut etcd, 800);
    assert_eq!(run_v3(&mut m, &mut etcd, 800), 1);
    assert_eq!(m.published().unwrap().members.len(), 10);
    assert_eq!(run_v3(&mut m, &mut etcd, 1499), 0);
    assert_eq!(run_v3(&mut m, &mut etcd, 1500), 1, "a full read, not a probe");
    assert_eq!(m.published().unwrap().members.len(), 3);
    assert!(!m.stats().held);
    // Then changes apply as changes again.
    etcd.txn(&[Op::Put(member_key(12), "{}".into())]);
    deliver(&mut m, &mut etcd, 1600);
    assert_eq!(run_v3(&mut m, &mut etcd, 1600), 0);
    assert_eq!(m.published().unwrap().members.len(), 4);
}

#[test]
fn a_change_leaving_no_member_is_refused_unless_allowed_and_the_next_one_is_taken() {
    let mut etcd = Etcd::new();
    let mut m = watching_machine(&mut etcd, 2, SyncConfig { max_removal_share: 1.0, ..config() });
    etcd.txn(&[Op::Delete(member_key(1)), Op::Delete(member_key(2))]);
    deliver(&mut m, &mut etcd, 100);
    let events: Vec<SyncEvent> = std::iter::from_fn(|| m.poll_event()).collect();
    assert!(events.iter().any(|e| matches!(e, SyncEvent::Refused { first: true, .. })), "{events:?}");
    assert_eq!(m.published().unwrap().members.len(), 2, "the last good list stays");
    assert_eq!(etcd.range_calls, 1, "no read for it");
    // A change on top of a refused list is read in full (the registry said
    // it had no members: true, or a fault a full read will tell).
    etcd.txn(&[Op::Put(member_key(5), "{}".into())]);
    deliver(&mut m, &mut etcd, 200);
    assert_eq!(m.published().unwrap().members.len(), 2, "not applied");
    assert_eq!(run_v3(&mut m, &mut etcd, 200), 1, "read in full at once");
    let events: Vec<SyncEvent> = std::iter::from_fn(|| m.poll_event()).collect();
    assert!(events.contains(&SyncEvent::Accepting), "{events:?}");
    let addrs: Vec<String> = m.published().unwrap().members.iter().map(|m| m.addr.to_string()).collect();
    assert_eq!(addrs, ["10.0.0.5:80"]);
    // Then changes apply as changes again.
    etcd.txn(&[Op::Put(member_key(6), "{}".into())]);
    deliver(&mut m, &mut etcd, 300);
    assert_eq!(run_v3(&mut m, &mut etcd, 300), 0);
    assert_eq!(m.published().unwrap().members.len(), 2);

    let mut etcd = Etcd::new();
    let cfg = SyncConfig { allow_empty: true, max_removal_share: 1.0, ..config() };
    let mut m = watching_machine(&mut etcd, 1, cfg);
    etcd.txn(&[Op::Delete(member_key(1))]);
    deliver(&mut m, &mut etcd, 100);
    assert!(m.published().unwrap().members.is_empty());
}

#[test]
fn while_the_registry_path_fails_the_watch_changes_still_apply_and_bad_answers_never_do() {
    let mut etcd = Etcd::new();
    let mut m = watching_machine(&mut etcd, 3, config());
    // The interval's probe meets a broken registry path (the watch is fine).
    m.handle_timeout(1000);
    let out = m.poll_transmit(1000).unwrap();
    m.handle_response(1000, out.id, HttpResponse::new(Some(200), &[], br#"{"header":{},"kvs":"x"}"#));
    assert_eq!(m.phase_name(), "backoff");
    assert_eq!(m.published().unwrap().members.len(), 3, "the bad answer changed nothing");
    etcd.txn(&[Op::Put(member_key(9), "{}".into())]);
    deliver(&mut m, &mut etcd, 1100);
    assert_eq!(m.published().unwrap().members.len(), 4, "etcd's own change, through the watch");
    assert_eq!(m.phase_name(), "backoff", "the failing path keeps its backoff");
    // The path heals: the next probe agrees with the changes applied meanwhile.
    let due = m.poll_timeout();
    assert_eq!(run_v3(&mut m, &mut etcd, due), 0);
    assert_eq!(m.phase_name(), "waiting");
    assert_eq!(m.published().unwrap().members.len(), 4);
}
