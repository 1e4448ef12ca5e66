//! The sans-IO core: everything that can be decided without a host.

pub mod adapter;
pub mod balance;
pub mod base64;
pub mod config;
pub mod consul;
pub mod eds;
pub mod etcd_v2;
pub mod etcd_v3;
pub mod etcd_watch;
pub mod eureka;
pub mod kv_layout;
pub mod lease;
pub mod member;
pub mod member_set;
pub mod nacos;
pub mod node;
pub mod passive;
pub mod picker;
mod proto;
pub mod registry;
pub mod request;
pub mod rng;
pub mod snapshot;
pub mod status;
pub mod store;
pub mod sync;
pub mod url;

#[cfg(test)]
mod tests;
