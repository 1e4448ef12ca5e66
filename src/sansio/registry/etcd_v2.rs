//! etcd v2 (`/v2/keys`), upsync key layout.
//!
//! A full read (`GET <dir>?recursive=true`) gives every member and the store
//! index (`X-Etcd-Index`). Then a long poll (`?wait=true&recursive=true&
//! waitIndex=<index+1>`) answers with the first change under the directory
//! at or after that index: one key set, updated, created or swapped (its new
//! value), or deleted, expired or compare-and-deleted. That change is applied
//! to the keys of the last read ([`KvMembers`], the same reading of a key as
//! a full read's), and the next long poll waits from the index after it: as
//! each answer is the first change after the previous one, none is skipped.
//! Anything else leads to a full re-read, as nginx-upsync-module does on
//! every change: an event for a directory (a recursive delete, a new
//! folder), a key outside the directory, an index that does not follow on,
//! an action it does not know. etcd keeps only the last 1000 events: a
//! waitIndex older than that gets errorCode 401, answered by a full re-read
//! too.
use crate::sansio::registry::kv_layout::KvMembers;
use crate::sansio::registry::{AdapterError, HttpRequest};
use crate::sansio::registry::{HttpResponse, MemberList, ParentNews, Poll, RegistryAdapter};
use crate::sansio::util::url;
use serde_json::Value;

/// etcd v2 error codes this adapter acts on.
const KEY_NOT_FOUND: i64 = 100;
const EVENT_INDEX_CLEARED: i64 = 401;

#[derive(Debug, Clone)]
pub struct EtcdV2Adapter {
    prefix: String,
    /// `/v2/keys/<dir>` with the directory percent-encoded.
    keys_path: String,
    wait_ms: u64,
    /// The store index of the last full read, or of the last change
    /// applied since; `None` → the next call is a full read.
    index: Option<u64>,
    /// The keys as of `index` (empty when the directory is not there).
    keys: Option<KvMembers>,
}

impl EtcdV2Adapter {
    pub fn new(prefix: &str, wait_ms: u64) -> Self {
        let dir = prefix.trim_end_matches('/');
        EtcdV2Adapter {
            prefix: prefix.to_string(),
            keys_path: format!("/v2/keys{}", url::encode(dir, true)),
            wait_ms,
            index: None,
            keys: None,
        }
    }

    /// Applies the change a long-poll answer describes to the keys; `None`
    /// when it cannot be (the keys must be read again).
    fn apply_change(&mut self, event: &V2Event) -> Option<MemberList> {
        let waited_from = self.index?.checked_add(1)?;
        let keys = self.keys.as_mut()?;
        if event.dir || !event.key.starts_with(&self.prefix) {
            return None;
        }
        let index = event.modified_index.filter(|i| *i >= waited_from)?;
        match event.change? {
            V2Change::Put => keys.put(event.key.as_bytes(), event.value.as_deref().unwrap_or_default().as_bytes(), 0),
            V2Change::Delete => {
                keys.delete(event.key.as_bytes());
            }
        }
        self.index = Some(index);
        Some(keys.list())
    }
}

/// What an etcd v2 long-poll answer says happened, read from its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Event {
    /// `None`: an action this adapter does not know.
    pub change: Option<V2Change>,
    pub key: String,
    pub dir: bool,
    pub value: Option<String>,
    pub modified_index: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V2Change {
    /// set, update, create, compareAndSwap: the key holds `value`.
    Put,
    /// delete, expire, compareAndDelete: the key is gone.
    Delete,
}

impl V2Event {
    /// `None` when the body has no `node` with a `key`.
    pub fn from_body(body: &Value) -> Option<V2Event> {
        let node = body.get("node")?;
        let change = match body.get("action").and_then(Value::as_str) {
            Some("set" | "update" | "create" | "compareAndSwap") => Some(V2Change::Put),
            Some("delete" | "expire" | "compareAndDelete") => Some(V2Change::Delete),
            _ => None,
        };
        Some(V2Event {
            change,
            key: node.get("key").and_then(Value::as_str)?.to_string(),
            dir: node.get("dir").and_then(Value::as_bool) == Some(true),
            value: node.get("value").and_then(Value::as_str).map(str::to_string),
            modified_index: node.get("modifiedIndex").and_then(Value::as_u64),
        })
    }
}

