//! The listing machine of one `discover[]` entry: when to read the
//! listing, backoff, and which names become or stop being upstreams.
//!
//! Nothing is lost on a bad answer: an error, an odd status or a body that
//! does not parse keeps every upstream found so far. Names are added at
//! once; a name that vanished is removed only when a listing at least
//! `interval_ms` after the first one without it still lacks it (a
//! half-written registry does not take upstreams away), and an empty
//! listing never removes every upstream.

use crate::sansio::config::{refusal, DiscoverConfig, NamePattern};
use crate::sansio::registry::etcd_v2::V2Event;
use crate::sansio::registry::listing::{ChildMark, Listed, ListingAdapter, MAX_TXN_READS};
use crate::sansio::registry::{ChildKeys, HttpRequest, HttpResponse};
use crate::sansio::util::backoff::Backoff;
use crate::sansio::util::rng::Rng;
use std::collections::{BTreeMap, BTreeSet};

/// After a blocking query answers "unchanged", the next waits this long,
/// so that a registry answering at once can never make a hot loop.
const UNCHANGED_GAP_MS: u64 = 1_000;

/// An etcd v2 long poll holds at least this long, even when the next full
/// read is due sooner (which then waits for it): a shorter one is not
/// worth a call, and full reads never follow each other in a loop.
const MIN_HOLD_MS: u64 = 1_000;

/// Extra time past the host's own timeout before a call is given up.
const DEADLINE_GRACE_MS: u64 = 1_000;

/// etcd v2: a full read asked for (a change the watch cannot follow) comes
/// at least this long after the previous one, so that a registry that
/// keeps answering "read again" cannot make a hot loop.
const REREAD_GAP_MS: u64 = 100;

/// A listing call for the host to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingCall {
    pub id: u64,
    pub request: HttpRequest,
    pub timeout_ms: u64,
}

/// What happened, for the poller to act on and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// New upstreams and confirmed removals, in name order.
    Changed {
        added: Vec<String>,
        removed: Vec<String>,
    },
    /// etcd v3: each listed child's key count and newest revision, for the
    /// poller to read again the found upstreams whose mark moved.
    Marks(BTreeMap<String, ChildMark>),
    /// etcd v2: every child's keys at store index `index`, for the poller
    /// to hand to each upstream found (after `Changed`, so new ones get theirs).
    Read {
        index: u64,
        children: BTreeMap<String, ChildKeys>,
    },
    /// etcd v2: one change under child `name`, for its upstream to apply.
    Change {
        name: String,
        event: V2Event,
    },
    /// Names in the listing that do not become upstreams (reported once per name).
    Skipped {
        name: String,
        why: String,
    },
    /// Names missing from the listing, kept until a later listing confirms.
    RemovalHeld {
        names: Vec<String>,
    },
    /// An empty listing was refused: every upstream found so far stays.
    EmptyRefused,
    Failed {
        reason: String,
        retry_in_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting { until: u64 },
    InFlight { id: u64, sent: u64, hold: u64, deadline: u64 },
    Backoff { until: u64, failures: u32 },
}

pub struct ListingMachine {
    adapter: ListingAdapter,
    headers: Vec<(String, String)>,
    interval_ms: u64,
    timeout_ms: u64,
    backoff: Backoff,
    max_upstreams: usize,
    name_pattern: Option<NamePattern>,
    /// The last listing was empty and refused (reported once).
    refusing_empty: bool,
    phase: Phase,
    next_id: u64,
    rng: Rng,
    /// The names in force (accepted upstream names only).
    names: BTreeSet<String>,
    /// Names missing from a listing, with when they were first missed.
    missing_since: BTreeMap<String, u64>,
    /// Skipped names already reported.
    reported: BTreeSet<String>,
    events: Vec<DiscoveryEvent>,
    failures_total: u64,
    listings_ok: u64,
    last_error: Option<String>,
    last_listing_ms: Option<u64>,
    /// etcd v2: when the parent is next read in full (between full reads
    /// its long poll watches it), and when it last was.
    full_due: u64,
    last_full: Option<u64>,
    /// etcd v3 without a watch: the last listing's marks, the mark each
    /// child was last read at, the children to read (in transactions of
    /// at most [`MAX_TXN_READS`]), the ones being read, the ones an
    /// upstream asked to read again at a time, and the next listing.
    listed_marks: BTreeMap<String, ChildMark>,
    fed_marks: BTreeMap<String, ChildMark>,
    to_read: BTreeSet<String>,
    reading: Vec<String>,
    wanted: BTreeMap<String, u64>,
    next_listing: u64,
}

