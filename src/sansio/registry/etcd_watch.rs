//! etcd v3 gRPC Watch messages: the request that opens a watch on a
//! prefix, and what a response says. The stream's life (open, reopen with
//! backoff) is [`crate::sansio::sync::watch`].
//!
//! The protobuf is encoded by hand (no codegen in the module): only
//! `WatchRequest.create_request{key, range_end}` is sent, and only the
//! `created`, `canceled`, `cancel_reason` and `events` fields of
//! `WatchResponse` are read (etcd's api/etcdserverpb/rpc.proto).

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

/// What one `WatchResponse` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// The watch is in place.
    Created,
    /// This many events under the prefix.
    Events(usize),
    /// etcd ended the watch (e.g. compaction); the reason, if given.
    Canceled(String),
    /// Anything else (progress notifications).
    Other,
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
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

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if n > self.bytes.len() {
            return Err("field runs past the end".into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
}

/// Decodes a `WatchResponse`.
/// One decoded `WatchResponse`: which watch, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchResponse {
    pub watch_id: u64,
    pub message: WatchMessage,
}

pub fn decode_response(bytes: &[u8]) -> Result<WatchResponse, String> {
    let mut r = Reader { bytes };
    let (mut created, mut canceled, mut events, mut watch_id) = (false, false, 0usize, 0u64);
    let mut reason = String::new();
    while !r.bytes.is_empty() {
        let tag = r.varint()?;
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => {
                let v = r.varint()?;
                match field {
                    2 => watch_id = v,
                    3 => created = v != 0,
                    4 => canceled = v != 0,
                    _ => {}
                }
            }
            1 => {
                r.take(8)?;
            }
            2 => {
                let len = usize::try_from(r.varint()?).map_err(|_| "length too large")?;
                let value = r.take(len)?;
                match field {
                    6 => reason = String::from_utf8_lossy(value).into_owned(),
                    11 => events += 1,
                    _ => {}
                }
            }
            5 => {
                r.take(4)?;
            }
            other => return Err(format!("unsupported wire type {other}")),
        }
    }
    let message = if canceled {
        WatchMessage::Canceled(reason)
    } else if events > 0 {
        WatchMessage::Events(events)
    } else if created {
        WatchMessage::Created
    } else {
        WatchMessage::Other
    };
    Ok(WatchResponse { watch_id, message })
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
        // header{revision:7} events{kv{key:"/a"}} events{type:DELETE}
        let events = [0x0a, 0x02, 0x18, 0x07, 0x5a, 0x06, 0x12, 0x04, 0x0a, 0x02, b'/', b'a', 0x5a, 0x02, 0x08, 0x01];
        assert_eq!(msg(&events), Ok(WatchMessage::Events(2)));
        // canceled:true cancel_reason:"compacted" compact_revision:9 (as fixed64 here to cover wire type 1)
        let mut canceled = vec![0x20, 0x01, 0x32, 0x09];
        canceled.extend_from_slice(b"compacted");
        canceled.extend_from_slice(&[0x29, 9, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(msg(&canceled), Ok(WatchMessage::Canceled("compacted".into())));
        assert_eq!(msg(&[]), Ok(WatchMessage::Other));
        // watch_id:5 events{}: the watch it belongs to.
        let five = WatchResponse { watch_id: 5, message: WatchMessage::Events(1) };
        assert_eq!(decode_response(&[0x10, 0x05, 0x5a, 0x00]), Ok(five));
        assert!(decode_response(&[0x5a, 0x09, 0x01]).is_err(), "length past the end");
        assert!(decode_response(&[0x80]).is_err(), "truncated varint");
        assert!(decode_response(&[0x0b]).is_err(), "wire type 3");
    }
}
