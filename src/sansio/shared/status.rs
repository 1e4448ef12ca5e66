//! What the proxy currently believes, per upstream: the successor of
//! upsync's `upstream_show`. The poller writes a [`StatusRecord`] per
//! upstream; the request-serving side joins it with the snapshot.

use crate::sansio::config::RegistryConfig;
use crate::sansio::shared::keys::{index_key, status_key};
use crate::sansio::shared::snapshot;
use crate::sansio::shared::store::{SharedStore, StoreError};
use serde::{Deserialize, Serialize};

/// Counters and last outcomes, as shown by the status endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStats {
    /// Registry answers that were usable (including "nothing changed").
    pub syncs_ok: u64,
    /// Calls that failed: dispatch error, timeout, bad status, bad body.
    pub syncs_failed: u64,
    /// Usable member lists that were refused (empty without `allow_empty`).
    pub updates_refused: u64,
    /// Member list changes handed to the host.
    pub updates_applied: u64,
    /// Entries skipped or repaired in the last full read.
    pub bad_entries: u64,
    pub consecutive_failures: u32,
    pub last_sync_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    /// Updates held by the mass-deletion guard (`max_removal_share`).
    #[serde(default)]
    pub updates_held: u64,
    /// An update is held now, waiting for a confirming read.
    #[serde(default)]
    pub held: bool,
    /// Failed calls by reason label (`timeout`, `status`, `not_json`, ...).
    #[serde(default)]
    pub failures_by_reason: Vec<(String, u64)>,
    /// Refused updates by reason label (`empty`, `not_found`).
    #[serde(default)]
    pub refused_by_reason: Vec<(String, u64)>,
    /// Registry call latency (answered calls; long polls include their hold).
    #[serde(default)]
    pub call_latency: LatencyHistogram,
}

/// Adds one to the count of `label` in a small label → count list.
pub fn count_label(counts: &mut Vec<(String, u64)>, label: &str) {
    match counts.iter_mut().find(|(l, _)| l == label) {
        Some((_, n)) => *n += 1,
        None => counts.push((label.to_string(), 1)),
    }
}

/// Upper bounds (ms) of the latency buckets, Prometheus-style `le`.
pub const LATENCY_BOUNDS_MS: [u64; 11] = [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

/// A latency histogram: per bucket the calls that took at most its bound
/// (and more than the previous one); slower calls count only in `count`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    pub buckets: [u64; 11],
    pub count: u64,
    pub sum_ms: u64,
}

impl LatencyHistogram {
    pub fn record(&mut self, ms: u64) {
        if let Some(i) = LATENCY_BOUNDS_MS.iter().position(|b| ms <= *b) {
            if let Some(n) = self.buckets.get_mut(i) {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryWire {
    #[serde(rename = "type")]
    pub kind: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
}

impl From<&RegistryConfig> for RegistryWire {
    fn from(r: &RegistryConfig) -> Self {
        RegistryWire {
            kind: r.spec.type_name().to_string(),
            target: r.targets.join(","),
            prefix: r.spec.prefix().unwrap_or_default().to_string(),
            service: r.spec.service().unwrap_or_default().to_string(),
        }
    }
}

/// A `discover[]` entry as its lister sees it, for the status endpoint and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryRecord {
    pub key: String,
    pub entry: usize,
    pub registry: RegistryWire,
    /// Upstreams found and in force.
    pub upstreams: usize,
    pub listings_ok: u64,
    pub listings_failed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_listing_ms: Option<u64>,
}

/// The key of `discover[entry]`'s record (`~` is no upstream-name character).
pub fn discovery_status_key(entry: usize) -> String {
    status_key(&format!("~discover/{entry}"))
}

impl DiscoveryRecord {
    pub fn write(&self, store: &mut dyn SharedStore) -> Result<(), StoreError> {
        snapshot::put_json(store, &self.key, self)
    }

    /// Every entry's record, in entry order, up to the first one missing.
    pub fn read_all(store: &dyn SharedStore) -> Vec<DiscoveryRecord> {
        (0..16)
            .map_while(|entry| {
                let key = discovery_status_key(entry);
                snapshot::get_keyed(store, &key, |r: &DiscoveryRecord| &r.key).ok().and_then(|(r, _)| r)
            })
            .collect()
    }
}

/// The poller's view of one upstream's sync, stored under its status key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub key: String,
    pub name: String,
    #[serde(flatten)]
    pub sync: SyncView,
}

/// The sync counters and outcomes shown by the status endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncView {
    pub registry: RegistryWire,
    pub state: String,
    /// The etcd watch stream: "open" or "closed"; absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<String>,
    #[serde(flatten)]
    pub stats: SyncStats,
}

impl StatusRecord {
    pub fn new(name: &str, registry: &RegistryConfig, state: &str, watch: Option<bool>, stats: SyncStats) -> Self {
        let watch = watch.map(|open| if open { "open" } else { "closed" }.to_string());
        StatusRecord {
            key: status_key(name),
            name: name.to_string(),
            sync: SyncView { registry: registry.into(), state: state.to_string(), watch, stats },
        }
    }

