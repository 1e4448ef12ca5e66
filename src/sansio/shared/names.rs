//! Lists of upstream names in shared data: the poller's upstream index,
//! what a `discover[]` entry's leader found (for the other nginx workers)
//! and every upstream found (for the CDS endpoint). Like every value, it
//! carries its own key.

use crate::sansio::shared::snapshot;
use crate::sansio::shared::store::{SharedStore, StoreError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct NamesWire {
    key: String,
    names: Vec<String>,
}

pub fn write(store: &mut dyn SharedStore, key: &str, names: &[String]) -> Result<(), StoreError> {
    snapshot::put_json(store, key, &NamesWire { key: key.to_string(), names: names.to_vec() })
}

/// `None` when nothing (or another key's value) is stored under `key`.
pub fn read(store: &dyn SharedStore, key: &str) -> Result<Option<Vec<String>>, StoreError> {
    let (wire, _) = snapshot::get_keyed(store, key, |w: &NamesWire| &w.key)?;
    Ok(wire.map(|w| w.names))
}
