//! etcd v3 gRPC Watch messages: the request that opens a watch on a
//! prefix, and what a response says. The stream's life (open, reopen with
//! backoff) is [`crate::sansio::sync::watch`]; what the events do to an
//! upstream's members is [`crate::sansio::registry::etcd_v3`].
//!
//! The protobuf is encoded by hand (no codegen in the module): only
//! `WatchRequest.create_request{key, range_end, watch_id}` is sent, and a
//! `WatchResponse` is read whole but for what the plugin has no use for
//! (`prev_kv`, `lease`, `version`, the cluster ids; etcd's
//! api/etcdserverpb/rpc.proto and api/mvccpb/kv.proto).

use crate::sansio::registry::etcd_v3::prefix_range_end;
use crate::sansio::util::proto::{put_bytes, put_varint};

pub const SERVICE: &str = "etcdserverpb.Watch";
pub const METHOD: &str = "Watch";

/// `WatchRequest{create_request: WatchCreateRequest{key, range_end}}` for
/// every key under `prefix`.
pub fn create_request(prefix: &str, watch_id: u64) -> Vec<u8> {
    let mut create = Vec::new();
    put_bytes(&mut create, 1, prefix.as_bytes());
    put_bytes(&mut create, 2, &prefix_range_end(prefix.as_bytes()));
    if watch_id > 0 {
        // WatchCreateRequest.watch_id (etcd >= 3.4): many watches share one
        // stream, each answer names its watch.
        put_varint(&mut create, 7 << 3);
        put_varint(&mut create, watch_id);
    }
    let mut request = Vec::new();
    put_bytes(&mut request, 1, &create);
    request
}

/// What one `WatchResponse` says, in short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// The watch is in place (from [`WatchResponse::revision`] on).
    Created,
    /// This many events under the prefix ([`WatchResponse::events`]).
    Events(usize),
    /// etcd ended the watch (e.g. compaction); the reason, if given.
    Canceled(String),
    /// Anything else (progress notifications).
    Other,
}

/// `mvccpb.Event.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
    /// A type this decoder does not know (none in etcd 3.4).
    Unknown(u64),
}

/// One `mvccpb.Event`: the key it is about and, for a put, the new value.
/// A delete's `mod_revision` is the revision of the delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// One decoded `WatchResponse`: which watch, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchResponse {
    pub watch_id: u64,
    pub message: WatchMessage,
    /// `header.revision`: the store's revision when etcd sent this (for
    /// `Created`, the watch delivers every change after it).
    pub revision: i64,
    /// Set when etcd canceled the watch because the revisions it needed were compacted.
    pub compact_revision: i64,
    /// One part of a response etcd split (only sent when asked for; never read as a whole).
    pub fragment: bool,
    /// In the order etcd sent them (revision order).
    pub events: Vec<Event>,
}

