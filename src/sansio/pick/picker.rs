//! A worker's view of one upstream for picking a member per request: the
//! published snapshot (or the configured fallback before there is one),
//! minus members out by passive health, with the balancer's state.
//!
//! [`UpstreamPicker::refresh`] is called from the worker's tick: it reads
//! the small version entry and re-reads the snapshot only when the version
//! moved, so requests never parse anything.

use crate::sansio::config::{BalancePolicy, HashKey, PickPolicy, UpstreamConfig, UpstreamRouting};
use crate::sansio::model::member::Member;
use crate::sansio::model::member_set::MemberSet;
use crate::sansio::pick::balance::p2c;
use crate::sansio::pick::balance::Candidate;
use crate::sansio::pick::subset::Lanes;
use crate::sansio::pick::zone::ZonePreference;
use crate::sansio::shared::health;
use crate::sansio::shared::snapshot;
use crate::sansio::shared::store::{SharedStore, StoreError};
use crate::sansio::util::rng::Rng;
use std::rc::Rc;

/// Where the picker's members come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewSource {
    Snapshot(u64),
    Fallback,
    Nothing,
}

pub struct UpstreamPicker {
    name: String,
    policy: BalancePolicy,
    passive_health: bool,
    fallback: MemberSet,
    source: ViewSource,
    members: Vec<Member>,
    candidates: Vec<Candidate>,
    /// One balancing lane per subset (just one without a subset rule).
    lanes: Lanes,
    out: Vec<String>,
    /// The proxy's zone: its members are preferred.
    zone: Option<String>,
    routing: UpstreamRouting,
    in_flight: Vec<u32>,
    rng: Rng,
}

/// A picked member, with its own copy of the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    pub index: usize,
    pub address: String,
}

/// A picked member as the filter holds it for a request's life: the
/// address is the view's own (shared, not copied), so a pick allocates
/// nothing. It stays valid across a change of the member list: the view
/// finds the member again by address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub index: usize,
    pub address: Rc<str>,
}

/// What [`UpstreamPicker::done`] and [`UpstreamPicker::report`] need of a pick.
pub trait PickRef {
    fn index(&self) -> usize;
    fn address(&self) -> &str;
}

impl PickRef for Picked {
    fn index(&self) -> usize {
        self.index
    }
    fn address(&self) -> &str {
        &self.address
    }
}

impl PickRef for Chosen {
    fn index(&self) -> usize {
        self.index
    }
    fn address(&self) -> &str {
        &self.address
    }
}

/// What [`UpstreamPicker::report`] did with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Not a failure, passive health is off, or the member list changed
    /// since the pick (the member's thresholds are unknown).
    Ignored,
    /// A failure, recorded; the member stays in (or was already out, or
    /// has `max_fails` 0).
    Counted,
    /// This failure took the member out; the view already leaves it out.
    TookOut { max_fails: u32, fail_timeout: u32 },
}

impl UpstreamPicker {
    pub fn new(config: &UpstreamConfig, seed: u64) -> Self {
        UpstreamPicker {
            name: config.name.clone(),
            policy: config.balance.clone(),
            passive_health: config.passive_health,
            fallback: MemberSet::from_members(config.fallback.iter().cloned()).0,
            routing: config.routing.clone(),
            ..UpstreamPicker::pick_only(&config.name, &PickPolicy::default(), seed)
        }
    }

