//! Picks the adapter for a registry configuration.

use super::adapter::RegistryAdapter;
use super::config::{RegistryConfig, RegistryType};
use super::etcd_v3::EtcdV3Adapter;

pub fn adapter_for(config: &RegistryConfig) -> Box<dyn RegistryAdapter> {
    match config.kind {
        RegistryType::EtcdV3 => Box::new(EtcdV3Adapter::new(&config.prefix)),
    }
}
