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
//!
//! Changes without a read (Envoy, with `grpc_target`): the events of the
//! gRPC watch on the prefix are applied to the keys of the last full read
//! ([`KvMembers`]), so a change costs the keys it touches, not the prefix.
//! An event is applied only when the watch vouches for every change since
//! the revision the keys are known at (the watch was created at or before
//! it: a read after a watch (re)opened settles that), and only if it is
//! newer than that revision. The keys are then known at the event's
//! revision, and the probe's cursor follows them, so the interval's probe
//! checks the applied changes against etcd. Anything else (a canceled or
//! compacted watch, an event outside the prefix or out of order, a message
//! that does not decode) drops the keys: the next request is a full read.
//! Events that arrive while a read is out are kept and applied on top of
//! its answer when they are newer.

use crate::sansio::registry::etcd_watch::{Event, EventKind, WatchMessage, WatchResponse};
use crate::sansio::registry::kv_layout::KvMembers;
use crate::sansio::registry::{AdapterError, ChildKeys, HttpRequest, ParentNews, Pushed};
use crate::sansio::registry::{HttpResponse, MemberList, Poll, RegistryAdapter};
use crate::sansio::util::base64;
use serde_json::{json, Value};
use std::cell::Cell;

/// What a range answer says about the prefix as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeCursor {
    pub count: u64,
    pub max_mod_revision: i64,
}

/// Watch events kept while they cannot be applied yet (a read is out);
/// beyond this many, they are dropped and the next read settles them.
pub const MAX_PENDING_EVENTS: usize = 4096;

/// The kind of request sent last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fetch,
    Probe,
}

/// What the last request asked, and what the adapter knew when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Asked {
    kind: Kind,
    epoch: u64,
    /// The revision the keys were known at.
    revision: Option<i64>,
}

/// The keys under the prefix as last read, and changed since by watch events.
#[derive(Debug, Clone)]
struct Keys {
    kv: KvMembers,
    /// The store revision the keys are known at (`None`: etcd gave none,
    /// and no event is ever applied).
    revision: Option<i64>,
}

impl Keys {
    fn cursor(&self) -> RangeCursor {
        RangeCursor {
            count: u64::try_from(self.kv.len()).unwrap_or(u64::MAX),
            max_mod_revision: self.kv.max_mod_revision(),
        }
    }
}

/// What the adapter knows of the watch on its prefix.
#[derive(Debug, Clone, Default)]
struct WatchTrack {
    /// Every change after this revision reaches the adapter through the
    /// watch; `None`: no watch in place.
    from: Option<i64>,
    /// The revision of the last event the watch brought.
    last: i64,
    /// Events that arrived while they could not be applied, in order.
    pending: Vec<Event>,
}

