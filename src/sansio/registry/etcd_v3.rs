//! etcd v3 over its JSON gateway (`POST /v3/kv/range`).
//!
//! The gateway speaks proto3 JSON: keys and values are base64, int64 fields
//! are strings, and zero values (an empty `kvs`, `count: 0`) are left out.
//!
//! Change detection without a full read: `header.revision` is cluster-wide
//! and moves on unrelated writes, so it cannot tell whether *our* prefix
//! changed. Instead a probe asks for one key, keys only, sorted by
//! `mod_revision` descending. Its answer carries the total `count` under the
//! prefix and the highest `mod_revision`: any put under the prefix raises the
//! latter, and a delete without a put lowers the former. Equal cursor, equal
//! contents.

use crate::sansio::registry::kv_layout::members_from_kv;
use crate::sansio::registry::{AdapterError, HttpRequest};
use crate::sansio::registry::{HttpResponse, MemberList, Poll, RegistryAdapter};
use crate::sansio::util::base64;
use serde_json::{json, Value};

/// What a range answer says about the prefix as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeCursor {
    pub count: u64,
    pub max_mod_revision: i64,
}

/// Builds etcd v3 requests for one prefix and reads their answers.
#[derive(Debug, Clone)]
pub struct EtcdV3Adapter {
    prefix: String,
    key_b64: String,
    range_end_b64: String,
    /// What the last full read saw; `None` makes the next request a full
    /// read. A probe that sees a change clears it: the full read builds its
    /// own cursor, so the old one is of no further use.
    cursor: Option<RangeCursor>,
}

/// The smallest key greater than every key that starts with `prefix`
/// (etcd's `GetPrefixRangeEnd`).
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): the range runs to the end of the keyspace.
    vec![0]
}

impl EtcdV3Adapter {
    pub fn new(prefix: &str) -> Self {
        EtcdV3Adapter {
            prefix: prefix.to_string(),
            key_b64: base64::encode(prefix.as_bytes()),
            range_end_b64: base64::encode(&prefix_range_end(prefix.as_bytes())),
            cursor: None,
        }
    }

    fn range(&self, body: Value) -> HttpRequest {
        HttpRequest {
            method: "POST",
            path: "/v3/kv/range".to_string(),
            headers: vec![("content-type".to_string(), "application/json".to_string())],
            body: body.to_string().into_bytes(),
        }
    }

    /// The cheap "did anything change?" request.
    pub fn probe_request(&self) -> HttpRequest {
        self.range(json!({
            "key": self.key_b64,
            "range_end": self.range_end_b64,
            "limit": "1",
            "sort_order": "DESCEND",
            "sort_target": "MOD",
            "keys_only": true,
        }))
    }

    /// The full read of every key and value under the prefix.
    pub fn fetch_request(&self) -> HttpRequest {
        self.range(json!({ "key": self.key_b64, "range_end": self.range_end_b64 }))
    }

    pub fn parse_probe(&self, body: &[u8]) -> Result<RangeCursor, AdapterError> {
        let root = parse_root(body)?;
        let count = int64(root.get("count"), "count")?;
        let mut max_mod_revision = 0;
        for kv in kvs(&root)? {
            max_mod_revision = max_mod_revision.max(int64(kv.get("mod_revision"), "kvs[].mod_revision")?);
        }
        Ok(RangeCursor { count: u64::try_from(count).unwrap_or(0), max_mod_revision })
    }

    /// Reads a full range answer: the members and the cursor they were read at.
    pub fn parse_fetch(&self, body: &[u8]) -> Result<(MemberList, RangeCursor), AdapterError> {
        let root = parse_root(body)?;
        if root.get("more").and_then(Value::as_bool) == Some(true) {
            return Err(AdapterError::BadShape("range answer is truncated (\"more\": true)".into()));
        }
        let list = kvs(&root)?;
        let mut max_mod_revision = 0;
        let mut entries = Vec::with_capacity(list.len());
        for kv in list {
            max_mod_revision = max_mod_revision.max(int64(kv.get("mod_revision"), "kvs[].mod_revision")?);
            let key = String::from_utf8_lossy(&b64_field(kv, "key")?).into_owned();
            entries.push((key, b64_field(kv, "value")?));
        }
        let count = u64::try_from(list.len()).unwrap_or(u64::MAX);
        Ok((members_from_kv(&self.prefix, entries), RangeCursor { count, max_mod_revision }))
    }
}

