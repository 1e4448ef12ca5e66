//! Tests that span several core modules, and their shared support.

pub mod testkit;
mod worker_sim;
