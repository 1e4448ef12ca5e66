//! Subset selection for pick mode: one balancing lane per value of the
//! configured tag, so a request header picks a tagged subset (canaries)
//! with the upstream's own policy, zone preference included.
//!
//! Lanes are built once per change of the member list or of availability,
//! never per request. A request's lane:
//! - header value V, and some member tagged `key=V` is eligible → that subset;
//! - otherwise the members without the tag `key` (the stable ones);
//! - when none of those is eligible either, every member.
//!
//! Without a subset rule there is one lane: every member.

use crate::sansio::pick::balance::maglev::Maglev;
use crate::sansio::pick::balance::swrr::SmoothWrr;
use crate::sansio::pick::balance::{Candidate, Pool};
use crate::sansio::pick::zone::{eligible_in, ZoneChoice, ZonePreference};

/// At most this many tag values get a lane of their own (the first in
/// sorted order); requests naming another value go to the untagged lane.
pub const MAX_SUBSET_LANES: usize = 16;

/// One set of members with its own balancer state.
#[derive(Debug, Clone, Default)]
pub struct Lane {
    pub pool: Pool,
    pub swrr: SmoothWrr,
    pub maglev: Option<Maglev>,
    pub choice: Option<ZoneChoice>,
}

impl Lane {
    fn build(candidates: &[Candidate], members: &[usize], pref: ZonePreference, hash: bool) -> Lane {
        let (indices, choice) = eligible_in(candidates, members, pref);
        let maglev = if hash { Maglev::build_over(candidates, &indices) } else { None };
        let pool = Pool::from_indices(candidates, indices);
        Lane { swrr: SmoothWrr::new(pool.len()), pool, maglev, choice: Some(choice) }
    }
}

/// The lanes of one upstream.
#[derive(Debug, Clone, Default)]
pub struct Lanes {
    /// Sorted tag values, one lane each (`lanes[i]`).
    values: Vec<String>,
    /// One per value, then the untagged members, then every member.
    lanes: Vec<Lane>,
    /// Tag values left without a lane (over [`MAX_SUBSET_LANES`]).
    pub values_dropped: usize,
}

impl Lanes {
    /// `tags[i]`: candidate `i`'s value of the subset tag (`None`: untagged,
    /// or no subset rule). `subsets`: whether a subset rule is configured.
    pub fn build(
        candidates: &[Candidate],
        tags: &[Option<&str>],
        subsets: bool,
        pref: ZonePreference,
        hash: bool,
    ) -> Lanes {
        let everyone: Vec<usize> = (0..candidates.len()).collect();
        if !subsets {
            return Lanes {
                values: Vec::new(),
                lanes: vec![Lane::build(candidates, &everyone, pref, hash)],
                values_dropped: 0,
            };
        }
        // Sorted by insertion (no generic sort: it adds kilobytes to the module).
        let mut values: Vec<&str> = Vec::new();
        for v in tags.iter().flatten() {
            if let Err(at) = values.binary_search(v) {
                values.insert(at, v);
            }
        }
        let values_dropped = values.len().saturating_sub(MAX_SUBSET_LANES);
        values.truncate(MAX_SUBSET_LANES);
        let mut lanes: Vec<Lane> = values
            .iter()
            .map(|v| {
                let members: Vec<usize> = (0..candidates.len()).filter(|&i| tags.get(i) == Some(&Some(*v))).collect();
                Lane::build(candidates, &members, pref, hash)
            })
            .collect();
        let untagged: Vec<usize> = (0..candidates.len()).filter(|&i| matches!(tags.get(i), Some(None))).collect();
        lanes.push(Lane::build(candidates, &untagged, pref, hash));
        lanes.push(Lane::build(candidates, &everyone, pref, hash));
        Lanes { values: values.into_iter().map(str::to_string).collect(), lanes, values_dropped }
    }

    /// The lane for a request whose subset header has `value`.
    pub fn select(&mut self, value: Option<&str>) -> Option<&mut Lane> {
        let n = self.values.len();
        let tagged = value.and_then(|v| self.values.binary_search_by(|x| x.as_str().cmp(v)).ok());
        let usable = |lanes: &[Lane], i: usize| lanes.get(i).is_some_and(|l| !l.pool.is_empty());
        let at = match tagged {
            Some(i) if usable(&self.lanes, i) => i,
            _ if self.lanes.len() > 1 && usable(&self.lanes, n) => n,
            _ => self.lanes.len().saturating_sub(1),
        };
        self.lanes.get_mut(at)
    }

