//! The upsync key/value layout shared by etcd (v2 and v3) and Consul KV:
//! one key per member, `<prefix><host:port>`, whose value holds the upsync
//! attributes as JSON.
//!
//! [`members_from_kv`] reads a list once (Consul KV). [`KvMembers`] keeps
//! the keys of a prefix so that a change of one key (an etcd watch event)
//! costs that key, not the prefix: etcd's full reads build one, its watch
//! events and v2 long-poll answers change it, and both hand out
//! [`KvMembers::list`], the very list [`members_from_kv`] reads from the
//! same keys in key order (the tests hold them to it).

use crate::sansio::model::member::{parse_upsync_member, HostPort, Member};
use crate::sansio::model::member_set::MemberSet;
use crate::sansio::registry::{member_list_with, EntryProblem, Instance, MemberList};
use std::collections::BTreeMap;

/// Values longer than this are not parsed (an upsync value is ~70 bytes;
/// nginx-upsync-module overflowed its heap past 1 KiB). The member keeps
/// its defaults, as for any unreadable value, and the entry is reported.
pub const MAX_VALUE_BYTES: usize = 1024;

/// The `host:port` part of a member key: the last path segment after the prefix.
pub fn member_segment<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    let rest = key.strip_prefix(prefix)?;
    rest.rsplit('/').next().filter(|s| !s.is_empty())
}

/// Builds the member list from `(key, value)` pairs read under `prefix`.
pub fn members_from_kv(prefix: &str, entries: impl IntoIterator<Item = (String, Vec<u8>)>) -> MemberList {
    let instances = entries.into_iter().map(|(key, value)| {
        let instance = kv_instance(prefix, &key, &value);
        (key, instance)
    });
    member_list_with(instances, DUPLICATE_KEY)
}

/// The problem of each key beyond the first that lists an address.
const DUPLICATE_KEY: &str = "address listed under more than one key; the first key wins";

fn kv_instance(prefix: &str, key: &str, value: &[u8]) -> Instance {
    // Folder keys (Consul's `prefix/`, etcd directories) hold no member.
    if key.ends_with('/') && value.is_empty() {
        return Ok(None);
    }
    let addr_text = member_segment(prefix, key).ok_or("key has no host:port segment after the prefix")?;
    let addr: HostPort = addr_text.parse().map_err(|e| format!("key segment {addr_text:?} is not host:port: {e}"))?;
    let (attrs, meta, notes) = if value.len() > MAX_VALUE_BYTES {
        let note = format!("value of {} bytes is over {MAX_VALUE_BYTES} bytes, defaults used", value.len());
        (Default::default(), Default::default(), vec![note])
    } else {
        parse_upsync_member(value)
    };
    Ok(Some((Member { addr, attrs, meta }, notes)))
}

/// What one key holds, by the rules of [`members_from_kv`]. A member
/// itself is kept once, in [`KvMembers::by_addr`]; here its address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Parsed {
    /// No member, on purpose (a folder key).
    Folder,
    /// A member at this address, and what was repaired in its value.
    Member(HostPort, Vec<String>),
    /// No member: why.
    Skipped(String),
}

impl Parsed {
    /// [`kv_instance`], then [`member_list_with`]'s rule for an address
    /// that is never a member; the member read, if any.
    fn read(prefix: &str, key: &str, value: &[u8]) -> (Parsed, Option<Member>) {
        match kv_instance(prefix, key, value) {
            Ok(None) => (Parsed::Folder, None),
            Err(problem) => (Parsed::Skipped(problem), None),
            Ok(Some((member, notes))) => match member.addr.not_a_member() {
                Some(why) => (Parsed::Skipped(format!("{} is {why}: not a member", member.addr)), None),
                None => (Parsed::Member(member.addr.clone(), notes), Some(member)),
            },
        }
    }

    fn has_problems(&self) -> bool {
        match self {
            Parsed::Folder => false,
            Parsed::Skipped(_) => true,
            Parsed::Member(_, notes) => !notes.is_empty(),
        }
    }
}

/// The keys that list one address, in key order, each with its member:
/// the first one's is the member.
type AddrKeys = Vec<(Vec<u8>, Member)>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    parsed: Parsed,
    mod_revision: i64,
}

/// Every key under a prefix, read as members, changed one key at a time.
///
/// Keys are raw bytes in byte order (etcd's order). A put or a delete
/// costs O(log n); [`KvMembers::list`] costs one pass over the members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvMembers {
    prefix: String,
    entries: BTreeMap<Vec<u8>, Entry>,
    /// The keys of each address with their members ([`AddrKeys`]):
    /// [`KvMembers::list`] copies each first member from here, with no
    /// lookup per member (10,000 of them on every change).
    by_addr: BTreeMap<HostPort, AddrKeys>,
    /// How many entries have problems: with none, a list skips looking.
    with_problems: usize,
    /// How many keys were last changed at each revision (etcd v3; 0 for v2).
    revisions: BTreeMap<i64, usize>,
}

impl KvMembers {
    pub fn new(prefix: &str) -> Self {
        KvMembers {
            prefix: prefix.to_string(),
            entries: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            with_problems: 0,
            revisions: BTreeMap::new(),
        }
    }

