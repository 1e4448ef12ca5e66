//! `GET /upsync/metrics`: Prometheus text, rendered from what the poller
//! keeps in shared data (status records, snapshots, leases), so every
//! worker answers the same numbers. The names are listed in
//! [`METRICS`]; the README and `docs/grafana-dashboard.json` use exactly
//! these.

use crate::sansio::model::member::Member;
use crate::sansio::serve::reply::{LocalReply, PROMETHEUS_TEXT};
use crate::sansio::shared::lease;
use crate::sansio::shared::status::{consistent_read, read_index, DiscoveryRecord, LATENCY_BOUNDS_MS};
use crate::sansio::shared::store::SharedStore;
use std::fmt::Write;

/// Every metric this endpoint exports: name, type, help.
pub const METRICS: [(&str, &str, &str); 17] = [
    ("upsync_syncs_total", "counter", "Registry calls by result (ok: a usable answer; failed)."),
    ("upsync_sync_failures_total", "counter", "Failed registry calls by reason."),
    (
        "upsync_registry_call_duration_seconds",
        "histogram",
        "Registry call latency, send to answer (long polls include their hold).",
    ),
    ("upsync_members", "gauge", "Members of the published list by state (up, down, draining, backup)."),
    ("upsync_seconds_since_last_sync", "gauge", "Seconds since the last usable registry answer."),
    ("upsync_updates_applied_total", "counter", "Member list changes applied."),
    ("upsync_updates_refused_total", "counter", "Member lists refused, by reason (empty, not_found)."),
    ("upsync_updates_held_total", "counter", "Updates held by the mass-deletion guard (max_removal_share)."),
    ("upsync_update_held", "gauge", "1 while an update waits for a confirming read."),
    ("upsync_bad_entries", "gauge", "Registry entries skipped or repaired in the last full read."),
    ("upsync_consecutive_failures", "gauge", "Failed registry calls in a row."),
    ("upsync_snapshot_version", "gauge", "Version of the published snapshot."),
    ("upsync_source_fallback", "gauge", "1 while the configured fallback list is served."),
    ("upsync_watch_open", "gauge", "1 while the etcd watch stream is open (upstreams with grpc_target)."),
    ("upsync_poller_leader", "gauge", "1 for the worker that polls the registry for an upstream (nginx)."),
    ("upsync_discover_upstreams", "gauge", "Upstreams a discover[] entry found and keeps in sync."),
    ("upsync_discover_listings_total", "counter", "Listings of a discover[] entry by result (ok, failed)."),
];

/// Answers `GET /upsync/metrics` at `now` (ms).
pub fn metrics_reply(store: &dyn SharedStore, now: u64) -> LocalReply {
    LocalReply { status: 200, content_type: PROMETHEUS_TEXT, body: render(store, now) }
}

/// One metric's lines, written as upstreams are visited.
struct Family {
    name: &'static str,
    lines: String,
}

