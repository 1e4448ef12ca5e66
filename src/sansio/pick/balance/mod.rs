//! Plugin-side load balancing, for hosts without a balancer of their own
//! that follows the registry (nginx) and for policies Envoy cannot
//! express. Pure and seeded: every balancer works over a slice of
//! [`Candidate`]s and takes its randomness and time as arguments.

pub mod hash;
pub mod maglev;
pub mod p2c;
pub mod swrr;

use crate::sansio::model::member::Member;
use std::rc::Rc;

/// A member as a balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `host:port`, also the consistent-hashing identity. Shared with the
    /// picks handed out for it: a pick copies no text.
    pub address: Rc<str>,
    pub weight: u32,
    pub backup: bool,
    /// Down by the registry, or out after passive health failures.
    pub unavailable: bool,
    /// In the proxy's own zone (pick mode's zone preference).
    pub zone_local: bool,
}

impl Candidate {
    pub fn from_member(m: &Member) -> Self {
        Candidate {
            address: Rc::from(m.addr.to_string()),
            weight: m.attrs.weight,
            backup: m.attrs.backup,
            unavailable: m.attrs.down,
            zone_local: false,
        }
    }

    /// Can take new requests: not down/out and not drained (weight 0).
    pub fn usable(&self) -> bool {
        !self.unavailable && self.weight > 0
    }
}

/// The candidates a balancer may pick from, computed once per change of the
/// member list (not per request): indices, weights and running weight
/// totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pool {
    /// Candidate indices, in candidate order.
    pub indices: Vec<usize>,
    pub weights: Vec<u32>,
    /// `cumulative[k]` = sum of `weights[..=k]`.
    pub cumulative: Vec<u64>,
    /// Every weight is the same (round robin needs no weights then).
    pub equal: bool,
}

impl Pool {
    pub fn new(candidates: &[Candidate]) -> Pool {
        Pool::from_indices(candidates, eligible(candidates))
    }

    /// A pool over `indices` (into `candidates`), taken as they are.
    pub fn from_indices(candidates: &[Candidate], indices: Vec<usize>) -> Pool {
        let weights: Vec<u32> = indices.iter().map(|&i| candidates.get(i).map_or(0, |c| c.weight)).collect();
        let mut total = 0u64;
        let cumulative = weights
            .iter()
            .map(|&w| {
                total += u64::from(w);
                total
            })
            .collect();
        let equal = weights.windows(2).all(|w| w.first() == w.get(1));
        Pool { indices, weights, cumulative, equal }
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    pub fn total_weight(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The pool position whose weight range holds `r` (`r < total_weight`).
    pub fn position_of(&self, r: u64) -> Option<usize> {
        let k = self.cumulative.partition_point(|&c| c <= r);
        (k < self.len()).then_some(k)
    }
}

/// The indices a balancer may pick from: the usable primaries, or, when
/// there is none, the usable backups (nginx's `backup` rule).
pub fn eligible(candidates: &[Candidate]) -> Vec<usize> {
    let pick = |backup: bool| -> Vec<usize> {
        candidates.iter().enumerate().filter(|(_, c)| c.backup == backup && c.usable()).map(|(i, _)| i).collect()
    };
    let primaries = pick(false);
    if primaries.is_empty() {
        pick(true)
    } else {
        primaries
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    pub fn c(address: &str, weight: u32) -> Candidate {
        Candidate { address: address.into(), weight, backup: false, unavailable: false, zone_local: false }
    }

    #[test]
    fn pool_precomputes_weights() {
        let list = vec![c("a", 2), c("b", 0), c("c", 3), Candidate { unavailable: true, ..c("d", 1) }];
        let pool = Pool::new(&list);
        assert_eq!(pool.indices, [0, 2]);
        assert_eq!(pool.cumulative, [2, 5]);
        assert!(!pool.equal);
        assert_eq!(
            (pool.position_of(0), pool.position_of(1), pool.position_of(2), pool.position_of(4)),
            (Some(0), Some(0), Some(1), Some(1))
        );
        assert_eq!(pool.position_of(5), None);
        assert!(Pool::new(&[c("a", 4), c("b", 4)]).equal);
        assert!(Pool::new(&[]).is_empty());
    }

    #[test]
    fn backups_only_when_no_primary_is_usable() {
        let mut list = vec![c("a", 1), c("b", 0), Candidate { backup: true, ..c("z", 1) }];
        assert_eq!(eligible(&list), [0]);
        list[0].unavailable = true;
        assert_eq!(eligible(&list), [2], "a down, b drained: the backup");
        list[2].unavailable = true;
        assert!(eligible(&list).is_empty());
    }
}