/// Builds etcd v3 requests for one prefix and reads their answers.
#[derive(Debug, Clone)]
pub struct EtcdV3Adapter {
    prefix: String,
    key_b64: String,
    range_end_b64: String,
    /// What the last full read saw, with the watch's changes since; `None`
    /// makes the next request a full read. A probe that sees a change drops
    /// it: the full read builds them again.
    keys: Option<Keys>,
    /// Moves each time the keys are dropped: an answer to a request sent
    /// before is not used (it may predate what made them untrustworthy).
    epoch: u64,
    /// What [`RegistryAdapter::request`] asked last.
    asked: Cell<Option<Asked>>,
    watch: WatchTrack,
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
            keys: None,
            epoch: 0,
            asked: Cell::new(None),
            watch: WatchTrack::default(),
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
        self.read_probe(body).map(|(cursor, _)| cursor)
    }

    /// A probe answer: the cursor, and the revision it was read at.
    fn read_probe(&self, body: &[u8]) -> Result<(RangeCursor, Option<i64>), AdapterError> {
        let root = parse_root(body)?;
        let count = int64(root.get("count"), "count")?;
        let mut max_mod_revision = 0;
        for kv in kvs(&root)? {
            max_mod_revision = max_mod_revision.max(int64(kv.get("mod_revision"), "kvs[].mod_revision")?);
        }
        Ok((RangeCursor { count: u64::try_from(count).unwrap_or(0), max_mod_revision }, header_revision(&root)?))
    }

    /// Reads a full range answer: the members and the cursor they were read at.
    pub fn parse_fetch(&self, body: &[u8]) -> Result<(MemberList, RangeCursor), AdapterError> {
        let keys = self.read_fetch(body)?;
        Ok((keys.kv.list(), keys.cursor()))
    }

    /// A full range answer as keys.
    fn read_fetch(&self, body: &[u8]) -> Result<Keys, AdapterError> {
        let root = parse_root(body)?;
        if root.get("more").and_then(Value::as_bool) == Some(true) {
            return Err(AdapterError::BadShape("range answer is truncated (\"more\": true)".into()));
        }
        let list = kvs(&root)?;
        let mut entries = Vec::with_capacity(list.len());
        for kv in list {
            let mod_revision = int64(kv.get("mod_revision"), "kvs[].mod_revision")?;
            entries.push((b64_field(kv, "key")?, b64_field(kv, "value")?, mod_revision));
        }
        Ok(Keys { kv: KvMembers::from_entries(&self.prefix, entries), revision: header_revision(&root)? })
    }

    /// What a request sent now asks.
    fn asking(&self) -> Asked {
        let kind = if self.keys.is_none() { Kind::Fetch } else { Kind::Probe };
        Asked { kind, epoch: self.epoch, revision: self.keys.as_ref().and_then(|k| k.revision) }
    }

    /// The watch vouches for every change after the revision the keys are known at.
    fn covered(&self) -> bool {
        match (&self.keys, self.watch.from) {
            (Some(Keys { revision: Some(at), .. }), Some(from)) => *at >= from,
            _ => false,
        }
    }

    /// Drops the keys: the next request is a full read, and answers to
    /// requests sent before are not used.
    fn drop_keys(&mut self) {
        self.keys = None;
        self.epoch = self.epoch.wrapping_add(1);
        self.watch.pending.clear();
    }

    fn resync(&mut self, why: String) -> Pushed {
        self.drop_keys();
        Pushed::Resync(why)
    }

    /// Applies `events` newer than the keys' revision; `true` if any was.
    fn apply(&mut self, events: &[Event]) -> bool {
        let Some(Keys { kv, revision: Some(at) }) = &mut self.keys else {
            return false;
        };
        let mut applied = false;
        for e in events.iter().filter(|e| e.mod_revision > *at) {
            match e.kind {
                EventKind::Put => kv.put(&e.key, &e.value, e.mod_revision),
                // A delete of a key the keys never had still moves the
                // revision. (Events of an unknown type are refused on arrival.)
                EventKind::Delete | EventKind::Unknown(_) => {
                    kv.delete(&e.key);
                }
            }
            applied = true;
        }
        if let Some(last) = events.last() {
            *at = (*at).max(last.mod_revision);
        }
        applied
    }

    /// Applies the events kept while the keys could not take them, once the
    /// watch covers the keys; `true` if any changed them.
    fn replay(&mut self) -> bool {
        if !self.covered() || self.watch.pending.is_empty() {
            return false;
        }
        let pending = std::mem::take(&mut self.watch.pending);
        self.apply(&pending)
    }

    /// Watch events: applied, kept for later, or a reason to read everything.
    fn events(&mut self, events: &[Event]) -> Pushed {
        if self.watch.from.is_none() {
            // A watch whose creation was not seen: what it missed is unknown.
            return Pushed::Poll;
        }
        let mut last = self.watch.last;
        for (i, e) in events.iter().enumerate() {
            if !e.key.starts_with(self.prefix.as_bytes()) {
                let key = String::from_utf8_lossy(&e.key).chars().take(100).collect::<String>();
                return self.resync(format!("watch event for the key {key:?} outside the prefix"));
            }
            if let EventKind::Unknown(kind) = e.kind {
                return self.resync(format!("watch event of unknown type {kind}"));
            }
            // etcd sends a revision's events in one message, revisions in order.
            let in_order = if i == 0 { e.mod_revision > last } else { e.mod_revision >= last };
            if !in_order {
                return self.resync(format!("watch event at revision {} after revision {last}", e.mod_revision));
            }
            last = e.mod_revision;
        }
        self.watch.last = last;
        if !self.covered() {
            // A read is out, or the keys predate the watch: kept until a read settles them.
            if self.watch.pending.len().saturating_add(events.len()) > MAX_PENDING_EVENTS {
                // Dropped: from here the watch vouches only for what comes after them.
                self.watch.pending.clear();
                self.watch.from = Some(last);
            } else {
                self.watch.pending.extend(events.iter().cloned());
            }
            return Pushed::Poll;
        }
        match self.apply(events) {
            true => Pushed::Delta(self.keys.as_ref().map(|k| k.kv.list()).unwrap_or_default()),
            false => Pushed::Nothing,
        }
    }
}

