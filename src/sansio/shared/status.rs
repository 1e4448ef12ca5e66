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
    #[serde(flatten)]
    pub stats: SyncStats,
}

impl StatusRecord {
    pub fn new(name: &str, registry: &RegistryConfig, state: &str, stats: SyncStats) -> Self {
        StatusRecord {
            key: status_key(name),
            name: name.to_string(),
            sync: SyncView { registry: registry.into(), state: state.to_string(), stats },
        }
    }

    pub fn write(&self, store: &mut dyn SharedStore) -> Result<(), StoreError> {
        snapshot::put_json(store, &self.key, self)
    }

    pub fn read(store: &dyn SharedStore, name: &str) -> Option<StatusRecord> {
        snapshot::get_keyed(store, &status_key(name), |r: &StatusRecord| &r.key).ok()?.0
    }
}

#[derive(Serialize, Deserialize)]
struct IndexWire {
    key: String,
    upstreams: Vec<String>,
}

/// Records which upstreams the poller serves.
pub fn write_index(store: &mut dyn SharedStore, names: &[String]) -> Result<(), StoreError> {
    let wire = IndexWire { key: index_key(), upstreams: names.to_vec() };
    snapshot::put_json(store, &index_key(), &wire)
}

pub fn read_index(store: &dyn SharedStore) -> Vec<String> {
    match snapshot::get_keyed(store, &index_key(), |w: &IndexWire| &w.key) {
        Ok((Some(w), _)) => w.upstreams,
        _ => Vec::new(),
    }
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
