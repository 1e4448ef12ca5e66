//! A worker's view of one upstream for picking a member per request: the
//! published snapshot (or the configured fallback before there is one),
//! minus members out by passive health, with the balancer's state.
//!
//! [`UpstreamPicker::refresh`] is called from the worker's tick: it reads
//! the small version entry and re-reads the snapshot only when the version
//! moved, so requests never parse anything.

use super::balance::maglev::Maglev;
use super::balance::p2c;
use super::balance::swrr::SmoothWrr;
use super::balance::{Candidate, Pool};
use super::config::{BalancePolicy, HashKey, UpstreamConfig};
use super::member::Member;
use super::member_set::MemberSet;
use super::passive;
use super::proto::{put_bytes, put_varint};
use super::rng::Rng;
use super::snapshot;
use super::store::{SharedStore, StoreError};

/// Envoy's filter state key read by ORIGINAL_DST clusters.
pub const ORIGINAL_DST_STATE: &str = "envoy.network.transport_socket.original_dst_address";

/// The argument of Envoy's `set_envoy_filter_state` foreign function that
/// routes the request to `address` through an ORIGINAL_DST cluster:
/// `SetEnvoyFilterStateArguments{path: 1, value: 2, span: 3 = DownstreamRequest}`
/// (envoy/source/extensions/common/wasm/ext/set_envoy_filter_state.proto).
pub fn original_dst_state(address: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(ORIGINAL_DST_STATE.len() + address.len() + 8);
    put_bytes(&mut out, 1, ORIGINAL_DST_STATE.as_bytes());
    put_bytes(&mut out, 2, address.as_bytes());
    put_varint(&mut out, 3 << 3);
    put_varint(&mut out, 1);
    out
}

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
    pool: Pool,
    out: Vec<String>,
    swrr: SmoothWrr,
    maglev: Option<Maglev>,
    in_flight: Vec<u32>,
    rng: Rng,
}

/// A picked member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    pub index: usize,
    pub address: String,
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
            source: ViewSource::Nothing,
            members: Vec::new(),
            candidates: Vec::new(),
            pool: Pool::default(),
            out: Vec::new(),
            swrr: SmoothWrr::default(),
            maglev: None,
            in_flight: Vec::new(),
            rng: Rng::new(seed),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
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
        let out = if self.passive_health { passive::out_members(store, &self.name, now) } else { Vec::new() };
        let out_changed = out != self.out;
        self.out = out;
        if members_changed || out_changed {
            self.rebuild(members_changed);
        }
        members_changed || out_changed
    }

    fn rebuild(&mut self, members_changed: bool) {
        self.candidates = self
            .members
            .iter()
            .map(|m| {
                let mut c = Candidate::from_member(m);
                c.unavailable |= self.out.contains(&c.address);
                c
            })
            .collect();
        self.pool = Pool::new(&self.candidates);
        // Availability changes keep round-robin positions only when the pool
        // keeps its shape; a new member list always starts over.
        self.swrr = SmoothWrr::new(self.pool.len());
        if members_changed {
            self.in_flight = vec![0; self.candidates.len()];
        }
        self.maglev = match self.policy {
            BalancePolicy::Hash(_) => Maglev::build(&self.candidates),
            _ => None,
        };
    }

    /// Picks a member; `key` is the hash key for [`BalancePolicy::Hash`].
    pub fn pick(&mut self, key: Option<&[u8]>) -> Option<Picked> {
        let index = match &self.policy {
            BalancePolicy::RoundRobin => self.swrr.pick(&self.pool),
            BalancePolicy::LeastRequest => p2c::pick(&self.pool, &self.in_flight, &mut self.rng),
            BalancePolicy::Hash(_) => match (&self.maglev, key) {
                (Some(t), Some(k)) => t.pick(k),
                // No key on this request: spread it like round robin.
                _ => self.swrr.pick(&self.pool),
            },
        }?;
        if let Some(n) = self.in_flight.get_mut(index) {
            *n += 1;
        }
        let address = self.candidates.get(index)?.address.clone();
        Some(Picked { index, address })
    }

    /// The request sent to `picked` finished.
    pub fn done(&mut self, picked: &Picked) {
        // Only if the list was not rebuilt meanwhile (then counts restarted).
        if self.candidates.get(picked.index).is_some_and(|c| c.address == picked.address) {
            if let Some(n) = self.in_flight.get_mut(picked.index) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// The member behind `picked`, if the list did not change since.
    pub fn member_at(&self, picked: &Picked) -> Option<&Member> {
        let c = self.candidates.get(picked.index)?;
        (c.address == picked.address).then(|| self.members.get(picked.index)).flatten()
    }

    /// Passive health: the response to the request sent to `picked` had
    /// `status` (`None`: no response).
    pub fn report(
        &mut self,
        store: &mut dyn SharedStore,
        picked: &Picked,
        status: Option<u16>,
        now: u64,
    ) -> Result<Report, StoreError> {
        if !self.passive_health || !passive::is_failure(status) {
            return Ok(Report::Ignored);
        }
        // By index: no search per request.
        let Some((max_fails, fail_timeout)) = self.member_at(picked).map(|m| (m.attrs.max_fails, m.attrs.fail_timeout))
        else {
            return Ok(Report::Ignored);
        };
        if !passive::report_failure(store, &self.name, &picked.address, max_fails, fail_timeout, now)? {
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
    use crate::sansio::store::{MemoryStore, StoreRules};

    /// The bytes the host's earlier hand encoding (one-byte lengths) sent,
    /// which Envoy accepted: short values must keep them.
    fn one_byte_lengths(length: u8, address: &str) -> Vec<u8> {
        let mut expected = vec![0x0a, 0x33];
        expected.extend_from_slice(b"envoy.network.transport_socket.original_dst_address");
        expected.extend_from_slice(&[0x12, length]);
        expected.extend_from_slice(address.as_bytes());
        expected.extend_from_slice(&[0x18, 0x01]);
        expected
    }

    #[test]
    fn original_dst_state_encoding() {
        assert_eq!(original_dst_state("127.0.0.1:8080"), one_byte_lengths(0x0e, "127.0.0.1:8080"));
        assert_eq!(original_dst_state("[::1]:8080"), one_byte_lengths(0x0a, "[::1]:8080"));
        // Longer than 127 bytes: a two-byte length (200 = 0xc8 0x01), where
        // one byte used to give a wrong length.
        let long = format!("{}.example:80", "a".repeat(189));
        assert_eq!(long.len(), 200);
        let bytes = original_dst_state(&long);
        let value_at = 2 + ORIGINAL_DST_STATE.len();
        assert_eq!(bytes[value_at..value_at + 3], [0x12, 0xc8, 0x01]);
        assert_eq!(&bytes[value_at + 3..value_at + 203], long.as_bytes());
        assert_eq!(bytes[value_at + 203..], [0x18, 0x01]);
    }

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
        assert_eq!(passive::out_members(&store, "web", 3), [a.address.as_str()]);
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
        assert!(passive::out_members(&store, "web", 4).is_empty());
    }
}