/// A long poll's hold ran out with no event: the proxy ends the call with a
/// 504, or with no status when etcd had already sent its headers, or (on
/// ngx_wasm_module, measured) with etcd's 200 and no body at all: an event
/// always has a JSON body.
pub(crate) fn long_poll_ran_out(response: &HttpResponse<'_>) -> bool {
    let cut_after_headers = response.status == Some(200) && response.body_size == 0;
    matches!(response.status, None | Some(504)) || cut_after_headers
}

pub(crate) fn etcd_index(response: &HttpResponse<'_>, body: &Value) -> Option<u64> {
    response
        .header("x-etcd-index")
        .and_then(|v| v.trim().parse().ok())
        .or_else(|| body.get("index").and_then(Value::as_u64))
}

/// Every leaf (non-directory) node under `node`, depth first.
/// Recursion is bounded: serde_json refuses documents nested deeper than 128.
pub(crate) fn leaves(node: &Value, out: &mut Vec<(String, Vec<u8>)>) -> Result<(), AdapterError> {
    let Some(nodes) = node.get("nodes") else {
        return Ok(());
    };
    let nodes = nodes.as_array().ok_or_else(|| AdapterError::BadShape("\"nodes\" is not an array".into()))?;
    for n in nodes {
        if n.get("dir").and_then(Value::as_bool) == Some(true) {
            leaves(n, out)?;
            continue;
        }
        let key =
            n.get("key").and_then(Value::as_str).ok_or_else(|| AdapterError::BadShape("node without key".into()))?;
        let value = n.get("value").and_then(Value::as_str).unwrap_or_default();
        out.push((key.to_string(), value.as_bytes().to_vec()));
    }
    Ok(())
}

impl RegistryAdapter for EtcdV2Adapter {
    fn request(&self) -> HttpRequest {
        let path = match self.index {
            None => format!("{}?recursive=true", self.keys_path),
            Some(i) => format!("{}?wait=true&recursive=true&waitIndex={}", self.keys_path, i.saturating_add(1)),
        };
        HttpRequest { method: "GET", path, headers: Vec::new(), body: Vec::new() }
    }

    fn parse(&mut self, response: &HttpResponse<'_>) -> Result<Poll, AdapterError> {
        let watching = self.index.is_some();
        if watching && long_poll_ran_out(response) {
            return Ok(Poll::Unchanged);
        }
        let body: Value = match serde_json::from_slice(response.body) {
            Ok(v) => v,
            // Not etcd's JSON error: say what the proxy answered (503 when
            // etcd is unreachable) rather than "not JSON".
            Err(e) => {
                return Err(match response.status {
                    Some(s) if s != 200 => AdapterError::Status(s),
                    _ => AdapterError::NotJson(e.to_string()),
                })
            }
        };
        if let Some(code) = body.get("errorCode").and_then(Value::as_i64) {
            let message = body.get("message").and_then(Value::as_str).unwrap_or("(no message)");
            return match code {
                KEY_NOT_FOUND if !watching => {
                    // No directory yet: an empty list, watched from here.
                    self.index = etcd_index(response, &body);
                    self.keys = Some(KvMembers::new(&self.prefix));
                    Ok(Poll::NotFound)
                }
                EVENT_INDEX_CLEARED => {
                    self.reset();
                    Ok(Poll::Changed)
                }
                _ => Err(AdapterError::Registry(format!("errorCode {code}: {message}"))),
            };
        }
        response.expect_ok()?;
        if watching {
            // A change under the directory: applied, or everything read again.
            return Ok(match V2Event::from_body(&body).and_then(|event| self.apply_change(&event)) {
                Some(list) => Poll::Delta(list),
                None => {
                    self.reset();
                    Poll::Changed
                }
            });
        }
        let node = body.get("node").ok_or_else(|| AdapterError::BadShape("no \"node\"".into()))?;
        let mut entries = Vec::new();
        leaves(node, &mut entries)?;
        let index = etcd_index(response, &body)
            .ok_or_else(|| AdapterError::BadShape("no X-Etcd-Index header: cannot watch from here".into()))?;
        let keys = KvMembers::from_entries(&self.prefix, entries.into_iter().map(|(k, v)| (k.into_bytes(), v, 0)));
        let list = keys.list();
        self.index = Some(index);
        self.keys = Some(keys);
        Ok(Poll::Members(list))
    }

