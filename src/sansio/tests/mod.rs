//! Tests that span several core modules, and their shared support.

mod deltas;
mod discovery;
mod discovery_fed;
mod locality;
pub mod testkit;
mod worker_sim;