impl RegistryAdapter for EtcdV3Adapter {
    fn request(&self) -> HttpRequest {
        let asked = self.asking();
        self.asked.set(Some(asked));
        match asked.kind {
            Kind::Fetch => self.fetch_request(),
            Kind::Probe => self.probe_request(),
        }
    }

    fn parse(&mut self, response: &HttpResponse<'_>) -> Result<Poll, AdapterError> {
        // Without a request() before (tests), what request() would ask now.
        let asked = self.asked.take().unwrap_or_else(|| self.asking());
        response.expect_ok()?;
        if asked.epoch != self.epoch {
            // Sent before the keys were dropped: read again.
            return Ok(Poll::Changed);
        }
        match asked.kind {
            Kind::Fetch => {
                let keys = self.read_fetch(response.body)?;
                self.keys = Some(keys);
                self.replay();
                Ok(Poll::Members(self.keys.as_ref().map(|k| k.kv.list()).unwrap_or_default()))
            }
            Kind::Probe => {
                let (cursor, at) = self.read_probe(response.body)?;
                let Some(keys) = &mut self.keys else {
                    return Ok(Poll::Changed);
                };
                if let (Some(at), Some(known)) = (at, keys.revision) {
                    if keys.revision != asked.revision && at < known {
                        // Watch events newer than the probe were applied
                        // while it was out: it cannot tell about them.
                        return Ok(Poll::Unchanged);
                    }
                }
                if cursor != keys.cursor() {
                    self.drop_keys();
                    return Ok(Poll::Changed);
                }
                // The same keys at the probe's revision.
                if at.is_some() {
                    keys.revision = at;
                }
                if self.replay() {
                    Ok(Poll::Delta(self.keys.as_ref().map(|k| k.kv.list()).unwrap_or_default()))
                } else {
                    Ok(Poll::Unchanged)
                }
            }
        }
    }

    fn fed(&mut self, news: ParentNews<'_>) -> Option<Poll> {
        let ParentNews::Read { index, entries } = news else {
            return None;
        };
        let kv = KvMembers::from_entries(&self.prefix, entries.into_iter().map(|(k, v, r)| (k.into_bytes(), v, r)));
        let list = kv.list();
        self.drop_keys();
        self.keys = Some(Keys { kv, revision: i64::try_from(index).ok().filter(|r| *r > 0) });
        Some(Poll::Members(list))
    }

    fn reset(&mut self) {
        self.drop_keys();
    }

