//! Where a one-member change of a 10,000-member upstream spends its time
//! in the plugin's core (issue 10), measured natively: the watch message
//! applied (decode, the change, the member list, the machine's checks),
//! the flush (the snapshot written), one EDS answer built from it, and,
//! for comparison, the full read a change cost before watch events were
//! applied as changes (the range answer parsed). On Envoy these run in
//! V8: expect each a small factor slower.
//!
//! Run: `cargo bench --bench change_cost`.

// Benchmark code, not plugin code: it may unwrap and index.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::time::Instant;

use upsync_wasm::sansio::config::PluginConfig;
use upsync_wasm::sansio::registry::etcd_v3::EtcdV3Adapter;
use upsync_wasm::sansio::registry::HttpResponse;
use upsync_wasm::sansio::serve::eds::{self, EdsReply};
use upsync_wasm::sansio::shared::snapshot;
use upsync_wasm::sansio::shared::store::{MemoryStore, StoreRules};
use upsync_wasm::sansio::sync::poller::{Action, Leadership, Poller};
use upsync_wasm::sansio::util::base64;

const PREFIX: &str = "/upstreams/big/";
const VALUE: &str = r#"{"weight":1,"max_fails":2,"fail_timeout":10,"down":0,"backup":0}"#;

fn addr(i: usize) -> String {
    let n = i + 1;
    format!("10.{}.{}.{}:8080", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

/// The JSON gateway's full read of `n` members at store revision `rev`.
fn range_answer(n: usize, rev: i64) -> Vec<u8> {
    let kvs: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"key":"{}","create_revision":"2","mod_revision":"{}","version":"1","value":"{}"}}"#,
                base64::encode(format!("{PREFIX}{}", addr(i)).as_bytes()),
                i + 2,
                base64::encode(VALUE.as_bytes())
            )
        })
        .collect();
    format!(r#"{{"header":{{"revision":"{rev}"}},"kvs":[{}],"count":"{n}"}}"#, kvs.join(",")).into_bytes()
}

fn probe_answer(n: usize, rev: i64) -> Vec<u8> {
    format!(
        r#"{{"header":{{"revision":"{rev}"}},"kvs":[{{"key":"{}","mod_revision":"{}"}}],"more":true,"count":"{n}"}}"#,
        base64::encode(format!("{PREFIX}{}", addr(n - 1)).as_bytes()),
        n + 1
    )
    .into_bytes()
}

/// Protobuf by hand: `WatchResponse{header{revision}, watch_id, events{type, kv{key, mod_revision, value}}}`.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
fn field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    varint(out, (number << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}
fn varint_field(out: &mut Vec<u8>, number: u64, v: u64) {
    varint(out, number << 3);
    varint(out, v);
}
fn watch_message(created: bool, rev: i64, event: Option<(bool, &str)>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut header = Vec::new();
    varint_field(&mut header, 3, rev as u64);
    field(&mut out, 1, &header);
    varint_field(&mut out, 2, 1);
    if created {
        varint_field(&mut out, 3, 1);
    }
    if let Some((delete, key)) = event {
        let mut kv = Vec::new();
        field(&mut kv, 1, key.as_bytes());
        varint_field(&mut kv, 3, rev as u64);
        if !delete {
            field(&mut kv, 5, VALUE.as_bytes());
        }
        let mut e = Vec::new();
        if delete {
            varint_field(&mut e, 1, 1);
        }
        field(&mut e, 2, &kv);
        field(&mut out, 11, &e);
    }
    out
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    let n = 10_000;
    let config = PluginConfig::parse(
        format!(
            r#"{{"upstreams":[{{"name":"big","registry":{{"type":"etcd_v3","target":"etcd","prefix":"{PREFIX}","grpc_target":"etcd_grpc"}},"interval_ms":30000}}]}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    let mut store = MemoryStore::new(StoreRules::Envoy);
    let mut p = Poller::new(&config, Leadership::Singleton, 1);
    let mut rev = n as i64 + 1;
    let answer_all = |p: &mut Poller, store: &mut MemoryStore, body: &dyn Fn() -> Vec<u8>| {
        while let Some(a) = p.poll_action() {
            if let Action::Dispatch(d) = a {
                let b = body();
                p.handle_response(0, d.upstream, d.id, HttpResponse::new(Some(200), &[], &b));
            }
        }
        p.flush(store);
    };
    p.handle_timeout(&mut store, 0);
    answer_all(&mut p, &mut store, &|| range_answer(n, rev));
    p.handle_watch_message(1, 0, &watch_message(true, rev, None));
    answer_all(&mut p, &mut store, &|| probe_answer(n, rev));
    let request = eds::parse_request(br#"{"resource_names":["big"]}"#).unwrap();

    let (mut apply, mut flush, mut eds_ms, mut eds_bytes) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for i in 0..40 {
        rev += 1;
        let key = format!("{PREFIX}{}", addr(n + 1));
        let message = watch_message(false, rev, Some((i % 2 == 1, &key)));
        let t = Instant::now();
        p.handle_watch_message(2 + i, 0, &message);
        apply.push(ms(t));
        assert!(p.poll_action().is_none(), "no registry call for a watch event");
        let t = Instant::now();
        p.flush(&mut store);
        flush.push(ms(t));
        let t = Instant::now();
        match eds::answer(&store, &request) {
            EdsReply::Assignment { body, .. } => eds_bytes = body.len(),
            other => panic!("{other:?}"),
        }
        eds_ms.push(ms(t));
    }
    // The flush's and the EDS answer's parts.
    let (mut encode, mut decode, mut views, mut cla) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        let bytes = snapshot::read_bytes(&store, "big").unwrap().unwrap();
        let t = Instant::now();
        let (_, _, in_place) = snapshot::views("upsync/v1/snap/big", &bytes).unwrap();
        views.push(ms(t));
        assert_eq!(in_place.len(), n);
        let t = Instant::now();
        let snap = snapshot::read(&store, "big").unwrap().unwrap();
        decode.push(ms(t));
        let t = Instant::now();
        assert!(snap.encode("upsync/v1/snap/big").len() > n);
        encode.push(ms(t));
        let t = Instant::now();
        let (value, _) = eds::cluster_load_assignment("big", snap.members.iter());
        cla.push(ms(t));
        assert!(value.len() > n);
    }
    let body = range_answer(n, rev);
    let read: Vec<f64> = (0..10)
        .map(|_| {
            let t = Instant::now();
            let (list, _) = EtcdV3Adapter::new(PREFIX).parse_fetch(&body).unwrap();
            assert_eq!(list.members.len(), n);
            ms(t)
        })
        .collect();
    println!("one-member change of a {n}-member upstream, in the core (native, release build, median ms):");
    let rows = [
        ("watch event applied (decode, change, member list, checks)".to_string(), median(apply)),
        ("flush (the snapshot written)".to_string(), median(flush)),
        ("  of which the snapshot encoded".to_string(), median(encode)),
        (format!("EDS answer built ({eds_bytes} bytes)"), median(eds_ms)),
        ("  of which the snapshot read in place (its members' views)".to_string(), median(views)),
        ("  the ClusterLoadAssignment written (from decoded members)".to_string(), median(cla)),
        ("  the snapshot decoded into members (pick mode, nginx)".to_string(), median(decode)),
        (format!("before: the full read of a change parsed ({} bytes)", body.len()), median(read)),
    ];
    for (what, ms) in rows {
        println!("  {what:<62} {ms:>9.3}");
    }
    println!("(Envoy then parses the EDS answer and updates the cluster: not measured here.)");
}
