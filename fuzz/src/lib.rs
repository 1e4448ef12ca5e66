//! Fuzz targets for the plugin core, one `pub fn(&[u8])` per target.
//!
//! This file is the only one that calls into `upsync_wasm`: the libFuzzer
//! binaries (`fuzz_targets/*.rs`), the stable replay (`src/bin/replay.rs`),
//! the seed writer and the slow-input hunt all go through [`targets`],
//! [`raw`] and [`poller_input`]. When the core's module paths move, only
//! the `use` lines below change.
//!
//! A target panics when the core panics or breaks one of its stated
//! promises (checked with `assert!`): that is how libFuzzer and the
//! replay see a failure.

use upsync_wasm::sansio::config::{
    parse_server_config, Auth, Consistency, ConsulQuery, HostKind, PluginConfig, RegistryConfig, RegistrySpec, Secret,
};
use upsync_wasm::sansio::model::member::{
    parse_upsync_value, Host, HostPort, Member, MAX_FAILS, MAX_FAIL_TIMEOUT_S, MAX_WEIGHT,
};
use upsync_wasm::sansio::model::member_set::MemberSet;
use upsync_wasm::sansio::model::update::Source;
use upsync_wasm::sansio::pick::picker::UpstreamPicker;
use upsync_wasm::sansio::registry::consul::ConsulAdapter;
use upsync_wasm::sansio::registry::etcd_v2::EtcdV2Adapter;
use upsync_wasm::sansio::registry::etcd_v3::EtcdV3Adapter;
use upsync_wasm::sansio::registry::etcd_watch::{self, WatchMessage};
use upsync_wasm::sansio::registry::eureka::EurekaAdapter;
use upsync_wasm::sansio::registry::nacos::NacosAdapter;
use upsync_wasm::sansio::registry::{AdapterError, HttpResponse, MemberList, Poll, RegistryAdapter};
use upsync_wasm::sansio::serve::eds::{self, EdsReply};
use upsync_wasm::sansio::shared::health as passive;
use upsync_wasm::sansio::shared::keys;
use upsync_wasm::sansio::shared::lease;
use upsync_wasm::sansio::shared::snapshot::{self, Snapshot};
use upsync_wasm::sansio::shared::store::{self as shared, MemoryStore, SharedStore, StoreRules};
use upsync_wasm::sansio::sync::poller::{Action, Dispatch, Leadership, Poller};
use upsync_wasm::sansio::sync::watch::{WatchNews, WatchStream};
use upsync_wasm::sansio::util::base64;

/// A fuzz target: its name (of `fuzz_targets/<name>.rs` and the corpus
/// folder) and its function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("etcd_v3", targets::etcd_v3),
    ("etcd_v2", targets::etcd_v2),
    ("etcd_watch", targets::etcd_watch),
    ("consul_kv", targets::consul_kv),
    ("consul_catalog", targets::consul_catalog),
    ("consul_health", targets::consul_health),
    ("nacos", targets::nacos),
    ("eureka", targets::eureka),
    ("config", targets::config),
    ("snapshot", targets::snapshot),
    ("eds_request", targets::eds_request),
    ("upsync_value", targets::upsync_value),
    ("host_port", targets::host_port),
    ("base64", targets::base64),
    ("shared_data", targets::shared_data),
    ("poller", targets::poller),
];

/// The prefix the key/value targets read under (the fixtures' prefix).
pub const PREFIX: &str = "/upstreams/web/";
/// The upstream every store-reading target uses.
pub const UPSTREAM: &str = "web";
/// The Consul index every Consul target answers with.
const CONSUL_INDEX: &str = "5";
/// The etcd v2 index every etcd v2 target answers with.
const ETCD_INDEX: &str = "7";

/// Separates the parts of a `shared_data` input: never in JSON text.
pub const PART_SEPARATOR: u8 = 0xff;

/// The parsers alone, without checks: what the slow-input hunt times.
/// Each returns the number of members read (0 for errors).
pub mod raw {
    use super::*;

    pub fn etcd_v3(data: &[u8]) -> usize {
        EtcdV3Adapter::new(PREFIX).parse_fetch(data).map_or(0, |(l, _)| l.members.len())
    }

    pub fn etcd_v2(data: &[u8]) -> usize {
        let headers = [("X-Etcd-Index".to_string(), ETCD_INDEX.to_string())];
        let mut a = EtcdV2Adapter::new(PREFIX, 1000);
        count(a.parse(&HttpResponse::new(Some(200), &headers, data)))
    }

    pub fn consul(query: ConsulQueryKind, data: &[u8]) -> usize {
        let headers = [("X-Consul-Index".to_string(), CONSUL_INDEX.to_string())];
        let mut a = consul_adapter(query);
        count(a.parse(&HttpResponse::new(Some(200), &headers, data)))
    }

    pub fn nacos(data: &[u8]) -> usize {
        NacosAdapter::parse_list(data).map_or(0, |l| l.members.len())
    }

    pub fn eureka(data: &[u8]) -> usize {
        EurekaAdapter::parse_application(data).map_or(0, |l| l.members.len())
    }

    pub fn config(data: &[u8]) -> usize {
        PluginConfig::parse(data).map_or(0, |c| c.upstreams.len())
    }

    pub fn snapshot(data: &[u8]) -> usize {
        Snapshot::decode(&keys::snapshot_key(UPSTREAM), data).map_or(0, |s| s.members.len())
    }

