//! Writes the seed inputs of every target into `fuzz/corpus/<target>/`:
//! the captured registry answers of `tests/fixtures/` and a few hand-made
//! inputs. Idempotent (files named `seed-*`); `make fuzz` runs it first.
//!
//! Usage: `seeds [CORPUS_DIR]` (default: the crate's `corpus/`).

use std::path::{Path, PathBuf};
use upsync_wasm_fuzz::{poller_input, Op, PART_SEPARATOR, TARGETS};

fn main() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = std::env::args().nth(1).map_or_else(|| here.join("corpus"), PathBuf::from);
    let fixtures = here.join("../tests/fixtures");
    match write_all(&corpus, &fixtures) {
        Ok(n) => println!("seeds: {n} seed files under {}", corpus.display()),
        Err(e) => {
            eprintln!("seeds: {e}");
            std::process::exit(1);
        }
    }
}

fn fixture(fixtures: &Path, rel: &str) -> Result<Vec<u8>, String> {
    std::fs::read(fixtures.join(rel)).map_err(|e| format!("{rel}: {e}"))
}

/// The JSON fixtures of one registry folder.
fn fixture_dir(fixtures: &Path, dir: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(fixtures.join(dir)).map_err(|e| format!("{dir}: {e}"))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|x| x == "json") {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            out.push((name, bytes));
        }
    }
    out.sort();
    Ok(out)
}

fn text(items: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    items.iter().map(|(n, t)| (n.to_string(), t.as_bytes().to_vec())).collect()
}

const SNAPSHOT: &str = r#"{"key":"upsync/v1/snap/web","version":3,"source":"registry","members":[{"address":"10.0.0.1:80","weight":1,"max_fails":2,"fail_timeout":10,"down":false,"backup":false},{"address":"[::1]:81","weight":0,"max_fails":0,"fail_timeout":0,"down":true,"backup":true},{"address":"db.internal:5432","weight":65535,"max_fails":2,"fail_timeout":10,"down":false,"backup":false}]}"#;
const STATUS: &str = r#"{"key":"upsync/v1/status/web","name":"web","registry":{"type":"etcd_v3","target":"etcd","prefix":"/upstreams/web/"},"state":"waiting","syncs_ok":3,"syncs_failed":1,"updates_refused":0,"updates_applied":2,"bad_entries":1,"consecutive_failures":0,"last_sync_ms":1000,"last_error":"registry answered HTTP 500","last_error_ms":500}"#;
const INDEX: &str = r#"{"key":"upsync/v1/index","upstreams":["web","api"]}"#;
const VERSION: &str = r#"{"key":"upsync/v1/ver/web","version":3}"#;
const LEASE: &str = r#"{"key":"upsync/v1/lease/web","holder":2,"expires_ms":999999}"#;
const HEALTH: &str = r#"{"key":"upsync/v1/health/web","members":[{"address":"10.0.0.1:80","fails":[999000],"out_until":0},{"address":"db.internal:5432","fails":[],"out_until":2000000}]}"#;

fn shared(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(PART_SEPARATOR);
        }
        out.extend_from_slice(p.as_bytes());
    }
    out
}

fn respond(status: u8, index: u8, body: &[u8]) -> Op {
    Op::Respond { status, index, body: body.to_vec() }
}

