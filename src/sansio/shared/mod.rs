//! Shared data: the key/value store every host offers (with each host's
//! compare-and-swap rules), and what the plugin keeps in it — versioned
//! snapshots, poller leases, passive health and status records.

pub mod health;
pub mod keys;
pub mod lease;
pub mod names;
pub mod snapshot;
mod snapshot_scan;
pub mod status;
pub mod store;