    fn watch(&mut self, message: &WatchResponse) -> Pushed {
        if message.compact_revision != 0 {
            self.watch = WatchTrack::default();
            return self.resync(format!("etcd compacted the watch's revisions (up to {})", message.compact_revision));
        }
        if message.fragment {
            return self.resync("a watch response split in fragments".into());
        }
        match &message.message {
            WatchMessage::Canceled(reason) => {
                self.watch = WatchTrack::default();
                self.resync(format!("etcd canceled the watch ({reason})"))
            }
            WatchMessage::Created => {
                // From here every change reaches the adapter; the ones
                // before may not have. A read sent from now on settles that
                // (and whether this is still the etcd the keys were read
                // from): until then events are kept, not applied.
                let from = (message.revision > 0).then_some(message.revision);
                self.watch = WatchTrack { from, last: message.revision, pending: Vec::new() };
                if let Some(keys) = &mut self.keys {
                    keys.revision = None;
                }
                Pushed::Poll
            }
            WatchMessage::Events(_) => self.events(&message.events),
            WatchMessage::Other => Pushed::Nothing,
        }
    }

    fn watch_ended(&mut self, garbled: bool) -> Pushed {
        if garbled {
            // The watch goes on, but what the lost message said is unknown.
            return self.resync("a watch message could not be decoded".into());
        }
        self.watch = WatchTrack::default();
        Pushed::Nothing
    }
}

/// `header.revision`, `None` when absent or 0.
/// Every key under `prefix` of a range answer (an object with `kvs`), with
/// its value and `mod_revision`, as a `discover[]` parent hands them to a child.
pub fn range_keys(range: &Value) -> Result<ChildKeys, AdapterError> {
    if range.get("more").and_then(Value::as_bool) == Some(true) {
        return Err(AdapterError::BadShape("range answer is truncated (\"more\": true)".into()));
    }
    let mut out = Vec::new();
    for kv in kvs(range)? {
        let key = String::from_utf8(b64_field(kv, "key")?)
            .map_err(|_| AdapterError::BadShape("kvs[].key is not UTF-8".into()))?;
        out.push((key, b64_field(kv, "value")?, int64(kv.get("mod_revision"), "kvs[].mod_revision")?));
    }
    Ok(out)
}

