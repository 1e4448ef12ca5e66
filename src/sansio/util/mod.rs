//! Small encodings the registries and hosts need, and seeded randomness:
//! nothing here knows about members or registries.

pub mod backoff;
pub mod base64;
pub mod json_out;
pub(crate) mod proto;
pub mod rng;
pub mod text;
pub mod url;
