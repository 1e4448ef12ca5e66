//! Plugin-side load balancing, for hosts without a balancer of their own
//! that follows the registry (nginx) and for policies Envoy cannot
//! express. Pure and seeded: every balancer works over a slice of
//! [`Candidate`]s and takes its randomness and time as arguments.

pub mod hash;
pub mod maglev;
pub mod p2c;
pub mod swrr;

use super::member::Member;

/// A member as a balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `host:port`, also the consistent-hashing identity.
    pub address: String,
    pub weight: u32,
    pub backup: bool,
    /// Down by the registry, or out after passive health failures.
    pub unavailable: bool,
}

impl Candidate {
    pub fn from_member(m: &Member) -> Self {
        Candidate {
            address: m.addr.to_string(),
            weight: m.attrs.weight,
            backup: m.attrs.backup,
            unavailable: m.attrs.down,
        }
    }

    /// Can take new requests: not down/out and not drained (weight 0).
    pub fn usable(&self) -> bool {
        !self.unavailable && self.weight > 0
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
        Candidate { address: address.into(), weight, backup: false, unavailable: false }
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