    pub fn write(&self, store: &mut dyn SharedStore) -> Result<(), StoreError> {
        snapshot::put_json(store, &self.key, self)
    }

    pub fn read(store: &dyn SharedStore, name: &str) -> Option<StatusRecord> {
        snapshot::get_keyed(store, &status_key(name), |r: &StatusRecord| &r.key).ok()?.0
    }
}

/// Records which upstreams the poller serves.
pub fn write_index(store: &mut dyn SharedStore, names: &[String]) -> Result<(), StoreError> {
    crate::sansio::shared::names::write(store, &index_key(), names)
}

/// nginx: several filters share the index; each adds its names and takes
/// out only the ones it retired.
pub fn merge_index(store: &mut dyn SharedStore, mine: &[String], dropped: &[String]) -> Result<(), StoreError> {
    crate::sansio::shared::names::merge(store, &index_key(), mine, dropped)
}

pub fn read_index(store: &dyn SharedStore) -> Vec<String> {
    crate::sansio::shared::names::read(store, &index_key()).ok().flatten().unwrap_or_default()
}

/// Envoy serves status from worker threads while the poller writes from the
/// main thread, so a read can fall between the poller's two writes: the
/// snapshot first, then the status record. Reading the record first means
/// it is never newer than the members shown with it (a `bad_entries` count
/// always describes a list already visible); reading it again after the
/// snapshot, a few times at most, also keeps the members from being newer
/// than the record.
const STATUS_READ_ATTEMPTS: usize = 4;

pub fn consistent_read(
    store: &dyn SharedStore,
    name: &str,
) -> (Option<StatusRecord>, Result<Option<snapshot::Snapshot>, snapshot::SnapshotError>) {
    let mut record = StatusRecord::read(store, name);
    let mut snap = snapshot::read(store, name);
    for _ in 1..STATUS_READ_ATTEMPTS {
        let again = StatusRecord::read(store, name);
        if again == record {
            break;
        }
        record = again;
        snap = snapshot::read(store, name);
    }
    (record, snap)
}

#[derive(Serialize, Deserialize)]
struct MemoryWire {
    key: String,
    poller_bytes: u64,
}

/// Records the poller's linear memory size (for the status endpoint).
pub fn write_poller_memory(store: &mut dyn SharedStore, bytes: u64) -> Result<(), StoreError> {
    let key = crate::sansio::shared::keys::memory_key();
    snapshot::put_json(store, &key, &MemoryWire { key: key.clone(), poller_bytes: bytes })
}

pub fn read_poller_memory(store: &dyn SharedStore) -> Option<u64> {
    let key = crate::sansio::shared::keys::memory_key();
    snapshot::get_keyed(store, &key, |w: &MemoryWire| &w.key).ok()?.0.map(|w| w.poller_bytes)
}