fn render(store: &dyn SharedStore, now: u64) -> String {
    let mut families: Vec<Family> = METRICS.iter().map(|(name, _, _)| Family { name, lines: String::new() }).collect();
    for name in read_index(store) {
        let (record, snapshot) = consistent_read(store, &name);
        let mut put = |metric: &str, labels: &str, value: Value| {
            if let Some(f) = families.iter_mut().find(|f| metric.starts_with(f.name)) {
                let _ = writeln!(f.lines, "{metric}{{upstream=\"{name}\"{labels}}} {value}");
            }
        };
        if let Ok(Some(s)) = &snapshot {
            let mut by_state = [0u64; 4];
            for m in s.members.iter() {
                if let Some(n) = by_state.get_mut(state_of(m)) {
                    *n += 1;
                }
            }
            for (state, n) in ["up", "down", "draining", "backup"].iter().zip(by_state) {
                put("upsync_members", &format!(",state=\"{state}\""), Value::Int(n));
            }
            put("upsync_snapshot_version", "", Value::Int(s.version));
            put("upsync_source_fallback", "", Value::flag(s.source.as_str() == "fallback"));
        }
        if let Some(holder) = lease::holder(store, &name, now) {
            put("upsync_poller_leader", &format!(",worker=\"{holder}\""), Value::Int(1));
        }
        let Some(record) = record else {
            continue;
        };
        let st = &record.sync.stats;
        put("upsync_syncs_total", ",result=\"ok\"", Value::Int(st.syncs_ok));
        put("upsync_syncs_total", ",result=\"failed\"", Value::Int(st.syncs_failed));
        for (reason, n) in &st.failures_by_reason {
            put("upsync_sync_failures_total", &format!(",reason=\"{}\"", label(reason)), Value::Int(*n));
        }
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BOUNDS_MS.iter().zip(st.call_latency.buckets) {
            cumulative += n;
            let le = format!(",le=\"{}\"", Value::Millis(*bound));
            put("upsync_registry_call_duration_seconds_bucket", &le, Value::Int(cumulative));
        }
        let count = Value::Int(st.call_latency.count);
        put("upsync_registry_call_duration_seconds_bucket", ",le=\"+Inf\"", count);
        put("upsync_registry_call_duration_seconds_sum", "", Value::Millis(st.call_latency.sum_ms));
        put("upsync_registry_call_duration_seconds_count", "", count);
        if let Some(last) = st.last_sync_ms {
            put("upsync_seconds_since_last_sync", "", Value::Millis(now.saturating_sub(last)));
        }
        put("upsync_updates_applied_total", "", Value::Int(st.updates_applied));
        for (reason, n) in &st.refused_by_reason {
            put("upsync_updates_refused_total", &format!(",reason=\"{}\"", label(reason)), Value::Int(*n));
        }
        put("upsync_updates_held_total", "", Value::Int(st.updates_held));
        put("upsync_update_held", "", Value::flag(st.held));
        put("upsync_bad_entries", "", Value::Int(st.bad_entries));
        put("upsync_consecutive_failures", "", Value::Int(u64::from(st.consecutive_failures)));
        if let Some(watch) = &record.sync.watch {
            put("upsync_watch_open", "", Value::flag(watch == "open"));
        }
    }
    for d in DiscoveryRecord::read_all(store) {
        let mut put = |metric: &str, labels: &str, value: u64| {
            if let Some(f) = families.iter_mut().find(|f| f.name == metric) {
                let _ = writeln!(f.lines, "{metric}{{entry=\"{}\"{labels}}} {value}", d.entry);
            }
        };
        put("upsync_discover_upstreams", "", d.upstreams as u64);
        put("upsync_discover_listings_total", ",result=\"ok\"", d.listings_ok);
        put("upsync_discover_listings_total", ",result=\"failed\"", d.listings_failed);
    }
    let mut out = String::new();
    for ((name, kind, help), family) in METRICS.iter().zip(&families) {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{}", family.lines);
    }
    out
}

/// A sample value: an integer, or milliseconds shown as seconds. Written
/// with integer arithmetic: float formatting would add kilobytes to the
/// module for nothing.
#[derive(Clone, Copy)]
enum Value {
    Int(u64),
    Millis(u64),
}

impl Value {
    fn flag(on: bool) -> Value {
        Value::Int(u64::from(on))
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Millis(ms) if ms % 1000 == 0 => write!(f, "{}", ms / 1000),
            Value::Millis(ms) => {
                let frac = format!("{:03}", ms % 1000);
                write!(f, "{}.{}", ms / 1000, frac.trim_end_matches('0'))
            }
        }
    }
}

/// 0 up, 1 down, 2 draining (weight 0), 3 backup.
fn state_of(m: &Member) -> usize {
    if m.attrs.down {
        1
    } else if m.attrs.weight == 0 {
        2
    } else if m.attrs.backup {
        3
    } else {
        0
    }
}