impl ListingMachine {
    pub fn new(config: &DiscoverConfig, seed: u64) -> Self {
        ListingMachine {
            adapter: ListingAdapter::new(&config.registry.spec, config.tag.as_deref(), config.max_upstreams),
            headers: config.registry.auth_headers(),
            interval_ms: config.interval_ms,
            timeout_ms: config.timeout_ms,
            backoff: Backoff { base_ms: config.interval_ms.min(1_000), max_ms: config.backoff_max_ms },
            max_upstreams: config.max_upstreams,
            name_pattern: config.name_pattern.clone(),
            refusing_empty: false,
            phase: Phase::Waiting { until: 0 },
            next_id: 1,
            rng: Rng::new(seed),
            names: BTreeSet::new(),
            missing_since: BTreeMap::new(),
            reported: BTreeSet::new(),
            events: Vec::new(),
            failures_total: 0,
            listings_ok: 0,
            last_error: None,
            last_listing_ms: None,
            full_due: 0,
            last_full: None,
            listed_marks: BTreeMap::new(),
            fed_marks: BTreeMap::new(),
            to_read: BTreeSet::new(),
            reading: Vec::new(),
            wanted: BTreeMap::new(),
            next_listing: 0,
        }
    }

    /// The listing carries the members of every child (etcd v2): the
    /// upstreams it finds make no calls of their own.
    pub fn feeds_children(&self) -> bool {
        self.adapter.feeds_children()
    }

    /// An upstream this entry feeds wants a full read at `at` (a change it
    /// could not apply, a held removal to confirm): the parent is read in
    /// full then, or as soon as the call in flight is answered.
    /// The upstream `name` this entry feeds wants its keys read at `at`:
    /// etcd v3 reads that child alone; etcd v2 reads the whole parent.
    pub fn reread(&mut self, name: &str, now: u64, at: u64) {
        if self.reads_children() {
            let due = self.wanted.entry(name.to_string()).or_insert(at);
            *due = (*due).min(at);
        } else {
            self.reread_at(now, at);
        }
    }

    /// etcd v3 without a watch: children are read by transaction.
    fn reads_children(&self) -> bool {
        self.adapter.feeds_children() && !self.adapter.blocks()
    }

    fn reread_at(&mut self, now: u64, at: u64) {
        let at = self.last_full.map_or(at, |t| at.max(t.saturating_add(REREAD_GAP_MS)));
        self.full_due = self.full_due.min(at);
        if let Phase::Waiting { until } = &mut self.phase {
            *until = (*until).min(at.max(now));
        }
    }

    /// A name not found yet that a listing would take as an upstream.
    pub fn would_add(&self, name: &str) -> bool {
        !self.names.contains(name)
            && self.names.len() < self.max_upstreams
            && refusal(self.name_pattern.as_ref(), name).is_none()
    }

    /// The next call is a full read (a worker that just became the leader:
    /// what it last watched may be long past).
    pub fn restart(&mut self) {
        self.adapter.reset();
        self.full_due = 0;
        self.fed_marks.clear();
        self.to_read.clear();
        self.reading.clear();
        self.wanted.clear();
        self.phase = Phase::Waiting { until: 0 };
    }

    /// The names of the upstreams found, in force.
    pub fn names(&self) -> &BTreeSet<String> {
        &self.names
    }

    /// Listings read, calls failed, the last failure and the last good listing's time.
    pub fn report(&self) -> (u64, u64, Option<&str>, Option<u64>) {
        (self.listings_ok, self.failures_total, self.last_error.as_deref(), self.last_listing_ms)
    }

    /// Takes names from another worker's listing (nginx followers adopt
    /// what the leader found), without a registry call.
    pub fn adopt(&mut self, names: BTreeSet<String>) -> Option<DiscoveryEvent> {
        let added: Vec<String> = names.difference(&self.names).cloned().collect();
        let removed: Vec<String> = self.names.difference(&names).cloned().collect();
        self.names = names;
        (!added.is_empty() || !removed.is_empty()).then_some(DiscoveryEvent::Changed { added, removed })
    }

    #[must_use]
    pub fn poll_timeout(&self) -> u64 {
        match self.phase {
            Phase::Waiting { until } => self.wanted.values().fold(until, |a, b| a.min(*b)),
            Phase::Backoff { until, .. } => until,
            Phase::InFlight { deadline, .. } => deadline,
        }
    }

