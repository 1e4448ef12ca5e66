//! `discover[]` through the poller: upstreams found under an etcd parent
//! prefix appear, are polled and published, leave only when a later
//! listing confirms, and on nginx one worker lists while the others adopt.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use crate::sansio::config::PluginConfig;
use crate::sansio::registry::HttpResponse;
use crate::sansio::serve::metrics::metrics_reply;
use crate::sansio::serve::status::status_reply;
use crate::sansio::shared::keys::{cds_key, discovered_key};
use crate::sansio::shared::names;
use crate::sansio::shared::snapshot;
use crate::sansio::shared::status::{read_index, DiscoveryRecord};
use crate::sansio::shared::store::{MemoryStore, SharedStore, StoreRules};
use crate::sansio::sync::poller::{Action, Dispatch, Leadership, Poller, DISCOVERY_CALLER};
use crate::sansio::tests::testkit::EtcdScript;

/// With a watch (`grpc_target`): each upstream found reads its own members.
const ENVOY: &str = r#"{"discover":[{"registry":{"type":"etcd_v3","target":"etcd","prefix":"/upstreams/","grpc_target":"etcd_grpc"},
    "interval_ms":1000,"defaults":{"interval_ms":500}}],
  "upstreams":[{"name":"static","registry":{"type":"etcd_v3","target":"etcd","prefix":"/static/"}}]}"#;

fn config(json: &str) -> PluginConfig {
    PluginConfig::parse(json.as_bytes()).unwrap()
}

