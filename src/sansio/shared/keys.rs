//! Every shared-data key the plugin uses. Values carry their own key too:
//! ngx_wasm_module matches entries by the CRC32 of the key alone, so a
//! reader checks it got the entry it asked for.

/// All keys of this plugin start with this, so they never meet another
/// plugin's keys in the same VM.
pub const KEY_NAMESPACE: &str = "upsync/v1";

pub fn snapshot_key(upstream: &str) -> String {
    format!("{KEY_NAMESPACE}/snap/{upstream}")
}

/// A small entry holding only the snapshot's version, so that "has it
/// changed?" never needs the (possibly large) snapshot decoded.
pub fn version_key(upstream: &str) -> String {
    format!("{KEY_NAMESPACE}/ver/{upstream}")
}

pub fn status_key(upstream: &str) -> String {
    format!("{KEY_NAMESPACE}/status/{upstream}")
}

pub fn lease_key(upstream: &str) -> String {
    format!("{KEY_NAMESPACE}/lease/{upstream}")
}

pub fn health_key(upstream: &str) -> String {
    format!("{KEY_NAMESPACE}/health/{upstream}")
}

/// The list of upstream names the poller serves.
pub fn index_key() -> String {
    format!("{KEY_NAMESPACE}/index")
}

/// A counter the poller moves once per flush that published anything, so
/// that a worker holding EDS requests learns "something changed" from one
/// small read instead of reading every held request's versions.
pub fn publish_sequence_key() -> String {
    format!("{KEY_NAMESPACE}/seq")
}

/// The poller's wasm linear memory, as its host last reported it.
pub fn memory_key() -> String {
    format!("{KEY_NAMESPACE}/memory")
}

/// The names a `discover[]` entry's leader found, for the other workers (nginx).
pub fn discovered_key(entry: usize) -> String {
    format!("{KEY_NAMESPACE}/discovered/{entry}")
}

/// Envoy: the shared queues of the workers holding EDS requests, which the
/// poller wakes when it publishes.
pub fn wake_queues_key() -> String {
    format!("{KEY_NAMESPACE}/wake")
}

/// Every upstream found by `discover[]`, for the CDS endpoint (Envoy).
pub fn cds_key() -> String {
    format!("{KEY_NAMESPACE}/cds")
}