    /// A picker for an upstream this filter does not list (a pick-only
    /// filter): `policy`, no fallback, default routing.
    pub fn pick_only(name: &str, policy: &PickPolicy, seed: u64) -> Self {
        UpstreamPicker {
            name: name.to_string(),
            policy: policy.balance.clone(),
            passive_health: policy.passive_health,
            fallback: MemberSet::default(),
            source: ViewSource::Nothing,
            members: Vec::new(),
            candidates: Vec::new(),
            lanes: Lanes::default(),
            out: Vec::new(),
            zone: None,
            routing: UpstreamRouting::default(),
            in_flight: Vec::new(),
            rng: Rng::new(seed),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Prefers the members in `zone` (the proxy's own, from the top-level
    /// `zone`), by the upstream's `zone_min_healthy_share`.
    pub fn with_zone(mut self, zone: Option<String>) -> Self {
        self.zone = zone;
        self
    }

    /// The request header that selects a subset, if a subset rule is set.
    pub fn subset_header(&self) -> Option<&str> {
        self.routing.subset.as_ref().map(|s| s.header.as_str())
    }

    pub fn source(&self) -> ViewSource {
        self.source
    }

    /// What to hash requests on, for [`BalancePolicy::Hash`].
    pub fn hash_key(&self) -> Option<&HashKey> {
        match &self.policy {
            BalancePolicy::Hash(k) => Some(k),
            _ => None,
        }
    }

    /// Brings the view up to date. Returns `true` when the members or their
    /// availability changed.
    pub fn refresh(&mut self, store: &dyn SharedStore, now: u64) -> bool {
        let version = snapshot::read_version(store, &self.name);
        let members_changed = match version {
            Some(v) if self.source != ViewSource::Snapshot(v) => match snapshot::read(store, &self.name) {
                Ok(Some(s)) => {
                    self.source = ViewSource::Snapshot(s.version);
                    self.members = s.members.iter().cloned().collect();
                    true
                }
                // Unreadable (e.g. a CRC32 collision on nginx): keep what we have.
                Ok(None) | Err(_) => false,
            },
            Some(_) => false,
            // A worker that saw a snapshot keeps serving it; one that never
            // did (nginx just reloaded, or the registry never answered)
            // serves the configured fallback, or nothing.
            None if matches!(self.source, ViewSource::Snapshot(_)) => false,
            None => {
                let next = if self.fallback.is_empty() { ViewSource::Nothing } else { ViewSource::Fallback };
                let changed = self.source != next;
                if changed {
                    self.source = next;
                    self.members = self.fallback.iter().cloned().collect();
                }
                changed
            }
        };
        let out = if self.passive_health { health::out_members(store, &self.name, now) } else { Vec::new() };
        let out_changed = out != self.out;
        self.out = out;
        if members_changed || out_changed {
            self.rebuild(members_changed);
        }
        members_changed || out_changed
    }

    fn rebuild(&mut self, members_changed: bool) {
        // The busy members of the old list, by address (empty when only
        // availability changed: the indices stay).
        let busy: Vec<(Rc<str>, u32)> = if members_changed {
            self.candidates
                .iter()
                .zip(&self.in_flight)
                .filter(|(_, n)| **n > 0)
                .map(|(c, n)| (c.address.clone(), *n))
                .collect()
        } else {
            Vec::new()
        };
        let zone = self.zone.as_deref();
        self.candidates = self
            .members
            .iter()
            .map(|m| {
                let mut c = Candidate::from_member(m);
                c.unavailable |= self.out.iter().any(|o| **o == *c.address);
                c.zone_local = zone.is_some_and(|z| m.meta.locality.zone == z);
                c
            })
            .collect();
        let key = self.routing.subset.as_ref().map(|s| s.key.as_str());
        let tags: Vec<Option<&str>> = self.members.iter().map(|m| key.and_then(|k| m.meta.tag(k))).collect();
        let pref = ZonePreference { enabled: zone.is_some(), min_healthy_permille: self.routing.min_healthy_permille };
        let hash = matches!(self.policy, BalancePolicy::Hash(_));
        // Round-robin positions start over with every rebuild.
        self.lanes = Lanes::build(&self.candidates, &tags, key.is_some(), pref, hash);
        if members_changed && self.lanes.values_dropped > 0 {
            log::warn!(
                "upstream {}: {} values of the subset tag have no subset of their own (at most {})",
                self.name,
                self.lanes.values_dropped,
                crate::sansio::pick::subset::MAX_SUBSET_LANES
            );
        }
        if members_changed {
            // Members that stay keep their requests in flight (linkerd's
            // pool keeps unchanged endpoints): least-request must not see
            // a busy member as idle because another one joined.
            self.in_flight = self
                .candidates
                .iter()
                // Only busy members are listed: few, whatever the member count.
                .map(|c| busy.iter().find(|(a, _)| *a == c.address).map_or(0, |(_, n)| *n))
                .collect();
        }
    }

    /// Picks a member; `key` is the hash key for [`BalancePolicy::Hash`].
    pub fn pick(&mut self, key: Option<&[u8]>) -> Option<Picked> {
        self.pick_in(key, None)
    }

    /// Picks a member of the subset named by `subset` (the value of the
    /// subset header; see [`crate::sansio::pick::subset`]).
    pub fn pick_in(&mut self, key: Option<&[u8]>, subset: Option<&str>) -> Option<Picked> {
        self.choose(key, subset).map(|c| Picked { index: c.index, address: c.address.to_string() })
    }

    /// [`UpstreamPicker::pick_in`] without a copy of the address: the
    /// filter's per-request pick.
    pub fn choose(&mut self, key: Option<&[u8]>, subset: Option<&str>) -> Option<Chosen> {
        let lane = self.lanes.select(subset)?;
        let index = match &self.policy {
            BalancePolicy::RoundRobin => lane.swrr.pick(&lane.pool),
            BalancePolicy::LeastRequest => p2c::pick(&lane.pool, &self.in_flight, &mut self.rng),
            BalancePolicy::Hash(_) => match (&lane.maglev, key) {
                (Some(t), Some(k)) => t.pick(k),
                // No key on this request: spread it like round robin.
                _ => lane.swrr.pick(&lane.pool),
            },
        }?;
        let address = self.candidates.get(index)?.address.clone();
        if let Some(n) = self.in_flight.get_mut(index) {
            *n += 1;
        }
        Some(Chosen { index, address })
    }

    /// The index of `picked`'s member in the current list, if it is still
    /// there: by index (no search per request), by address after a change.
    fn current_index(&self, picked: &impl PickRef) -> Option<usize> {
        let (index, address) = (picked.index(), picked.address());
        if self.candidates.get(index).is_some_and(|c| *c.address == *address) {
            Some(index)
        } else {
            self.candidates.iter().position(|c| *c.address == *address)
        }
    }

    /// The request sent to `picked` finished.
    pub fn done(&mut self, picked: &impl PickRef) {
        // After a member list change the member may have moved (its count
        // moved with it), or left (nothing to count down).
        if let Some(n) = self.current_index(picked).and_then(|i| self.in_flight.get_mut(i)) {
            *n = n.saturating_sub(1);
        }
    }

    /// Requests in flight to `address` from this worker.
    pub fn in_flight(&self, address: &str) -> u32 {
        self.candidates
            .iter()
            .position(|c| *c.address == *address)
            .and_then(|i| self.in_flight.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// Why [`UpstreamPicker::pick`] found no member, for the 503's log line.
    pub fn unavailable_reason(&self) -> &'static str {
        match self.source {
            ViewSource::Nothing => "no member list yet and no fallback configured",
            _ => "every member is down, drained or out after failures",
        }
    }

    /// The member behind `picked`, if the list did not change since.
    pub fn member_at(&self, picked: &impl PickRef) -> Option<&Member> {
        let c = self.candidates.get(picked.index())?;
        (*c.address == *picked.address()).then(|| self.members.get(picked.index())).flatten()
    }

    /// Whether [`UpstreamPicker::report`] looks at response statuses at
    /// all: when it does not, the host need not read them.
    pub fn counts_failures(&self) -> bool {
        self.passive_health
    }

    /// Passive health: the response to the request sent to `picked` had
    /// `status` (`None`: no response).
    pub fn report(
        &mut self,
        store: &mut dyn SharedStore,
        picked: &impl PickRef,
        status: Option<u16>,
        now: u64,
    ) -> Result<Report, StoreError> {
        if !self.passive_health || !health::is_failure(status) {
            return Ok(Report::Ignored);
        }
        // By index: no search per request.
        let Some((max_fails, fail_timeout)) = self.member_at(picked).map(|m| (m.attrs.max_fails, m.attrs.fail_timeout))
        else {
            return Ok(Report::Ignored);
        };
        if !health::report_failure(store, &self.name, picked.address(), max_fails, fail_timeout, now)? {
            return Ok(Report::Counted);
        }
        // This worker stops at once; the others on their next tick.
        self.refresh(store, now);
        Ok(Report::TookOut { max_fails, fail_timeout })
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::config::PluginConfig;
    use crate::sansio::model::member::Member;
    use crate::sansio::model::member_set::MemberSet;
    use crate::sansio::shared::store::{MemoryStore, StoreRules};

    fn picker(passive_health: bool) -> UpstreamPicker {
        let json = format!(
            r#"{{"host":"nginx","pick":"web","upstreams":[{{"name":"web",
            "registry":{{"type":"etcd_v3","target":"127.0.0.1:2379","prefix":"/p/"}},
            "passive_health":{passive_health},"fallback":["10.0.0.1:80","10.0.0.2:80"]}}]}}"#
        );
        let config = PluginConfig::parse(json.as_bytes()).unwrap();
        UpstreamPicker::new(&config.upstreams[0], 1)
    }

