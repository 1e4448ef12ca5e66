//! etcd v2 (`/v2/keys`), upsync key layout.
//!
//! A full read (`GET <dir>?recursive=true`) gives every member and the store
//! index (`X-Etcd-Index`). Then a long poll (`?wait=true&recursive=true&
//! waitIndex=<index+1>`) answers on the next change under the directory;
//! any change leads to a full re-read, as nginx-upsync-module does, so a
//! missed or coalesced event can never leave a member behind. etcd keeps
//! only the last 1000 events: a waitIndex older than that gets errorCode
//! 401, answered by a full re-read too.

use crate::sansio::registry::kv_layout::members_from_kv;
use crate::sansio::registry::{AdapterError, HttpRequest};
use crate::sansio::registry::{HttpResponse, Poll, RegistryAdapter};
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
    /// The store index of the last full read; `None` → the next call is a full read.
    index: Option<u64>,
}

impl EtcdV2Adapter {
    pub fn new(prefix: &str, wait_ms: u64) -> Self {
        let dir = prefix.trim_end_matches('/');
        EtcdV2Adapter {
            prefix: prefix.to_string(),
            keys_path: format!("/v2/keys{}", url::encode(dir, true)),
            wait_ms,
            index: None,
        }
    }
}

fn etcd_index(response: &HttpResponse<'_>, body: &Value) -> Option<u64> {
    response
        .header("x-etcd-index")
        .and_then(|v| v.trim().parse().ok())
        .or_else(|| body.get("index").and_then(Value::as_u64))
}

/// Every leaf (non-directory) node under `node`, depth first.
/// Recursion is bounded: serde_json refuses documents nested deeper than 128.
fn leaves(node: &Value, out: &mut Vec<(String, Vec<u8>)>) -> Result<(), AdapterError> {
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
        // The hold ran out with no event: the proxy ends the call with a 504,
        // or with no status when etcd had already sent its headers.
        if watching && matches!(response.status, None | Some(504)) {
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
                    Ok(Poll::NotFound)
                }
                EVENT_INDEX_CLEARED => {
                    self.index = None;
                    Ok(Poll::Changed)
                }
                _ => Err(AdapterError::Registry(format!("errorCode {code}: {message}"))),
            };
        }
        response.expect_ok()?;
        if watching {
            // An event under the directory: read everything again.
            self.index = None;
            return Ok(Poll::Changed);
        }
        let node = body.get("node").ok_or_else(|| AdapterError::BadShape("no \"node\"".into()))?;
        let mut entries = Vec::new();
        leaves(node, &mut entries)?;
        let index = etcd_index(response, &body)
            .ok_or_else(|| AdapterError::BadShape("no X-Etcd-Index header: cannot watch from here".into()))?;
        self.index = Some(index);
        Ok(Poll::Members(members_from_kv(&self.prefix, entries)))
    }

    fn reset(&mut self) {
        self.index = None;
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
        assert!(a.request().path.ends_with("waitIndex=10"));

        // An event: full re-read.
        assert_eq!(a.parse(&answer(Some(200), &idx(11), EVENT)), Ok(Poll::Changed));
        assert_eq!(a.request().path, "/v2/keys/upstreams/web?recursive=true");
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
