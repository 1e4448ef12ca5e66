//! Pickers chosen per request by upstream name (`pick_variable` on nginx:
//! the name comes from a variable such as `$upsync_upstream`).
//!
//! A filter that lists upstreams picks only among them (each with its own
//! settings, fallback included). A pick-only filter (no `upstreams`) picks
//! from any upstream whose snapshot another filter's poller published, with
//! the top-level `balance` and `passive_health`; a picker is only made for
//! a name that has a snapshot, so names from requests cannot fill memory
//! with empty pickers.
//!
//! Freshness: a picker is refreshed (one small version read, plus the
//! snapshot when it moved) by the first request that uses it after each
//! tick, so a published list is in force from the first request after the
//! next tick, as with `pick`; an upstream nobody asks for costs nothing.

use crate::sansio::config::{
    discovered, is_upstream_name, DiscoverConfig, PickPolicy, PluginConfig, UpstreamConfig, MAX_UPSTREAMS,
};
use crate::sansio::pick::picker::UpstreamPicker;
use crate::sansio::shared::snapshot;
use crate::sansio::shared::store::SharedStore;
use std::collections::{HashMap, HashSet};

/// Names whose absence is remembered (re-checked once per tick); beyond
/// it the memory is dropped and they are checked again.
const MAX_MISSING: usize = 1024;
/// Names logged as unknown; beyond it further names are not logged.
const MAX_WARNED: usize = 1024;

/// Why a request found no picker; [`Miss::message`] is the 503's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The variable is empty or not set.
    NoName,
    /// Not an upstream name (characters, length), or not valid UTF-8.
    BadName,
    /// Not one of the upstreams this filter lists.
    NotListed,
    /// No snapshot in shared data (pick-only filter).
    NoSnapshot,
    /// [`MAX_UPSTREAMS`] upstreams are picked already.
    TooMany,
}

impl Miss {
    pub fn message(self) -> &'static str {
        match self {
            Miss::NoName => "no upstream named for this request",
            Miss::BadName | Miss::NotListed | Miss::NoSnapshot => "no member list for the requested upstream",
            Miss::TooMany => "too many upstreams picked by name in this worker",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Miss::NoName => "the variable is empty or not set",
            Miss::BadName => "not an upstream name (1-64 characters of A-Z a-z 0-9 _ . -)",
            Miss::NotListed => "not one of this filter's upstreams",
            Miss::NoSnapshot => {
                "no member list in shared data: no filter of this nginx polls it (list it in the upstreams of the polling filter)"
            }
            Miss::TooMany => "this worker already picks from the maximum number of upstreams (10000)",
        }
    }
}

struct Slot {
    picker: UpstreamPicker,
    /// The tick count at the last refresh.
    refreshed_at: u64,
    /// A 503 for "no member" was logged since the last good pick.
    warned_empty: bool,
}

pub struct NamedPickers {
    /// The variable, for log lines.
    variable: String,
    /// The listed upstreams (empty for a pick-only filter), by name.
    listed: Vec<UpstreamConfig>,
    listed_by_name: HashMap<String, usize>,
    /// Upstreams found in the registry pick with their entry's defaults.
    discover: Vec<DiscoverConfig>,
    policy: PickPolicy,
    zone: Option<String>,
    seed: u64,
    slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
    /// Names without a snapshot, with the tick they were checked at.
    missing: HashMap<String, u64>,
    warned: HashSet<String>,
    /// Ticks so far.
    ticks: u64,
}

impl NamedPickers {
    pub fn new(config: &PluginConfig, variable: &str, seed: u64) -> Self {
        NamedPickers {
            variable: variable.to_string(),
            listed: config.upstreams.clone(),
            listed_by_name: config.upstreams.iter().enumerate().map(|(i, u)| (u.name.clone(), i)).collect(),
            discover: config.discover.clone(),
            policy: config.pick_policy.clone(),
            zone: config.zone.clone(),
            seed,
            slots: Vec::new(),
            by_name: HashMap::new(),
            missing: HashMap::new(),
            warned: HashSet::new(),
            ticks: 0,
        }
    }

    /// The worker's tick: every picker is due for a refresh at its next use.
    pub fn on_tick(&mut self) {
        self.ticks += 1;
    }

