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
use super::config::{BalancePolicy, UpstreamConfig};
use super::member::Member;
use super::member_set::MemberSet;
use super::passive;
use super::rng::Rng;
use super::snapshot;
use super::store::SharedStore;

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
}