    #[test]
    fn report_takes_a_member_out_after_max_fails() {
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        let mut p = picker(true);
        assert!(p.refresh(&store, 0));
        let a = p.pick(None).unwrap();
        assert_eq!(p.report(&mut store, &a, Some(200), 1), Ok(Report::Ignored));
        assert_eq!(p.report(&mut store, &a, Some(500), 1), Ok(Report::Ignored), "not a proxy failure");
        // The fallback members have the default max_fails 2, fail_timeout 10 s.
        assert_eq!(p.report(&mut store, &a, Some(502), 2), Ok(Report::Counted));
        assert_eq!(p.report(&mut store, &a, None, 3), Ok(Report::TookOut { max_fails: 2, fail_timeout: 10 }));
        assert_eq!(health::out_members(&store, "web", 3), [a.address.as_str()]);
        // Refreshed at once: only the other member is picked.
        for _ in 0..4 {
            assert_ne!(p.pick(None).unwrap().address, a.address);
        }
        assert_eq!(p.report(&mut store, &a, Some(503), 4), Ok(Report::Counted), "already out");
    }

    #[test]
    fn report_ignores_everything_without_passive_health() {
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        let mut p = picker(false);
        p.refresh(&store, 0);
        let a = p.pick(None).unwrap();
        for t in 0..4 {
            assert_eq!(p.report(&mut store, &a, Some(502), t), Ok(Report::Ignored));
        }
        assert!(health::out_members(&store, "web", 4).is_empty());
    }