    fn reset(&mut self) {
        self.index = None;
        self.keys = None;
    }

    fn fed(&mut self, news: ParentNews<'_>) -> Option<Poll> {
        match news {
            ParentNews::Read { index, entries } => {
                let keys =
                    KvMembers::from_entries(&self.prefix, entries.into_iter().map(|(k, v, _)| (k.into_bytes(), v, 0)));
                let list = keys.list();
                self.index = Some(index);
                self.keys = Some(keys);
                Some(Poll::Members(list))
            }
            ParentNews::Change(event) => match self.apply_change(event) {
                Some(list) => Some(Poll::Delta(list)),
                None => {
                    self.reset();
                    None
                }
            },
        }
    }

    fn hold_ms(&self) -> u64 {
        if self.index.is_some() {
            self.wait_ms
        } else {
            0
        }
    }

    fn long_polls(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const FULL: &[u8] = include_bytes!("../../../tests/fixtures/etcd_v2/get_recursive.json");
    const MISSING: &[u8] = include_bytes!("../../../tests/fixtures/etcd_v2/key_not_found.json");
    const EVENT: &[u8] = include_bytes!("../../../tests/fixtures/etcd_v2/watch_event.json");
    const CLEARED: &[u8] = include_bytes!("../../../tests/fixtures/etcd_v2/index_cleared.json");

    fn answer<'a>(status: Option<u16>, index: &'a [(String, String)], body: &'a [u8]) -> HttpResponse<'a> {
        HttpResponse::new(status, index, body)
    }

    fn idx(n: u64) -> Vec<(String, String)> {
        vec![("X-Etcd-Index".to_string(), n.to_string())]
    }

    #[test]
    fn reads_then_watches_from_the_next_index() {
        let mut a = EtcdV2Adapter::new("/upstreams/web/", 50_000);
        assert_eq!(a.request().path, "/v2/keys/upstreams/web?recursive=true");
        assert_eq!(a.hold_ms(), 0);
        let h = idx(9);
        let Ok(Poll::Members(list)) = a.parse(&answer(Some(200), &h, FULL)) else { panic!("members expected") };
        let got: Vec<_> = list.members.iter().map(|m| (m.addr.to_string(), m.attrs.weight, m.attrs.down)).collect();
        assert_eq!(
            got,
            [
                ("127.0.0.1:9001".to_string(), 1, false),
                ("127.0.0.1:9002".to_string(), 3, false),
                ("127.0.0.1:9003".to_string(), 1, true)
            ]
        );
        assert_eq!(list.problems.len(), 1, "{:?}", list.problems);
        assert_eq!(a.request().path, "/v2/keys/upstreams/web?wait=true&recursive=true&waitIndex=10");
        assert_eq!(a.hold_ms(), 50_000);

        // Hold ran out: unchanged, watch again from the same index.
        assert_eq!(a.parse(&answer(Some(504), &[], b"")), Ok(Poll::Unchanged));
        assert_eq!(a.parse(&answer(None, &[], b"")), Ok(Poll::Unchanged));
        assert_eq!(a.parse(&answer(Some(200), &[], b"")), Ok(Poll::Unchanged), "nginx: 200, no body");
        assert!(a.request().path.ends_with("waitIndex=10"));

        // An event older than the index waited from (8 < 10) does not
        // follow on from the read: full re-read.
        assert_eq!(a.parse(&answer(Some(200), &idx(11), EVENT)), Ok(Poll::Changed));
        assert_eq!(a.request().path, "/v2/keys/upstreams/web?recursive=true");
    }

    fn event(action: &str, node: Value) -> Vec<u8> {
        serde_json::json!({"action": action, "node": node}).to_string().into_bytes()
    }

    fn leaf(key: &str, value: Option<&str>, index: u64) -> Value {
        let mut n = serde_json::json!({"key": key, "modifiedIndex": index, "createdIndex": index});
        if let Some(v) = value {
            n["value"] = Value::from(v);
        }
        n
    }

    fn addrs(p: Result<Poll, AdapterError>) -> Vec<(String, u32)> {
        match p {
            Ok(Poll::Delta(l)) => l.members.iter().map(|m| (m.addr.to_string(), m.attrs.weight)).collect(),
            other => panic!("a delta expected, got {other:?}"),
        }
    }

    #[test]
    fn each_long_poll_event_is_applied_and_the_next_one_waits_from_after_it() {
        let mut a = EtcdV2Adapter::new("/upstreams/web/", 50_000);
        a.parse(&answer(Some(200), &idx(9), FULL)).unwrap();
        let w = "/upstreams/web/";
        let h = idx(12);
        let set = event("set", leaf(&format!("{w}127.0.0.1:9004"), Some(r#"{"weight":5}"#), 10));
        let got = addrs(a.parse(&answer(Some(200), &h, &set)));
        assert_eq!(
            got,
            [
                ("127.0.0.1:9001".into(), 1),
                ("127.0.0.1:9002".into(), 3),
                ("127.0.0.1:9003".into(), 1),
                ("127.0.0.1:9004".to_string(), 5)
            ]
        );
        assert!(a.request().path.ends_with("waitIndex=11"), "{}", a.request().path);
        // The events of the other actions, each at a later index.
        let steps = [
            ("update", leaf(&format!("{w}127.0.0.1:9004"), Some(r#"{"weight":6}"#), 11), 4, 6),
            ("compareAndSwap", leaf(&format!("{w}127.0.0.1:9004"), Some(r#"{"weight":7}"#), 13), 4, 7),
            ("create", leaf(&format!("{w}127.0.0.1:9005"), Some("{}"), 14), 5, 7),
            ("expire", leaf(&format!("{w}127.0.0.1:9005"), None, 15), 4, 7),
            ("compareAndDelete", leaf(&format!("{w}127.0.0.1:9001"), None, 16), 3, 7),
            ("delete", leaf(&format!("{w}127.0.0.1:9004"), None, 20), 2, 0),
        ];
        for (action, node, members, weight_9004) in steps {
            let got = addrs(a.parse(&answer(Some(200), &h, &event(action, node))));
            assert_eq!(got.len(), members, "{action}: {got:?}");
            let w9004 = got.iter().find(|(m, _)| m == "127.0.0.1:9004").map_or(0, |(_, w)| *w);
            assert_eq!(w9004, weight_9004, "{action}");
        }
        assert!(a.request().path.ends_with("waitIndex=21"));
        // A bad value is a bad entry, as in a full read.
        let Ok(Poll::Delta(list)) =
            a.parse(&answer(Some(200), &h, &event("set", leaf(&format!("{w}nonsense2"), Some("{}"), 21))))
        else {
            panic!()
        };
        assert_eq!(list.members.len(), 2);
        assert_eq!(list.problems.iter().filter(|p| p.skipped).count(), 2, "{:?}", list.problems);
    }

    #[test]
    fn an_event_that_cannot_be_applied_reads_everything_again() {
        let w = "/upstreams/web/";
        let cases = [
            (
                "a folder",
                event("delete", serde_json::json!({"key": format!("{w}sub"), "dir": true, "modifiedIndex": 10})),
            ),
            ("outside the directory", event("set", leaf("/upstreams/other/1.2.3.4:80", Some("{}"), 10))),
            ("the directory itself", event("delete", leaf("/upstreams/web", None, 10))),
            ("an index before the one waited from", event("set", leaf(&format!("{w}1.2.3.4:80"), Some("{}"), 9))),
            ("no index", event("set", serde_json::json!({"key": format!("{w}1.2.3.4:80"), "value": "{}"}))),
            ("an unknown action", event("get", leaf(&format!("{w}1.2.3.4:80"), Some("{}"), 10))),
            ("no node", br#"{"action":"set"}"#.to_vec()),
        ];
        for (what, body) in cases {
            let mut a = EtcdV2Adapter::new("/upstreams/web/", 1000);
            a.parse(&answer(Some(200), &idx(9), FULL)).unwrap();
            assert_eq!(a.parse(&answer(Some(200), &idx(10), &body)), Ok(Poll::Changed), "{what}");
            assert_eq!(a.request().path, "/v2/keys/upstreams/web?recursive=true", "{what}");
        }
    }

    #[test]
    fn a_directory_that_appears_is_followed_from_nothing() {
        let mut a = EtcdV2Adapter::new("/upstreams/web/", 1000);
        assert_eq!(a.parse(&answer(Some(404), &idx(4), MISSING)), Ok(Poll::NotFound));
        let set = event("set", leaf("/upstreams/web/10.0.0.1:80", Some("{}"), 5));
        assert_eq!(addrs(a.parse(&answer(Some(200), &idx(4), &set))), [("10.0.0.1:80".to_string(), 1)]);
    }

    #[test]
    fn cleared_history_and_missing_directory() {
        let mut a = EtcdV2Adapter::new("/upstreams/web/", 1000);
        assert_eq!(a.parse(&answer(Some(404), &idx(4), MISSING)), Ok(Poll::NotFound));
        assert!(a.request().path.ends_with("waitIndex=5"), "watches for the directory to appear");
        assert_eq!(a.parse(&answer(Some(400), &idx(2000), CLEARED)), Ok(Poll::Changed));
        assert!(a.request().path.ends_with("?recursive=true"));
    }

    #[test]
    fn errors_are_refused() {
        let mut a = EtcdV2Adapter::new("/p/", 1000);
        assert!(matches!(a.parse(&answer(Some(200), &idx(1), b"<html>")), Err(AdapterError::NotJson(_))));
        assert_eq!(a.parse(&answer(Some(503), &[], b"no healthy upstream")), Err(AdapterError::Status(503)));
        assert!(matches!(a.parse(&answer(Some(200), &[], FULL)), Err(AdapterError::BadShape(_))), "no index");
        assert!(matches!(a.parse(&answer(Some(500), &idx(1), b"{}")), Err(AdapterError::Status(500))));
        assert!(matches!(a.parse(&answer(None, &[], b"")), Err(AdapterError::NotJson(_))), "cut read");
        let other = br#"{"errorCode":300,"message":"Raft Internal Error","index":3}"#;
        assert!(matches!(a.parse(&answer(Some(500), &idx(3), other)), Err(AdapterError::Registry(_))));
        // Nesting deeper than serde_json's limit is refused, not recursed into.
        assert!(matches!(a.parse(&answer(Some(200), &idx(1), nested(70).as_bytes())), Err(AdapterError::NotJson(_))));
        let Ok(Poll::Members(list)) = a.parse(&answer(Some(200), &idx(1), nested(40).as_bytes())) else { panic!() };
        assert_eq!(list.problems.len(), 1, "the leaf /p/x is not host:port");
    }

    fn nested(depth: usize) -> String {
        let mut s = r#"{"key":"/p/x","value":"{}"}"#.to_string();
        for _ in 0..depth {
            s = format!(r#"{{"key":"/p","dir":true,"nodes":[{s}]}}"#);
        }
        format!(r#"{{"action":"get","node":{s}}}"#)
    }
}
