//! Times each parser natively on large crafted inputs (up to
//! `max_body_bytes`, 8 MiB by default): deep nesting, many keys, long
//! strings, huge numbers, many members, duplicate addresses. A benchmark,
//! not a test: it prints numbers and asserts nothing.
//!
//! Usage: `slow_hunt [--size BYTES] [--save DIR] [--runs N] [FILTER]`
//! - `--save DIR` writes every input that took longer than 100 ms to
//!   `DIR/<target>/<case>` in the replay's layout (gzip them to keep them):
//!   a parser's inputs under its fuzz target, the snapshots timed through
//!   the picker as `shared_data` inputs; the rest is not saved;
//! - `FILTER` runs only the cases whose `parser/case` name contains it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use upsync_wasm_fuzz::{raw, ConsulQueryKind, PART_SEPARATOR, TARGETS};

const MIB: usize = 1 << 20;

/// Repeats `item(i)` between `head` and `tail`, separated by `sep`, until
/// the document would pass `size` bytes.
fn fill(size: usize, head: &str, sep: &str, tail: &str, item: impl Fn(usize) -> String) -> Vec<u8> {
    let mut out = String::with_capacity(size);
    out.push_str(head);
    let mut i = 0;
    loop {
        let next = item(i);
        if out.len() + next.len() + sep.len() + tail.len() > size {
            break;
        }
        if i > 0 {
            out.push_str(sep);
        }
        out.push_str(&next);
        i += 1;
    }
    out.push_str(tail);
    out.into_bytes()
}

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

fn b64(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            let c = if k > chunk.len() {
                '='
            } else {
                char::from(A.get(((n >> (18 - 6 * k)) & 63) as usize).copied().unwrap_or(b'A'))
            };
            out.push(c);
        }
    }
    out
}

fn digits(n: usize) -> String {
    "1".repeat(n)
}