fn dispatches(p: &mut Poller) -> Vec<Dispatch> {
    std::iter::from_fn(|| p.poll_action())
        .filter_map(|a| match a {
            Action::Dispatch(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// Answers every call (and the calls those answers lead to); returns how
/// many listing calls and member reads were answered.
fn answer_all(p: &mut Poller, etcd: &EtcdScript, now: u64) -> (usize, usize) {
    let (mut listings, mut reads) = (0, 0);
    loop {
        let calls = dispatches(p);
        if calls.is_empty() {
            return (listings, reads);
        }
        for call in calls {
            if call.upstream >= DISCOVERY_CALLER {
                listings += 1;
            } else {
                reads += 1;
            }
            let body = etcd.answer(&call.request);
            p.handle_response(now, call.upstream, call.id, HttpResponse::new(Some(200), &[], &body));
        }
    }
}

fn cds(store: &dyn SharedStore) -> Vec<String> {
    names::read(store, &cds_key()).unwrap().unwrap_or_default()
}

fn run(p: &mut Poller, store: &mut MemoryStore, etcd: &EtcdScript, until: u64) {
    while let Some(due) = p.poll_timeout().filter(|d| *d <= until) {
        p.handle_timeout(store, due);
        answer_all(p, etcd, due);
        p.flush(store);
    }
}

#[test]
fn children_of_the_parent_become_upstreams_with_the_defaults_and_cds_lists_them() {
    let mut etcd = EtcdScript::new();
    etcd.put_key("/upstreams/web/10.0.0.1:80", "{}");
    etcd.put_key("/upstreams/web/10.0.0.2:80", "{}");
    etcd.put_key("/upstreams/api/10.0.1.1:80", r#"{"weight":3}"#);
    etcd.put_key("/upstreams/bad name/10.0.2.1:80", "{}");
    etcd.put_key("/static/10.9.9.9:80", "{}");
    let mut store = MemoryStore::new(StoreRules::Envoy);
    let mut p = Poller::new(&config(ENVOY), Leadership::Singleton, 7);
    p.handle_timeout(&mut store, 0);
    let (listings, reads) = answer_all(&mut p, &etcd, 0);
    assert_eq!((listings, reads), (1, 3), "one listing, then static + web + api");
    p.flush(&mut store);
    let mut index = read_index(&store);
    index.sort();
    assert_eq!(index, ["api", "static", "web"]);
    assert_eq!(cds(&store), ["api", "web"], "CDS lists found upstreams only");
    assert_eq!(snapshot::read(&store, "web").unwrap().unwrap().members.len(), 2);
    assert_eq!(snapshot::read(&store, "api").unwrap().unwrap().members.len(), 1);
    // The defaults apply: found upstreams poll every 500 ms, the listing every 1000.
    run(&mut p, &mut store, &etcd, 499);
    p.handle_timeout(&mut store, 500);
    let mut due: Vec<String> = dispatches(&mut p).iter().map(|d| p.name(d.upstream).to_string()).collect();
    due.sort();
    assert_eq!(due, ["api", "web"]);
}

#[test]
fn a_new_child_appears_at_the_next_listing_and_a_vanished_one_leaves_only_when_confirmed() {
    let mut etcd = EtcdScript::new();
    etcd.put_key("/upstreams/web/10.0.0.1:80", "{}");
    etcd.put_key("/upstreams/api/10.0.1.1:80", "{}");
    let mut store = MemoryStore::new(StoreRules::Envoy);
    let mut p = Poller::new(&config(ENVOY), Leadership::Singleton, 7);
    run(&mut p, &mut store, &etcd, 0);
    assert_eq!(cds(&store), ["api", "web"]);

    etcd.put_key("/upstreams/new/10.0.3.1:80", "{}");
    run(&mut p, &mut store, &etcd, 1000);
    assert_eq!(cds(&store), ["api", "new", "web"], "found at the listing 1 s later");
    assert_eq!(snapshot::read(&store, "new").unwrap().unwrap().members.len(), 1);

    etcd.put_key("/upstreams/api/10.0.1.1:80", "");
    let mut gone = EtcdScript::new();
    gone.put_key("/upstreams/web/10.0.0.1:80", "{}");
    gone.put_key("/upstreams/new/10.0.3.1:80", "{}");
    run(&mut p, &mut store, &gone, 2000);
    assert_eq!(cds(&store), ["api", "new", "web"], "one listing without api does not remove it");
    assert!(read_index(&store).contains(&"api".to_string()));
    run(&mut p, &mut store, &gone, 3000);
    assert_eq!(cds(&store), ["new", "web"], "a listing interval_ms later confirms");
    assert!(!read_index(&store).contains(&"api".to_string()));
    // A retired upstream is not polled any more.
    for t in (3001..6000).step_by(100) {
        p.handle_timeout(&mut store, t);
        for call in dispatches(&mut p) {
            assert_ne!(p.name(call.upstream), "api");
            let body = gone.answer(&call.request);
            p.handle_response(t, call.upstream, call.id, HttpResponse::new(Some(200), &[], &body));
        }
        p.flush(&mut store);
    }
    // It comes back under its old index (and etcd watch id).
    let mut back = EtcdScript::new();
    back.put_key("/upstreams/api/10.0.1.7:80", "{}");
    back.put_key("/upstreams/web/10.0.0.1:80", "{}");
    back.put_key("/upstreams/new/10.0.3.1:80", "{}");
    run(&mut p, &mut store, &back, 7000);
    assert_eq!(cds(&store), ["api", "new", "web"]);
    let snap = snapshot::read(&store, "api").unwrap().unwrap();
    assert_eq!(snap.members.iter().map(|m| m.addr.to_string()).collect::<Vec<_>>(), ["10.0.1.7:80"]);
}

#[test]
fn a_failed_or_empty_listing_keeps_every_upstream_found() {
    let mut etcd = EtcdScript::new();
    etcd.put_key("/upstreams/web/10.0.0.1:80", "{}");
    let mut store = MemoryStore::new(StoreRules::Envoy);
    let mut p = Poller::new(&config(ENVOY), Leadership::Singleton, 7);
    run(&mut p, &mut store, &etcd, 0);
    for (status, body) in
        [(503, "unavailable"), (200, "not json"), (200, r#"{"header":{}}"#), (200, r#"{"header":{}}"#)]
    {
        // Up to the next listing call (member polls may come first).
        let mut listed = false;
        while !listed {
            let at = p.poll_timeout().unwrap();
            p.handle_timeout(&mut store, at);
            for call in dispatches(&mut p) {
                let listing = call.upstream >= DISCOVERY_CALLER;
                listed |= listing;
                let (code, answer) =
                    if listing { (status, body.as_bytes().to_vec()) } else { (200, etcd.answer(&call.request)) };
                p.handle_response(at, call.upstream, call.id, HttpResponse::new(Some(code), &[], &answer));
            }
            p.flush(&mut store);
        }
        assert_eq!(cds(&store), ["web"], "after {status} {body}");
    }
    run(&mut p, &mut store, &EtcdScript::new(), 60_000);
    assert_eq!(cds(&store), ["web"], "an empty registry never removes every upstream");
    // Status and metrics show the entry: what it keeps, what failed.
    let records = DiscoveryRecord::read_all(&store);
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!((r.entry, r.upstreams, r.registry.prefix.as_str()), (0, 1, "/upstreams/"));
    assert_eq!(r.listings_failed, 2, "the 503 and the garbage");
    assert!(r.listings_ok >= 3);
    assert!(r.last_error.as_deref().unwrap_or_default().contains("not JSON"), "{r:?}");
    let metrics = metrics_reply(&store, 60_000).body;
    assert!(metrics.contains("upsync_discover_upstreams{entry=\"0\"} 1\n"), "{metrics}");
    assert!(metrics.contains("upsync_discover_listings_total{entry=\"0\",result=\"failed\"} 2\n"), "{metrics}");
    let status: serde_json::Value = serde_json::from_str(&status_reply(&store, None, None).body).unwrap();
    assert_eq!(status["discover"][0]["upstreams"], 1);
}

const NGINX: &str = r#"{"host":"nginx","lease_ms":3000,"discover":[{"registry":{"type":"etcd_v3","target":"127.0.0.1:2379","prefix":"/upstreams/"},
    "interval_ms":1000}]}"#;

#[test]
fn on_nginx_one_worker_lists_and_polls_the_found_upstreams_the_others_adopt_and_take_over() {
    let mut etcd = EtcdScript::new();
    etcd.put_key("/upstreams/web/10.0.0.1:80", "{}");
    etcd.put_key("/upstreams/api/10.0.1.1:80", "{}");
    let mut store = MemoryStore::new(StoreRules::NgxWasm);
    let cfg = config(NGINX);
    let mut a = Poller::new(&cfg, Leadership::Lease { me: 1, ttl_ms: 3000 }, 1);
    let mut b = Poller::new(&cfg, Leadership::Lease { me: 2, ttl_ms: 3000 }, 2);
    let mut calls = [(0, 0), (0, 0)];
    let step = |p: &mut Poller, store: &mut MemoryStore, etcd: &EtcdScript, now: u64, n: &mut (usize, usize)| {
        if p.poll_timeout().is_some_and(|d| d <= now) {
            p.handle_timeout(store, now);
        }
        let (l, r) = answer_all(p, etcd, now);
        n.0 += l;
        n.1 += r;
        p.flush(store);
    };
    for now in (0..=2500).step_by(10) {
        step(&mut a, &mut store, &etcd, now, &mut calls[0]);
        step(&mut b, &mut store, &etcd, now, &mut calls[1]);
    }
    // No watch on nginx: the listing reads the found upstreams for them.
    assert!(calls[0].0 >= 2 && calls[0].1 == 0, "worker a leads: {calls:?}");
    assert_eq!(calls[1], (0, 0), "worker b never calls the registry");
    assert_eq!(names::read(&store, &discovered_key(0)).unwrap().unwrap(), ["api", "web"]);
    assert_eq!(snapshot::read(&store, "web").unwrap().unwrap().members.len(), 1);
    assert_eq!(a.name(1), "web");
    assert_eq!(b.name(0), "api", "b adopted a's listing");
    // Worker a dies; b takes over once a's leases run out, and polls both.
    etcd.put_key("/upstreams/web/10.0.0.2:80", "{}");
    for now in (2510..=9000).step_by(10) {
        step(&mut b, &mut store, &etcd, now, &mut calls[1]);
    }
    assert!(calls[1].0 >= 2 && calls[1].1 == 0, "b took over: {calls:?}");
    assert_eq!(snapshot::read(&store, "web").unwrap().unwrap().members.len(), 2);
}

#[test]
fn the_etcd_v3_listing_is_the_safety_probe_of_every_found_upstream() {
    let json = r#"{"discover":[{"registry":{"type":"etcd_v3","target":"etcd","prefix":"/upstreams/","grpc_target":"etcd_grpc"},
        "interval_ms":1000,"defaults":{"interval_ms":600000}}]}"#;
    let mut etcd = EtcdScript::new();
    for name in ["a", "b", "c"] {
        etcd.put_key(&format!("/upstreams/{name}/10.0.0.1:80"), "{}");
    }
    let mut store = MemoryStore::new(StoreRules::Envoy);
    let mut p = Poller::new(&config(json), Leadership::Singleton, 7);
    run(&mut p, &mut store, &etcd, 0);
    // Idle: one listing a second and nothing else.
    for t in [1000, 2000] {
        p.handle_timeout(&mut store, t);
        let calls = dispatches(&mut p);
        assert_eq!(calls.len(), 1);
        assert!(calls[0].upstream >= DISCOVERY_CALLER);
        let body = etcd.answer(&calls[0].request);
        p.handle_response(t, calls[0].upstream, calls[0].id, HttpResponse::new(Some(200), &[], &body));
        assert!(dispatches(&mut p).is_empty(), "no upstream read while nothing moved");
    }
    // A change under b (which its watch would bring; there is none here):
    // the next listing sees b's mark move and reads b, and only b.
    etcd.put_key("/upstreams/b/10.0.0.2:80", "{}");
    p.handle_timeout(&mut store, 3000);
    let (listings, reads) = answer_all(&mut p, &etcd, 3000);
    assert_eq!(listings, 1);
    assert!((1..=2).contains(&reads), "b probed and read, a and c left alone: {reads} calls");
    p.flush(&mut store);
    assert_eq!(snapshot::read(&store, "b").unwrap().unwrap().members.len(), 2);
    assert_eq!(snapshot::read(&store, "a").unwrap().unwrap().version, 1, "a untouched");
}