    /// The slot of the upstream named `name` (the variable's bytes),
    /// refreshed if a tick passed since it last was.
    pub fn slot_for(
        &mut self,
        name: Option<&[u8]>,
        store: &dyn SharedStore,
        now: &dyn Fn() -> u64,
    ) -> Result<usize, Miss> {
        let name = match name.map(std::str::from_utf8) {
            None | Some(Ok("")) => return Err(self.miss(Miss::NoName, "")),
            Some(Err(_)) => return Err(self.miss(Miss::BadName, "(not UTF-8)")),
            Some(Ok(n)) => n,
        };
        let index = match self.by_name.get(name) {
            Some(&i) => i,
            None => self.add(name, store, now).map_err(|m| self.miss(m, name))?,
        };
        let ticks = self.ticks;
        if let Some(slot) = self.slots.get_mut(index) {
            if slot.refreshed_at != ticks {
                slot.refreshed_at = ticks;
                slot.picker.refresh(store, now());
            }
        }
        Ok(index)
    }

    fn add(&mut self, name: &str, store: &dyn SharedStore, now: &dyn Fn() -> u64) -> Result<usize, Miss> {
        if !is_upstream_name(name) {
            return Err(Miss::BadName);
        }
        let listed = self.listed_by_name.get(name).and_then(|&i| self.listed.get(i));
        let found = match listed {
            None => discovered(&self.discover, name),
            Some(_) => None,
        };
        let picker = if let Some(config) = listed {
            UpstreamPicker::new(config, self.seed)
        } else if found.is_some() || (self.listed.is_empty() && self.discover.is_empty()) {
            // Not listed here: only a name the poller published is routed.
            if self.missing.get(name) == Some(&self.ticks) {
                return Err(Miss::NoSnapshot);
            }
            if snapshot::read_version(store, name).is_none() {
                if self.missing.len() >= MAX_MISSING {
                    self.missing.clear();
                }
                self.missing.insert(name.to_string(), self.ticks);
                return Err(Miss::NoSnapshot);
            }
            self.missing.remove(name);
            match &found {
                Some(config) => UpstreamPicker::new(config, self.seed),
                None => UpstreamPicker::pick_only(name, &self.policy, self.seed),
            }
        } else {
            return Err(Miss::NotListed);
        };
        if self.slots.len() >= MAX_UPSTREAMS {
            return Err(Miss::TooMany);
        }
        let mut picker = picker.with_zone(self.zone.clone());
        picker.refresh(store, now());
        let index = self.slots.len();
        self.slots.push(Slot { picker, refreshed_at: self.ticks, warned_empty: false });
        self.by_name.insert(name.to_string(), index);
        // Routed from now on: a later miss of this name is news again.
        self.warned.remove(name);
        Ok(index)
    }

    /// Logs `miss` for `name` once per name (and per worker), returns it.
    fn miss(&mut self, miss: Miss, name: &str) -> Miss {
        let key = if miss == Miss::NoName { "" } else { name };
        if self.warned.contains(key) {
            return miss;
        }
        if self.warned.len() >= MAX_WARNED {
            if self.warned.insert("\0more".to_string()) {
                log::warn!("${}: more than {MAX_WARNED} upstream names answered 503; not logging each", self.variable);
            }
            return miss;
        }
        self.warned.insert(key.to_string());
        // The name comes from the request: escaped and cut short.
        let shown: String = name.chars().take(80).collect();
        log::warn!("${} is {shown:?}: answering 503: {}", self.variable, miss.reason());
        miss
    }

    pub fn picker_mut(&mut self, index: usize) -> Option<(&mut UpstreamPicker, &mut bool)> {
        self.slots.get_mut(index).map(|s| (&mut s.picker, &mut s.warned_empty))
    }