/// A protobuf field as read off the wire.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// A fixed32 or fixed64: no message read here has one.
    Fixed,
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.bytes.split_first().ok_or("truncated varint")?;
            self.bytes = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.bytes.len() {
            return Err("field runs past the end".into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// The next `(field number, value)`, `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Field<'a>)>, String> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let (number, wire) = (tag >> 3, tag & 7);
        let value = match wire {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length too large")?;
                Field::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Field::Fixed
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        Ok(Some((number, value)))
    }
}

/// Calls `f` on every field of the message `bytes`.
fn each_field<'a>(bytes: &'a [u8], mut f: impl FnMut(u64, Field<'a>) -> Result<(), String>) -> Result<(), String> {
    let mut r = Reader { bytes };
    while let Some((number, value)) = r.field()? {
        f(number, value)?;
    }
    Ok(())
}

/// proto3 int64 on the wire: a varint of the two's complement.
fn int64(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// `ResponseHeader.revision` (field 3).
fn header_revision(bytes: &[u8]) -> Result<i64, String> {
    let mut revision = 0;
    each_field(bytes, |number, value| {
        if let (3, Field::Varint(v)) = (number, value) {
            revision = int64(v);
        }
        Ok(())
    })?;
    Ok(revision)
}

/// `mvccpb.Event{type = 1, kv = 2, prev_kv = 3}` with
/// `KeyValue{key = 1, mod_revision = 3, value = 5}`. Absent fields take
/// proto3's zero values: an event without `kv` has an empty key and
/// revision 0, which no reader takes for a change under its prefix.
fn decode_event(bytes: &[u8]) -> Result<Event, String> {
    let mut kind = EventKind::Put;
    let mut kv: &[u8] = &[];
    each_field(bytes, |number, value| {
        match (number, value) {
            (1, Field::Varint(0)) => kind = EventKind::Put,
            (1, Field::Varint(1)) => kind = EventKind::Delete,
            (1, Field::Varint(other)) => kind = EventKind::Unknown(other),
            (2, Field::Bytes(b)) => kv = b,
            (1 | 2, _) => return Err(format!("event field {number} has the wrong wire type")),
            _ => {}
        }
        Ok(())
    })?;
    let mut event = Event { kind, key: Vec::new(), value: Vec::new(), mod_revision: 0 };
    each_field(kv, |number, value| {
        match (number, value) {
            (1, Field::Bytes(b)) => event.key = b.to_vec(),
            (3, Field::Varint(v)) => event.mod_revision = int64(v),
            (5, Field::Bytes(b)) => event.value = b.to_vec(),
            (1 | 3 | 5, _) => return Err(format!("kv field {number} has the wrong wire type")),
            _ => {}
        }
        Ok(())
    })?;
    Ok(event)
}

/// Decodes a `WatchResponse`.
pub fn decode_response(bytes: &[u8]) -> Result<WatchResponse, String> {
    let (mut created, mut canceled) = (false, false);
    let mut reason = String::new();
    let mut response = WatchResponse {
        watch_id: 0,
        message: WatchMessage::Other,
        revision: 0,
        compact_revision: 0,
        fragment: false,
        events: Vec::new(),
    };
    each_field(bytes, |number, value| {
        match (number, value) {
            (1, Field::Bytes(b)) => response.revision = header_revision(b)?,
            (2, Field::Varint(v)) => response.watch_id = v,
            (3, Field::Varint(v)) => created = v != 0,
            (4, Field::Varint(v)) => canceled = v != 0,
            (5, Field::Varint(v)) => response.compact_revision = int64(v),
            (6, Field::Bytes(b)) => reason = String::from_utf8_lossy(b).into_owned(),
            (7, Field::Varint(v)) => response.fragment = v != 0,
            (11, Field::Bytes(b)) => response.events.push(decode_event(b)?),
            (1 | 6 | 11, _) => return Err(format!("field {number} has the wrong wire type")),
            _ => {}
        }
        Ok(())
    })?;
    response.message = if canceled {
        WatchMessage::Canceled(reason)
    } else if !response.events.is_empty() {
        WatchMessage::Events(response.events.len())
    } else if created {
        WatchMessage::Created
    } else {
        WatchMessage::Other
    };
    Ok(response)
}

/// Encodes a `WatchResponse` as etcd would (the tests' etcd).
#[cfg(test)]
pub(crate) fn encode_response(r: &WatchResponse) -> Vec<u8> {
    fn varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
        if v != 0 {
            put_varint(out, field << 3);
            put_varint(out, v);
        }
    }
    let as_u64 = |v: i64| u64::from_ne_bytes(v.to_ne_bytes());
    let mut out = Vec::new();
    let mut header = Vec::new();
    varint_field(&mut header, 1, 14_841_639_068_965_178_418);
    varint_field(&mut header, 3, as_u64(r.revision));
    put_bytes(&mut out, 1, &header);
    varint_field(&mut out, 2, r.watch_id);
    varint_field(&mut out, 3, u64::from(r.message == WatchMessage::Created));
    if let WatchMessage::Canceled(reason) = &r.message {
        varint_field(&mut out, 4, 1);
        varint_field(&mut out, 5, as_u64(r.compact_revision));
        put_bytes(&mut out, 6, reason.as_bytes());
    }
    varint_field(&mut out, 7, u64::from(r.fragment));
    for e in &r.events {
        let mut kv = Vec::new();
        put_bytes(&mut kv, 1, &e.key);
        varint_field(&mut kv, 2, as_u64(e.mod_revision));
        varint_field(&mut kv, 3, as_u64(e.mod_revision));
        varint_field(&mut kv, 4, 1);
        if !e.value.is_empty() {
            put_bytes(&mut kv, 5, &e.value);
        }
        let mut event = Vec::new();
        let kind = match e.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
            EventKind::Unknown(n) => n,
        };
        varint_field(&mut event, 1, kind);
        put_bytes(&mut event, 2, &kv);
        put_bytes(&mut out, 11, &event);
    }
    out
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn create_request_matches_protoc_output() {
        // protoc --encode=etcdserverpb.WatchRequest rpc.proto <<<
        //   'create_request { key: "/u/" range_end: "/u0" }'
        let expected = [0x0a, 0x0a, 0x0a, 0x03, b'/', b'u', b'/', 0x12, 0x03, b'/', b'u', b'0'];
        assert_eq!(create_request("/u/", 0), expected);
        // With watch_id 300 (field 7, varint 0xac 0x02): the inner message grows by 3.
        let with_id = create_request("/u/", 300);
        assert_eq!(with_id[..2], [0x0a, 0x0d]);
        assert_eq!(with_id[12..], [0x38, 0xac, 0x02]);
    }

    #[test]
    fn decodes_responses() {
        // The first two byte strings are `protoc --encode=etcdserverpb.WatchResponse` output.
        // header{cluster_id:1 revision:5} created:true
        let created = [0x0a, 0x04, 0x08, 0x01, 0x18, 0x05, 0x18, 0x01];
        let msg = |b: &[u8]| decode_response(b).map(|r| r.message);
        assert_eq!(msg(&created), Ok(WatchMessage::Created));
        assert_eq!(decode_response(&created).map(|r| r.revision), Ok(5));
        // header{revision:7} events{kv{key:"/a"}} events{type:DELETE}
        let events = [0x0a, 0x02, 0x18, 0x07, 0x5a, 0x06, 0x12, 0x04, 0x0a, 0x02, b'/', b'a', 0x5a, 0x02, 0x08, 0x01];
        assert_eq!(msg(&events), Ok(WatchMessage::Events(2)));
        let decoded = decode_response(&events).unwrap();
        assert_eq!(
            decoded.events[0],
            Event { kind: EventKind::Put, key: b"/a".to_vec(), value: vec![], mod_revision: 0 }
        );
        assert_eq!(decoded.events[1].kind, EventKind::Delete);
        assert!(decoded.events[1].key.is_empty(), "no kv: proto3 zero values");
        // canceled:true cancel_reason:"compacted" compact_revision:9 (as fixed64 here to cover wire type 1)
        let mut canceled = vec![0x20, 0x01, 0x32, 0x09];
        canceled.extend_from_slice(b"compacted");
        canceled.extend_from_slice(&[0x29, 9, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(msg(&canceled), Ok(WatchMessage::Canceled("compacted".into())));
        // The same with compact_revision:9 as etcd sends it (a varint).
        let compacted = [0x20, 0x01, 0x28, 0x09];
        assert_eq!(decode_response(&compacted).map(|r| r.compact_revision), Ok(9));
        assert_eq!(msg(&[]), Ok(WatchMessage::Other));
        // watch_id:5 events{}: the watch it belongs to.
        let five = decode_response(&[0x10, 0x05, 0x5a, 0x00]).unwrap();
        assert_eq!((five.watch_id, five.message), (5, WatchMessage::Events(1)));
        assert!(decode_response(&[0x5a, 0x09, 0x01]).is_err(), "length past the end");
        assert!(decode_response(&[0x80]).is_err(), "truncated varint");
        assert!(decode_response(&[0x0b]).is_err(), "wire type 3");
        assert!(decode_response(&[0x58, 0x01]).is_err(), "events as a varint");
        assert!(decode_response(&[0x5a, 0x02, 0x12, 0x05]).is_err(), "kv runs past the event");
        assert!(decode_response(&[0x5a, 0x04, 0x12, 0x02, 0x08, 0x01]).is_err(), "kv key as a varint");
    }

    #[test]
    fn decodes_a_put_and_a_delete_byte_for_byte() {
        // header{revision:300} watch_id:2 events{kv{key:"/u/a" mod_revision:300 value:"{}"}}
        //   events{type:DELETE kv{key:"/u/b" mod_revision:300}}
        let bytes = [
            0x0a, 0x03, 0x18, 0xac, 0x02, // header
            0x10, 0x02, // watch_id
            0x5a, 0x0f, 0x12, 0x0d, 0x0a, 0x04, b'/', b'u', b'/', b'a', 0x18, 0xac, 0x02, 0x2a, 0x02, b'{', b'}', 0x5a,
            0x0d, 0x08, 0x01, 0x12, 0x09, 0x0a, 0x04, b'/', b'u', b'/', b'b', 0x18, 0xac, 0x02,
        ];
        let r = decode_response(&bytes).unwrap();
        assert_eq!((r.watch_id, r.revision, r.message.clone()), (2, 300, WatchMessage::Events(2)));
        let put = Event { kind: EventKind::Put, key: b"/u/a".to_vec(), value: b"{}".to_vec(), mod_revision: 300 };
        let delete = Event { kind: EventKind::Delete, key: b"/u/b".to_vec(), value: vec![], mod_revision: 300 };
        assert_eq!(r.events, [put, delete]);
        assert_eq!(decode_response(&encode_response(&r)), Ok(r), "the tests' encoder agrees");
    }

    #[test]
    fn encoder_round_trips() {
        let r = WatchResponse {
            watch_id: 7,
            message: WatchMessage::Canceled("etcdserver: mvcc: required revision has been compacted".into()),
            revision: 1 << 40,
            compact_revision: 99,
            fragment: true,
            events: vec![],
        };
        assert_eq!(decode_response(&encode_response(&r)), Ok(r));
        let unknown = Event { kind: EventKind::Unknown(7), key: b"/k".to_vec(), value: b"v".to_vec(), mod_revision: 3 };
        let r = WatchResponse {
            watch_id: 1,
            message: WatchMessage::Events(1),
            revision: 3,
            compact_revision: 0,
            fragment: false,
            events: vec![unknown],
        };
        assert_eq!(decode_response(&encode_response(&r)), Ok(r));
    }
}
