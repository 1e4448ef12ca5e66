//! `GET /upsync/status[?upstream=NAME]`: what the proxy currently
//! believes, per upstream (the successor of upsync's `upstream_show`).

use crate::sansio::model::member::Member;
use crate::sansio::serve::reply::LocalReply;
use crate::sansio::shared::status::{consistent_read, read_index, read_poller_memory, DiscoveryRecord, SyncView};
use crate::sansio::shared::store::SharedStore;
use serde::Serialize;
use serde_json::json;

/// The upstream named by `?upstream=NAME` in a request path, if any.
pub fn upstream_filter(path: &str) -> Option<&str> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|pair| pair.strip_prefix("upstream="))
}

/// Answers `GET /upsync/status[?upstream=NAME]`.
/// Answers `GET /upsync/status[?upstream=NAME]`; `worker_memory` is the
/// answering VM's linear memory (bytes), shown beside the poller's.
pub fn status_reply(store: &dyn SharedStore, filter: Option<&str>, worker_memory: Option<u64>) -> LocalReply {
    let names = read_index(store);
    let selected: Vec<&String> = match filter {
        Some(wanted) => {
            let hit: Vec<&String> = names.iter().filter(|n| n.as_str() == wanted).collect();
            if hit.is_empty() {
                let body = json!({"error": "unknown upstream", "upstream": wanted, "known": names});
                return LocalReply::json(404, body.to_string());
            }
            hit
        }
        None => names.iter().collect(),
    };
    let upstreams: Vec<UpstreamView<'_>> = selected.into_iter().map(|name| upstream_view(store, name)).collect();
    let memory = json!({ "poller": read_poller_memory(store), "worker": worker_memory });
    let discover = DiscoveryRecord::read_all(store);
    let body = if discover.is_empty() {
        json!({ "upstreams": upstreams, "wasm_memory_bytes": memory })
    } else {
        json!({ "upstreams": upstreams, "wasm_memory_bytes": memory, "discover": discover })
    };
    LocalReply::json(200, body.to_string())
}

/// One upstream as the status endpoint shows it.
#[derive(Serialize)]
struct UpstreamView<'a> {
    name: &'a str,
    /// `null` until a snapshot exists.
    version: Option<u64>,
    /// "registry", "fallback", or "none" before anything was published.
    source: &'static str,
    members: Vec<MemberView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_error: Option<String>,
    #[serde(flatten)]
    sync: Option<SyncView>,
}

#[derive(Serialize)]
struct MemberView {
    address: String,
    host: String,
    port: u16,
    weight: u32,
    max_fails: u32,
    fail_timeout: u32,
    down: bool,
    backup: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    region: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    zone: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    sub_zone: String,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    tags: serde_json::Map<String, serde_json::Value>,
}

impl From<&Member> for MemberView {
    fn from(m: &Member) -> Self {
        MemberView {
            address: m.addr.to_string(),
            host: m.addr.host.bare(),
            port: m.addr.port,
            weight: m.attrs.weight,
            max_fails: m.attrs.max_fails,
            fail_timeout: m.attrs.fail_timeout,
            down: m.attrs.down,
            backup: m.attrs.backup,
            region: m.meta.locality.region.clone(),
            zone: m.meta.locality.zone.clone(),
            sub_zone: m.meta.locality.sub_zone.clone(),
            tags: crate::sansio::shared::snapshot::tag_object(&m.meta.tags),
        }
    }
}