    /// The call to send now, if one is due.
    pub fn poll_transmit(&mut self, now: u64) -> Option<ListingCall> {
        let wanted_due = self.wanted.values().any(|at| *at <= now);
        match self.phase {
            Phase::Waiting { until } if until <= now || wanted_due => {}
            Phase::Backoff { until, .. } if until <= now => {}
            _ => return None,
        }
        let id = self.next_id;
        self.next_id += 1;
        if self.reads_children() {
            let due: Vec<String> = self.wanted.iter().filter(|(_, at)| **at <= now).map(|(n, _)| n.clone()).collect();
            for name in due {
                self.wanted.remove(&name);
                self.to_read.insert(name);
            }
            let names: Vec<String> = self.to_read.iter().take(MAX_TXN_READS).cloned().collect();
            if let Some(mut request) = self.adapter.children_request(&names).filter(|_| !names.is_empty()) {
                for name in &names {
                    self.to_read.remove(name);
                }
                self.reading = names;
                request.headers.extend(self.headers.iter().cloned());
                let timeout_ms = self.timeout_ms;
                let deadline = now.saturating_add(timeout_ms).saturating_add(DEADLINE_GRACE_MS);
                self.phase = Phase::InFlight { id, sent: now, hold: 0, deadline };
                return Some(ListingCall { id, request, timeout_ms });
            }
        }
        let mut hold = self.adapter.hold_ms();
        if self.adapter.watching() {
            if now >= self.full_due {
                self.adapter.reset();
                hold = 0;
            } else {
                // The long poll ends (at its timeout, as "unchanged") by the
                // time the next full read is due.
                hold = hold.min(self.full_due.saturating_sub(now)).max(MIN_HOLD_MS);
            }
        }
        let timeout_ms = self.timeout_ms.saturating_add(hold);
        // The host ends the call at `timeout_ms` (a long poll with no event
        // ends so every time): its answer must come before this gives up.
        let deadline = now.saturating_add(timeout_ms).saturating_add(DEADLINE_GRACE_MS);
        self.phase = Phase::InFlight { id, sent: now, hold, deadline };
        let mut request = self.adapter.request();
        request.headers.extend(self.headers.iter().cloned());
        Some(ListingCall { id, request, timeout_ms })
    }

    pub fn poll_event(&mut self) -> Option<DiscoveryEvent> {
        (!self.events.is_empty()).then(|| self.events.remove(0))
    }

    /// A deadline passed: a call that outlived its timeout is given up.
    pub fn handle_timeout(&mut self, now: u64) {
        if let Phase::InFlight { deadline, .. } = self.phase {
            if deadline <= now {
                self.fail(now, "no answer within the timeout".to_string());
            }
        }
    }

    pub fn handle_dispatch_failed(&mut self, now: u64, id: u64, reason: &str) {
        if matches!(self.phase, Phase::InFlight { id: current, .. } if current == id) {
            self.fail(now, format!("cannot send the listing call: {reason}"));
        }
    }

    pub fn handle_response(&mut self, now: u64, id: u64, response: HttpResponse<'_>) {
        let (sent, hold) = match self.phase {
            Phase::InFlight { id: current, sent, hold, .. } if current == id => (sent, hold),
            _ => return,
        };
        if !self.reading.is_empty() {
            return self.handle_children(now, &response);
        }
        match self.adapter.parse(&response) {
            Err(e) => {
                self.adapter.reset();
                self.fail(now, e.to_string());
            }
            Ok(Listed::Unchanged) => {
                self.listings_ok += 1;
                self.last_listing_ms = Some(now);
                // A long poll that was held for (most of) its time goes on at
                // once; one answered early waits a little.
                let held_out = self.adapter.feeds_children() && now.saturating_sub(sent) >= hold / 2;
                let next = match (self.adapter.blocks(), held_out) {
                    (true, true) => now,
                    (true, false) => now + UNCHANGED_GAP_MS,
                    (false, _) => now + self.interval_ms,
                };
                self.phase = Phase::Waiting { until: self.confirm_by(next) };
            }
            Ok(Listed::Children { index, children }) => {
                self.listings_ok += 1;
                self.last_listing_ms = Some(now);
                self.full_due = now.saturating_add(self.interval_ms);
                self.last_full = Some(now);
                self.apply(now, children.keys().cloned().collect());
                self.events.push(DiscoveryEvent::Read { index, children });
                self.phase = Phase::Waiting { until: now };
            }
            Ok(Listed::Change { name, event }) => {
                self.listings_ok += 1;
                self.events.push(DiscoveryEvent::Change { name, event });
                self.phase = Phase::Waiting { until: now };
            }
            Ok(Listed::Reread) => {
                let until = self.last_full.map_or(now, |t| now.max(t.saturating_add(REREAD_GAP_MS)));
                self.full_due = self.full_due.min(until);
                self.phase = Phase::Waiting { until };
            }
            Ok(Listed::Marked(marks)) if self.reads_children() => {
                self.listings_ok += 1;
                self.last_listing_ms = Some(now);
                self.apply(now, marks.keys().cloned().collect());
                // Read the children found whose mark moved since they were read.
                let names = &self.names;
                self.fed_marks.retain(|name, _| names.contains(name));
                for (name, mark) in marks.iter().filter(|(name, _)| names.contains(*name)) {
                    if self.fed_marks.get(name) != Some(mark) {
                        self.to_read.insert(name.clone());
                    }
                }
                self.listed_marks = marks;
                self.next_listing = now + self.interval_ms;
                let next = if self.to_read.is_empty() { self.next_listing } else { now };
                self.phase = Phase::Waiting { until: self.confirm_by(next) };
            }
            Ok(listed @ (Listed::Names(_) | Listed::Marked(_))) => {
                self.listings_ok += 1;
                self.last_listing_ms = Some(now);
                let names = match listed {
                    Listed::Marked(marks) => {
                        let names = marks.keys().cloned().collect();
                        self.events.push(DiscoveryEvent::Marks(marks));
                        names
                    }
                    other => other.into_names().unwrap_or_default(),
                };
                self.apply(now, names);
                let next = if self.adapter.blocks() { now } else { now + self.interval_ms };
                self.phase = Phase::Waiting { until: self.confirm_by(next) };
            }
        }
    }