/// Event sequences for the poller target, one kind of registry each.
fn poller_seeds(fixtures: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let f = |rel: &str| fixture(fixtures, rel);
    let answers: [(u8, &str, Vec<u8>, Vec<u8>); 7] = [
        (0, "etcd_v3", f("etcd_v3/range_full.json")?, f("etcd_v3/probe.json")?),
        (1, "etcd_v2", f("etcd_v2/get_recursive.json")?, f("etcd_v2/watch_event.json")?),
        (2, "consul_kv", f("consul/kv_recurse.json")?, b"[]".to_vec()),
        (3, "consul_catalog", f("consul/catalog_service.json")?, b"[]".to_vec()),
        (4, "consul_health", f("consul/health_service.json")?, b"[]".to_vec()),
        (5, "nacos", f("nacos/instance_list.json")?, f("nacos/instance_list_empty.json")?),
        (6, "eureka", f("eureka/application.json")?, f("eureka/application_single.json")?),
    ];
    let mut out = Vec::new();
    for (kind, name, full, other) in answers {
        // Registry down first (fallback), then a list, a repeat, another
        // answer, errors and a Retry-After, an oversize body, a list again.
        let ops = vec![
            Op::Tick(0),
            Op::DispatchFailed,
            Op::Tick(4),
            respond(0, 10, &full),
            Op::Tick(4),
            respond(0, 10, &full),
            Op::Tick(4),
            respond(0, 11, &other),
            Op::Tick(4),
            respond(6, 12, b"oops"),
            Op::Tick(8),
            respond(7 | 0x10, 13, b""),
            Op::Tick(12),
            respond(0x20, 14, b""),
            Op::Tick(40),
            respond(0, 15, &full),
            Op::Tick(4),
        ];
        out.push((format!("seed-{name}-envoy"), poller_input(kind, false, &ops)));
        out.push((format!("seed-{name}-nginx"), poller_input(kind, true, &ops)));
    }
    // etcd v3 with the gRPC watch: created, events, canceled.
    let range = f("etcd_v3/range_full.json")?;
    let ops = vec![
        Op::Tick(0),
        respond(0, 1, &range),
        Op::Watch(vec![0x0a, 0x04, 0x08, 0x01, 0x18, 0x05, 0x18, 0x01]),
        Op::Tick(1),
        respond(0, 1, &f("etcd_v3/probe.json")?),
        Op::Watch(vec![0x0a, 0x02, 0x18, 0x07, 0x5a, 0x06, 0x12, 0x04, 0x0a, 0x02, b'/', b'a']),
        Op::Tick(1),
        respond(0, 1, &f("etcd_v3/range_empty.json")?),
        Op::Watch(vec![0x20, 0x01, 0x32, 0x03, b'c', b'o', b'm']),
        Op::WatchClosed,
        Op::Tick(8),
        respond(0, 1, &range),
    ];
    out.push(("seed-etcd_v3-watch".to_string(), poller_input(0, false, &ops)));
    Ok(out)
}

