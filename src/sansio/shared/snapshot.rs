//! The versioned member list the poller publishes in shared data, and the
//! compare-and-swap loop that publishes it.
//!
//! Every value carries its own key: ngx_wasm_module matches entries by the
//! CRC32 of the key alone, so a reader must check it got the entry it asked
//! for.

use crate::sansio::model::locality::{Locality, MemberMeta};
use crate::sansio::model::member::{Host, HostPort, Member, MemberAttrs};
use crate::sansio::model::member_set::MemberSet;
use crate::sansio::model::update::{Published, Source};
use crate::sansio::shared::keys::{publish_sequence_key, snapshot_key, version_key};
use crate::sansio::shared::snapshot_scan;
use crate::sansio::shared::store::{cas_update, CasStep, Entry, SharedStore, StoreError};
use crate::sansio::util::json_out;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt::Write as _;

/// A published member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Grows by one with every change of members or source.
    pub version: u64,
    pub source: Source,
    pub members: MemberSet,
}

#[derive(Serialize, Deserialize)]
struct SnapshotWire<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    version: u64,
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(borrow)]
    members: Vec<MemberWire<'a>>,
}

/// One member as stored. Read borrowing from the stored bytes: a snapshot
/// of 10,000 members is read on every EDS answer, and a copy of each
/// address and locality string cost a third of that read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberWire<'a> {
    #[serde(borrow)]
    pub address: Cow<'a, str>,
    pub weight: u32,
    pub max_fails: u32,
    pub fail_timeout: u32,
    pub down: bool,
    pub backup: bool,
    // Locality and tags: optional, so snapshots written before they
    // existed still decode (and older readers ignore them).
    #[serde(default, skip_serializing_if = "str::is_empty", borrow)]
    pub region: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "str::is_empty", borrow)]
    pub zone: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "str::is_empty", borrow)]
    pub sub_zone: Cow<'a, str>,
    /// `{"key": "value", ...}`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub tags: Map<String, Value>,
}

impl From<&Member> for MemberWire<'static> {
    fn from(m: &Member) -> Self {
        MemberWire {
            address: Cow::Owned(m.addr.to_string()),
            weight: m.attrs.weight,
            max_fails: m.attrs.max_fails,
            fail_timeout: m.attrs.fail_timeout,
            down: m.attrs.down,
            backup: m.attrs.backup,
            region: Cow::Owned(m.meta.locality.region.clone()),
            zone: Cow::Owned(m.meta.locality.zone.clone()),
            sub_zone: Cow::Owned(m.meta.locality.sub_zone.clone()),
            tags: tag_object(&m.meta.tags),
        }
    }
}

/// Tags as a JSON object of strings, inserted one by one (collecting into a
/// map would add a sort to the module).
pub fn tag_object(tags: &[(String, String)]) -> Map<String, Value> {
    let mut map = Map::new();
    for (k, v) in tags {
        map.insert(k.clone(), Value::String(v.clone()));
    }
    map
}

impl MemberWire<'_> {
    /// The member's locality and tags, tags put back in key order (one
    /// per key) whatever the stored order.
    fn meta(&mut self) -> MemberMeta {
        // The object's keys are unique and iterate in order.
        let tags = std::mem::take(&mut self.tags)
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                _ => None,
            })
            .collect();
        let locality = Locality {
            region: std::mem::take(&mut self.region).into_owned(),
            zone: std::mem::take(&mut self.zone).into_owned(),
            sub_zone: std::mem::take(&mut self.sub_zone).into_owned(),
        };
        MemberMeta { locality, tags }
    }
}

/// Why a stored snapshot could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    /// The entry belongs to another key (a CRC32 collision on nginx).
    OtherKey(String),
    /// Not a snapshot this version of the plugin can read.
    Corrupt(String),
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::OtherKey(k) => write!(f, "entry belongs to key {k:?} (hash collision)"),
            SnapshotError::Corrupt(e) => write!(f, "unreadable snapshot: {e}"),
        }
    }
}