/// The store revision of an answer's header (`None` for none or 0).
pub fn header_revision(root: &Value) -> Result<Option<i64>, AdapterError> {
    let revision = int64(root.get("header").and_then(|h| h.get("revision")), "header.revision")?;
    Ok((revision > 0).then_some(revision))
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

    /// A full read answer of `members` (`host:port` → mod_revision) under
    /// `/p/` at store revision `at`.
    fn read_at(members: &[(&str, i64)], at: i64) -> Vec<u8> {
        let kvs: Vec<Value> = members.iter().map(|(a, rev)| kv(&format!("/p/{a}"), "{}", *rev)).collect();
        let mut body = answer(kvs, members.len() as u64);
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        v["header"]["revision"] = json!(at.to_string());
        body = v.to_string().into_bytes();
        body
    }

    /// The probe answer matching [`read_at`].
    fn probe_at(members: &[(&str, i64)], at: i64) -> Vec<u8> {
        let top = members.iter().max_by_key(|(_, rev)| *rev).map(|(a, rev)| kv(&format!("/p/{a}"), "", *rev));
        let mut v: Value = serde_json::from_slice(&answer(top.into_iter().collect(), members.len() as u64)).unwrap();
        v["header"]["revision"] = json!(at.to_string());
        v.to_string().into_bytes()
    }

    fn watch_msg(message: WatchMessage, revision: i64, events: Vec<Event>) -> WatchResponse {
        WatchResponse { watch_id: 1, message, revision, compact_revision: 0, fragment: false, events }
    }

    fn put(addr: &str, value: &str, rev: i64) -> Event {
        Event { kind: EventKind::Put, key: format!("/p/{addr}").into_bytes(), value: value.into(), mod_revision: rev }
    }

    fn del(addr: &str, rev: i64) -> Event {
        Event { kind: EventKind::Delete, key: format!("/p/{addr}").into_bytes(), value: vec![], mod_revision: rev }
    }

    fn events(list: Vec<Event>) -> WatchResponse {
        let rev = list.last().map_or(0, |e| e.mod_revision);
        watch_msg(WatchMessage::Events(list.len()), rev, list)
    }

    fn addrs_of(p: &Pushed) -> Vec<String> {
        match p {
            Pushed::Delta(l) => l.members.iter().map(|m| m.addr.to_string()).collect(),
            other => panic!("a delta expected, got {other:?}"),
        }
    }

    fn is_fetch(r: &HttpRequest) -> bool {
        !String::from_utf8_lossy(&r.body).contains("sort_target")
    }

    /// Read at revision 10 with the watch created at 10 and settled by a probe.
    fn watching() -> EtcdV3Adapter {
        let mut a = EtcdV3Adapter::new("/p/");
        let members = [("10.0.0.1:80", 5), ("10.0.0.2:80", 6)];
        a.request();
        assert!(matches!(a.parse(&ok(&read_at(&members, 10))), Ok(Poll::Members(_))));
        assert_eq!(a.watch(&watch_msg(WatchMessage::Created, 10, vec![])), Pushed::Poll, "a watch (re)created: probe");
        assert!(!is_fetch(&a.request()));
        assert_eq!(a.parse(&ok(&probe_at(&members, 10))), Ok(Poll::Unchanged));
        a
    }

    #[test]
    fn watch_events_change_the_members_and_the_probe_follows_them() {
        let mut a = watching();
        let p = a.watch(&events(vec![put("10.0.0.3:80", r#"{"weight":4}"#, 11)]));
        assert_eq!(addrs_of(&p), ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        let p = a.watch(&events(vec![del("10.0.0.1:80", 12), put("10.0.0.2:80", "not json", 12)]));
        assert_eq!(addrs_of(&p), ["10.0.0.2:80", "10.0.0.3:80"]);
        let Pushed::Delta(list) = &p else { unreachable!() };
        assert_eq!(list.problems.len(), 1, "a bad value is a bad entry, as in a full read");
        // The interval's probe sees what the events made: unchanged, no read.
        assert!(!is_fetch(&a.request()));
        let now = [("10.0.0.2:80", 12), ("10.0.0.3:80", 11)];
        assert_eq!(a.parse(&ok(&probe_at(&now, 12))), Ok(Poll::Unchanged));
        // A put of the same value again: nothing new, but it is applied.
        assert!(matches!(a.watch(&events(vec![put("10.0.0.3:80", r#"{"weight":4}"#, 13)])), Pushed::Delta(_)));
        // A delete of a key the list never had is applied too (and changes nothing).
        assert!(matches!(a.watch(&events(vec![del("10.0.0.9:80", 14)])), Pushed::Delta(_)));
        // A progress notification: nothing.
        assert_eq!(a.watch(&watch_msg(WatchMessage::Other, 20, vec![])), Pushed::Nothing);
    }

    #[test]
    fn anything_suspicious_drops_the_list_for_a_full_read() {
        let cases: Vec<(&str, WatchResponse)> = vec![
            (
                "outside the prefix",
                events(vec![put("10.0.0.3:80", "{}", 11), Event { key: b"/q/x".to_vec(), ..put("x", "", 11) }]),
            ),
            ("unknown type", events(vec![Event { kind: EventKind::Unknown(2), ..put("10.0.0.3:80", "{}", 11) }])),
            ("out of order", events(vec![put("10.0.0.3:80", "{}", 12), put("10.0.0.4:80", "{}", 11)])),
            ("revision repeated", events(vec![put("10.0.0.3:80", "{}", 10)])),
            ("canceled", watch_msg(WatchMessage::Canceled("permission denied".into()), 11, vec![])),
            (
                "compacted",
                WatchResponse { compact_revision: 9, ..watch_msg(WatchMessage::Canceled(String::new()), 11, vec![]) },
            ),
            ("fragment", WatchResponse { fragment: true, ..events(vec![put("10.0.0.3:80", "{}", 11)]) }),
        ];
        for (what, message) in cases {
            let mut a = watching();
            assert!(matches!(a.watch(&message), Pushed::Resync(_)), "{what}");
            assert!(is_fetch(&a.request()), "{what}: the next request reads everything");
        }
        let mut a = watching();
        assert!(matches!(a.watch_ended(true), Pushed::Resync(_)), "an undecodable message");
        assert!(is_fetch(&a.request()));
    }

    #[test]
    fn events_already_read_are_skipped_and_an_answer_sent_before_a_resync_is_not_used() {
        let mut a = watching();
        // Revision 10 is what the list was read at: its events are in it.
        // (After the watch's creation at 10 etcd sends only later ones; a
        // read newer than the watch makes earlier-numbered events arrive.)
        let members = [("10.0.0.1:80", 5), ("10.0.0.2:80", 6), ("10.0.0.3:80", 14)];
        a.request();
        a.reset();
        a.request();
        assert!(matches!(a.parse(&ok(&read_at(&members, 15))), Ok(Poll::Members(_))));
        assert_eq!(a.watch(&events(vec![put("10.0.0.3:80", "{}", 14)])), Pushed::Nothing, "already read");
        let p = a.watch(&events(vec![put("10.0.0.4:80", "{}", 16)]));
        assert_eq!(addrs_of(&p).len(), 4);
        // A probe is out when a message makes the list untrustworthy: its
        // answer is not used, the next request is a full read.
        assert!(!is_fetch(&a.request()));
        assert!(matches!(a.watch_ended(true), Pushed::Resync(_)));
        let probe = probe_at(&[("10.0.0.4:80", 16)], 16);
        assert_eq!(a.parse(&ok(&probe)), Ok(Poll::Changed));
        assert!(is_fetch(&a.request()));
        // The same for a full read that was out: its answer may predate the lost message.
        a.request();
        a.watch_ended(true);
        assert_eq!(a.parse(&ok(&read_at(&members, 16))), Ok(Poll::Changed));
    }

    #[test]
    fn a_probe_older_than_the_events_applied_while_it_was_out_says_nothing() {
        let mut a = watching();
        assert!(!is_fetch(&a.request()));
        // The probe is read at 10; meanwhile the watch brings 11.
        assert!(matches!(a.watch(&events(vec![put("10.0.0.3:80", "{}", 11)])), Pushed::Delta(_)));
        let old = probe_at(&[("10.0.0.1:80", 5), ("10.0.0.2:80", 6)], 10);
        assert_eq!(a.parse(&ok(&old)), Ok(Poll::Unchanged));
        // With nothing applied meanwhile, a probe at a lower revision (etcd
        // rebuilt from a backup) is compared as any other: changed.
        let mut a = EtcdV3Adapter::new("/p/");
        a.request();
        a.parse(&ok(&read_at(&[("10.0.0.1:80", 50)], 60))).unwrap();
        a.request();
        assert_eq!(a.parse(&ok(&probe_at(&[("10.0.0.1:80", 3)], 4))), Ok(Poll::Changed));
    }

    #[test]
    fn events_during_a_read_are_applied_on_top_of_it() {
        let mut a = EtcdV3Adapter::new("/p/");
        assert_eq!(a.watch(&watch_msg(WatchMessage::Created, 10, vec![])), Pushed::Poll);
        assert!(is_fetch(&a.request()));
        // Out meanwhile: 11 (already in the read) and 13 (after it).
        assert_eq!(a.watch(&events(vec![put("10.0.0.5:80", "{}", 11)])), Pushed::Poll);
        assert_eq!(a.watch(&events(vec![del("10.0.0.1:80", 13)])), Pushed::Poll);
        let read = read_at(&[("10.0.0.1:80", 5), ("10.0.0.5:80", 11)], 12);
        let Ok(Poll::Members(list)) = a.parse(&ok(&read)) else { panic!() };
        let got: Vec<String> = list.members.iter().map(|m| m.addr.to_string()).collect();
        assert_eq!(got, ["10.0.0.5:80"], "the delete at 13 applied on top of the read at 12");
        // And the probe's cursor follows.
        a.request();
        assert_eq!(a.parse(&ok(&probe_at(&[("10.0.0.5:80", 11)], 13))), Ok(Poll::Unchanged));
    }

    #[test]
    fn a_watch_created_after_the_read_waits_for_a_probe_and_a_change_in_the_gap_is_read() {
        let mut a = EtcdV3Adapter::new("/p/");
        a.request();
        a.parse(&ok(&read_at(&[("10.0.0.1:80", 5)], 10))).unwrap();
        // The stream was down: created again at 20; 15 changed something.
        assert_eq!(a.watch(&watch_msg(WatchMessage::Created, 20, vec![])), Pushed::Poll);
        // An event now is kept, not applied on a list that may be older.
        assert_eq!(a.watch(&events(vec![put("10.0.0.7:80", "{}", 21)])), Pushed::Poll);
        assert!(!is_fetch(&a.request()));
        let probe = probe_at(&[("10.0.0.1:80", 5), ("10.0.0.2:80", 15), ("10.0.0.7:80", 21)], 21);
        assert_eq!(a.parse(&ok(&probe)), Ok(Poll::Changed), "the gap had a change");
        assert!(is_fetch(&a.request()), "read in full");
        let read = read_at(&[("10.0.0.1:80", 5), ("10.0.0.2:80", 15), ("10.0.0.7:80", 21)], 21);
        let Ok(Poll::Members(list)) = a.parse(&ok(&read)) else { panic!() };
        assert_eq!(list.members.len(), 3);
        let p = a.watch(&events(vec![del("10.0.0.2:80", 22)]));
        assert_eq!(addrs_of(&p), ["10.0.0.1:80", "10.0.0.7:80"], "then events apply again");

        // No gap: the probe settles it, and what came meanwhile is applied.
        let mut a = EtcdV3Adapter::new("/p/");
        a.request();
        a.parse(&ok(&read_at(&[("10.0.0.1:80", 5)], 10))).unwrap();
        a.watch(&watch_msg(WatchMessage::Created, 20, vec![]));
        a.watch(&events(vec![put("10.0.0.7:80", "{}", 21)]));
        a.request();
        let Ok(Poll::Delta(list)) = a.parse(&ok(&probe_at(&[("10.0.0.1:80", 5)], 20))) else { panic!() };
        assert_eq!(list.members.len(), 2, "the put at 21, kept while the probe was out");
        // A closed stream: events stop being applied until a new watch is settled.
        a.watch_ended(false);
        assert_eq!(a.watch(&events(vec![put("10.0.0.8:80", "{}", 22)])), Pushed::Poll);
    }

    #[test]
    fn too_many_events_kept_are_dropped_and_a_later_read_settles_them() {
        let mut a = EtcdV3Adapter::new("/p/");
        a.watch(&watch_msg(WatchMessage::Created, 10, vec![]));
        a.request();
        let many: Vec<Event> = (0..MAX_PENDING_EVENTS as i64 + 1).map(|i| put("10.0.0.1:80", "{}", 11 + i)).collect();
        let last = many.last().unwrap().mod_revision;
        assert_eq!(a.watch(&events(many)), Pushed::Poll);
        // The read that was out predates the dropped events: not followed on, a probe must settle.
        a.parse(&ok(&read_at(&[("10.0.0.1:80", 5)], 12))).unwrap();
        assert_eq!(a.watch(&events(vec![put("10.0.0.2:80", "{}", last + 1)])), Pushed::Poll);
        a.request();
        let members = [("10.0.0.1:80", last), ("10.0.0.2:80", last + 1)];
        assert_eq!(a.parse(&ok(&probe_at(&members, last + 1))), Ok(Poll::Changed));
        a.request();
        a.parse(&ok(&read_at(&members, last + 1))).unwrap();
        assert_eq!(addrs_of(&a.watch(&events(vec![del("10.0.0.1:80", last + 2)]))), ["10.0.0.2:80"]);
    }
}