fn seeds_of(target: &str, fixtures: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    Ok(match target {
        "etcd_v3" => fixture_dir(fixtures, "etcd_v3")?,
        "etcd_v2" => fixture_dir(fixtures, "etcd_v2")?,
        "consul_kv" => vec![("kv_recurse.json".into(), fixture(fixtures, "consul/kv_recurse.json")?)],
        "consul_catalog" => vec![("catalog_service.json".into(), fixture(fixtures, "consul/catalog_service.json")?)],
        "consul_health" => vec![("health_service.json".into(), fixture(fixtures, "consul/health_service.json")?)],
        "nacos" => fixture_dir(fixtures, "nacos")?,
        "eureka" => fixture_dir(fixtures, "eureka")?,
        "config" => text(&[
            (
                "minimal",
                r#"{"upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"etcd","prefix":"/upstreams/web/"}}]}"#,
            ),
            (
                "every-kind",
                r#"{"log_level":"debug","upstreams":[
                {"name":"a","registry":{"type":"etcd_v3","target":"e","prefix":"/a/","grpc_target":"g","auth":{"bearer":"t"}},"interval_ms":200,"timeout_ms":500,"backoff_max_ms":2000,"max_body_bytes":4096,"allow_empty":true,"fallback":["127.0.0.1:9001","[::1]:9002"]},
                {"name":"b","registry":{"type":"etcd_v2","target":"e","prefix":"/b/","wait_ms":20000,"auth":{"basic":{"username":"u","password":"p"}}}},
                {"name":"c","registry":{"type":"consul_kv","target":"c","prefix":"c/","token":"t0k","dc":"dc2","consistency":"stale"}},
                {"name":"d","registry":{"type":"consul_catalog","target":"c","service":"web","consistency":"consistent"}},
                {"name":"e","registry":{"type":"consul_health","target":"c","service":"web","passing_only":false,"auth":{"header":{"name":"X-T","value":"v"}}}},
                {"name":"f","registry":{"type":"nacos","target":"n","service":"web","group":"G","namespace":"prod"}},
                {"name":"g","registry":{"type":"eureka","target":"eu","service":"WEB"}}]}"#,
            ),
            (
                "nginx",
                r#"{"host":"nginx","lease_ms":2000,"pick":"web","status_path":"/upsync/status","upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":["127.0.0.1:2379","etcd.internal:2379","unix:/run/etcd.sock"],"prefix":"/u/web/"},"balance":{"policy":"hash","hash_key":"header:X-User"},"passive_health":false},{"name":"api","registry":{"type":"nacos","target":"127.0.0.1:8848","service":"api"},"balance":{"policy":"least_request"}}]}"#,
            ),
            (
                "envoy-pick",
                r#"{"pick":"web","route":"original_dst","override_header":"x-h","upstreams":[{"name":"web","registry":{"type":"eureka","target":"e","service":"web"},"balance":{"policy":"hash","hash_key":"cookie:sid"}}]}"#,
            ),
            ("server", r#"{"eds_hold_ms":400}"#),
            ("empty", ""),
        ]),
        "snapshot" => text(&[("snapshot", SNAPSHOT)]),
        "eds_request" => text(&[
            (
                "first",
                r#"{"version_info":"","node":{"id":"n","cluster":"c"},"resource_names":["web"],"type_url":"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"}"#,
            ),
            ("current", r#"{"version_info":"1","resource_names":["web"]}"#),
            ("several", r#"{"version_info":"web=1","resource_names":["web","api","web"]}"#),
        ]),
        "upsync_value" => text(&[
            ("full", r#"{"weight":3,"max_fails":5,"fail_timeout":30,"down":1,"backup":0}"#),
            ("strings", r#"{"weight":-1,"max_fails":"7","fail_timeout":"20s","down":"yes","backup":true}"#),
            ("bounds", r#"{"weight":65536,"fail_timeout":86401,"max_fails":1.5}"#),
        ]),
        "host_port" => text(&[
            ("v4", "127.0.0.1:9001"),
            ("v6", "[::1]:80"),
            ("name", "Api.Example.com.:8080"),
            ("port-v6", "P\u{0}fd00::1"),
            ("port-bracket", "P\u{0}[fd00::1]"),
        ]),
        "base64" => text(&[("foobar", "Zm9vYmFy"), ("pad1", "Zm9vYmE="), ("pad2", "Zm9vYg=="), ("bad", "Zg==Zm9v")]),
        "etcd_watch" => vec![
            ("created".into(), vec![0x0a, 0x04, 0x08, 0x01, 0x18, 0x05, 0x18, 0x01]),
            (
                "events".into(),
                vec![0x0a, 0x02, 0x18, 0x07, 0x5a, 0x06, 0x12, 0x04, 0x0a, 0x02, b'/', b'a', 0x5a, 0x02, 0x08, 0x01],
            ),
            (
                "canceled".into(),
                [&[0x20, 0x01, 0x32, 0x09][..], b"compacted", &[0x29, 9, 0, 0, 0, 0, 0, 0, 0]].concat(),
            ),
        ],
        "shared_data" => vec![
            ("all".into(), shared(&[INDEX, STATUS, SNAPSHOT, VERSION, LEASE, HEALTH, "/upsync/status?upstream=web"])),
            (
                "foreign-keys".into(),
                shared(&[
                    &INDEX.replace("index", "x"),
                    "",
                    &SNAPSHOT.replace("/web", "/api"),
                    "{}",
                    "",
                    "",
                    "/s?upstream=api",
                ]),
            ),
        ],
        "poller" => poller_seeds(fixtures)?,
        other => return Err(format!("no seeds for target {other}")),
    })
}

fn write_all(corpus: &Path, fixtures: &Path) -> Result<usize, String> {
    let mut n = 0;
    for (target, _) in TARGETS {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (name, bytes) in seeds_of(target, fixtures)? {
            let name = if name.starts_with("seed-") { name } else { format!("seed-{name}") };
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            n += 1;
        }
    }
    Ok(n)
}