/// One member as [`MemberWire`] serializes, written directly: for 10,000
/// members serde's serializer and the strings a `MemberWire` copies took
/// ~6 ms natively on every publish, these loops a fraction of it (the tests
/// hold the bytes equal).
fn push_member(out: &mut String, m: &Member, scratch: &mut String) {
    out.push_str("{\"address\":");
    match &m.addr.host {
        Host::Ipv4(ip) => {
            out.push('"');
            json_out::push_ipv4(out, *ip);
            out.push(':');
            json_out::push_uint(out, u64::from(m.addr.port));
            out.push('"');
        }
        _ => {
            scratch.clear();
            let _ = write!(scratch, "{}", m.addr);
            json_out::push_str(out, scratch);
        }
    }
    let a = &m.attrs;
    for (name, n) in
        [(",\"weight\":", a.weight), (",\"max_fails\":", a.max_fails), (",\"fail_timeout\":", a.fail_timeout)]
    {
        out.push_str(name);
        json_out::push_uint(out, u64::from(n));
    }
    out.push_str(",\"down\":");
    json_out::push_bool(out, a.down);
    out.push_str(",\"backup\":");
    json_out::push_bool(out, a.backup);
    let l = &m.meta.locality;
    for (name, v) in [(",\"region\":", &l.region), (",\"zone\":", &l.zone), (",\"sub_zone\":", &l.sub_zone)] {
        if !v.is_empty() {
            out.push_str(name);
            json_out::push_str(out, v);
        }
    }
    let tags = &m.meta.tags;
    if !tags.is_empty() {
        out.push_str(",\"tags\":");
        if tags.windows(2).all(|w| matches!(w, [x, y] if x.0 < y.0)) {
            // In key order, one per key: as the JSON object writes them.
            out.push('{');
            for (i, (k, v)) in tags.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_out::push_str(out, k);
                out.push(':');
                json_out::push_str(out, v);
            }
            out.push('}');
        } else {
            let _ = serde_json::to_string(&tag_object(tags)).map(|t| out.push_str(&t));
        }
    }
    out.push('}');
}

/// A snapshot's JSON (the bytes of [`SnapshotWire`]) but for the digits of
/// its version, which go at `at`: one encoding of the members serves to
/// compare with the stored snapshot and to write the next version.
struct Unversioned {
    bytes: Vec<u8>,
    at: usize,
}

/// Room kept for the version's digits.
const VERSION_DIGITS: usize = 20;

impl Unversioned {
    fn new(key: &str, source: Source, members: &MemberSet) -> Unversioned {
        // ~100 bytes a member: the buffer is sized once, not grown by doubling.
        let mut text = String::with_capacity(members.len().saturating_mul(112).saturating_add(key.len() + 64));
        text.push_str("{\"key\":");
        json_out::push_str(&mut text, key);
        text.push_str(",\"version\":");
        let at = text.len();
        text.push_str(",\"source\":");
        json_out::push_str(&mut text, source.as_str());
        text.push_str(",\"members\":[");
        let mut scratch = String::new();
        for (i, m) in members.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            push_member(&mut text, m, &mut scratch);
        }
        text.push_str("]}");
        let mut bytes = text.into_bytes();
        bytes.reserve_exact(VERSION_DIGITS);
        Unversioned { bytes, at }
    }

    /// The bytes with `version` in place.
    fn with_version(mut self, version: u64) -> Vec<u8> {
        let at = self.at.min(self.bytes.len());
        let _ = self.bytes.splice(at..at, version.to_string().into_bytes());
        self.bytes
    }

    /// The version of `stored` if it is these very bytes with a version.
    fn version_of(&self, stored: &[u8]) -> Option<u64> {
        let (head, tail) = self.bytes.split_at_checked(self.at)?;
        let digits = stored.strip_prefix(head)?.strip_suffix(tail)?;
        if digits.is_empty() || digits.len() > VERSION_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    }
}

/// What [`publish`] reads of a stored snapshot: its members are skipped, not decoded.
#[derive(Deserialize)]
struct StoredHead {
    key: String,
    version: u64,
    source: String,
}

impl Snapshot {
    pub fn encode(&self, key: &str) -> Vec<u8> {
        Unversioned::new(key, self.source, &self.members).with_version(self.version)
    }

    pub fn decode(key: &str, bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        if let Some((version, source, members)) = snapshot_scan::scan(key, bytes) {
            return Ok(Snapshot { version, source, members });
        }
        let wire: SnapshotWire = serde_json::from_slice(bytes).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        if wire.key != key {
            return Err(SnapshotError::OtherKey(wire.key.into_owned()));
        }
        let source = Source::parse(&wire.source)
            .ok_or_else(|| SnapshotError::Corrupt(format!("unknown source {:?}", wire.source)))?;
        let mut members = Vec::with_capacity(wire.members.len());
        for mut m in wire.members {
            let meta = m.meta();
            let addr: HostPort =
                m.address.parse().map_err(|e| SnapshotError::Corrupt(format!("member {:?}: {e}", m.address)))?;
            let attrs = MemberAttrs {
                weight: m.weight,
                max_fails: m.max_fails,
                fail_timeout: m.fail_timeout,
                down: m.down,
                backup: m.backup,
            };
            members.push(Member { addr, attrs, meta });
        }
        Ok(Snapshot { version: wire.version, source, members: MemberSet::from_members(members).0 })
    }
}