    pub fn variable(&self) -> &str {
        &self.variable
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::model::member::Member;
    use crate::sansio::model::member_set::MemberSet;
    use crate::sansio::model::update::{Published, Source};
    use crate::sansio::shared::store::{MemoryStore, StoreRules};

    pub fn publish(store: &mut MemoryStore, upstream: &str, addrs: &[&str]) {
        let members =
            MemberSet::from_members(addrs.iter().map(|a| Member::new(a.parse().unwrap(), Default::default()))).0;
        snapshot::publish(store, upstream, &Published { members, source: Source::Registry }).unwrap();
    }

    fn pickers(json: &str) -> NamedPickers {
        let config = PluginConfig::parse(json.as_bytes()).unwrap();
        NamedPickers::new(&config, config.pick_variable.as_deref().unwrap(), 1)
    }

    fn pick(p: &mut NamedPickers, store: &MemoryStore, name: &str) -> Result<String, Miss> {
        let slot = p.slot_for(Some(name.as_bytes()), store, &|| 0)?;
        let (picker, _) = p.picker_mut(slot).unwrap();
        Ok(picker.pick(None).map(|x| x.address).unwrap_or_default())
    }

    const PICK_ONLY: &str = r#"{"host":"nginx","pick_variable":"upsync_upstream"}"#;

    #[test]
    fn names_without_a_snapshot_are_checked_once_per_tick_and_make_no_picker() {
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        let mut p = pickers(PICK_ONLY);
        assert_eq!(pick(&mut p, &store, "web"), Err(Miss::NoSnapshot));
        publish(&mut store, "web", &["10.0.0.1:80"]);
        // Still within the tick of the check: not read again.
        assert_eq!(pick(&mut p, &store, "web"), Err(Miss::NoSnapshot));
        assert!(p.slots.is_empty());
        p.on_tick();
        assert_eq!(pick(&mut p, &store, "web").as_deref(), Ok("10.0.0.1:80"));
        assert_eq!(p.slots.len(), 1);
        assert!(p.missing.is_empty() && !p.warned.contains("web"), "routed: a later miss is news again");
    }

    #[test]
    fn bad_and_empty_names_are_refused_and_logged_once_each() {
        let store = MemoryStore::new(StoreRules::NgxWasm);
        let mut p = pickers(PICK_ONLY);
        for _ in 0..3 {
            assert_eq!(p.slot_for(None, &store, &|| 0), Err(Miss::NoName));
            assert_eq!(p.slot_for(Some(b""), &store, &|| 0), Err(Miss::NoName));
            assert_eq!(pick(&mut p, &store, "a/b"), Err(Miss::BadName));
            assert_eq!(p.slot_for(Some(&[0xff, 0xfe]), &store, &|| 0), Err(Miss::BadName));
            assert_eq!(pick(&mut p, &store, &"x".repeat(65)), Err(Miss::BadName));
            assert_eq!(pick(&mut p, &store, "nope"), Err(Miss::NoSnapshot));
        }
        let mut warned: Vec<&str> = p.warned.iter().map(String::as_str).collect();
        warned.sort();
        let long = "x".repeat(65);
        let mut expected = vec!["", "(not UTF-8)", "a/b", long.as_str(), "nope"];
        expected.sort();
        assert_eq!(warned, expected, "one entry (one log line) per name");
        assert!(p.slots.is_empty());
        assert_eq!(Miss::NoName.message(), "no upstream named for this request");
        assert_eq!(Miss::NoSnapshot.message(), "no member list for the requested upstream");
    }

    #[test]
    fn names_from_requests_cannot_grow_memory_without_bound() {
        let store = MemoryStore::new(StoreRules::NgxWasm);
        let mut p = pickers(PICK_ONLY);
        for i in 0..3000 {
            assert_eq!(pick(&mut p, &store, &format!("n{i}")), Err(Miss::NoSnapshot));
        }
        assert!(p.missing.len() <= MAX_MISSING, "{}", p.missing.len());
        assert!(p.warned.len() <= MAX_WARNED + 1, "{}", p.warned.len());
        assert!(p.slots.is_empty() && p.by_name.is_empty());
    }

    #[test]
    fn each_upstream_is_refreshed_at_its_first_use_after_a_tick() {
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        publish(&mut store, "web", &["10.0.0.1:80"]);
        publish(&mut store, "api", &["10.0.1.1:80"]);
        let mut p = pickers(PICK_ONLY);
        assert_eq!(pick(&mut p, &store, "web").as_deref(), Ok("10.0.0.1:80"));
        assert_eq!(pick(&mut p, &store, "api").as_deref(), Ok("10.0.1.1:80"));
        publish(&mut store, "web", &["10.0.0.2:80"]);
        assert_eq!(pick(&mut p, &store, "web").as_deref(), Ok("10.0.0.1:80"), "until the next tick");
        p.on_tick();
        assert_eq!(pick(&mut p, &store, "web").as_deref(), Ok("10.0.0.2:80"), "in force from the next tick");
        assert_eq!(pick(&mut p, &store, "api").as_deref(), Ok("10.0.1.1:80"));
    }

    #[test]
    fn with_upstreams_listed_only_those_are_picked_with_their_own_settings() {
        let store = MemoryStore::new(StoreRules::NgxWasm);
        let up = |name: &str, fallback: &str| {
            format!(
                r#"{{"name":"{name}","registry":{{"type":"etcd_v3","target":"127.0.0.1:2379","prefix":"/{name}/"}},"fallback":["{fallback}"]}}"#
            )
        };
        let json = format!(
            r#"{{"host":"nginx","pick_variable":"upsync_upstream","upstreams":[{},{}]}}"#,
            up("web", "10.0.0.9:80"),
            up("api", "10.0.1.9:80")
        );
        let mut p = pickers(&json);
        // No snapshot yet: each listed upstream serves its own fallback.
        assert_eq!(pick(&mut p, &store, "web").as_deref(), Ok("10.0.0.9:80"));
        assert_eq!(pick(&mut p, &store, "api").as_deref(), Ok("10.0.1.9:80"));
        assert_eq!(pick(&mut p, &store, "db"), Err(Miss::NotListed));
    }
}