impl RegistryAdapter for EtcdV3Adapter {
    fn request(&self) -> HttpRequest {
        if self.cursor.is_none() {
            self.fetch_request()
        } else {
            self.probe_request()
        }
    }

    fn parse(&mut self, response: &HttpResponse<'_>) -> Result<Poll, AdapterError> {
        response.expect_ok()?;
        if self.cursor.is_none() {
            let (list, cursor) = self.parse_fetch(response.body)?;
            self.cursor = Some(cursor);
            Ok(Poll::Members(list))
        } else if Some(self.parse_probe(response.body)?) == self.cursor {
            Ok(Poll::Unchanged)
        } else {
            self.cursor = None;
            Ok(Poll::Changed)
        }
    }

    fn reset(&mut self) {
        self.cursor = None;
    }
}

fn parse_root(body: &[u8]) -> Result<Value, AdapterError> {
    let root: Value = serde_json::from_slice(body).map_err(|e| AdapterError::NotJson(e.to_string()))?;
    if !root.is_object() {
        return Err(AdapterError::BadShape("top level is not an object".into()));
    }
    if let Some(e) = root.get("error").or_else(|| root.get("message")) {
        return Err(AdapterError::Registry(e.as_str().unwrap_or("(no message)").to_string()));
    }
    if root.get("header").is_none() {
        return Err(AdapterError::BadShape("no \"header\": not an etcd range answer".into()));
    }
    Ok(root)
}

fn kvs(root: &Value) -> Result<&[Value], AdapterError> {
    match root.get("kvs") {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(list)) => Ok(list),
        Some(_) => Err(AdapterError::BadShape("\"kvs\" is not an array".into())),
    }
}

/// proto3 JSON int64: a string, a number, or absent for zero.
fn int64(v: Option<&Value>, what: &str) -> Result<i64, AdapterError> {
    match v {
        None | Some(Value::Null) => Some(0),
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.parse().ok(),
        Some(_) => None,
    }
    .ok_or_else(|| AdapterError::BadShape(format!("{what} is not an int64")))
}