#[derive(Serialize, Deserialize)]
struct VersionWire {
    key: String,
    version: u64,
}

#[derive(Serialize, Deserialize)]
struct SequenceWire {
    key: String,
    seq: u64,
}

/// The publish sequence ([`publish_sequence_key`]), if any publish happened.
pub fn read_sequence(store: &dyn SharedStore) -> Option<u64> {
    let (wire, _) = get_keyed(store, &publish_sequence_key(), |w: &SequenceWire| &w.key).ok()?;
    wire.map(|w| w.seq)
}

/// Moves the publish sequence on: call after the snapshots are written.
pub fn bump_sequence(store: &mut dyn SharedStore) -> Result<(), StoreError> {
    let key = publish_sequence_key();
    cas_update(store, &key, &mut |_, entry| {
        let seq = keyed_value(&entry, &key, |w: &SequenceWire| &w.key).map_or(1, |w| w.seq.wrapping_add(1));
        let bytes =
            serde_json::to_vec(&SequenceWire { key: key.clone(), seq }).map_err(|e| StoreError::Host(e.to_string()))?;
        Ok(CasStep::Write(bytes))
    })
}

/// The published version of `upstream`, from its small version entry.
pub fn read_version(store: &dyn SharedStore, upstream: &str) -> Option<u64> {
    let (wire, _) = get_keyed(store, &version_key(upstream), |w: &VersionWire| &w.key).ok()?;
    wire.map(|w| w.version)
}

/// Reads the snapshot of `upstream`, if there is a readable one.
/// The stored bytes of `upstream`'s snapshot, unread.
pub fn read_bytes(store: &dyn SharedStore, upstream: &str) -> Result<Option<Vec<u8>>, SnapshotError> {
    store.get(&snapshot_key(upstream)).map(|e| e.value).map_err(|e| SnapshotError::Corrupt(e.to_string()))
}

pub use snapshot_scan::{views, View};

pub fn read(store: &dyn SharedStore, upstream: &str) -> Result<Option<Snapshot>, SnapshotError> {
    let key = snapshot_key(upstream);
    match store.get(&key) {
        Ok(entry) => entry.value.map(|v| Snapshot::decode(&key, &v)).transpose(),
        Err(e) => Err(SnapshotError::Corrupt(e.to_string())),
    }
}

/// Reads the JSON value stored under `key`, and the entry's cas. A value
/// that is unreadable, or whose `key_of` is another key (keys with the
/// same CRC32 share one entry on nginx), reads as absent.
pub fn get_keyed<T: DeserializeOwned>(
    store: &dyn SharedStore,
    key: &str,
    key_of: fn(&T) -> &str,
) -> Result<(Option<T>, Option<u32>), StoreError> {
    let entry = store.get(key)?;
    Ok((keyed_value(&entry, key, key_of), entry.cas))
}

/// The JSON value of `entry` if it is readable and belongs to `key`.
pub fn keyed_value<T: DeserializeOwned>(entry: &Entry, key: &str, key_of: fn(&T) -> &str) -> Option<T> {
    entry.value.as_deref().and_then(|v| serde_json::from_slice::<T>(v).ok()).filter(|v| key_of(v) == key)
}

/// Writes any serialisable value with [`crate::sansio::shared::store::put`].
pub fn put_json<T: Serialize>(store: &mut dyn SharedStore, key: &str, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Host(e.to_string()))?;
    crate::sansio::shared::store::put(store, key, &bytes)
}

/// What [`publish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// A new snapshot was written with this version.
    Written { version: u64 },
    /// The stored snapshot already held this list: nothing written.
    Unchanged { version: u64 },
    /// A fallback list never replaces a stored snapshot.
    KeptStored { version: u64 },
}