    pub fn eds_request(data: &[u8]) -> usize {
        eds::parse_request(data).map_or(0, |r| r.resource_names.len())
    }

    pub fn etcd_watch(data: &[u8]) -> usize {
        match etcd_watch::decode_response(data) {
            Ok(r) => match r.message {
                WatchMessage::Events(n) => n,
                _ => 0,
            },
            _ => 0,
        }
    }

    /// EDS answered from a store holding `snapshot_bytes` as the snapshot of
    /// [`UPSTREAM`] (written by the plugin, so this is a cost, not an attack).
    pub fn eds_answer(snapshot_bytes: &[u8]) -> usize {
        let mut store = MemoryStore::new(StoreRules::Envoy);
        let _ = shared::put(&mut store, &keys::snapshot_key(UPSTREAM), snapshot_bytes);
        match handle_discovery(&store, br#"{"resource_names":["web"]}"#) {
            EdsReply::Assignment { body, .. } => body.len(),
            _ => 0,
        }
    }

    /// A picker (nginx) refreshed from a store holding `snapshot_bytes`,
    /// with `policy` (`round_robin`, `least_request`, `hash`), then one pick.
    pub fn picker(snapshot_bytes: &[u8], policy: &str) -> usize {
        let balance = if policy == "hash" {
            r#"{"policy":"hash","hash_key":"header:x-user"}"#.to_string()
        } else {
            format!(r#"{{"policy":"{policy}"}}"#)
        };
        let json = format!(
            r#"{{"host":"nginx","upstreams":[{{"name":"web","balance":{balance},
               "registry":{{"type":"etcd_v3","target":"127.0.0.1:2379","prefix":"/upstreams/web/"}}}}]}}"#
        );
        let Ok(cfg) = PluginConfig::parse(json.as_bytes()) else { return 0 };
        let Some(up) = cfg.upstreams.first() else { return 0 };
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        let _ = shared::put(&mut store, &keys::snapshot_key(UPSTREAM), snapshot_bytes);
        let version = br#"{"key":"upsync/v1/ver/web","version":1}"#;
        let _ = shared::put(&mut store, &keys::version_key(UPSTREAM), version);
        let mut p = UpstreamPicker::new(up, 1);
        p.refresh(&store, 0);
        p.pick(Some(b"user-1")).map_or(0, |x| x.index)
    }

    /// A store holding version 1 of [`UPSTREAM`] with `members` IPv4 members.
    pub fn store_with_members(members: u32) -> MemoryStore {
        let list = MemberSet::from_members((0..members).map(|i| {
            Member::new(
                HostPort { host: Host::Ipv4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), port: 80 },
                Default::default(),
            )
        }))
        .0;
        let mut store = MemoryStore::new(StoreRules::Envoy);
        let key = keys::snapshot_key(UPSTREAM);
        let snap = Snapshot { version: 1, source: Source::Registry, members: list };
        let _ = shared::put(&mut store, &key, &snap.encode(&key));
        let vkey = keys::version_key(UPSTREAM);
        let _ = shared::put(&mut store, &vkey, format!(r#"{{"key":"{vkey}","version":1}}"#).as_bytes());
        store
    }

    /// An EDS request answered from `store` (see [`store_with_members`]);
    /// the size of the answer body.
    pub fn eds_handle(store: &MemoryStore, request: &[u8]) -> usize {
        match handle_discovery(store, request) {
            EdsReply::Assignment { body, .. } => body.len(),
            _ => 0,
        }
    }

    /// The poller's whole main-thread work for one registry answer: a node
    /// for `kind` (an index into [`REGISTRY_KINDS`]) sends its first call,
    /// gets `body` as a 200, parses, diffs, publishes the snapshot and
    /// writes the status record. Returns the members published.
    pub fn poller_answer(kind: usize, body: &[u8]) -> usize {
        let name = REGISTRY_KINDS.get(kind).copied().unwrap_or("etcd_v3");
        let Ok(config) = PluginConfig::parse(poller_config(name, false).as_bytes()) else { return 0 };
        let mut node = Poller::new(&config, Leadership::Singleton, 1);
        let mut store = MemoryStore::new(StoreRules::Envoy);
        node.handle_timeout(&mut store, 0);
        let Some(d) = std::iter::from_fn(|| node.poll_action()).find_map(|a| match a {
            Action::Dispatch(d) => Some(d),
            _ => None,
        }) else {
            return 0;
        };
        let headers = [("X-Consul-Index".to_string(), "5".to_string()), ("X-Etcd-Index".to_string(), "7".to_string())];
        let response = HttpResponse { status: Some(200), headers: &headers, body, body_size: body.len() };
        node.handle_response(1, d.upstream, d.id, response);
        node.flush(&mut store);
        snapshot::read(&store, UPSTREAM).ok().flatten().map_or(0, |s| s.members.len())
    }

    fn count(p: Result<Poll, AdapterError>) -> usize {
        match p {
            Ok(Poll::Members(l)) => l.members.len(),
            _ => 0,
        }
    }
}

/// Which Consul API a Consul target reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsulQueryKind {
    Kv,
    Catalog,
    Health { passing_only: bool },
}