    /// The keys of a full read: `(key, value, mod_revision)`.
    pub fn from_entries(prefix: &str, entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>, i64)>) -> Self {
        let mut kv = KvMembers::new(prefix);
        for (key, value, mod_revision) in entries {
            kv.put(&key, &value, mod_revision);
        }
        kv
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many keys (members or not).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The highest `mod_revision` of the keys; 0 with none.
    pub fn max_mod_revision(&self) -> i64 {
        self.revisions.keys().next_back().copied().unwrap_or(0)
    }

    /// `key` now holds `value` (written at `mod_revision`).
    pub fn put(&mut self, key: &[u8], value: &[u8], mod_revision: i64) {
        self.delete(key);
        let (parsed, member) = Parsed::read(&self.prefix, &String::from_utf8_lossy(key), value);
        if let Some(m) = member {
            // Room for one: an address under two keys is a registry mistake,
            // and a Vec's first growth would make room for four members.
            let keys = self.by_addr.entry(m.addr.clone()).or_insert_with(|| Vec::with_capacity(1));
            if let Err(at) = keys.binary_search_by(|(k, _)| k.as_slice().cmp(key)) {
                keys.insert(at, (key.to_vec(), m));
            }
        }
        if parsed.has_problems() {
            self.with_problems += 1;
        }
        *self.revisions.entry(mod_revision).or_insert(0) += 1;
        self.entries.insert(key.to_vec(), Entry { parsed, mod_revision });
    }

    /// `key` is gone; `false` if it was not there.
    pub fn delete(&mut self, key: &[u8]) -> bool {
        let Some(entry) = self.entries.remove(key) else {
            return false;
        };
        if entry.parsed.has_problems() {
            self.with_problems = self.with_problems.saturating_sub(1);
        }
        if let Parsed::Member(addr, _) = &entry.parsed {
            if let Some(keys) = self.by_addr.get_mut(addr) {
                if let Ok(at) = keys.binary_search_by(|(k, _)| k.as_slice().cmp(key)) {
                    keys.remove(at);
                }
                if keys.is_empty() {
                    self.by_addr.remove(addr);
                }
            }
        }
        if let Some(n) = self.revisions.get_mut(&entry.mod_revision) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.revisions.remove(&entry.mod_revision);
            }
        }
        true
    }

    /// How many addresses the list has.
    pub fn member_count(&self) -> usize {
        self.by_addr.len()
    }

    /// The member list, exactly as [`members_from_kv`] reads it from these
    /// keys in key order: the members, then the problems of each key in
    /// key order, then one for each key beyond the first of an address.
    pub fn list(&self) -> MemberList {
        let mut problems = Vec::new();
        if self.with_problems > 0 {
            for (key, entry) in self.entries.iter().filter(|(_, e)| e.parsed.has_problems()) {
                let text = String::from_utf8_lossy(key);
                match &entry.parsed {
                    Parsed::Member(_, notes) => problems.extend(notes.iter().map(|note| EntryProblem {
                        key: text.clone().into_owned(),
                        problem: note.clone(),
                        skipped: false,
                    })),
                    Parsed::Skipped(problem) => {
                        problems.push(EntryProblem { key: text.into_owned(), problem: problem.clone(), skipped: true })
                    }
                    Parsed::Folder => {}
                }
            }
        }
        let mut members = Vec::with_capacity(self.by_addr.len());
        for (addr, keys) in &self.by_addr {
            if let Some((_, m)) = keys.first() {
                members.push(m.clone());
            }
            for _ in 1..keys.len() {
                problems.push(EntryProblem {
                    key: addr.to_string(),
                    problem: DUPLICATE_KEY.to_string(),
                    skipped: true,
                });
            }
        }
        let (members, _) = MemberSet::from_members(members);
        MemberList { members, problems }
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::model::member::MemberAttrs;
    use std::collections::BTreeMap;

    fn kv(key: &str, value: &str) -> (String, Vec<u8>) {
        (key.to_string(), value.as_bytes().to_vec())
    }

    #[test]
    fn reads_members_and_reports_bad_entries() {
        let list = members_from_kv(
            "/u/web/",
            vec![
                kv("/u/web/10.0.0.1:80", r#"{"weight":2}"#),
                kv("/u/web/nonsense", "{}"),
                kv("/u/web/", "{}"),
                kv("/u/web/folder/", ""),
                kv("/u/web/a/10.0.0.2:80", "{}"),
                kv("/u/web/b/10.0.0.2:80", r#"{"weight":9}"#),
                kv("/u/web/10.0.0.3:80", "garbage"),
            ],
        );
        let got: Vec<_> = list.members.iter().map(|m| (m.addr.to_string(), m.attrs.weight)).collect();
        assert_eq!(got, [("10.0.0.1:80".into(), 2), ("10.0.0.2:80".into(), 1), ("10.0.0.3:80".to_string(), 1)]);
        let skipped = list.problems.iter().filter(|p| p.skipped).count();
        assert_eq!((skipped, list.problems.len()), (3, 4), "{:#?}", list.problems);
    }

    #[test]
    fn a_value_over_1_kib_is_not_parsed() {
        let big = format!(r#"{{"down":1,"pad":"{}"}}"#, "x".repeat(2000));
        let list = members_from_kv("/p/", vec![kv("/p/10.0.0.1:80", &big), kv("/p/10.0.0.2:80", r#"{"down":1}"#)]);
        assert_eq!(list.members.get(&"10.0.0.1:80".parse().unwrap()), Some(&MemberAttrs::default()));
        assert!(list.members.get(&"10.0.0.2:80".parse().unwrap()).unwrap().down);
        assert!(list.problems[0].problem.contains("over 1024 bytes"), "{:?}", list.problems);
        assert!(!list.problems[0].skipped);
    }

    /// The keys of the property test: members, the same address under two
    /// keys, nested keys, bad keys, folders, addresses that are never members.
    const KEYS: &[&str] = &[
        "/p/10.0.0.1:80",
        "/p/10.0.0.2:80",
        "/p/a/10.0.0.1:80",
        "/p/b/10.0.0.1:80",
        "/p/z/10.0.0.2:80",
        "/p/[::1]:80",
        "/p/web.local:8080",
        "/p/0.0.0.0:80",
        "/p/nonsense",
        "/p/10.0.0.3:99999",
        "/p/",
        "/p/folder/",
        "/p/10.0.0.4:80",
    ];
    const VALUES: &[&str] = &[
        "{}",
        r#"{"weight":3}"#,
        r#"{"down":1,"backup":1}"#,
        "not json",
        "",
        r#"{"weight":"x","zone":"z1"}"#,
        r#"{"weight":2,"tags":{"a":"b"}}"#,
    ];

    /// A full read of `keys` (etcd's order: by key bytes).
    fn full_read(keys: &BTreeMap<Vec<u8>, Vec<u8>>) -> MemberList {
        members_from_kv("/p/", keys.iter().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone())))
    }

    #[test]
    fn changes_one_key_at_a_time_read_the_same_as_a_full_read() {
        for seed in 0..40 {
            let mut rng = crate::sansio::util::rng::Rng::new(seed);
            let mut keys: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut kv = KvMembers::new("/p/");
            for step in 0..120i64 {
                let key = KEYS[rng.up_to(KEYS.len() as u64 - 1) as usize].as_bytes().to_vec();
                if rng.up_to(3) == 0 {
                    assert_eq!(kv.delete(&key), keys.remove(&key).is_some());
                } else {
                    let value = VALUES[rng.up_to(VALUES.len() as u64 - 1) as usize].as_bytes().to_vec();
                    kv.put(&key, &value, step);
                    keys.insert(key, value);
                }
                assert_eq!(kv.list(), full_read(&keys), "seed {seed} step {step}");
                assert_eq!(kv.len(), keys.len());
                assert_eq!(kv.member_count(), kv.list().members.len());
            }
            // Built at once from the keys: the same as changed one by one.
            let built = KvMembers::from_entries("/p/", keys.iter().map(|(k, v)| (k.clone(), v.clone(), 0)));
            assert_eq!(built.list(), kv.list());
        }
    }

    #[test]
    fn the_highest_revision_follows_puts_and_deletes() {
        let mut kv = KvMembers::new("/p/");
        assert_eq!(kv.max_mod_revision(), 0);
        kv.put(b"/p/10.0.0.1:80", b"{}", 5);
        kv.put(b"/p/10.0.0.2:80", b"{}", 9);
        kv.put(b"/p/10.0.0.3:80", b"{}", 9);
        assert_eq!(kv.max_mod_revision(), 9);
        kv.delete(b"/p/10.0.0.2:80");
        assert_eq!(kv.max_mod_revision(), 9, "another key still has 9");
        kv.delete(b"/p/10.0.0.3:80");
        assert_eq!(kv.max_mod_revision(), 5);
        kv.put(b"/p/10.0.0.1:80", b"{}", 12);
        assert_eq!((kv.max_mod_revision(), kv.len()), (12, 1));
        assert!(!kv.delete(b"/p/10.0.0.9:80"));
        kv.delete(b"/p/10.0.0.1:80");
        assert!(kv.is_empty() && kv.max_mod_revision() == 0);
    }

    #[test]
    fn deleting_the_first_key_of_an_address_hands_it_to_the_next() {
        let mut kv = KvMembers::new("/p/");
        kv.put(b"/p/b/10.0.0.1:80", br#"{"weight":2}"#, 1);
        kv.put(b"/p/a/10.0.0.1:80", br#"{"weight":7}"#, 2);
        let weight = |kv: &KvMembers| kv.list().members.get(&"10.0.0.1:80".parse().unwrap()).map(|a| a.weight);
        assert_eq!(weight(&kv), Some(7), "/p/a/ sorts first");
        assert_eq!(kv.list().problems.len(), 1);
        kv.delete(b"/p/a/10.0.0.1:80");
        assert_eq!(weight(&kv), Some(2));
        assert!(kv.list().problems.is_empty());
        kv.delete(b"/p/b/10.0.0.1:80");
        assert_eq!(weight(&kv), None);
    }
}
