//! Lists of upstream names in shared data: the poller's upstream index,
//! what a `discover[]` entry's leader found (for the other nginx workers)
//! and every upstream found (for the CDS endpoint). Like every value, it
//! carries its own key.

use crate::sansio::shared::snapshot;
use crate::sansio::shared::store::{cas_update, CasStep, SharedStore, StoreError};
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

/// As [`read`], but `Ok(None)` while the entry's cas is still `seen` (not
/// written since the last read): a follower looking every second at a
/// listing of thousands of names parses it only when it changed.
pub fn read_changed(
    store: &dyn SharedStore,
    key: &str,
    seen: &mut Option<u32>,
) -> Result<Option<Vec<String>>, StoreError> {
    let entry = store.get(key)?;
    if entry.cas.is_some() && entry.cas == *seen {
        return Ok(None);
    }
    let names = snapshot::keyed_value(&entry, key, |w: &NamesWire| &w.key).map(|w| w.names);
    if names.is_some() {
        *seen = entry.cas;
    }
    Ok(names)
}

/// Adds `mine` to the list under `key` and takes `dropped` out of it, by
/// compare-and-swap, keeping what other writers listed: several nginx
/// filters each poll their own upstreams and share one index.
pub fn merge(store: &mut dyn SharedStore, key: &str, mine: &[String], dropped: &[String]) -> Result<(), StoreError> {
    cas_update(store, key, &mut |_, entry| {
        let stored: Vec<String> =
            snapshot::keyed_value(&entry, key, |w: &NamesWire| &w.key).map(|w| w.names).unwrap_or_default();
        let mut merged: Vec<String> = stored.iter().filter(|n| !dropped.contains(n)).cloned().collect();
        for name in mine {
            if !merged.contains(name) {
                merged.push(name.clone());
            }
        }
        if merged == stored && entry.value.is_some() {
            return Ok(CasStep::Keep);
        }
        let wire = NamesWire { key: key.to_string(), names: merged };
        serde_json::to_vec(&wire).map(CasStep::Write).map_err(|e| StoreError::Host(e.to_string()))
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::shared::store::{MemoryStore, StoreRules};

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn merge_keeps_what_other_writers_listed() {
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        merge(&mut store, "k", &strings(&["a", "b"]), &[]).unwrap();
        merge(&mut store, "k", &strings(&["c"]), &[]).unwrap();
        assert_eq!(read(&store, "k").unwrap().unwrap(), ["a", "b", "c"]);
        merge(&mut store, "k", &strings(&["c"]), &strings(&["a"])).unwrap();
        assert_eq!(read(&store, "k").unwrap().unwrap(), ["b", "c"]);
        merge(&mut store, "k", &[], &[]).unwrap();
        assert_eq!(read(&store, "k").unwrap().unwrap(), ["b", "c"]);
    }

    #[test]
    fn read_changed_parses_only_what_was_written_since() {
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        let mut seen = None;
        assert_eq!(read_changed(&store, "k", &mut seen).unwrap(), None);
        write(&mut store, "k", &strings(&["a"])).unwrap();
        assert_eq!(read_changed(&store, "k", &mut seen).unwrap().unwrap(), ["a"]);
        assert_eq!(read_changed(&store, "k", &mut seen).unwrap(), None, "not written since");
        write(&mut store, "k", &strings(&["a", "b"])).unwrap();
        assert_eq!(read_changed(&store, "k", &mut seen).unwrap().unwrap(), ["a", "b"]);
    }
}