fn consul_adapter(kind: ConsulQueryKind) -> ConsulAdapter {
    let query = match kind {
        ConsulQueryKind::Kv => ConsulQuery::Kv { prefix: PREFIX.trim_start_matches('/').to_string() },
        ConsulQueryKind::Catalog => ConsulQuery::Catalog { service: UPSTREAM.into() },
        ConsulQueryKind::Health { passing_only } => ConsulQuery::Health { service: UPSTREAM.into(), passing_only },
    };
    ConsulAdapter::new(query, None, Consistency::Default, 30_000)
}

/// What every member list read from a registry promises: the structure of
/// [`check_set`] and attributes within their documented bounds (values
/// above them are refused).
fn check_members(members: &MemberSet) {
    for m in members.iter() {
        let a = &m.attrs;
        assert!(u64::from(a.weight) <= MAX_WEIGHT, "{}: weight {}", m.addr, a.weight);
        assert!(u64::from(a.max_fails) <= MAX_FAILS, "{}: max_fails {}", m.addr, a.max_fails);
        assert!(u64::from(a.fail_timeout) <= MAX_FAIL_TIMEOUT_S, "{}: fail_timeout {}", m.addr, a.fail_timeout);
    }
    check_set(members);
}

/// What every member set promises, wherever it came from (a snapshot
/// decoded from shared data too): sorted by address with one member per
/// address, ports in 1..=65535, addresses that read back as themselves,
/// and a snapshot that decodes to the same set.
fn check_set(members: &MemberSet) {
    let mut previous: Option<&HostPort> = None;
    for m in members.iter() {
        assert!(m.addr.port != 0, "member {} has port 0", m.addr);
        if let Some(p) = previous {
            assert!(p < &m.addr, "members not sorted and unique: {p} then {}", m.addr);
        }
        previous = Some(&m.addr);
        let text = m.addr.to_string();
        assert_eq!(text.parse::<HostPort>().as_ref(), Ok(&m.addr), "address {text:?} does not read back");
    }
    let key = keys::snapshot_key(UPSTREAM);
    let snap = Snapshot { version: 1, source: Source::Registry, members: members.clone() };
    assert_eq!(Snapshot::decode(&key, &snap.encode(&key)).as_ref(), Ok(&snap), "snapshot does not round-trip");
}

fn check_list(list: &MemberList) {
    check_members(&list.members);
}

fn check_poll(p: &Poll) {
    if let Poll::Members(l) = p {
        check_list(l);
    }
}

fn members_of(p: &Poll) -> Option<&MemberSet> {
    match p {
        Poll::Members(l) => Some(&l.members),
        _ => None,
    }
}

/// Reads `data` as UTF-8 text, lossily (config strings and keys are text).
fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

pub mod targets {
    use super::*;

    /// etcd v3 JSON gateway: a full range answer, a probe answer, and the
    /// adapter's read-then-probe cycle on the same body.
    pub fn etcd_v3(data: &[u8]) {
        let a = EtcdV3Adapter::new(PREFIX);
        let fetched = a.parse_fetch(data);
        if let Ok((list, _)) = &fetched {
            check_list(list);
        }
        let _ = a.parse_probe(data);
        let mut cycle = EtcdV3Adapter::new(PREFIX);
        let ok = HttpResponse::new(Some(200), &[], data);
        let first = cycle.parse(&ok);
        match (&first, &fetched) {
            // The first answer is a full read: the same members as parse_fetch.
            (Ok(p), Ok((list, _))) => assert_eq!(members_of(p), Some(&list.members)),
            (Err(e), Err(f)) => assert_eq!(e, f),
            (first, fetched) => panic!("parse and parse_fetch disagree: {first:?} / {fetched:?}"),
        }
        if first.is_ok() {
            // Then a probe: the same body is "unchanged" or "changed", never members.
            if let Ok(p) = cycle.parse(&ok) {
                assert!(!matches!(p, Poll::Members(_)), "a probe answer gave members");
            }
        }
    }

    /// etcd v2 keys API: a full read at index 7 (then watching from 8), a
    /// 404 answer, and the same body as a watch event.
    pub fn etcd_v2(data: &[u8]) {
        let headers = [("X-Etcd-Index".to_string(), ETCD_INDEX.to_string())];
        for status in [Some(200), Some(404), None] {
            let mut a = EtcdV2Adapter::new(PREFIX, 1000);
            let r = HttpResponse::new(status, &headers, data);
            let read = a.parse(&r);
            if let Ok(p) = &read {
                check_poll(p);
            }
            if let Ok(Poll::Members(_)) = read {
                // Watches from the index after the one the read was made at.
                assert!(a.request().path.ends_with("&waitIndex=8"), "{}", a.request().path);
                // In watching mode a hold that ran out is "unchanged", whatever the body.
                assert_eq!(a.parse(&HttpResponse { status: Some(504), ..r }), Ok(Poll::Unchanged));
                // Any answer to the watch is never a member list: at most "changed".
                if let Ok(p) = a.parse(&r) {
                    assert!(!matches!(p, Poll::Members(_)), "a watch answer gave members");
                }
            }
        }
    }

    /// etcd v3 gRPC `WatchResponse` decoding and the stream's reaction.
    pub fn etcd_watch(data: &[u8]) {
        let decoded = etcd_watch::decode_response(data);
        if let Ok(r) = &decoded {
            if let WatchMessage::Events(n) = r.message {
                assert!(n > 0);
            }
        }
        let mut w = WatchStream::new(4000);
        assert!(w.poll_open(0));
        let news = w.handle_message(data);
        match decoded {
            Ok(r) => match r.message {
                WatchMessage::Canceled(_) => assert_eq!(news, WatchNews::Canceled(r.watch_id)),
                WatchMessage::Other => assert_eq!(news, WatchNews::Nothing),
                WatchMessage::Created | WatchMessage::Events(_) => assert_eq!(news, WatchNews::Poll(r.watch_id)),
            },
            Err(_) => assert_eq!(news, WatchNews::PollAll),
        }
        assert!(w.is_open(), "a message never closes the stream (one watch may end, the others stay)");
    }

