//! Shared data as the core sees it: a key/value store with compare-and-swap.
//!
//! [`MemoryStore`] reproduces the rules of each host observed on real
//! builds, so that the publishing logic is tested against them:
//! - Envoy: `set` with no cas (or cas 0) overwrites unconditionally.
//! - ngx_wasm_module: `set` on an existing key needs the current cas
//!   (no cas fails), and entries are matched by the CRC32 of the key only,
//!   so two keys with the same CRC32 share one entry.

use std::collections::HashMap;

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Another writer changed the entry since it was read.
    CasMismatch,
    /// Any other host failure.
    Host(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::CasMismatch => write!(f, "CAS mismatch"),
            StoreError::Host(e) => write!(f, "host error: {e}"),
        }
    }
}

/// A value and its cas, as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub value: Option<Vec<u8>>,
    /// `None` (or 0) when the key is absent.
    pub cas: Option<u32>,
}

pub trait SharedStore {
    fn get(&self, key: &str) -> Result<Entry, StoreError>;
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// How often a compare-and-swap update is tried before giving up to
/// writers that keep winning the race.
pub const CAS_ATTEMPTS: usize = 8;

/// What a [`cas_update`] step decided from the entry it read.
pub enum CasStep {
    /// Write these bytes with the cas just read.
    Write(Vec<u8>),
    /// Write nothing.
    Keep,
}

/// The one compare-and-swap loop: read `key`, let `decide` choose from
/// what is stored (it may read other keys), write with the cas read, and
/// start over when another writer got in between. `decide` reports what
/// it decided through what it captures; it is a trait object so that
/// every caller shares one copy of the loop in the module.
pub fn cas_update(
    store: &mut dyn SharedStore,
    key: &str,
    decide: &mut dyn FnMut(&dyn SharedStore, Entry) -> Result<CasStep, StoreError>,
) -> Result<(), StoreError> {
    for _ in 0..CAS_ATTEMPTS {
        let entry = store.get(key)?;
        let cas = entry.cas;
        match decide(&*store, entry)? {
            CasStep::Keep => return Ok(()),
            CasStep::Write(bytes) => match store.set(key, &bytes, cas) {
                Ok(()) => return Ok(()),
                Err(StoreError::CasMismatch) => {}
                Err(e) => return Err(e),
            },
        }
    }
    Err(StoreError::CasMismatch)
}

/// Writes `value` whatever is stored, the way every host accepts: read the
/// cas, set with it, retry on a race.
pub fn put(store: &mut dyn SharedStore, key: &str, value: &[u8]) -> Result<(), StoreError> {
    cas_update(store, key, &mut |_, _| Ok(CasStep::Write(value.to_vec())))
}

/// Which host's rules a [`MemoryStore`] follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreRules {
    Envoy,
    NgxWasm,
}

/// An in-memory shared data store with a host's rules.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    rules: StoreRules,
    entries: HashMap<u64, (String, Vec<u8>, u32)>,
    next_cas: u32,
}

impl MemoryStore {
    pub fn new(rules: StoreRules) -> Self {
        MemoryStore { rules, entries: HashMap::new(), next_cas: 1 }
    }

    fn slot(&self, key: &str) -> u64 {
        match self.rules {
            StoreRules::Envoy => {
                // Envoy keys are exact: give each distinct key its own slot.
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                key.hash(&mut h);
                h.finish()
            }
            StoreRules::NgxWasm => u64::from(crc32(key.as_bytes())),
        }
    }

    /// What a reload does on nginx: every entry is gone.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The key that created the entry now holding `key` (to observe collisions).
    pub fn owner_of(&self, key: &str) -> Option<&str> {
        self.entries.get(&self.slot(key)).map(|(k, _, _)| k.as_str())
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Entry, StoreError> {
        Ok(match self.entries.get(&self.slot(key)) {
            Some((_, value, cas)) => Entry { value: Some(value.clone()), cas: Some(*cas) },
            None => Entry::default(),
        })
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let slot = self.slot(key);
        let current = self.entries.get(&slot).map(|(_, _, c)| *c);
        let given = cas.unwrap_or(0);
        let allowed = match (self.rules, current) {
            (StoreRules::Envoy, _) if given == 0 => true,
            (_, None) => given == 0,
            (_, Some(c)) => c == given,
        };
        if !allowed {
            return Err(StoreError::CasMismatch);
        }
        let new_cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        let owner = self.entries.get(&slot).map_or_else(|| key.to_string(), |(k, _, _)| k.clone());
        self.entries.insert(slot, (owner, value.to_vec(), new_cas));
        Ok(())
    }
}

/// CRC-32 (IEEE), the hash ngx_wasm_module matches shared keys by.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        // A known CRC32 collision pair.
        assert_eq!(crc32(b"plumless"), crc32(b"buckeroo"));
    }

    #[test]
    fn envoy_rules_overwrite_without_cas() {
        let mut s = MemoryStore::new(StoreRules::Envoy);
        s.set("k", b"1", None).unwrap();
        s.set("k", b"2", None).unwrap();
        let e = s.get("k").unwrap();
        assert_eq!(e.value.as_deref(), Some(&b"2"[..]));
        assert_eq!(s.set("k", b"3", Some(e.cas.unwrap() + 1)), Err(StoreError::CasMismatch));
        s.set("k", b"3", e.cas).unwrap();
        assert!(s.get("plumless").unwrap().value.is_none());
    }

    #[test]
    fn ngx_rules_need_the_cas_and_collide_on_crc32() {
        let mut s = MemoryStore::new(StoreRules::NgxWasm);
        s.set("k", b"1", None).unwrap();
        assert_eq!(s.set("k", b"2", None), Err(StoreError::CasMismatch));
        put(&mut s, "k", b"2").unwrap();
        assert_eq!(s.get("k").unwrap().value.as_deref(), Some(&b"2"[..]));

        s.set("plumless", b"a", None).unwrap();
        assert_eq!(s.get("buckeroo").unwrap().value.as_deref(), Some(&b"a"[..]));
        assert_eq!(s.owner_of("buckeroo"), Some("plumless"));
        s.clear();
        assert!(s.get("k").unwrap().value.is_none());
    }
}