    #[test]
    fn least_request_keeps_the_in_flight_counts_of_members_that_stay() {
        use crate::sansio::model::update::{Published, Source};
        let json = r#"{"host":"nginx","upstreams":[{"name":"web",
            "registry":{"type":"etcd_v3","target":"127.0.0.1:2379","prefix":"/p/"},
            "balance":{"policy":"least_request"},"fallback":["10.0.0.1:80","10.0.0.2:80"]}]}"#;
        let config = PluginConfig::parse(json.as_bytes()).unwrap();
        let mut p = UpstreamPicker::new(&config.upstreams[0], 3);
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        p.refresh(&store, 0);
        let busy: Vec<Picked> = (0..6).map(|_| p.pick(None).unwrap()).collect();
        let on = |a: &str| busy.iter().filter(|b| b.address == a).count() as u32;
        assert_eq!(on("10.0.0.1:80") + on("10.0.0.2:80"), 6);

        // The registry adds a third member, listed first.
        let members = MemberSet::from_members(
            ["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"].map(|a| Member::new(a.parse().unwrap(), Default::default())),
        )
        .0;
        snapshot::publish(&mut store, "web", &Published { members, source: Source::Registry }).unwrap();
        assert!(p.refresh(&store, 1));
        assert_eq!(p.in_flight("10.0.0.1:80"), on("10.0.0.1:80"), "kept across the change");
        assert_eq!(p.in_flight("10.0.0.2:80"), on("10.0.0.2:80"));
        assert_eq!(p.in_flight("10.0.0.0:80"), 0);
        // Least-request sees the newcomer idle and the others busy: it takes
        // most of the next picks (with counts reset it would get a third).
        let next: Vec<Picked> = (0..6).map(|_| p.pick(None).unwrap()).collect();
        let to_newcomer = next.iter().filter(|n| n.address == "10.0.0.0:80").count();
        assert!(to_newcomer >= 3, "{to_newcomer} of 6 picks went to the idle member");
        // Requests picked before the change finish against their member,
        // which moved to another index.
        for b in &busy {
            p.done(b);
        }
        for n in &next {
            p.done(n);
        }
        let counts = ["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"].map(|a| p.in_flight(a));
        assert_eq!(counts, [0, 0, 0], "every request counted down once");
    }
}