    fn consul(kind: ConsulQueryKind, data: &[u8]) -> Option<MemberSet> {
        let headers = [("X-Consul-Index".to_string(), CONSUL_INDEX.to_string())];
        let mut a = consul_adapter(kind);
        let r = HttpResponse::new(Some(200), &headers, data);
        let first = a.parse(&r);
        if let Ok(p) = &first {
            check_poll(p);
        }
        // The next call blocks on the index read; the same index again is "unchanged".
        assert!(a.request().path.contains("index=5"), "{}", a.request().path);
        assert_eq!(a.parse(&r), Ok(Poll::Unchanged), "same X-Consul-Index, not unchanged");
        first.ok().as_ref().and_then(members_of).cloned()
    }

    /// Consul KV (`?recurse`, base64 values, upsync key layout).
    pub fn consul_kv(data: &[u8]) {
        consul(ConsulQueryKind::Kv, data);
        // A 404 (prefix emptied) is "not found", whatever the body.
        let headers = [("X-Consul-Index".to_string(), CONSUL_INDEX.to_string())];
        let mut a = consul_adapter(ConsulQueryKind::Kv);
        let gone = a.parse(&HttpResponse::new(Some(404), &headers, data));
        assert_eq!(gone, Ok(Poll::NotFound));
    }

    /// Consul catalog (`/v1/catalog/service/<name>`, tags).
    pub fn consul_catalog(data: &[u8]) {
        consul(ConsulQueryKind::Catalog, data);
    }

    /// Consul health, both modes: the same instances either way; only
    /// `passing_only: false` marks members down for their checks.
    pub fn consul_health(data: &[u8]) {
        let passing = consul(ConsulQueryKind::Health { passing_only: true }, data);
        let all = consul(ConsulQueryKind::Health { passing_only: false }, data);
        if let (Some(p), Some(a)) = (passing, all) {
            assert_eq!(p.len(), a.len(), "the two health modes list different members");
            for (x, y) in p.iter().zip(a.iter()) {
                assert_eq!(x.addr, y.addr);
                let mut x_attrs = x.attrs;
                x_attrs.down = y.attrs.down;
                assert_eq!(x_attrs, y.attrs, "{}: attributes other than down differ", x.addr);
                assert!(!x.attrs.down || y.attrs.down, "{}: down when passing only, up otherwise", x.addr);
            }
        }
    }

    /// Nacos `instance/list` answers.
    pub fn nacos(data: &[u8]) {
        let parsed = NacosAdapter::parse_list(data);
        if let Ok(l) = &parsed {
            check_list(l);
        }
        let mut a = NacosAdapter::new(UPSTREAM, None, None);
        let via_trait = a.parse(&HttpResponse::new(Some(200), &[], data));
        assert_eq!(via_trait, parsed.map(Poll::Members));
    }

    /// Eureka `apps/<APP>` answers (JSON).
    pub fn eureka(data: &[u8]) {
        let parsed = EurekaAdapter::parse_application(data);
        if let Ok(l) = &parsed {
            check_list(l);
        }
        let mut a = EurekaAdapter::new(UPSTREAM);
        let via_trait = a.parse(&HttpResponse::new(Some(200), &[], data));
        assert_eq!(via_trait, parsed.map(Poll::Members));
    }