/// Publishes `update` for `upstream` with a CAS loop: the new version is
/// one above whatever is stored at the moment of writing, so a concurrent
/// writer's newer version is never overwritten by a blind set.
///
/// The members are encoded once, before the loop; the stored snapshot is
/// compared with that encoding and only its head (key, version, source) is
/// decoded, so a publish holds the new snapshot's bytes and the stored
/// ones, not decoded copies of both lists (issue 10: what a change of an
/// upstream allocates is what the poller's linear memory grows to).
pub fn publish(store: &mut dyn SharedStore, upstream: &str, update: &Published) -> Result<PublishOutcome, StoreError> {
    let key = snapshot_key(upstream);
    let mut outcome = PublishOutcome::Unchanged { version: 0 };
    let mut encoded = Some(Unversioned::new(&key, update.source, &update.members));
    cas_update(store, &key, &mut |store, entry| {
        // A retry (another writer got in between) encodes again.
        let unversioned = encoded.take().unwrap_or_else(|| Unversioned::new(&key, update.source, &update.members));
        let stored = match entry.value.as_deref() {
            None => None,
            Some(v) => match unversioned.version_of(v) {
                Some(version) => {
                    outcome = PublishOutcome::Unchanged { version };
                    return Ok(CasStep::Keep);
                }
                // A fallback list never replaces a readable one: read it whole.
                None if update.source == Source::Fallback => match Snapshot::decode(&key, v) {
                    Ok(s) if s.members == update.members && s.source == update.source => {
                        outcome = PublishOutcome::Unchanged { version: s.version };
                        return Ok(CasStep::Keep);
                    }
                    Ok(s) => {
                        outcome = PublishOutcome::KeptStored { version: s.version };
                        return Ok(CasStep::Keep);
                    }
                    Err(e) => Err(e),
                },
                None => stored_head(&key, v),
            }
            .map_err(|e| log::warn!("upstream {upstream}: stored snapshot replaced: {e}"))
            .ok(),
        };
        let version = match stored {
            Some(v) => v.saturating_add(1),
            // Nothing readable stored: continue from the version entry, so a
            // version never repeats (a repeat could make Envoy keep an old list).
            None => read_version(store, upstream).map_or(1, |v| v.saturating_add(1)),
        };
        outcome = PublishOutcome::Written { version };
        Ok(CasStep::Write(unversioned.with_version(version)))
    })?;
    if let PublishOutcome::Written { version } = outcome {
        // Written after the snapshot, so it is never ahead of it.
        let vkey = version_key(upstream);
        put_json(store, &vkey, &VersionWire { key: vkey.clone(), version })?;
    }
    Ok(outcome)
}