    /// The answer to a transaction reading the children in `reading`.
    fn handle_children(&mut self, now: u64, response: &HttpResponse<'_>) {
        let names = std::mem::take(&mut self.reading);
        match self.adapter.parse_children(response, &names) {
            Ok((index, children)) => {
                for name in &names {
                    if let Some(mark) = self.listed_marks.get(name) {
                        self.fed_marks.insert(name.clone(), *mark);
                    }
                }
                self.events.push(DiscoveryEvent::Read { index, children });
                let next = if self.to_read.is_empty() { self.next_listing.max(now) } else { now };
                self.phase = Phase::Waiting { until: next };
            }
            Err(e) => {
                self.to_read.extend(names);
                self.fail(now, format!("reading the upstreams found: {e}"));
            }
        }
    }

    /// `next`, or sooner when a held removal becomes confirmable; the
    /// confirming read of a blocking query must not block.
    fn confirm_by(&mut self, next: u64) -> u64 {
        match self.missing_since.values().min() {
            Some(since) if since + self.interval_ms < next => {
                self.adapter.reset();
                since + self.interval_ms
            }
            _ => next,
        }
    }

    fn fail(&mut self, now: u64, reason: String) {
        let failures = match self.phase {
            Phase::Backoff { failures, .. } => failures,
            _ => 0,
        }
        .saturating_add(1);
        self.failures_total += 1;
        self.last_error = Some(crate::sansio::util::text::clip(&reason).to_string());
        let retry_in_ms = self.backoff.jittered(failures, &mut self.rng);
        self.phase = Phase::Backoff { until: now + retry_in_ms, failures };
        self.events.push(DiscoveryEvent::Failed { reason, retry_in_ms });
    }

    fn apply(&mut self, now: u64, listed: BTreeSet<String>) {
        let mut accepted = BTreeSet::new();
        for name in listed {
            let refusal = if accepted.len() >= self.max_upstreams {
                Some(format!("over max_upstreams ({})", self.max_upstreams))
            } else {
                refusal(self.name_pattern.as_ref(), &name).map(str::to_string)
            };
            match refusal {
                Some(why) => {
                    if self.reported.insert(name.clone()) {
                        self.events.push(DiscoveryEvent::Skipped { name, why });
                    }
                }
                None => {
                    accepted.insert(name);
                }
            }
        }
        if accepted.is_empty() && !self.names.is_empty() {
            if !std::mem::replace(&mut self.refusing_empty, true) {
                self.events.push(DiscoveryEvent::EmptyRefused);
            }
            return;
        }
        self.refusing_empty = false;
        let added: Vec<String> = accepted.difference(&self.names).cloned().collect();
        let missing: Vec<String> = self.names.difference(&accepted).cloned().collect();
        self.missing_since.retain(|name, _| missing.contains(name));
        let mut removed = Vec::new();
        let mut held = Vec::new();
        for name in missing {
            let since = *self.missing_since.entry(name.clone()).or_insert(now);
            if now.saturating_sub(since) >= self.interval_ms {
                self.missing_since.remove(&name);
                removed.push(name);
            } else if since == now {
                held.push(name);
            }
        }
        for name in &added {
            self.names.insert(name.clone());
        }
        for name in &removed {
            self.names.remove(name);
        }
        if !held.is_empty() {
            self.events.push(DiscoveryEvent::RemovalHeld { names: held });
        }
        if !added.is_empty() || !removed.is_empty() {
            self.events.push(DiscoveryEvent::Changed { added, removed });
        }
    }
}
