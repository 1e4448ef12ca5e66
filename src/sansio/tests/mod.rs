//! Tests that span several core modules, and their shared support.

mod deltas;
mod discovery;
mod discovery_v2;
mod locality;
pub mod testkit;
mod worker_sim;