    /// The poller configuration (and the request-serving one): every
    /// accepted configuration keeps the documented bounds, keeps secrets out
    /// of `Debug`, and builds a poller node whose first calls are sane.
    pub fn config(data: &[u8]) {
        if let Ok(s) = parse_server_config(data) {
            assert!(s.eds_hold_ms <= 60_000);
        }
        let Ok(c) = PluginConfig::parse(data) else { return };
        // No upstreams only for an nginx pick-only filter (it picks from snapshots others publish).
        let pick_only = c.host == HostKind::Nginx && (c.pick.is_some() || c.pick_variable.is_some());
        assert!(c.upstreams.len() <= 10_000 && (!c.upstreams.is_empty() || pick_only));
        for (i, u) in c.upstreams.iter().enumerate() {
            assert!(!u.name.is_empty() && u.name.len() <= 64);
            assert!(u.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)), "{:?}", u.name);
            assert!(!c.upstreams.iter().take(i).any(|o| o.name == u.name), "duplicate name {:?}", u.name);
            assert!((10..=3_600_000).contains(&u.interval_ms));
            assert!((1..=600_000).contains(&u.timeout_ms));
            assert!(u.backoff_max_ms >= u.interval_ms && u.backoff_max_ms <= 3_600_000);
            assert!((1024..=256 * 1024 * 1024).contains(&u.max_body_bytes));
            let r = &u.registry;
            assert!(!r.targets.is_empty() && r.targets.iter().all(|t| !t.is_empty()));
            match (r.spec.prefix(), r.spec.service()) {
                (Some(prefix), None) => assert!(prefix.ends_with('/'), "prefix {prefix:?}"),
                (None, Some(service)) => assert!(!service.is_empty() && !service.contains('/')),
                other => panic!("a registry with prefix and service {other:?}"),
            }
            if c.host == HostKind::Nginx {
                assert!(r.spec.grpc_target().is_none());
            }
            let fallback = MemberSet::from_members(u.fallback.iter().cloned()).0;
            check_members(&fallback);
            check_secrets_hidden(r);
        }
        match &c.pick {
            Some(p) => {
                assert!(c.upstreams.is_empty() || c.upstreams.iter().any(|u| &u.name == p), "pick {p:?} is no upstream")
            }
            None => assert!(c.host == HostKind::Envoy || c.pick_variable.is_some(), "nginx without a pick"),
        }
        assert!(c.pick.is_none() || c.pick_variable.is_none(), "pick and pick_variable together");
        // The poller node built from it: its first calls go to a configured
        // target, carry the credentials and have a timeout.
        let leadership = match c.host {
            HostKind::Envoy => Leadership::Singleton,
            HostKind::Nginx => Leadership::Lease { me: 1, ttl_ms: c.lease_ms },
        };
        let mut node = Poller::new(&c, leadership, 7);
        let mut store = MemoryStore::new(StoreRules::Envoy);
        node.handle_timeout(&mut store, 0);
        let calls: Vec<Dispatch> = std::iter::from_fn(|| node.poll_action())
            .filter_map(|a| match a {
                Action::Dispatch(d) => Some(d),
                _ => None,
            })
            .collect();
        // nginx workers elect first: each upstream's lease is taken, then it polls.
        assert_eq!(calls.len(), c.upstreams.len(), "one first call per upstream");
        for d in &calls {
            let Some(u) = c.upstreams.get(d.upstream) else { panic!("dispatch for upstream {}", d.upstream) };
            check_dispatch(d, &u.registry.targets, &u.registry.auth_headers());
        }
    }

    /// Snapshot decoding: whatever decodes re-encodes to the same snapshot.
    pub fn snapshot(data: &[u8]) {
        let key = keys::snapshot_key(UPSTREAM);
        if let Ok(s) = Snapshot::decode(&key, data) {
            // Attribute bounds are the adapters' promise; a snapshot holds what they published.
            check_set(&s.members);
            assert_eq!(Snapshot::decode(&key, &s.encode(&key)).as_ref(), Ok(&s), "decode-encode-decode differs");
        }
    }

    /// An EDS `DiscoveryRequest`, parsed and answered from a store that
    /// holds version 1 of [`UPSTREAM`].
    pub fn eds_request(data: &[u8]) {
        let parsed = eds::parse_request(data);
        if let Ok(r) = &parsed {
            assert!(!r.resource_names.is_empty());
        }
        let mut store = MemoryStore::new(StoreRules::Envoy);
        let members = MemberSet::from_members(
            ["10.0.0.1:80", "[::1]:81", "db.internal:82"]
                .iter()
                .filter_map(|a| a.parse().ok().map(|addr| Member::new(addr, Default::default()))),
        )
        .0;
        let snap = Snapshot { version: 1, source: Source::Registry, members };
        let key = keys::snapshot_key(UPSTREAM);
        assert!(shared::put(&mut store, &key, &snap.encode(&key)).is_ok());
        let vkey = keys::version_key(UPSTREAM);
        assert!(shared::put(&mut store, &vkey, format!(r#"{{"key":"{vkey}","version":1}}"#).as_bytes()).is_ok());
        let reply = handle_discovery(&store, data);
        match (&parsed, &reply) {
            (Err(_), EdsReply::BadRequest(_)) => {}
            (Err(e), other) => panic!("bad request {e:?} answered {other:?}"),
            (Ok(r), EdsReply::Assignment { version, body, .. }) => {
                assert!(r.resource_names.iter().any(|n| n == UPSTREAM));
                assert_ne!(version, &r.version_info, "the version Envoy has, answered in full");
                let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
                assert_eq!(v.get("version_info").and_then(|x| x.as_str()), Some(version.as_str()));
            }
            (Ok(r), EdsReply::NotModified) => {
                let current = eds::current_version(&store, &r.resource_names);
                assert_eq!(current.as_deref(), Some(r.version_info.as_str()), "304 for a version Envoy lacks");
            }
            (Ok(r), EdsReply::Unavailable(_)) => assert!(!r.resource_names.iter().any(|n| n == UPSTREAM)),
            (Ok(_), EdsReply::BadRequest(e)) => panic!("a parsed request refused: {e}"),
        }
        let json = reply.to_json_reply();
        assert_eq!(json.status, reply.status());
    }

    /// An upsync KV value (`{"weight":1,...}`).
    pub fn upsync_value(data: &[u8]) {
        let (attrs, _) = parse_upsync_value(data);
        assert!(u64::from(attrs.weight) <= MAX_WEIGHT);
        assert!(u64::from(attrs.max_fails) <= MAX_FAILS);
        assert!(u64::from(attrs.fail_timeout) <= MAX_FAIL_TIMEOUT_S);
    }

    /// `host:port` as in keys and configuration, and a registry's host
    /// field with a port (the first two bytes).
    pub fn host_port(data: &[u8]) {
        let s = text(data);
        if let Ok(hp) = s.parse::<HostPort>() {
            assert!(hp.port != 0);
            assert_eq!(hp.to_string().parse::<HostPort>().as_ref(), Ok(&hp), "{hp} does not read back");
        }
        if let [a, b, rest @ ..] = data {
            let port = u16::from_le_bytes([*a, *b]);
            // Callers pass ports already checked to be in 1..=65535.
            if let (true, Ok(hp)) = (port != 0, HostPort::from_parts(&text(rest), port)) {
                assert_eq!(hp.port, port);
                assert_eq!(hp.to_string().parse::<HostPort>().as_ref(), Ok(&hp), "{hp} does not read back");
            }
        }
    }

    /// Standard base64 as etcd and Consul send it.
    pub fn base64(data: &[u8]) {
        if let Ok(bytes) = base64::decode(&text(data)) {
            assert_eq!(base64::decode(&base64::encode(&bytes)).as_ref(), Ok(&bytes));
        }
        assert_eq!(base64::decode(&base64::encode(data)).as_deref(), Ok(data), "encode-decode differs");
    }

    /// Everything that reads shared data back, on corrupt entries: the
    /// parts of the input (split on 0xff) are the index, status record,
    /// snapshot, version, lease and passive-health entries, and a status
    /// request path. (The plugin writes these itself; this checks that a
    /// corrupt or foreign entry is survived.)
    pub fn shared_data(data: &[u8]) {
        let mut parts = data.split(|b| *b == PART_SEPARATOR);
        let mut next = || parts.next().unwrap_or_default();
        let keys = [
            keys::index_key(),
            keys::status_key(UPSTREAM),
            keys::snapshot_key(UPSTREAM),
            keys::version_key(UPSTREAM),
            keys::lease_key(UPSTREAM),
            keys::health_key(UPSTREAM),
        ];
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        for key in &keys {
            let value = next();
            if !value.is_empty() {
                assert!(shared::put(&mut store, key, value).is_ok());
            }
        }
        let path = text(next());
        let filter = upsync_wasm::sansio::serve::status::upstream_filter(&path);
        for f in [None, Some(UPSTREAM), filter] {
            let reply = upsync_wasm::sansio::serve::status::status_reply(&store, f, None);
            assert!(reply.status == 200 || reply.status == 404, "status {}", reply.status);
            assert!(serde_json::from_str::<serde_json::Value>(&reply.body).is_ok(), "status body is not JSON");
        }
        let reply = handle_discovery(&store, br#"{"resource_names":["web"],"version_info":"0"}"#);
        if let EdsReply::Assignment { body, .. } = &reply {
            assert!(serde_json::from_str::<serde_json::Value>(body).is_ok(), "EDS body is not JSON");
        }
        let now = 1_000_000;
        let _ = passive::out_members(&store, UPSTREAM, now);
        // The picker of each policy over what is stored.
        for balance in [
            r#"{"policy":"round_robin"}"#,
            r#"{"policy":"least_request"}"#,
            r#"{"policy":"hash","hash_key":"header:x"}"#,
        ] {
            let json = format!(
                r#"{{"host":"nginx","upstreams":[{{"name":"web","balance":{balance},"fallback":["127.0.0.1:9"],
                   "registry":{{"type":"etcd_v3","target":"127.0.0.1:2379","prefix":"/upstreams/web/"}}}}]}}"#
            );
            let Some(up) = PluginConfig::parse(json.as_bytes()).ok().and_then(|c| c.upstreams.into_iter().next())
            else {
                panic!("the picker configuration is refused")
            };
            let mut p = UpstreamPicker::new(&up, 3);
            p.refresh(&store, now);
            if let Some(picked) = p.pick(Some(b"k")) {
                let _ = p.report(&mut store, &picked, Some(502), now);
                p.done(&picked);
            }
        }
        let _ = lease::elect(&mut store, UPSTREAM, 1, now, 3000);
    }

    /// The poller node driven through a sequence of events (see
    /// [`poller_input`]): registry answers made of the input, ticks, failed
    /// calls, watch messages. Checks after every event: a published list
    /// is never empty (`allow_empty` is off), never the fallback once the
    /// registry's list was published, its version never goes back and
    /// moves with every change; status never shows a credential; every
    /// call carries them.
    pub fn poller(data: &[u8]) {
        let Some((&head, mut rest)) = data.split_first() else { return };
        let kind = REGISTRY_KINDS.get(usize::from(head & 0x7f) % REGISTRY_KINDS.len()).copied().unwrap_or("etcd_v3");
        let nginx = head & 0x80 != 0;
        let Ok(config) = PluginConfig::parse(poller_config(kind, nginx).as_bytes()) else {
            panic!("the poller configuration for {kind} is refused")
        };
        let Some(up) = config.upstreams.first() else { return };
        let targets = up.registry.targets.clone();
        let auth = up.registry.auth_headers();
        let leadership = if nginx { Leadership::Lease { me: 1, ttl_ms: 3000 } } else { Leadership::Singleton };
        let mut node = Poller::new(&config, leadership, 11);
        let mut store = MemoryStore::new(if nginx { StoreRules::NgxWasm } else { StoreRules::Envoy });
        // A credential the input itself carries may come back in an error text.
        let input_has_secret = SECRETS.iter().any(|s| contains(data, s.as_bytes()));
        let mut seen = Published::default();
        let mut now: u64 = 0;
        let mut pending: Vec<Dispatch> = Vec::new();
        let mut steps = 0;
        while let Some((&op, tail)) = rest.split_first() {
            rest = tail;
            steps += 1;
            if steps > 64 {
                break;
            }
            let calls = match op % 6 {
                0 => {
                    let (dt, tail) = take(rest, 1);
                    rest = tail;
                    now += u64::from(dt.first().copied().unwrap_or(1)) * 250;
                    node.handle_timeout(&mut store, now);
                    drain(&mut node, &mut store)
                }
                1 | 2 => {
                    let (head, tail) = take(rest, 4);
                    rest = tail;
                    let [status_byte, index, lo, hi] = <[u8; 4]>::try_from(head).unwrap_or([0, 1, 0, 0]);
                    let (body, tail) = take(rest, usize::from(u16::from_le_bytes([lo, hi])));
                    rest = tail;
                    let status = STATUSES.get(usize::from(status_byte & 0x0f)).copied().flatten();
                    let mut headers = vec![
                        ("X-Consul-Index".to_string(), index.to_string()),
                        ("X-Etcd-Index".to_string(), index.to_string()),
                    ];
                    if status_byte & 0x10 != 0 {
                        headers.push(("Retry-After".to_string(), (index % 4).to_string()));
                    }
                    let oversize = status_byte & 0x20 != 0;
                    let body_size = if oversize { 9 << 20 } else { body.len() };
                    let body = if oversize { &[][..] } else { body };
                    let response = HttpResponse { status, headers: &headers, body, body_size };
                    match (op % 6, pending.pop()) {
                        (1, Some(d)) => {
                            node.handle_response(now, d.upstream, d.id, response);
                            drain(&mut node, &mut store)
                        }
                        (2, Some(d)) => {
                            // A stale or foreign answer: ignored, nothing published.
                            let before = store.get(&keys::snapshot_key(UPSTREAM)).ok();
                            node.handle_response(now, d.upstream, d.id.wrapping_add(1000), response);
                            let calls = drain(&mut node, &mut store);
                            assert_eq!(store.get(&keys::snapshot_key(UPSTREAM)).ok(), before);
                            pending.push(d);
                            calls
                        }
                        _ => Vec::new(),
                    }
                }
                3 => match pending.pop() {
                    Some(d) => {
                        node.handle_dispatch_failed(now, d.upstream, d.id, "fuzz: no such cluster");
                        drain(&mut node, &mut store)
                    }
                    None => Vec::new(),
                },
                4 => {
                    let (len, tail) = take(rest, 1);
                    let (message, tail) = take(tail, usize::from(len.first().copied().unwrap_or(0)));
                    rest = tail;
                    node.handle_watch_message(now, 0, message);
                    drain(&mut node, &mut store)
                }
                _ => {
                    node.handle_watch_closed(now, 0);
                    drain(&mut node, &mut store)
                }
            };
            for d in &calls {
                check_dispatch(d, &targets, &auth);
            }
            pending.extend(calls);
            seen.check(&store);
            if !input_has_secret {
                let reply = upsync_wasm::sansio::serve::status::status_reply(&store, None, None);
                for s in SECRETS {
                    assert!(!reply.body.contains(s), "status shows the credential {s:?}: {}", reply.body);
                }
            }
        }
        // EDS serves what was published, at its version.
        let reply = handle_discovery(&store, br#"{"resource_names":["web"]}"#);
        match (&seen.last, reply) {
            (Some(s), EdsReply::Assignment { version, .. }) => assert_eq!(version, s.version.to_string()),
            (None, EdsReply::Unavailable(_)) => {}
            (last, reply) => panic!("EDS answered {reply:?} with {last:?} published"),
        }
    }
}

