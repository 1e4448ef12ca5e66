//! Leader election through shared data, for hosts where every worker runs
//! its own poller (nginx): one lease per upstream, held by one worker and
//! renewed on its ticks. A worker that dies stops renewing; another takes
//! the lease once it expires (a reload empties the zone: the first new
//! worker to tick takes it). Writes go
//! through compare-and-swap, so two workers can never both win the same
//! round.

use crate::sansio::shared::keys::lease_key;
use crate::sansio::shared::snapshot::get_keyed;
use crate::sansio::shared::store::{SharedStore, StoreError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseWire {
    key: String,
    holder: u64,
    expires_ms: u64,
}

/// The outcome of one election round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Election {
    /// We hold the lease until `expires_ms`.
    Won { expires_ms: u64 },
    /// `holder` does, until `expires_ms` (0 when unknown: a race just lost).
    Lost { holder: u64, expires_ms: u64 },
}

/// The worker holding `upstream`'s lease at `now`, if any.
pub fn holder(store: &dyn SharedStore, upstream: &str, now: u64) -> Option<u64> {
    let key = lease_key(upstream);
    let (lease, _) = get_keyed(store, &key, |l: &LeaseWire| &l.key).ok()?;
    lease.filter(|l| l.expires_ms > now).map(|l| l.holder)
}

/// Takes or renews the lease of `upstream` for `me` until `now + ttl_ms`,
/// unless another holder's lease is still running.
pub fn elect(
    store: &mut dyn SharedStore,
    upstream: &str,
    me: u64,
    now: u64,
    ttl_ms: u64,
) -> Result<Election, StoreError> {
    let key = lease_key(upstream);
    let key_of: fn(&LeaseWire) -> &str = |l| &l.key;
    let (current, cas) = get_keyed(store, &key, key_of)?;
    if let Some(l) = &current {
        if l.holder != me && l.expires_ms > now {
            return Ok(Election::Lost { holder: l.holder, expires_ms: l.expires_ms });
        }
        // Ours with more than half its time left: no write (every write
        // takes the shared zone's lock on nginx).
        if l.holder == me && l.expires_ms.saturating_sub(now) > ttl_ms / 2 {
            return Ok(Election::Won { expires_ms: l.expires_ms });
        }
    }
    let expires_ms = now.saturating_add(ttl_ms);
    let wire = LeaseWire { key: key.clone(), holder: me, expires_ms };
    let bytes = serde_json::to_vec(&wire).map_err(|e| StoreError::Host(e.to_string()))?;
    match store.set(&key, &bytes, cas) {
        Ok(()) => Ok(Election::Won { expires_ms }),
        Err(StoreError::CasMismatch) => {
            // Someone else wrote in between: whoever it was holds it now.
            let (now_held, _) = get_keyed(store, &key, key_of)?;
            Ok(now_held.map_or(Election::Lost { holder: 0, expires_ms: 0 }, |l| Election::Lost {
                holder: l.holder,
                expires_ms: l.expires_ms,
            }))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::shared::store::{MemoryStore, StoreRules};

    #[test]
    fn one_leader_renews_others_follow_until_it_expires() {
        for rules in [StoreRules::Envoy, StoreRules::NgxWasm] {
            let mut s = MemoryStore::new(rules);
            assert_eq!(elect(&mut s, "web", 1, 0, 1000), Ok(Election::Won { expires_ms: 1000 }));
            assert_eq!(elect(&mut s, "web", 2, 10, 1000), Ok(Election::Lost { holder: 1, expires_ms: 1000 }));
            assert_eq!(elect(&mut s, "web", 1, 900, 1000), Ok(Election::Won { expires_ms: 1900 }), "renewed");
            assert_eq!(elect(&mut s, "web", 2, 1500, 1000), Ok(Election::Lost { holder: 1, expires_ms: 1900 }));
            // Worker 1 stops ticking: its lease runs out at 1900.
            assert_eq!(elect(&mut s, "web", 2, 1900, 1000), Ok(Election::Won { expires_ms: 2900 }));
            assert_eq!(elect(&mut s, "web", 1, 1901, 1000), Ok(Election::Lost { holder: 2, expires_ms: 2900 }));
            // Leases are per upstream.
            assert_eq!(elect(&mut s, "api", 1, 1901, 1000), Ok(Election::Won { expires_ms: 2901 }));
        }
    }

    /// A store where another worker wins the race between our read and write.
    struct Racing(MemoryStore);

    impl SharedStore for Racing {
        fn get(&self, key: &str) -> Result<crate::sansio::shared::store::Entry, StoreError> {
            self.0.get(key)
        }
        fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            let rival = LeaseWire { key: key.to_string(), holder: 99, expires_ms: 10_000 };
            crate::sansio::shared::store::put(&mut self.0, key, &serde_json::to_vec(&rival).unwrap()).unwrap();
            self.0.set(key, value, cas)
        }
    }

    #[test]
    fn renewal_writes_only_past_half_time() {
        let mut s = MemoryStore::new(StoreRules::NgxWasm);
        elect(&mut s, "web", 1, 0, 1000).unwrap();
        let cas = s.get(&lease_key("web")).unwrap().cas;
        elect(&mut s, "web", 1, 400, 1000).unwrap();
        assert_eq!(s.get(&lease_key("web")).unwrap().cas, cas, "no write at 40 %");
        elect(&mut s, "web", 1, 600, 1000).unwrap();
        assert_ne!(s.get(&lease_key("web")).unwrap().cas, cas, "renewed at 60 %");
    }

    #[test]
    fn a_lost_race_makes_a_follower() {
        let mut s = Racing(MemoryStore::new(StoreRules::NgxWasm));
        assert_eq!(elect(&mut s, "web", 1, 0, 1000), Ok(Election::Lost { holder: 99, expires_ms: 10_000 }));
    }
}
