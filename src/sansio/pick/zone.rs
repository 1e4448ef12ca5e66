//! Zone preference for pick mode: requests stay with the members in the
//! proxy's own zone while enough of them are usable, and spill over to
//! every zone otherwise.
//!
//! The rule, over a set of members (all of an upstream's, or one subset's):
//! 1. the local primaries (not `backup`, in the proxy's zone): if at least
//!    `min_healthy_permille`/1000 of them are usable (not down, not out
//!    after failures, weight above 0), and at least one is, requests go to
//!    the usable local primaries only;
//! 2. otherwise to the usable primaries of every zone (spill-over; the
//!    local ones included);
//! 3. and when no primary is usable, to the usable backups (nginx's rule).
//!
//! Without a configured zone, or with no primary in it, this is plain
//! [`crate::sansio::pick::balance::eligible`].

use crate::sansio::pick::balance::Candidate;

/// The proxy's zone preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZonePreference {
    /// A zone is configured (candidates carry `zone_local`).
    pub enabled: bool,
    pub min_healthy_permille: u32,
}

/// Which rule chose the eligible members (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneChoice {
    /// The proxy's zone has enough usable members.
    Local,
    /// Too few usable members in the zone (or none there): every zone.
    SpillOver,
    /// No zone preference configured.
    Any,
}

/// The eligible indices among `members` (indices into `candidates`).
pub fn eligible_in(candidates: &[Candidate], members: &[usize], pref: ZonePreference) -> (Vec<usize>, ZoneChoice) {
    let of = |i: &usize| candidates.get(*i);
    let mut choice = ZoneChoice::Any;
    if pref.enabled {
        let local: Vec<usize> =
            members.iter().copied().filter(|i| of(i).is_some_and(|c| !c.backup && c.zone_local)).collect();
        let usable: Vec<usize> = local.iter().copied().filter(|i| of(i).is_some_and(Candidate::usable)).collect();
        let enough = (usable.len() as u64) * 1000 >= u64::from(pref.min_healthy_permille) * (local.len() as u64);
        if !usable.is_empty() && enough {
            return (usable, ZoneChoice::Local);
        }
        choice = ZoneChoice::SpillOver;
    }
    let pick = |backup: bool| -> Vec<usize> {
        members.iter().copied().filter(|i| of(i).is_some_and(|c| c.backup == backup && c.usable())).collect()
    };
    let primaries = pick(false);
    if primaries.is_empty() {
        (pick(true), choice)
    } else {
        (primaries, choice)
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::pick::balance::eligible;

    fn cand(name: &str, local: bool) -> Candidate {
        Candidate { address: name.into(), weight: 1, backup: false, unavailable: false, zone_local: local }
    }

    const PREF: ZonePreference = ZonePreference { enabled: true, min_healthy_permille: 700 };

    #[test]
    fn stays_local_while_enough_are_usable_then_spills_over() {
        // Four local (a*), two remote (b*).
        let mut list = vec![
            cand("a1", true),
            cand("a2", true),
            cand("a3", true),
            cand("a4", true),
            cand("b1", false),
            cand("b2", false),
        ];
        let all: Vec<usize> = (0..list.len()).collect();
        assert_eq!(eligible_in(&list, &all, PREF), (vec![0, 1, 2, 3], ZoneChoice::Local));
        // 3 of 4 usable = 75 % >= 70 %: still local.
        list[0].unavailable = true;
        assert_eq!(eligible_in(&list, &all, PREF), (vec![1, 2, 3], ZoneChoice::Local));
        // 2 of 4 = 50 %: every usable member of every zone.
        list[1].weight = 0;
        assert_eq!(eligible_in(&list, &all, PREF), (vec![2, 3, 4, 5], ZoneChoice::SpillOver));
        // A lower threshold keeps it local.
        let half = ZonePreference { min_healthy_permille: 500, ..PREF };
        assert_eq!(eligible_in(&list, &all, half), (vec![2, 3], ZoneChoice::Local));
        // Threshold 0: local while any local member is usable.
        let any = ZonePreference { min_healthy_permille: 0, ..PREF };
        list[2].unavailable = true;
        assert_eq!(eligible_in(&list, &all, any), (vec![3], ZoneChoice::Local));
        list[3].unavailable = true;
        assert_eq!(eligible_in(&list, &all, any), (vec![4, 5], ZoneChoice::SpillOver));
        // Recovery brings traffic back.
        for c in &mut list {
            c.unavailable = false;
            c.weight = 1;
        }
        assert_eq!(eligible_in(&list, &all, PREF).1, ZoneChoice::Local);
    }

    #[test]
    fn backups_and_the_plain_rule() {
        let mut list = vec![cand("a1", true), cand("b1", false), Candidate { backup: true, ..cand("a9", true) }];
        let all: Vec<usize> = (0..3).collect();
        // Without a zone: exactly the plain rule.
        let off = ZonePreference { enabled: false, min_healthy_permille: 700 };
        assert_eq!(eligible_in(&list, &all, off), (eligible(&list), ZoneChoice::Any));
        // A local backup does not count as a local member, nor win over a remote primary.
        list[0].unavailable = true;
        assert_eq!(eligible_in(&list, &all, PREF), (vec![1], ZoneChoice::SpillOver));
        list[1].unavailable = true;
        assert_eq!(eligible_in(&list, &all, PREF), (vec![2], ZoneChoice::SpillOver));
        // No member in the proxy's zone: every zone.
        let remote = vec![cand("b1", false), cand("b2", false)];
        assert_eq!(eligible_in(&remote, &[0, 1], PREF), (vec![0, 1], ZoneChoice::SpillOver));
        // Only a subset of the candidates is considered.
        assert_eq!(eligible_in(&remote, &[1], PREF), (vec![1], ZoneChoice::SpillOver));
    }
}