fn upstream_view<'a>(store: &dyn SharedStore, name: &'a str) -> UpstreamView<'a> {
    let (record, snap) = consistent_read(store, name);
    let (version, source, members, snapshot_error) = match snap {
        Ok(Some(s)) => (Some(s.version), s.source.as_str(), s.members.iter().map(MemberView::from).collect(), None),
        Ok(None) => (None, "none", Vec::new(), None),
        Err(e) => (None, "none", Vec::new(), Some(e.to_string())),
    };
    UpstreamView { name, version, source, members, snapshot_error, sync: record.map(|r| r.sync) }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::config::PluginConfig;
    use crate::sansio::model::member::{Member, MemberAttrs};
    use crate::sansio::model::member_set::MemberSet;
    use crate::sansio::model::update::{Published, Source};
    use crate::sansio::shared::keys::status_key;
    use crate::sansio::shared::snapshot;
    use crate::sansio::shared::status::{write_index, StatusRecord, SyncStats};
    use crate::sansio::shared::store::StoreError;
    use crate::sansio::shared::store::{MemoryStore, StoreRules};
    use serde_json::Value;
    use std::cell::{Cell, RefCell};

    fn setup() -> MemoryStore {
        let cfg = PluginConfig::parse(
            br#"{"upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"etcd","prefix":"/u/web/"}},
                              {"name":"api","registry":{"type":"etcd_v3","target":"etcd","prefix":"/u/api/"}}]}"#,
        )
        .unwrap();
        let mut store = MemoryStore::new(StoreRules::Envoy);
        let names: Vec<String> = cfg.upstreams.iter().map(|u| u.name.clone()).collect();
        write_index(&mut store, &names).unwrap();
        let web = &cfg.upstreams[0];
        // What the poller writes after one call answered HTTP 500.
        let stats = SyncStats {
            syncs_failed: 1,
            consecutive_failures: 1,
            last_error: Some("registry answered HTTP 500; keeping the last good list, next try in 700 ms".into()),
            last_error_ms: Some(5),
            ..Default::default()
        };
        StatusRecord::new("web", &web.registry, "backoff", None, stats).write(&mut store).unwrap();
        let members = MemberSet::from_members(vec![Member {
            addr: "[::1]:8080".parse().unwrap(),
            attrs: MemberAttrs { weight: 5, ..Default::default() },
            meta: Default::default(),
        }])
        .0;
        snapshot::publish(&mut store, "web", &Published { members, source: Source::Registry }).unwrap();
        store
    }

    #[test]
    fn shows_every_upstream_with_members_and_counters() {
        let store = setup();
        let reply = status_reply(&store, None, None);
        assert_eq!(reply.status, 200);
        let v: Value = serde_json::from_str(&reply.body).unwrap();
        let ups = v["upstreams"].as_array().unwrap();
        assert_eq!(ups.len(), 2);
        let web = &ups[0];
        assert_eq!(web["name"], "web");
        assert_eq!(web["version"], 1);
        assert_eq!(web["source"], "registry");
        assert_eq!(web["registry"]["type"], "etcd_v3");
        assert_eq!(web["members"][0]["address"], "[::1]:8080");
        assert_eq!(web["members"][0]["host"], "::1");
        assert_eq!(web["members"][0]["port"], 8080);
        assert_eq!(web["members"][0]["weight"], 5);
        assert_eq!(web["syncs_failed"], 1);
        assert!(web["last_error"].as_str().unwrap().contains("HTTP 500"));
        assert_eq!(ups[1]["source"], "none");
        assert!(ups[1]["version"].is_null());
    }

    /// A write by the poller, due before the store's read number `.0`.
    type PendingWrite = (usize, Box<dyn FnOnce(&mut MemoryStore)>);

    /// A store that lets the poller's writes happen between the reads of
    /// one status answer, as a poller on another thread can.
    struct InterleavedStore {
        inner: RefCell<MemoryStore>,
        reads: Cell<usize>,
        writes: RefCell<Vec<PendingWrite>>,
    }

    impl SharedStore for InterleavedStore {
        fn get(&self, key: &str) -> Result<crate::sansio::shared::store::Entry, StoreError> {
            let n = self.reads.get();
            self.reads.set(n + 1);
            let due: Vec<_> = {
                let mut w = self.writes.borrow_mut();
                let (now, later) = w.drain(..).partition(|(at, _)| *at == n);
                *w = later;
                now
            };
            for (_, write) in due {
                write(&mut self.inner.borrow_mut());
            }
            self.inner.borrow().get(key)
        }
        fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            self.inner.get_mut().set(key, value, cas)
        }
    }

    #[test]
    fn a_status_record_is_never_shown_with_members_older_than_it() {
        // The poller's next sync: weight 5 -> 7 and a bad entry, written as
        // it does, snapshot first, record second, each at any read.
        for snapshot_at in 0..12 {
            for record_at in snapshot_at..12 {
                let store = InterleavedStore {
                    inner: RefCell::new(setup()),
                    reads: Cell::new(0),
                    writes: RefCell::new(Vec::new()),
                };
                let old = StatusRecord::read(&*store.inner.borrow(), "web").unwrap();
                store.reads.set(0);
                let members = MemberSet::from_members(vec![Member {
                    addr: "[::1]:8080".parse().unwrap(),
                    attrs: MemberAttrs { weight: 7, ..Default::default() },
                    meta: Default::default(),
                }])
                .0;
                let update = Published { members, source: Source::Registry };
                let mut new = old.clone();
                new.sync.stats.bad_entries = 1;
                store.writes.borrow_mut().push((
                    snapshot_at,
                    Box::new(move |s: &mut MemoryStore| {
                        snapshot::publish(s, "web", &update).unwrap();
                    }),
                ));
                store.writes.borrow_mut().push((
                    record_at,
                    Box::new(move |s: &mut MemoryStore| {
                        snapshot::put_json(s, &status_key("web"), &new).unwrap();
                    }),
                ));
                let v: Value = serde_json::from_str(&status_reply(&store, Some("web"), None).body).unwrap();
                let web = &v["upstreams"][0];
                let (record_new, members_new) = (web["bad_entries"] == 1, web["members"][0]["weight"] == 7);
                let at = (snapshot_at, record_at);
                assert!(!record_new || members_new, "record newer than its members with writes at {at:?}: {web}");
                // Reads 0..=3 are the index, record, snapshot and record
                // again: writes landing before the last of them are seen.
                if record_at <= 3 {
                    assert!(record_new && members_new, "writes at {at:?} not both seen: {web}");
                }
            }
        }
    }

    #[test]
    fn filters_by_name_and_404s_unknown_names() {
        let store = setup();
        assert_eq!(upstream_filter("/upsync/status?upstream=api"), Some("api"));
        assert_eq!(upstream_filter("/upsync/status?x=1&upstream=web"), Some("web"));
        assert_eq!(upstream_filter("/upsync/status"), None);
        let one: Value = serde_json::from_str(&status_reply(&store, Some("api"), None).body).unwrap();
        assert_eq!(one["upstreams"].as_array().unwrap().len(), 1);
        assert_eq!(one["upstreams"][0]["name"], "api");
        let missing = status_reply(&store, Some("nope"), None);
        assert_eq!(missing.status, 404);
        let v: Value = serde_json::from_str(&missing.body).unwrap();
        assert_eq!(v["upstream"], "nope");
        assert_eq!(v["known"], json!(["web", "api"]));
    }
}