    /// The lane every request uses without a subset rule (and the last
    /// resort with one).
    pub fn everyone(&self) -> Option<&Lane> {
        self.lanes.last()
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn cand(name: &str, local: bool) -> Candidate {
        Candidate { address: name.into(), weight: 1, backup: false, unavailable: false, zone_local: local }
    }

    const OFF: ZonePreference = ZonePreference { enabled: false, min_healthy_permille: 700 };

    fn names(lanes: &mut Lanes, list: &[Candidate], value: Option<&str>) -> Vec<String> {
        let lane = lanes.select(value).unwrap();
        lane.pool.indices.iter().map(|&i| list[i].address.to_string()).collect()
    }

    #[test]
    fn header_values_select_their_subset_and_fall_back_to_the_untagged() {
        let mut list = vec![cand("s1", true), cand("s2", false), cand("c1", true), cand("v2", false)];
        let tags = [None, None, Some("true"), Some("v2")];
        let mut lanes = Lanes::build(&list, &tags, true, OFF, false);
        assert_eq!(names(&mut lanes, &list, Some("true")), ["c1"]);
        assert_eq!(names(&mut lanes, &list, Some("v2")), ["v2"]);
        assert_eq!(names(&mut lanes, &list, None), ["s1", "s2"], "no header: the untagged members");
        assert_eq!(names(&mut lanes, &list, Some("other")), ["s1", "s2"], "unknown value: the untagged");
        // The canary goes down: canary requests fall back to the stable members.
        list[2].unavailable = true;
        let mut lanes = Lanes::build(&list, &tags, true, OFF, false);
        assert_eq!(names(&mut lanes, &list, Some("true")), ["s1", "s2"]);
        // Every untagged member down: every usable member.
        list[0].unavailable = true;
        list[1].unavailable = true;
        let mut lanes = Lanes::build(&list, &tags, true, OFF, false);
        assert_eq!(names(&mut lanes, &list, None), ["v2"]);
        // No rule: one lane, every member.
        let mut plain = Lanes::build(&list, &[None; 4], false, OFF, false);
        assert_eq!(names(&mut plain, &list, Some("true")), ["v2"]);
        assert_eq!(plain.everyone().map(|l| l.pool.len()), Some(1));
    }

    #[test]
    fn zone_preference_applies_inside_a_subset_and_hash_lanes_have_tables() {
        let list = vec![cand("c-local", true), cand("c-remote", false), cand("s-local", true), cand("s-remote", false)];
        let tags = [Some("true"), Some("true"), None, None];
        let pref = ZonePreference { enabled: true, min_healthy_permille: 700 };
        let mut lanes = Lanes::build(&list, &tags, true, pref, true);
        assert_eq!(names(&mut lanes, &list, Some("true")), ["c-local"]);
        assert_eq!(names(&mut lanes, &list, None), ["s-local"]);
        let lane = lanes.select(Some("true")).unwrap();
        assert_eq!(lane.choice, Some(ZoneChoice::Local));
        assert_eq!(lane.maglev.as_ref().and_then(|m| m.pick(b"any key")), Some(0));
    }

    #[test]
    fn lanes_are_bounded() {
        let list: Vec<Candidate> = (0..20).map(|i| cand(&format!("m{i}"), false)).collect();
        let values: Vec<String> = (0..20).map(|i| format!("v{i:02}")).collect();
        let tags: Vec<Option<&str>> = values.iter().map(|v| Some(v.as_str())).collect();
        let mut lanes = Lanes::build(&list, &tags, true, OFF, false);
        assert_eq!(lanes.values_dropped, 4);
        assert_eq!(names(&mut lanes, &list, Some("v00")), ["m0"]);
        // v19 has no lane, and there is no untagged member: every member.
        assert_eq!(names(&mut lanes, &list, Some("v19")).len(), 20);
    }
}
