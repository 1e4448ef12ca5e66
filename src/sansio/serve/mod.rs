//! Answering local requests from shared data: REST EDS for Envoy (with
//! long-poll holding) and the status endpoint.

pub mod cds;
pub mod eds;
pub mod eds_hold;
pub mod eds_request;
pub mod local;
pub mod metrics;
pub mod reply;
pub mod status;
