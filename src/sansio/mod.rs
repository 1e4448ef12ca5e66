//! The sans-IO core: everything that can be decided without a host.
//!
//! Layers, lowest first; a module imports only from layers below its own
//! (checked by `make lint`, `scripts/check_layers.py`):
//!
//! 1. [`util`]: encodings and a seeded random number generator.
//! 2. [`model`]: members, member sets and the updates made of them.
//! 3. [`config`]: the plugin's JSON configuration, validated.
//! 4. [`registry`]: one adapter per registry API (request building and
//!    response parsing, no I/O).
//! 5. [`shared`]: what lives in the host's shared data (snapshots, leases,
//!    passive health, status records) and the compare-and-swap rules.
//! 6. Three peers that never import each other:
//!    [`sync`] (the sync machine of one upstream and the poller that drives
//!    them all), [`serve`] (REST EDS and the status endpoint) and [`pick`]
//!    (choosing a member per request).

pub mod util;

pub mod model;

pub mod config;

pub mod registry;

pub mod shared;

pub mod pick;
pub mod serve;
pub mod sync;

#[cfg(test)]
mod tests;