/// The credentials of the poller target's configurations.
const SECRETS: [&str; 2] = ["fuzz-bearer-Q7x2m", "fuzz-consul-token-K9w4"];

/// The registry kinds the poller target picks from (the input's first byte).
pub const REGISTRY_KINDS: [&str; 7] =
    ["etcd_v3", "etcd_v2", "consul_kv", "consul_catalog", "consul_health", "nacos", "eureka"];

/// `:status` by the low four bits of a poller response's status byte.
const STATUSES: [Option<u16>; 16] = [
    Some(200),
    Some(200),
    Some(200),
    Some(200),
    Some(200),
    Some(404),
    Some(500),
    Some(503),
    Some(429),
    Some(504),
    Some(400),
    Some(403),
    Some(204),
    None,
    Some(200),
    Some(302),
];

fn poller_config(kind: &str, nginx: bool) -> String {
    let source = match kind {
        "etcd_v3" | "etcd_v2" => format!(r#""prefix":"{PREFIX}""#),
        "consul_kv" => r#""prefix":"upstreams/web/","token":"fuzz-consul-token-K9w4""#.to_string(),
        "consul_catalog" => r#""service":"web","token":"fuzz-consul-token-K9w4""#.to_string(),
        "consul_health" => r#""service":"web","token":"fuzz-consul-token-K9w4","passing_only":false"#.to_string(),
        _ => r#""service":"web""#.to_string(),
    };
    let grpc = if kind == "etcd_v3" && !nginx { r#","grpc_target":"etcd_grpc""# } else { "" };
    let (host, target) =
        if nginx { ("nginx", r#"["127.0.0.1:2379","127.0.0.2:2379"]"#) } else { ("envoy", r#""registry""#) };
    format!(
        r#"{{"host":"{host}","upstreams":[{{"name":"web","interval_ms":1000,"backoff_max_ms":4000,"fallback":["127.0.0.1:9"],
           "registry":{{"type":"{kind}","target":{target},{source}{grpc},"auth":{{"bearer":"fuzz-bearer-Q7x2m"}}}}}}]}}"#
    )
}