/// A label value as Prometheus reads it (the reasons are fixed words; this
/// only guards against a record written by something else).
fn label(v: &str) -> String {
    v.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::config::PluginConfig;
    use crate::sansio::model::member::MemberAttrs;
    use crate::sansio::model::member_set::MemberSet;
    use crate::sansio::model::update::{Published, Source};
    use crate::sansio::shared::snapshot;
    use crate::sansio::shared::status::{write_index, LatencyHistogram, StatusRecord, SyncStats};
    use crate::sansio::shared::store::{MemoryStore, StoreRules};

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn every_metric_is_declared_once_and_values_follow_the_records() {
        let cfg = PluginConfig::parse(
            br#"{"upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"etcd","prefix":"/u/web/"}}]}"#,
        )
        .unwrap();
        let mut store = MemoryStore::new(StoreRules::Envoy);
        write_index(&mut store, &["web".to_string()]).unwrap();
        let d = MemberAttrs::default();
        let members = MemberSet::from_members(
            [
                ("10.0.0.1:80", d),
                ("10.0.0.2:80", MemberAttrs { down: true, ..d }),
                ("10.0.0.3:80", MemberAttrs { weight: 0, ..d }),
            ]
            .map(|(a, attrs)| Member::new(a.parse().unwrap(), attrs)),
        )
        .0;
        snapshot::publish(&mut store, "web", &Published { members, source: Source::Registry }).unwrap();
        let mut latency = LatencyHistogram::default();
        for ms in [3, 40, 40, 20_000] {
            latency.record(ms);
        }
        let stats = SyncStats {
            syncs_ok: 7,
            syncs_failed: 2,
            failures_by_reason: vec![("timeout".into(), 2)],
            refused_by_reason: vec![("empty".into(), 1)],
            last_sync_ms: Some(1_000),
            call_latency: latency,
            ..Default::default()
        };
        StatusRecord::new("web", &cfg.upstreams[0].registry, "waiting", Some(true), stats).write(&mut store).unwrap();

        let reply = metrics_reply(&store, 4_500);
        assert_eq!((reply.status, reply.content_type), (200, PROMETHEUS_TEXT));
        let text = reply.body;
        for (name, kind, _) in METRICS {
            assert_eq!(text.matches(&format!("# TYPE {name} {kind}\n")).count(), 1, "{name}");
        }
        let v = |s: &str| value(&text, s);
        assert_eq!(v(r#"upsync_syncs_total{upstream="web",result="ok"}"#), Some(7.0));
        assert_eq!(v(r#"upsync_sync_failures_total{upstream="web",reason="timeout"}"#), Some(2.0));
        assert_eq!(v(r#"upsync_updates_refused_total{upstream="web",reason="empty"}"#), Some(1.0));
        assert_eq!(v(r#"upsync_members{upstream="web",state="up"}"#), Some(1.0));
        assert_eq!(v(r#"upsync_members{upstream="web",state="down"}"#), Some(1.0));
        assert_eq!(v(r#"upsync_members{upstream="web",state="draining"}"#), Some(1.0));
        assert_eq!(v(r#"upsync_seconds_since_last_sync{upstream="web"}"#), Some(3.5));
        assert_eq!(v(r#"upsync_snapshot_version{upstream="web"}"#), Some(1.0));
        assert_eq!(v(r#"upsync_watch_open{upstream="web"}"#), Some(1.0));
        // Cumulative buckets; the 20 s call only in +Inf and the count.
        assert_eq!(v(r#"upsync_registry_call_duration_seconds_bucket{upstream="web",le="0.005"}"#), Some(1.0));
        assert_eq!(v(r#"upsync_registry_call_duration_seconds_bucket{upstream="web",le="0.05"}"#), Some(3.0));
        assert_eq!(v(r#"upsync_registry_call_duration_seconds_bucket{upstream="web",le="10"}"#), Some(3.0));
        assert_eq!(v(r#"upsync_registry_call_duration_seconds_bucket{upstream="web",le="+Inf"}"#), Some(4.0));
        assert_eq!(v(r#"upsync_registry_call_duration_seconds_sum{upstream="web"}"#), Some(20.083));
        // Every series line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(METRICS.iter().any(|(n, _, _)| line.starts_with(n)), "{line}");
        }
    }

    #[test]
    fn the_dashboard_queries_only_exported_metrics() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/grafana-dashboard.json")).unwrap();
        let mut exprs = Vec::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                exprs.push(target["expr"].as_str().unwrap().to_string());
            }
        }
        assert!(exprs.len() >= 8, "{exprs:?}");
        let exported = |n: &str| {
            METRICS.iter().any(|(m, kind, _)| {
                n == *m
                    || (*kind == "histogram" && ["_bucket", "_sum", "_count"].iter().any(|s| n == format!("{m}{s}")))
            })
        };
        for expr in &exprs {
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("upsync_"))
                .collect();
            assert!(!names.is_empty(), "{expr} names no upsync metric");
            for n in names {
                assert!(exported(n), "{expr}: {n} is not exported");
            }
        }
    }
}
