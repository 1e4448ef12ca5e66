//! upsync-wasm: a proxy-wasm plugin that keeps a proxy's upstream members in
//! sync with a service registry.
//!
//! The crate has two halves:
//! - [`sansio`]: the sans-IO core. Pure Rust, no proxy-wasm types, no clock,
//!   no randomness of its own: it takes events (a tick, a response, the time)
//!   and returns actions (dispatch this request, publish that member list).
//! - `host` (feature `host`, on by default): the only code that touches
//!   proxy-wasm. It turns host callbacks into core events and core actions
//!   into host calls.

// Only `host::abi` may use unsafe code (raw host calls); it says so itself.
#![deny(unsafe_code)]

pub mod sansio;

#[cfg(feature = "host")]
mod host;