/// What the poller target has seen published so far.
#[derive(Default)]
struct Published {
    last: Option<Snapshot>,
    registry_seen: bool,
}

impl Published {
    fn check(&mut self, store: &dyn SharedStore) {
        let s = match snapshot::read(store, UPSTREAM) {
            Ok(Some(s)) => s,
            Ok(None) => {
                assert!(self.last.is_none(), "a published snapshot disappeared");
                return;
            }
            Err(e) => panic!("the plugin's own snapshot is unreadable: {e}"),
        };
        assert!(!s.members.is_empty(), "an empty list was published (allow_empty is off)");
        check_members(&s.members);
        if self.registry_seen {
            assert_eq!(s.source, Source::Registry, "the fallback was published after the registry's list");
        }
        if let Some(last) = &self.last {
            assert!(s.version >= last.version, "version went back from {} to {}", last.version, s.version);
            if s.version == last.version {
                assert_eq!(&s, last, "the list changed under the same version");
            } else {
                assert!(s.members != last.members || s.source != last.source, "a new version for the same list");
            }
        }
        self.registry_seen |= s.source == Source::Registry;
        self.last = Some(s);
    }
}

fn check_dispatch(d: &Dispatch, targets: &[String], auth: &[(String, String)]) {
    assert!(targets.contains(&d.target), "call to {:?}, not a configured target", d.target);
    assert!(d.timeout_ms > 0, "a call with timeout 0");
    for h in auth {
        assert!(d.request.headers.contains(h), "a call without its credential header {:?}", h.0);
    }
}

