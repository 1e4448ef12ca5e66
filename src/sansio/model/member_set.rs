//! A set of members keyed by address, and the difference between two sets.

use crate::sansio::model::member::{HostPort, Member, MemberAttrs};

/// Members sorted by address, one per address. Equality is content
/// equality, so "did the list change?" is `a != b`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberSet {
    members: Vec<Member>,
}

impl MemberSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set, keeping the first member of each address. Returns the
    /// set and the addresses that were dropped as duplicates.
    pub fn from_members(members: impl IntoIterator<Item = Member>) -> (Self, Vec<HostPort>) {
        let mut all: Vec<Member> = members.into_iter().collect();
        // Already in address order, one per address (a list read from keys
        // kept by address): taken as it is, with no sort buffer and no copy.
        if all.windows(2).all(|w| matches!(w, [a, b] if a.addr < b.addr)) {
            return (MemberSet { members: all }, Vec::new());
        }
        // Stable sort keeps the registry's order among equal addresses.
        all.sort_by(|a, b| a.addr.cmp(&b.addr));
        let mut out: Vec<Member> = Vec::with_capacity(all.len());
        let mut duplicates = Vec::new();
        for m in all {
            match out.last() {
                Some(last) if last.addr == m.addr => duplicates.push(m.addr),
                _ => out.push(m),
            }
        }
        (MemberSet { members: out }, duplicates)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.members.iter()
    }

    pub fn get(&self, addr: &HostPort) -> Option<&MemberAttrs> {
        self.members.binary_search_by(|m| m.addr.cmp(addr)).ok().and_then(|i| self.members.get(i)).map(|m| &m.attrs)
    }

    /// How many of `self`'s addresses `next` lacks: one walk of both
    /// sorted lists, nothing copied.
    pub fn removed_from(&self, next: &MemberSet) -> usize {
        let mut theirs = next.members.iter().map(|m| &m.addr).peekable();
        let mut removed = 0;
        for m in &self.members {
            while theirs.next_if(|a| *a < &m.addr).is_some() {}
            if theirs.next_if(|a| *a == &m.addr).is_none() {
                removed += 1;
            }
        }
        removed
    }

    /// What changed from `self` to `next`.
    pub fn diff(&self, next: &MemberSet) -> Diff {
        let mut diff = Diff::default();
        let (mut a, mut b) = (self.members.iter().peekable(), next.members.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(old), None) => {
                    diff.removed.push(old.addr.clone());
                    a.next();
                }
                (None, Some(new)) => {
                    diff.added.push((*new).clone());
                    b.next();
                }
                (Some(old), Some(new)) => match old.addr.cmp(&new.addr) {
                    std::cmp::Ordering::Less => {
                        diff.removed.push(old.addr.clone());
                        a.next();
                    }
                    std::cmp::Ordering::Greater => {
                        diff.added.push((*new).clone());
                        b.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if old.attrs != new.attrs || !old.meta.same(&new.meta) {
                            diff.changed.push((*new).clone());
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
        diff
    }
}

/// The difference between two member sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<Member>,
    pub removed: Vec<HostPort>,
    /// Present in both, attributes, locality or tags changed (the new member).
    pub changed: Vec<Member>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "+{} -{} ~{}", self.added.len(), self.removed.len(), self.changed.len())
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn m(addr: &str, weight: u32) -> Member {
        Member::new(addr.parse().unwrap(), MemberAttrs { weight, ..MemberAttrs::default() })
    }

    #[test]
    fn sorts_and_drops_duplicates_keeping_the_first() {
        let (set, dups) = MemberSet::from_members(vec![m("10.0.0.2:80", 1), m("10.0.0.1:80", 5), m("10.0.0.1:80", 9)]);
        assert_eq!(set.len(), 2);
        assert_eq!(set.iter().next().unwrap().attrs.weight, 5);
        assert_eq!(dups, vec!["10.0.0.1:80".parse().unwrap()]);
        assert_eq!(set.get(&"10.0.0.2:80".parse().unwrap()).unwrap().weight, 1);
        assert!(set.get(&"10.0.0.3:80".parse().unwrap()).is_none());
    }

    #[test]
    fn equal_content_is_equal_whatever_the_order() {
        let (a, _) = MemberSet::from_members(vec![m("10.0.0.1:80", 1), m("10.0.0.2:80", 1)]);
        let (b, _) = MemberSet::from_members(vec![m("10.0.0.2:80", 1), m("10.0.0.1:80", 1)]);
        assert_eq!(a, b);
        assert!(a.diff(&b).is_empty());
    }

    #[test]
    fn diff_reports_added_removed_changed() {
        let (old, _) = MemberSet::from_members(vec![m("10.0.0.1:80", 1), m("10.0.0.2:80", 1), m("10.0.0.3:80", 1)]);
        let (new, _) = MemberSet::from_members(vec![m("10.0.0.2:80", 4), m("10.0.0.3:80", 1), m("10.0.0.4:80", 1)]);
        let d = old.diff(&new);
        assert_eq!(d.added, vec![m("10.0.0.4:80", 1)]);
        assert_eq!(d.removed, vec!["10.0.0.1:80".parse().unwrap()]);
        assert_eq!(d.changed, vec![m("10.0.0.2:80", 4)]);
        assert_eq!(d.to_string(), "+1 -1 ~1");
        assert_eq!(MemberSet::new().diff(&new).added.len(), 3);
        assert_eq!(new.diff(&MemberSet::new()).removed.len(), 3);
    }

    #[test]
    fn removed_from_counts_what_the_diff_removes() {
        let set = |addrs: &[&str]| MemberSet::from_members(addrs.iter().map(|a| m(a, 1))).0;
        let cases = [
            (vec!["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], vec!["10.0.0.2:80", "10.0.0.4:80"]),
            (vec!["10.0.0.1:80"], vec![]),
            (vec![], vec!["10.0.0.1:80"]),
            (vec!["10.0.0.5:80", "10.0.0.6:80"], vec!["10.0.0.1:80", "10.0.0.9:80"]),
            (vec!["10.0.0.1:80", "[::1]:80", "a.example:80"], vec!["[::1]:80", "a.example:80", "b.example:80"]),
        ];
        for (old, new) in cases {
            let (old, new) = (set(&old), set(&new));
            assert_eq!(old.removed_from(&new), old.diff(&new).removed.len(), "{old:?} -> {new:?}");
        }
    }
}
