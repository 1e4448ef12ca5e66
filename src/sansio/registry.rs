//! Picks the adapter for a registry configuration.

use super::adapter::RegistryAdapter;
use super::config::{RegistryConfig, RegistryType};
use super::consul::{ConsulAdapter, ConsulQuery};
use super::etcd_v2::EtcdV2Adapter;
use super::etcd_v3::EtcdV3Adapter;
use super::eureka::EurekaAdapter;
use super::nacos::NacosAdapter;

pub fn adapter_for(config: &RegistryConfig) -> Box<dyn RegistryAdapter> {
    let consul = |query| Box::new(ConsulAdapter::new(query, config.dc.clone(), config.consistency, config.wait_ms));
    match config.kind {
        RegistryType::EtcdV3 => Box::new(EtcdV3Adapter::new(&config.prefix)),
        RegistryType::EtcdV2 => Box::new(EtcdV2Adapter::new(&config.prefix, config.wait_ms)),
        RegistryType::ConsulKv => consul(ConsulQuery::Kv { prefix: config.prefix.clone() }),
        RegistryType::ConsulCatalog => consul(ConsulQuery::Catalog { service: config.service.clone() }),
        RegistryType::ConsulHealth => {
            consul(ConsulQuery::Health { service: config.service.clone(), passing_only: config.passing_only })
        }
        RegistryType::Nacos => {
            Box::new(NacosAdapter::new(&config.service, config.group.as_deref(), config.namespace.as_deref()))
        }
        RegistryType::Eureka => Box::new(EurekaAdapter::new(&config.service)),
    }
}
