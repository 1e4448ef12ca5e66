//! Shared data through `proxy_wasm::hostcalls`.

use crate::sansio::shared::store::{Entry, SharedStore, StoreError};
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// The host's shared data (keyed by `vm_id` on Envoy).
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<Entry, StoreError> {
        match hostcalls::get_shared_data(key) {
            Ok((value, cas)) => Ok(Entry { value, cas }),
            Err(Status::NotFound) => Ok(Entry::default()),
            Err(e) => Err(StoreError::Host(format!("{e:?}"))),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(e) => Err(StoreError::Host(format!("{e:?}"))),
        }
    }
}