/// A `{"a":[[...]]}` value nested `depth` levels, as text.
fn nested(depth: usize) -> String {
    format!(r#"{{"a":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth))
}

/// The generic shapes, with `hole` where the parser expects its list.
fn generic(size: usize) -> Vec<(&'static str, Vec<u8>)> {
    let pad = |s: String| s.into_bytes();
    vec![
        ("deep-nesting", pad("[".repeat(size))),
        ("deep-127-repeated", fill(size, "[", ",", "]", |_| format!("{}{}", "[".repeat(126), "]".repeat(126)))),
        ("many-keys", fill(size, "{", ",", "}", |i| format!(r#""k{i}":0"#))),
        // One allocation for every few input bytes: a map node or a Vec each.
        ("tiny-objects", fill(size, "[", ",", "]", |_| r#"{"":0}"#.to_string())),
        (
            "deep-objects-127-repeated",
            fill(size, "[", ",", "]", |_| format!("{}0{}", r#"{"":"#.repeat(126), "}".repeat(126))),
        ),
        ("tiny-arrays", fill(size, "[", ",", "]", |_| "[0]".to_string())),
        ("tiny-strings", fill(size, "[", ",", "]", |_| r#""a""#.to_string())),
        ("same-key-repeated", fill(size, "{", ",", "}", |_| r#""hosts":[]"#.to_string())),
        ("long-string", pad(format!(r#"{{"x":"{}"}}"#, "a".repeat(size - 10)))),
        ("escapes", fill(size, r#"{"x":""#, "", r#""}"#, |_| r"\u00e9\n".to_string())),
        ("huge-integer", pad(format!(r#"{{"x":{}}}"#, digits(size - 10)))),
        ("huge-fraction", pad(format!(r#"{{"x":0.{}1}}"#, "0".repeat(size - 12)))),
        ("huge-exponent", pad(format!(r#"{{"x":1e{}}}"#, digits(size - 12)))),
        ("many-floats", fill(size, r#"{"x":["#, ",", "]}", |_| "1.7976931348623157e308".to_string())),
        ("whitespace", pad(format!("{}{{}}", " ".repeat(size - 2)))),
    ]
}

type Case = (String, Vec<u8>);

fn etcd_v3_cases(size: usize) -> Vec<Case> {
    let kv =
        |key: String, value: &str| format!(r#"{{"key":"{}","mod_revision":"5","value":"{}"}}"#, b64(&key), b64(value));
    let wrap = |items: Vec<u8>| items;
    let head = r#"{"header":{"revision":"9"},"count":"1","kvs":["#;
    let mut out: Vec<Case> = vec![
        (
            "members-distinct".into(),
            wrap(fill(size, head, ",", "]}", |i| kv(format!("/upstreams/web/{}:80", ip(i)), r#"{"weight":2}"#))),
        ),
        (
            "members-same-address".into(),
            fill(size, head, ",", "]}", |i| kv(format!("/upstreams/web/d{i}/10.0.0.1:80"), "{}")),
        ),
        ("keys-not-addresses".into(), fill(size, head, ",", "]}", |i| kv(format!("/upstreams/web/nonsense{i}"), "{}"))),
        ("keys-outside-prefix".into(), fill(size, head, ",", "]}", |i| kv(format!("/elsewhere/{}:80", ip(i)), "{}"))),
        (
            "values-nested-127".into(),
            fill(size, head, ",", "]}", |i| kv(format!("/upstreams/web/{}:80", ip(i)), &nested(125))),
        ),
        (
            "values-1-KiB-of-keys".into(),
            fill(size, head, ",", "]}", |i| {
                let obj = fill(1000, "{", ",", "}", |k| format!(r#""k{k}":1"#));
                kv(format!("/upstreams/web/{}:80", ip(i)), &String::from_utf8_lossy(&obj))
            }),
        ),
        (
            "one-huge-key".into(),
            format!(
                r#"{{"header":{{}},"kvs":[{{"key":"{}","value":""}}]}}"#,
                b64(&format!("/upstreams/web/{}:80", "a".repeat(size * 3 / 4 - 40)))
            )
            .into_bytes(),
        ),
        (
            "one-huge-value".into(),
            format!(
                r#"{{"header":{{}},"kvs":[{{"key":"{}","value":"{}"}}]}}"#,
                b64("/upstreams/web/10.0.0.1:80"),
                b64(&"x".repeat(size * 3 / 4 - 80))
            )
            .into_bytes(),
        ),
        (
            "mod-revision-huge-number".into(),
            format!(r#"{{"header":{{}},"kvs":[{{"mod_revision":{}}}]}}"#, digits(size - 40)).into_bytes(),
        ),
    ];
    out.extend(generic(size).into_iter().map(|(n, d)| (format!("generic-{n}"), d)));
    out
}

fn etcd_v2_cases(size: usize) -> Vec<Case> {
    let leaf = |i: usize| format!(r#"{{"key":"/upstreams/web/{}:80","value":"{{\"weight\":2}}"}}"#, ip(i));
    let head = r#"{"action":"get","node":{"key":"/upstreams/web","dir":true,"nodes":["#;
    let mut deep = String::new();
    // 60 directory levels (two JSON levels each), leaves at every level.
    let per_level = size / 60 / 80;
    let mut n = 0;
    for _ in 0..60 {
        deep.push_str(r#"{"key":"/upstreams/web/d","dir":true,"nodes":["#);
        for _ in 0..per_level {
            deep.push_str(&leaf(n));
            deep.push(',');
            n += 1;
        }
    }
    deep.push_str(&leaf(n));
    for _ in 0..60 {
        deep.push_str("]}");
    }
    let mut out: Vec<Case> = vec![
        ("members-distinct".into(), fill(size, head, ",", "]}}", leaf)),
        (
            "members-same-address".into(),
            fill(size, head, ",", "]}}", |i| format!(r#"{{"key":"/upstreams/web/d{i}/10.0.0.1:80","value":"{{}}"}}"#)),
        ),
        (
            "dirs-60-deep".into(),
            format!(r#"{{"action":"get","node":{{"key":"/upstreams/web","dir":true,"nodes":[{deep}]}}}}"#).into_bytes(),
        ),
        (
            "empty-dirs".into(),
            fill(size, head, ",", "]}}", |_| r#"{"key":"/upstreams/web/d","dir":true,"nodes":[]}"#.into()),
        ),
    ];
    out.extend(generic(size).into_iter().map(|(n, d)| (format!("generic-{n}"), d)));
    out
}

fn consul_kv_cases(size: usize) -> Vec<Case> {
    let e = |key: String, value: &str| format!(r#"{{"Key":"{key}","Value":"{}","ModifyIndex":5}}"#, b64(value));
    let mut out: Vec<Case> = vec![
        (
            "members-distinct".into(),
            fill(size, "[", ",", "]", |i| e(format!("upstreams/web/{}:80", ip(i)), r#"{"weight":2}"#)),
        ),
        (
            "members-same-address".into(),
            fill(size, "[", ",", "]", |i| e(format!("upstreams/web/d{i}/10.0.0.1:80"), "{}")),
        ),
        (
            "values-nested-127".into(),
            fill(size, "[", ",", "]", |i| e(format!("upstreams/web/{}:80", ip(i)), &nested(125))),
        ),
        ("folders".into(), fill(size, "[", ",", "]", |i| format!(r#"{{"Key":"upstreams/web/f{i}/","Value":null}}"#))),
    ];
    out.extend(generic(size).into_iter().map(|(n, d)| (format!("generic-{n}"), d)));
    out
}

fn catalog_entry(i: usize, tags: &str) -> String {
    format!(
        r#"{{"Node":"n{i}","Address":"{}","ServiceID":"web-{i}","ServiceAddress":"","ServicePort":8080,"ServiceTags":[{tags}],"ServiceWeights":{{"Passing":3,"Warning":1}}}}"#,
        ip(i)
    )
}

fn consul_catalog_cases(size: usize) -> Vec<Case> {
    let many_tags = fill(size / 20, "", ",", "", |k| format!(r#""weight={}""#, k % 100));
    let mut out: Vec<Case> = vec![
        ("members-distinct".into(), fill(size, "[", ",", "]", |i| catalog_entry(i, r#""weight=2","backup""#))),
        (
            "members-same-address".into(),
            fill(size, "[", ",", "]", |i| catalog_entry(i, "").replace(&format!(r#""{}""#, ip(i)), r#""10.0.0.1""#)),
        ),
        ("many-tags".into(), fill(size, "[", ",", "]", |i| catalog_entry(i, &String::from_utf8_lossy(&many_tags)))),
        (
            "bad-tags".into(),
            fill(size, "[", ",", "]", |i| catalog_entry(i, r#""weight=x","max_fails=-1","fail_timeout=zz""#)),
        ),
        (
            "hostnames-253".into(),
            fill(size, "[", ",", "]", |i| {
                let name = format!("h{i}.{}", ["a".repeat(62), "b".repeat(62), "c".repeat(62)].join("."));
                format!(r#"{{"Node":"n","Address":"{name}","ServiceID":"w{i}","ServicePort":80}}"#)
            }),
        ),
    ];
    out.extend(generic(size).into_iter().map(|(n, d)| (format!("generic-{n}"), d)));
    out
}

fn consul_health_cases(size: usize) -> Vec<Case> {
    let entry = |i: usize, checks: &str| {
        format!(
            r#"{{"Node":{{"Node":"n{i}","Address":"{}"}},"Service":{{"ID":"web-{i}","Service":"web","Tags":["weight=2"],"Address":"","Port":8080}},"Checks":[{checks}]}}"#,
            ip(i)
        )
    };
    let check = r#"{"Node":"n","CheckID":"c","Status":"passing"}"#;
    let many_checks = fill(size / 20, "", ",", "", |_| check.to_string());
    let mut out: Vec<Case> = vec![
        ("members-distinct".into(), fill(size, "[", ",", "]", |i| entry(i, check))),
        (
            "members-same-address".into(),
            fill(size, "[", ",", "]", |i| entry(i, check).replace(&format!(r#""{}""#, ip(i)), r#""10.0.0.1""#)),
        ),
        ("many-checks".into(), fill(size, "[", ",", "]", |i| entry(i, &String::from_utf8_lossy(&many_checks)))),
        ("no-checks".into(), fill(size, "[", ",", "]", |i| entry(i, "").replace(r#","Checks":[]"#, ""))),
    ];
    out.extend(generic(size).into_iter().map(|(n, d)| (format!("generic-{n}"), d)));
    out
}

fn nacos_host(i: usize, ip: &str, weight: &str, metadata: &str) -> String {
    format!(
        r#"{{"instanceId":"{ip}#8080#DEFAULT#DEFAULT_GROUP@@web","ip":"{ip}","port":8080,"weight":{weight},"healthy":true,"enabled":true,"ephemeral":true,"clusterName":"DEFAULT","serviceName":"DEFAULT_GROUP@@web","metadata":{{{metadata}}},"n":{i}}}"#
    )
}

fn nacos_cases(size: usize) -> Vec<Case> {
    let head =
        r#"{"name":"DEFAULT_GROUP@@web","groupName":"DEFAULT_GROUP","clusters":"","cacheMillis":10000,"hosts":["#;
    let tail =
        r#"],"lastRefTime":1700000000000,"checksum":"","allIPs":false,"reachProtectionThreshold":false,"valid":true}"#;
    let many_meta = fill(size / 50, "", ",", "", |k| format!(r#""k{k}":"v""#));
    let mut out: Vec<Case> = vec![
        (
            "members-distinct".into(),
            fill(size, head, ",", tail, |i| nacos_host(i, &ip(i), "1.0", r#""backup":"false","max_fails":"3""#)),
        ),
        ("members-same-address".into(), fill(size, head, ",", tail, |i| nacos_host(i, "10.0.0.1", "1.0", ""))),
        (
            "weights-long-digit-strings".into(),
            fill(size, head, ",", tail, |i| nacos_host(i, &ip(i), &format!(r#""{}""#, digits(size / 64)), "")),
        ),
        (
            "weights-long-fractions".into(),
            fill(size, head, ",", tail, |i| nacos_host(i, &ip(i), &format!("0.{}1", "0".repeat(size / 64)), "")),
        ),
        (
            "weights-huge-exponent-strings".into(),
            fill(size, head, ",", tail, |i| nacos_host(i, &ip(i), &format!(r#""1e{}""#, digits(size / 64)), "")),
        ),
        (
            "many-metadata-keys".into(),
            fill(size, head, ",", tail, |i| nacos_host(i, &ip(i), "1", &String::from_utf8_lossy(&many_meta))),
        ),
        (
            "enabled-huge-value".into(),
            fill(size, head, ",", tail, |i| {
                nacos_host(i, &ip(i), "1", "")
                    .replace(r#""enabled":true"#, &format!(r#""enabled":[{}]"#, "0,".repeat(size / 64) + "0"))
            }),
        ),
        (
            "port-zero-padded".into(),
            fill(size, head, ",", tail, |i| {
                nacos_host(i, &ip(i), "1", "")
                    .replace(r#""port":8080"#, &format!(r#""port":"{}8080""#, "0".repeat(size / 64)))
            }),
        ),
        ("bad-ips".into(), fill(size, head, ",", tail, |i| nacos_host(i, &format!("10.0.0.{}", 300 + i), "1", ""))),
    ];
    out.extend(generic(size).into_iter().map(|(n, d)| (format!("generic-{n}"), d)));
    out
}

fn eureka_instance(i: usize, ip: &str, metadata: &str) -> String {
    format!(
        r#"{{"instanceId":"{ip}:web:{i}","hostName":"{ip}","app":"WEB","ipAddr":"{ip}","status":"UP","overriddenStatus":"UNKNOWN","port":{{"$":8080,"@enabled":"true"}},"securePort":{{"$":8443,"@enabled":"false"}},"countryId":1,"dataCenterInfo":{{"@class":"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo","name":"MyOwn"}},"metadata":{{{metadata}}}}}"#
    )
}

fn eureka_cases(size: usize) -> Vec<Case> {
    let head = r#"{"application":{"name":"WEB","instance":["#;
    let tail = "]}}";
    let many_meta = fill(size / 50, "", ",", "", |k| format!(r#""k{k}":"v""#));
    let mut out: Vec<Case> = vec![
        (
            "members-distinct".into(),
            fill(size, head, ",", tail, |i| eureka_instance(i, &ip(i), r#""weight":"2","backup":"false""#)),
        ),
        ("members-same-address".into(), fill(size, head, ",", tail, |i| eureka_instance(i, "10.0.0.1", ""))),
        (
            "weights-long-digit-strings".into(),
            fill(size, head, ",", tail, |i| {
                eureka_instance(i, &ip(i), &format!(r#""weight":"{}""#, digits(size / 64)))
            }),
        ),
        (
            "weights-long-fractions".into(),
            fill(size, head, ",", tail, |i| {
                eureka_instance(i, &ip(i), &format!(r#""weight":"0.{}1""#, "0".repeat(size / 64)))
            }),
        ),
        (
            "weights-huge-exponent".into(),
            fill(size, head, ",", tail, |i| {
                eureka_instance(i, &ip(i), &format!(r#""weight":"1e{}""#, digits(size / 64)))
            }),
        ),
        (
            "weights-tiny-many".into(),
            fill(size, head, ",", tail, |i| eureka_instance(i, &ip(i), r#""weight":"4.9e-324""#)),
        ),
        (
            "many-metadata-keys".into(),
            fill(size, head, ",", tail, |i| eureka_instance(i, &ip(i), &String::from_utf8_lossy(&many_meta))),
        ),
        (
            "status-not-up".into(),
            fill(size, head, ",", tail, |i| {
                eureka_instance(i, &ip(i), "").replace(r#""status":"UP""#, r#""status":"DOWN""#)
            }),
        ),
        (
            "enabled-bad-values".into(),
            fill(size, head, ",", tail, |i| {
                eureka_instance(i, &ip(i), "")
                    .replace(r#""@enabled":"true""#, &format!(r#""@enabled":[{}]"#, "0,".repeat(size / 64) + "0"))
            }),
        ),
        (
            "hostnames-253".into(),
            fill(size, head, ",", tail, |i| {
                let name = format!("h{i}.{}", ["a".repeat(62), "b".repeat(62), "c".repeat(62)].join("."));
                eureka_instance(i, "", "").replace(r#""hostName":"""#, &format!(r#""hostName":"{name}""#))
            }),
        ),
        (
            "single-object-huge".into(),
            format!(
                r#"{{"application":{{"name":"WEB","instance":{}}}}}"#,
                eureka_instance(
                    0,
                    "10.0.0.1",
                    &String::from_utf8_lossy(&fill(size - 600, "", ",", "", |k| format!(r#""k{k}":"v""#)))
                )
            )
            .into_bytes(),
        ),
    ];
    out.extend(generic(size).into_iter().map(|(n, d)| (format!("generic-{n}"), d)));
    out
}

fn config_cases(size: usize) -> Vec<Case> {
    let up = |i: usize, fallback: &str| {
        format!(
            r#"{{"name":"u{i}","registry":{{"type":"etcd_v3","target":"etcd","prefix":"/u/{i}/"}},"fallback":[{fallback}]}}"#
        )
    };
    let big_fallback = fill(size - 200, "", ",", "", |i| format!(r#""{}:80""#, ip(i)));
    vec![
        ("256-upstreams", fill(size.min(MIB), r#"{"upstreams":["#, ",", "]}", |i| up(i, "")).into_iter().collect()),
        ("many-upstreams-refused", fill(size, r#"{"upstreams":["#, ",", "]}", |i| up(i, ""))),
        (
            "huge-fallback",
            format!(r#"{{"upstreams":[{}]}}"#, up(0, &String::from_utf8_lossy(&big_fallback))).into_bytes(),
        ),
    ]
    .into_iter()
    .map(|(n, d)| (n.to_string(), d))
    .chain(generic(size).into_iter().map(|(n, d)| (format!("generic-{n}"), d)))
    .collect()
}

fn snapshot_cases(size: usize) -> Vec<Case> {
    let m = |a: String| {
        format!(r#"{{"address":"{a}","weight":1,"max_fails":2,"fail_timeout":10,"down":false,"backup":false}}"#)
    };
    let head = r#"{"key":"upsync/v1/snap/web","version":3,"source":"registry","members":["#;
    vec![
        ("members-distinct".to_string(), fill(size, head, ",", "]}", |i| m(format!("{}:80", ip(i))))),
        ("members-same-address".to_string(), fill(size, head, ",", "]}", |_| m("10.0.0.1:80".into()))),
    ]
}

fn eds_request_cases(size: usize) -> Vec<Case> {
    vec![
        (
            "names-distinct".to_string(),
            fill(size, r#"{"version_info":"","resource_names":["#, ",", "]}", |i| format!(r#""n{i}""#)),
        ),
        // Each repeat of a known name decodes its snapshot and answers it again:
        // kept small, the answer grows with names x members.
        (
            "names-web-repeated-1KiB".to_string(),
            fill(1024, r#"{"version_info":"","resource_names":["#, ",", "]}", |_| r#""web""#.into()),
        ),
        (
            "names-web-repeated-4KiB".to_string(),
            fill(4096, r#"{"version_info":"","resource_names":["#, ",", "]}", |_| r#""web""#.into()),
        ),
    ]
}

fn etcd_watch_cases(size: usize) -> Vec<Case> {
    let mut events = Vec::with_capacity(size);
    while events.len() + 2 <= size {
        events.extend_from_slice(&[0x5a, 0x00]);
    }
    let mut varints = Vec::with_capacity(size);
    while varints.len() + 11 <= size {
        varints.extend_from_slice(&[0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    }
    vec![("empty-events".to_string(), events), ("long-varints".to_string(), varints)]
}

/// Where and how an input timed by `parser` is saved for the replay.
fn saved_form(parser: &str, data: &[u8]) -> Option<(&'static str, Vec<u8>)> {
    if let Some((target, _)) = TARGETS.iter().find(|(t, _)| *t == parser) {
        return Some((target, data.to_vec()));
    }
    if parser.starts_with("picker") {
        // shared_data parts: index, status record, snapshot, version.
        let index = br#"{"key":"upsync/v1/index","upstreams":["web"]}"#;
        let version = br#"{"key":"upsync/v1/ver/web","version":1}"#;
        let parts: [&[u8]; 4] = [index, b"", data, version];
        return Some(("shared_data", parts.join(&PART_SEPARATOR)));
    }
    None
}

/// A timed function: the members (or items) it read.
type RunFn = Box<dyn Fn(&[u8]) -> usize>;

struct Parser {
    name: &'static str,
    cases: fn(usize) -> Vec<Case>,
    run: RunFn,
}

fn parsers() -> Vec<Parser> {
    let store_100 = raw::store_with_members(100);
    let p = |name, cases, run: RunFn| Parser { name, cases, run };
    vec![
        // Baselines: serde_json alone, into a Value tree (what every adapter
        // does first) and into IgnoredAny (a typed reader skipping the value).
        p(
            "serde_json_value",
            eureka_cases,
            Box::new(|d| usize::from(serde_json::from_slice::<serde_json::Value>(d).is_ok())),
        ),
        p(
            "serde_json_ignored",
            eureka_cases,
            Box::new(|d| usize::from(serde_json::from_slice::<serde::de::IgnoredAny>(d).is_ok())),
        ),
        p("etcd_v3", etcd_v3_cases, Box::new(raw::etcd_v3)),
        p("etcd_v2", etcd_v2_cases, Box::new(raw::etcd_v2)),
        p("consul_kv", consul_kv_cases, Box::new(|d| raw::consul(ConsulQueryKind::Kv, d))),
        p("consul_catalog", consul_catalog_cases, Box::new(|d| raw::consul(ConsulQueryKind::Catalog, d))),
        p(
            "consul_health",
            consul_health_cases,
            Box::new(|d| raw::consul(ConsulQueryKind::Health { passing_only: false }, d)),
        ),
        p("nacos", nacos_cases, Box::new(raw::nacos)),
        p("eureka", eureka_cases, Box::new(raw::eureka)),
        p("config", config_cases, Box::new(raw::config)),
        p("snapshot", snapshot_cases, Box::new(raw::snapshot)),
        p("eds_answer", snapshot_cases, Box::new(raw::eds_answer)),
        p("picker_hash", snapshot_cases, Box::new(|d| raw::picker(d, "hash"))),
        p("picker_round_robin", snapshot_cases, Box::new(|d| raw::picker(d, "round_robin"))),
        p("eds_request", eds_request_cases, Box::new(raw::eds_request)),
        p("eds_request_answered", eds_request_cases, Box::new(move |d| raw::eds_handle(&store_100, d))),
        p("etcd_watch", etcd_watch_cases, Box::new(raw::etcd_watch)),
        // The whole main-thread cost of one answer: parse, diff, publish, status.
        p("poller_etcd_v3", etcd_v3_cases, Box::new(|d| raw::poller_answer(0, d))),
        p("poller_nacos", nacos_cases, Box::new(|d| raw::poller_answer(5, d))),
        p("poller_eureka", eureka_cases, Box::new(|d| raw::poller_answer(6, d))),
        p("poller_consul_health", consul_health_cases, Box::new(|d| raw::poller_answer(4, d))),
    ]
}

fn main() {
    let mut size = 8 * MIB;
    let mut save: Option<PathBuf> = None;
    let mut runs = 3;
    let mut filter = String::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size" => size = args.next().and_then(|s| s.parse().ok()).unwrap_or(size),
            "--save" => save = args.next().map(PathBuf::from),
            "--runs" => runs = args.next().and_then(|s| s.parse().ok()).unwrap_or(runs),
            f => filter = f.to_string(),
        }
    }
    println!("{:<22} {:<32} {:>9} {:>10} {:>9} {:>8}", "parser", "case", "MiB", "ms (min)", "MiB/s", "members");
    let mut worst: Vec<(String, Duration)> = Vec::new();
    for p in parsers() {
        let mut slowest: Option<(String, Duration)> = None;
        for (case, data) in (p.cases)(size) {
            if !format!("{}/{case}", p.name).contains(&filter) {
                continue;
            }
            let mut best = Duration::MAX;
            let mut members = 0;
            for _ in 0..runs.max(1) {
                let start = Instant::now();
                members = (p.run)(&data);
                best = best.min(start.elapsed());
            }
            let mib = data.len() as f64 / MIB as f64;
            let secs = best.as_secs_f64();
            println!("{:<22} {case:<32} {mib:>9.2} {:>10.1} {:>9.1} {members:>8}", p.name, secs * 1000.0, mib / secs);
            if slowest.as_ref().is_none_or(|(_, d)| best > *d) {
                slowest = Some((case.clone(), best));
            }
            if let (Some(dir), Some((target, bytes))) = (&save, saved_form(p.name, &data)) {
                if best > Duration::from_millis(100) {
                    let folder = dir.join(target);
                    let file = if target == p.name { case.clone() } else { format!("{}-{case}", p.name) };
                    let written =
                        std::fs::create_dir_all(&folder).and_then(|()| std::fs::write(folder.join(file), &bytes));
                    if let Err(e) = written {
                        eprintln!("cannot save {}/{case}: {e}", p.name);
                    }
                }
            }
        }
        if let Some((case, d)) = slowest {
            worst.push((format!("{}/{case}", p.name), d));
        }
    }
    let mut summary = String::new();
    for (name, d) in &worst {
        let _ = writeln!(summary, "  {name:<56} {:>9.1} ms", d.as_secs_f64() * 1000.0);
    }
    println!("\nslowest case per parser:\n{summary}");
}
