//! Choosing a member per request (nginx, and Envoy's pick mode): a worker's
//! view of a snapshot, the balancers, the request key they hash and how the
//! pick reaches the proxy's router.

pub mod balance;
pub mod filter;
pub mod named;
pub mod picker;
pub mod request_key;
pub mod route;
pub mod subset;
pub mod zone;
