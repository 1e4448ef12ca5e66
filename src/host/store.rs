//! Shared data through the host ([`super::abi`]).

use super::abi;
use super::abi::Status;
use crate::sansio::shared::store::{Entry, SharedStore, StoreError};

/// The host's shared data (keyed by `vm_id` on Envoy).
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<Entry, StoreError> {
        match abi::get_shared_data(key) {
            Ok((value, cas)) => Ok(Entry { value, cas }),
            Err(Status::NotFound) => Ok(Entry::default()),
            Err(e) => Err(StoreError::Host(format!("{e:?}"))),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match abi::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(e) => Err(StoreError::Host(format!("{e:?}"))),
        }
    }
}