fn check_secrets_hidden(r: &RegistryConfig) {
    let mut blank = r.clone();
    let mut secrets: Vec<String> = Vec::new();
    if let RegistrySpec::Consul(c) = &mut blank.spec {
        if let Some(t) = c.token.take() {
            secrets.push(t.0);
            c.token = Some(Secret(String::new()));
        }
    }
    match &r.auth {
        Some(Auth::Bearer(s)) => {
            secrets.push(s.0.clone());
            blank.auth = Some(Auth::Bearer(Secret(String::new())));
        }
        Some(Auth::Basic { username, password }) => {
            secrets.push(password.0.clone());
            blank.auth = Some(Auth::Basic { username: username.clone(), password: Secret(String::new()) });
        }
        Some(Auth::Header { name, value }) => {
            secrets.push(value.0.clone());
            blank.auth = Some(Auth::Header { name: name.clone(), value: Secret(String::new()) });
        }
        None => {}
    }
    let shown = format!("{r:?}");
    let shown_blank = format!("{blank:?}");
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        // Only a secret that is not also spelled in a non-secret field can be told apart.
        if !shown_blank.contains(s.as_str()) {
            assert!(!shown.contains(s.as_str()), "Debug output shows the secret {s:?}");
        }
    }
}

fn take(data: &[u8], n: usize) -> (&[u8], &[u8]) {
    data.split_at(n.min(data.len()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// One event of a poller target input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Time moves on by `quarter_seconds` × 250 ms, then a tick.
    Tick(u8),
    /// The answer to the latest call: status by [`STATUSES`] index (0 is
    /// 200, 5 is 404, 6 is 500, 7 is 503), `X-Consul-Index` and
    /// `X-Etcd-Index` both `index`.
    Respond { status: u8, index: u8, body: Vec<u8> },
    /// The latest call could not be sent.
    DispatchFailed,
    /// An etcd Watch message (at most 255 bytes).
    Watch(Vec<u8>),
    /// The Watch stream closed.
    WatchClosed,
}

/// Encodes a poller target input: registry kind (an index into
/// [`REGISTRY_KINDS`]; nginx when `nginx`), then the events.
pub fn poller_input(kind: u8, nginx: bool, ops: &[Op]) -> Vec<u8> {
    let mut out = vec![(kind & 0x7f) | if nginx { 0x80 } else { 0 }];
    for op in ops {
        match op {
            Op::Tick(q) => out.extend_from_slice(&[0, *q]),
            Op::Respond { status, index, body } => {
                let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&[1, *status, *index]);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend(body.iter().take(usize::from(len)));
            }
            Op::DispatchFailed => out.push(3),
            Op::Watch(m) => {
                let len = u8::try_from(m.len()).unwrap_or(u8::MAX);
                out.extend_from_slice(&[4, len]);
                out.extend(m.iter().take(usize::from(len)));
            }
            Op::WatchClosed => out.push(5),
        }
    }
    out
}

/// What the host does with an EDS request body: parse, then answer.
fn handle_discovery(store: &dyn SharedStore, body: &[u8]) -> EdsReply {
    match eds::parse_request(body) {
        Ok(request) => eds::answer(store, &request),
        Err(e) => EdsReply::BadRequest(e),
    }
}

/// What a host does after every input: carries out the poller's actions
/// (the calls are returned; a watch stream is always stream 0 here, one
/// etcd target) and flushes.
fn drain(node: &mut Poller, store: &mut MemoryStore) -> Vec<Dispatch> {
    let mut calls = Vec::new();
    while let Some(action) = node.poll_action() {
        match action {
            Action::Dispatch(d) => calls.push(d),
            Action::OpenWatch(w) => assert_eq!(w.stream, 0),
            Action::SendWatch { stream, .. } => assert_eq!(stream, 0),
        }
    }
    node.flush(store);
    calls
}