/// The version of a stored snapshot whose members differ from the ones
/// being published, checked as [`Snapshot::decode`] checks the head.
fn stored_head(key: &str, bytes: &[u8]) -> Result<u64, SnapshotError> {
    if let Some((version, _)) = snapshot_scan::head(key, bytes) {
        return Ok(version);
    }
    let head: StoredHead = serde_json::from_slice(bytes).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    if head.key != key {
        return Err(SnapshotError::OtherKey(head.key));
    }
    Source::parse(&head.source).ok_or_else(|| SnapshotError::Corrupt(format!("unknown source {:?}", head.source)))?;
    Ok(head.version)
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::shared::store::{MemoryStore, StoreRules};

    fn set_of(addrs: &[&str]) -> MemberSet {
        MemberSet::from_members(addrs.iter().map(|a| Member::new(a.parse().unwrap(), MemberAttrs::default()))).0
    }

    fn update(addrs: &[&str], source: Source) -> Published {
        Published { members: set_of(addrs), source }
    }

    #[test]
    fn encodes_and_decodes_every_address_kind() {
        let s = Snapshot {
            version: 7,
            source: Source::Registry,
            members: set_of(&["10.0.0.1:80", "[::1]:81", "db.internal:5432"]),
        };
        let bytes = s.encode("upsync/v1/snap/web");
        assert_eq!(Snapshot::decode("upsync/v1/snap/web", &bytes).unwrap(), s);
        assert_eq!(
            Snapshot::decode("upsync/v1/snap/api", &bytes),
            Err(SnapshotError::OtherKey("upsync/v1/snap/web".into()))
        );
        assert!(matches!(Snapshot::decode("k", b"{"), Err(SnapshotError::Corrupt(_))));
    }

    #[test]
    fn the_encoding_is_the_wire_structs_and_only_its_own_bytes_read_as_unchanged() {
        let meta = MemberMeta {
            locality: Locality { region: "eu".into(), zone: "z\"1".into(), sub_zone: String::new() },
            tags: vec![("a".into(), "b".into())],
        };
        // Tags out of key order and a key twice: the JSON object sorts them
        // and keeps the last value, and so must the direct writer.
        let unsorted = MemberMeta {
            locality: Locality { region: String::new(), zone: String::new(), sub_zone: "s\n\u{1}\\".into() },
            tags: vec![("z".into(), "1".into()), ("a".into(), "2".into()), ("z".into(), "3".into())],
        };
        let attrs = MemberAttrs { weight: 4_000_000_000, max_fails: 0, fail_timeout: 3600, down: false, backup: true };
        let members = MemberSet::from_members([
            Member { addr: "10.0.0.1:80".parse().unwrap(), attrs: MemberAttrs::default(), meta },
            Member::new("[::1]:81".parse().unwrap(), MemberAttrs { weight: 7, down: true, ..MemberAttrs::default() }),
            Member { addr: "255.255.255.255:65535".parse().unwrap(), attrs, meta: unsorted },
            Member::new("db-1.internal:5432".parse().unwrap(), MemberAttrs::default()),
            Member::new("0.0.0.9:1".parse().unwrap(), MemberAttrs::default()),
        ])
        .0;
        for (key, version, members) in [("k\"é", 12_345, members), ("upsync/v1/snap/web", u64::MAX, MemberSet::new())]
        {
            let s = Snapshot { version, source: Source::Fallback, members };
            let wire = SnapshotWire {
                key: key.into(),
                version,
                source: "fallback".into(),
                members: s.members.iter().map(MemberWire::from).collect(),
            };
            let bytes = s.encode(key);
            assert_eq!(bytes, serde_json::to_vec(&wire).unwrap());
            let unversioned = Unversioned::new(key, s.source, &s.members);
            assert_eq!(unversioned.version_of(&bytes), Some(version));
            let other = Snapshot { version, source: Source::Registry, ..s.clone() }.encode(key);
            assert_eq!(unversioned.version_of(&other), None, "another source");
            let mut edited = bytes.clone();
            edited.pop();
            assert_eq!(unversioned.version_of(&edited), None);
            assert_eq!(unversioned.version_of(b""), None);
        }
    }

    #[test]
    fn versions_grow_and_unchanged_lists_are_not_rewritten() {
        for rules in [StoreRules::Envoy, StoreRules::NgxWasm] {
            let mut store = MemoryStore::new(rules);
            let u1 = update(&["10.0.0.1:80"], Source::Registry);
            assert_eq!(publish(&mut store, "web", &u1), Ok(PublishOutcome::Written { version: 1 }));
            let cas_before = store.get(&snapshot_key("web")).unwrap().cas;
            assert_eq!(publish(&mut store, "web", &u1), Ok(PublishOutcome::Unchanged { version: 1 }));
            assert_eq!(store.get(&snapshot_key("web")).unwrap().cas, cas_before, "no write");
            let u2 = update(&["10.0.0.1:80", "10.0.0.2:80"], Source::Registry);
            assert_eq!(publish(&mut store, "web", &u2), Ok(PublishOutcome::Written { version: 2 }));
            let read_back = read(&store, "web").unwrap().unwrap();
            assert_eq!(read_back.members, u2.members);
            assert_eq!(read_back.version, 2);
            assert_eq!(read_version(&store, "web"), Some(2));
            assert_eq!(read_version(&store, "api"), None);
        }
    }

    #[test]
    fn fallback_never_replaces_a_stored_list() {
        let mut store = MemoryStore::new(StoreRules::Envoy);
        publish(&mut store, "web", &update(&["10.0.0.1:80"], Source::Registry)).unwrap();
        let out = publish(&mut store, "web", &update(&["127.0.0.1:9"], Source::Fallback)).unwrap();
        assert_eq!(out, PublishOutcome::KeptStored { version: 1 });
        assert_eq!(read(&store, "web").unwrap().unwrap().source, Source::Registry);
        // On an empty store the fallback is written.
        let mut empty = MemoryStore::new(StoreRules::NgxWasm);
        assert_eq!(
            publish(&mut empty, "web", &update(&["127.0.0.1:9"], Source::Fallback)),
            Ok(PublishOutcome::Written { version: 1 })
        );
    }

    /// A store where another writer slips in a newer version between our
    /// read and our write, `races` times.
    struct RacingStore {
        inner: MemoryStore,
        races: usize,
    }

    impl SharedStore for RacingStore {
        fn get(&self, key: &str) -> Result<crate::sansio::shared::store::Entry, StoreError> {
            self.inner.get(key)
        }
        fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            if self.races > 0 {
                self.races -= 1;
                let current = read(&self.inner, "web").unwrap().map_or(0, |s| s.version);
                let theirs =
                    Snapshot { version: current + 10, source: Source::Registry, members: set_of(&["10.9.9.9:80"]) };
                crate::sansio::shared::store::put(&mut self.inner, key, &theirs.encode(key)).unwrap();
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_concurrent_newer_version_is_never_overwritten_blindly() {
        for rules in [StoreRules::Envoy, StoreRules::NgxWasm] {
            // Envoy treats cas 0 as "no check", so a create cannot be guarded
            // there: the races start once the key exists (Envoy's poller is a
            // singleton, so only the nginx host has concurrent creators).
            let mut inner = MemoryStore::new(rules);
            publish(&mut inner, "web", &update(&["10.0.0.9:80"], Source::Registry)).unwrap();
            let mut store = RacingStore { inner, races: 2 };
            let out = publish(&mut store, "web", &update(&["10.0.0.1:80"], Source::Registry)).unwrap();
            // Two racing writes (versions 11, then 21); ours goes on top.
            assert_eq!(out, PublishOutcome::Written { version: 22 });
            let mut always = RacingStore { inner: store.inner.clone(), races: usize::MAX };
            assert_eq!(
                publish(&mut always, "web", &update(&["10.0.0.2:80"], Source::Registry)),
                Err(StoreError::CasMismatch)
            );
        }
    }

    #[test]
    fn a_crc32_collision_is_detected_on_read() {
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        // Find two upstream names whose snapshot keys collide is costly;
        // write a foreign value straight into our slot instead.
        let ours = snapshot_key("web");
        let foreign = Snapshot { version: 3, source: Source::Registry, members: set_of(&["10.0.0.1:80"]) };
        store.set(&ours, &foreign.encode("upsync/v1/snap/other"), None).unwrap();
        assert_eq!(read(&store, "web"), Err(SnapshotError::OtherKey("upsync/v1/snap/other".into())));
        // Publishing repairs it, with a version above any seen before.
        put_json(&mut store, &version_key("web"), &VersionWire { key: version_key("web"), version: 7 }).unwrap();
        assert_eq!(
            publish(&mut store, "web", &update(&["10.0.0.2:80"], Source::Registry)),
            Ok(PublishOutcome::Written { version: 8 })
        );
    }

    #[test]
    fn locality_and_tags_round_trip_and_old_snapshots_still_decode() {
        use crate::sansio::model::locality::{Locality, MemberMeta};
        let meta = MemberMeta {
            locality: Locality { region: "eu".into(), zone: "eu-1a".into(), sub_zone: String::new() },
            tags: vec![("canary".into(), "true".into()), ("v".into(), "2".into())],
        };
        let members = MemberSet::from_members([
            Member { addr: "10.0.0.1:80".parse().unwrap(), attrs: MemberAttrs::default(), meta: meta.clone() },
            Member::new("10.0.0.2:80".parse().unwrap(), MemberAttrs::default()),
        ])
        .0;
        let s = Snapshot { version: 2, source: Source::Registry, members };
        let bytes = s.encode("k");
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#""zone":"eu-1a","tags":{"canary":"true","v":"2"}"#), "{text}");
        assert!(!text.contains("sub_zone"), "empty fields are not written: {text}");
        assert_eq!(Snapshot::decode("k", &bytes).unwrap(), s);
        // Written by a plugin without locality and tags.
        let old = br#"{"key":"k","version":1,"source":"registry","members":[{"address":"10.0.0.1:80","weight":1,"max_fails":2,"fail_timeout":10,"down":false,"backup":false}]}"#;
        let decoded = Snapshot::decode("k", old).unwrap();
        assert!(decoded.members.iter().all(|m| m.meta.is_empty()));
        // Tags stored out of order read back sorted; a non-string value is dropped.
        let shuffled = br#"{"key":"k","version":1,"source":"registry","members":[{"address":"10.0.0.1:80","weight":1,"max_fails":2,"fail_timeout":10,"down":false,"backup":false,"tags":{"v":"2","canary":"true","n":3}}]}"#;
        let decoded = Snapshot::decode("k", shuffled).unwrap();
        assert_eq!(decoded.members.iter().next().unwrap().meta.tags, meta.tags);
    }
}