/// proto3 JSON bytes: base64, absent for empty.
fn b64_field(kv: &Value, name: &str) -> Result<Vec<u8>, AdapterError> {
    match kv.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => base64::decode(s).map_err(|e| AdapterError::BadShape(format!("kvs[].{name}: {e}"))),
        Some(_) => Err(AdapterError::BadShape(format!("kvs[].{name} is not a string"))),
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::model::member::MemberAttrs;

    fn kv(key: &str, value: &str, mod_rev: i64) -> Value {
        json!({
            "key": base64::encode(key.as_bytes()),
            "create_revision": "2",
            "mod_revision": mod_rev.to_string(),
            "version": "1",
            "value": base64::encode(value.as_bytes()),
        })
    }

    fn answer(kvs: Vec<Value>, count: u64) -> Vec<u8> {
        json!({
            "header": {"cluster_id": "14841639068965178418", "member_id": "10276657743932975437", "revision": "99", "raft_term": "2"},
            "kvs": kvs,
            "count": count.to_string(),
        })
        .to_string()
        .into_bytes()
    }

    fn ok(body: &[u8]) -> HttpResponse<'_> {
        HttpResponse::new(Some(200), &[], body)
    }

    #[test]
    fn reads_fully_then_probes_and_reads_again_on_change() {
        let mut a = EtcdV3Adapter::new("/upstreams/web/");
        let is_probe = |r: &HttpRequest| String::from_utf8_lossy(&r.body).contains("sort_target");
        assert!(!is_probe(&a.request()));
        assert!(matches!(a.parse(&ok(RANGE_FULL)), Ok(Poll::Members(_))));
        assert!(is_probe(&a.request()));
        assert_eq!(a.parse(&ok(PROBE)), Ok(Poll::Unchanged));
        assert!(is_probe(&a.request()));
        assert_eq!(a.parse(&ok(RANGE_EMPTY)), Ok(Poll::Changed), "count and revision differ");
        assert!(!is_probe(&a.request()));
        assert!(matches!(a.parse(&ok(RANGE_EMPTY)), Ok(Poll::Members(l)) if l.members.is_empty()));
        a.reset();
        assert!(!is_probe(&a.request()));
        let status = HttpResponse::new(Some(503), &[], b"");
        assert_eq!(a.parse(&status), Err(AdapterError::Status(503)));
    }

    #[test]
    fn range_end_follows_etcd() {
        assert_eq!(prefix_range_end(b"/upstreams/web/"), b"/upstreams/web0");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_range_end(b""), b"\0");
    }

    #[test]
    fn requests_carry_base64_keys() {
        let a = EtcdV3Adapter::new("/upstreams/web/");
        let probe: Value = serde_json::from_slice(&a.probe_request().body).unwrap();
        assert_eq!(probe["key"], "L3Vwc3RyZWFtcy93ZWIv");
        assert_eq!(probe["range_end"], base64::encode(b"/upstreams/web0"));
        assert_eq!(probe["sort_target"], "MOD");
        assert_eq!(probe["keys_only"], true);
        let fetch = a.fetch_request();
        assert_eq!(fetch.method, "POST");
        assert_eq!(fetch.path, "/v3/kv/range");
        let body: Value = serde_json::from_slice(&fetch.body).unwrap();
        assert!(body.get("limit").is_none());
    }

    const RANGE_FULL: &[u8] = include_bytes!("../../../tests/fixtures/etcd_v3/range_full.json");
    const RANGE_EMPTY: &[u8] = include_bytes!("../../../tests/fixtures/etcd_v3/range_empty.json");
    const PROBE: &[u8] = include_bytes!("../../../tests/fixtures/etcd_v3/probe.json");
    const ERROR: &[u8] = include_bytes!("../../../tests/fixtures/etcd_v3/error_bad_request.json");

    #[test]
    fn parses_a_captured_full_read() {
        let (r, cursor) = EtcdV3Adapter::new("/upstreams/web/").parse_fetch(RANGE_FULL).unwrap();
        let members: Vec<_> = r.members.iter().map(|m| (m.addr.to_string(), m.attrs)).collect();
        let d = MemberAttrs::default();
        assert_eq!(
            members,
            [
                ("127.0.0.1:9001".to_string(), d),
                ("127.0.0.1:9002".to_string(), MemberAttrs { weight: 3, ..d }),
                ("127.0.0.1:9003".to_string(), d),
                ("127.0.0.1:9005".to_string(), d),
                ("[::1]:9004".to_string(), MemberAttrs { down: true, backup: true, ..d }),
            ]
        );
        // "not json" and the empty value are repaired, "nonsense" skipped.
        let mut problems: Vec<_> = r.problems.iter().map(|p| (p.key.as_str(), p.skipped)).collect();
        problems.sort();
        assert_eq!(
            problems,
            [
                ("/upstreams/web/127.0.0.1:9003", false),
                ("/upstreams/web/127.0.0.1:9005", false),
                ("/upstreams/web/nonsense", true),
            ]
        );
        assert_eq!(cursor, RangeCursor { count: 6, max_mod_revision: 8 });
    }

    #[test]
    fn captured_probe_matches_the_full_read_cursor() {
        let a = EtcdV3Adapter::new("/upstreams/web/");
        assert_eq!(a.parse_probe(PROBE).unwrap(), a.parse_fetch(RANGE_FULL).unwrap().1);
    }

    #[test]
    fn captured_empty_range_has_no_kvs_and_no_count() {
        let a = EtcdV3Adapter::new("/upstreams/web/");
        let (r, cursor) = a.parse_fetch(RANGE_EMPTY).unwrap();
        assert!(r.members.is_empty());
        assert_eq!(cursor, RangeCursor { count: 0, max_mod_revision: 0 });
        assert_eq!(a.parse_probe(RANGE_EMPTY).unwrap(), cursor);
    }

    #[test]
    fn captured_gateway_error_is_a_registry_error() {
        let e = EtcdV3Adapter::new("/upstreams/web/").parse_fetch(ERROR).unwrap_err();
        assert_eq!(e, AdapterError::Registry("illegal base64 data at input byte 0".into()));
    }

    #[test]
    fn probe_reads_count_and_highest_revision() {
        let body = answer(vec![kv("/upstreams/web/10.0.0.9:80", "", 41)], 17);
        let c = EtcdV3Adapter::new("/upstreams/web/").parse_probe(&body).unwrap();
        assert_eq!(c, RangeCursor { count: 17, max_mod_revision: 41 });
    }

    #[test]
    fn bad_entries_are_skipped_or_defaulted_and_reported() {
        let body = answer(
            vec![
                kv("/upstreams/web/10.0.0.1:80", "not json", 5),
                kv("/upstreams/web/nonsense", "{}", 6),
                kv("/upstreams/web/10.0.0.2:99999", "{}", 7),
                kv("/upstreams/web/sub/10.0.0.3:80", r#"{"weight":2}"#, 8),
                kv("/upstreams/web/x/10.0.0.3:80", r#"{"weight":9}"#, 9),
                kv("/upstreams/web/", "{}", 10),
                kv("/upstreams/web/[::1]:8080", r#"{"backup":1}"#, 11),
            ],
            7,
        );
        let (r, cursor) = EtcdV3Adapter::new("/upstreams/web/").parse_fetch(&body).unwrap();
        let addrs: Vec<_> = r.members.iter().map(|m| m.addr.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.3:80", "[::1]:8080"]);
        assert_eq!(r.members.get(&"10.0.0.1:80".parse().unwrap()), Some(&MemberAttrs::default()));
        assert_eq!(r.members.get(&"10.0.0.3:80".parse().unwrap()).unwrap().weight, 2);
        assert!(r.members.get(&"[::1]:8080".parse().unwrap()).unwrap().backup);
        let skipped = r.problems.iter().filter(|p| p.skipped).count();
        let repaired = r.problems.iter().filter(|p| !p.skipped).count();
        assert_eq!((skipped, repaired), (4, 1), "{:#?}", r.problems);
        assert_eq!(cursor, RangeCursor { count: 7, max_mod_revision: 11 });
    }

    #[test]
    fn garbage_and_errors_are_refused() {
        let a = EtcdV3Adapter::new("/p/");
        assert!(matches!(a.parse_fetch(b"<html>"), Err(AdapterError::NotJson(_))));
        assert!(matches!(a.parse_fetch(b"[]"), Err(AdapterError::BadShape(_))));
        assert!(matches!(a.parse_fetch(b"{}"), Err(AdapterError::BadShape(_))));
        assert!(matches!(
            a.parse_fetch(br#"{"error":"etcdserver: request timed out","code":14}"#),
            Err(AdapterError::Registry(_))
        ));
        assert!(matches!(a.parse_fetch(br#"{"header":{},"kvs":{}}"#), Err(AdapterError::BadShape(_))));
        assert!(matches!(a.parse_fetch(br#"{"header":{},"kvs":[{"key":"***"}]}"#), Err(AdapterError::BadShape(_))));
        assert!(matches!(a.parse_fetch(br#"{"header":{},"more":true}"#), Err(AdapterError::BadShape(_))));
        assert!(matches!(a.parse_probe(br#"{"header":{},"count":"x"}"#), Err(AdapterError::BadShape(_))));
        // A body cut short is not JSON.
        let full = answer(vec![kv("/p/10.0.0.1:80", "{}", 3)], 1);
        assert!(matches!(a.parse_fetch(&full[..full.len() / 2]), Err(AdapterError::NotJson(_))));
    }
}
