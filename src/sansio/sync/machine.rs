//! The sync state machine of one upstream, in quinn-proto's shape.
//!
//! Call order, on every host event:
//! 1. feed it: [`SyncMachine::handle_timeout`] when [`SyncMachine::poll_timeout`]
//!    is due, [`SyncMachine::handle_response`] /
//!    [`SyncMachine::handle_dispatch_failed`] for a registry call,
//!    [`SyncMachine::handle_push`] when the registry pushed a change,
//!    [`SyncMachine::handle_watch`] / [`SyncMachine::handle_watch_ended`]
//!    for what an etcd watch brought (its events are applied as changes);
//! 2. drain it: [`SyncMachine::poll_transmit`] until `None` (send each),
//!    then [`SyncMachine::poll_event`] until `None`.
//!
//! `handle_*` return nothing: every output leaves through a `poll_*`.
//! Every input carries `now` (milliseconds on any monotonic-enough clock);
//! the machine never reads a clock and draws jitter from a seeded [`Rng`].
//! Calling `handle_timeout` early, late or twice is harmless, and at most
//! one registry call is in flight. The registry protocol itself lives in a
//! [`RegistryAdapter`]; the machine owns pacing, backoff, and what to
//! accept.

use crate::sansio::config::UpstreamConfig;
use crate::sansio::model::member_set::{Diff, MemberSet};
use crate::sansio::model::update::{Published, Source};
use crate::sansio::registry::etcd_watch::WatchResponse;
use crate::sansio::registry::{
    check_json_budget, AdapterError, EntryProblem, HttpRequest, HttpResponse, MemberList, ParentNews, Poll, Pushed,
    RegistryAdapter,
};
use crate::sansio::shared::status::{count_label, SyncStats};
use crate::sansio::util::backoff::Backoff;
use crate::sansio::util::rng::Rng;

/// A registry call the host must make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Hand this back with the answer; answers with any other id are ignored.
    pub id: u64,
    pub request: HttpRequest,
    /// Always > 0: a 0 timeout means "never" on some hosts.
    pub timeout_ms: u64,
}

/// What happened, for the poller (publishing, failover), the status
/// record, the logs and metrics: one stream they all read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncEvent {
    /// The machine hands out a new member list ([`SyncMachine::published`]);
    /// `diff` is what changed since the previous one.
    Published { source: Source, diff: Diff },
    /// A usable answer (including "nothing changed").
    Synced,
    /// The registry answers again after this many failed calls.
    Recovered { failures: u32 },
    /// A call failed; the next try is in `retry_in_ms`.
    CallFailed { reason: FailReason, retry_in_ms: u64 },
    /// A usable member list was not applied; the last good list stays.
    /// `first` is set on the first refusal of a run of them.
    Refused { reason: RefuseReason, first: bool },
    /// Entries of the last full read that were skipped or repaired, and
    /// were not already so in the read before (each is reported once per
    /// change of it, not on every read).
    BadEntries { problems: Vec<EntryProblem> },
    /// A read would remove `removed` of the `of` members (more than
    /// `max_removal_share`): held until a later read confirms it.
    Held { removed: usize, of: usize },
    /// A later read confirmed the held removal: it is applied.
    Confirmed,
    /// The registry lists the members again before confirming: nothing lost.
    HoldReleased,
    /// The registry lists members again after refusals.
    Accepting,
}

/// Why a registry call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// The host never answered, not even with its own timeout.
    NoAnswer,
    /// The host could not send the call.
    Dispatch(String),
    /// 429 or 503 with `Retry-After`.
    RetryAfter { status: u16 },
    /// The announced body is over `max_body_bytes`; not read.
    Oversize { size: usize, limit: usize },
    /// The adapter could not use the answer.
    Answer(AdapterError),
}

impl FailReason {
    /// A short, fixed label (for metrics).
    pub fn label(&self) -> &'static str {
        match self {
            FailReason::NoAnswer => "timeout",
            FailReason::Dispatch(_) => "dispatch",
            FailReason::RetryAfter { .. } => "retry_after",
            FailReason::Oversize { .. } => "oversize",
            FailReason::Answer(AdapterError::NotJson(_)) => "not_json",
            FailReason::Answer(AdapterError::BadShape(_)) => "bad_shape",
            FailReason::Answer(AdapterError::Registry(_)) => "registry_error",
            FailReason::Answer(AdapterError::Status(_)) => "status",
            FailReason::Answer(AdapterError::NoStatus) => "no_status",
            FailReason::Answer(AdapterError::TooComplex(_)) => "too_complex",
        }
    }
}

impl std::fmt::Display for FailReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailReason::NoAnswer => write!(f, "registry call timed out with no answer from the host"),
            FailReason::Dispatch(reason) => write!(f, "dispatch failed: {reason}"),
            FailReason::RetryAfter { status } => write!(f, "registry answered HTTP {status} with Retry-After"),
            FailReason::Oversize { size, limit } => {
                write!(f, "body of {size} bytes is over max_body_bytes ({limit})")
            }
            FailReason::Answer(e) => write!(f, "{e}"),
        }
    }
}

/// Why a usable member list was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// No members, and `allow_empty` is false.
    Empty,
    /// The prefix or service does not exist, and `allow_empty` is false.
    NotFound,
}

impl RefuseReason {
    pub fn label(self) -> &'static str {
        match self {
            RefuseReason::Empty => "empty",
            RefuseReason::NotFound => "not_found",
        }
    }
}

impl std::fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self {
            RefuseReason::Empty => "registry returned no members",
            RefuseReason::NotFound => "registry returned no members (the prefix or service is not there)",
        };
        write!(f, "{what}; last good list kept (allow_empty is false)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Healthy; next call at `until`.
    Waiting { until: u64 },
    /// A call sent at `sent` is out; given up at `deadline` if the host
    /// never answers. `failures` is the run of failed calls before it;
    /// `pushed`: the registry pushed news meanwhile (the answer may predate
    /// it), so the next call goes at once.
    InFlight { id: u64, sent: u64, deadline: u64, failures: u32, pushed: bool },
    /// `failures` calls in a row failed; next try at `until`.
    Backoff { until: u64, failures: u32 },
}

impl Phase {
    fn failures(self) -> u32 {
        match self {
            Phase::Waiting { .. } => 0,
            Phase::InFlight { failures, .. } | Phase::Backoff { failures, .. } => failures,
        }
    }
}

/// What the machine does with the registry's member lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acceptance {
    Accepting,
    /// The last full read was refused; the last good list stays.
    Refusing(RefuseReason),
    /// A read at `since` would have removed more than `max_removal_share`
    /// of the members; a read at least `interval_ms` later decides.
    Holding {
        since: u64,
    },
}

/// Timing and policy knobs, taken from [`UpstreamConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    pub name: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub backoff_max_ms: u64,
    pub max_body_bytes: usize,
    pub allow_empty: bool,
    /// See [`UpstreamConfig::max_removal_share`].
    pub max_removal_share: f64,
    pub fallback: MemberSet,
    /// Headers added to every registry call (authentication); never logged.
    pub extra_headers: Vec<(String, String)>,
}

impl From<&UpstreamConfig> for SyncConfig {
    fn from(u: &UpstreamConfig) -> Self {
        SyncConfig {
            name: u.name.clone(),
            interval_ms: u.interval_ms,
            timeout_ms: u.timeout_ms.max(1),
            backoff_max_ms: u.backoff_max_ms,
            max_body_bytes: u.max_body_bytes,
            allow_empty: u.allow_empty,
            max_removal_share: u.max_removal_share,
            fallback: MemberSet::from_members(u.fallback.iter().cloned()).0,
            extra_headers: u.registry.auth_headers(),
        }
    }
}

/// Extra time past the host's own timeout before the machine gives a call up.
const DEADLINE_GRACE_MS: u64 = 1_000;

/// The sync state of one upstream.
pub struct SyncMachine {
    config: SyncConfig,
    adapter: Box<dyn RegistryAdapter>,
    phase: Phase,
    acceptance: Acceptance,
    next_id: u64,
    rng: Rng,
    backoff: Backoff,
    /// What this machine hands out, if anything.
    published: Option<Published>,
    /// In the order they happened; a handful at a time.
    events: Vec<SyncEvent>,
    stats: SyncStats,
    /// Fingerprints of the entry problems of the last full read, sorted.
    known_problems: Vec<u64>,
}

impl SyncMachine {
    pub fn new(config: SyncConfig, adapter: Box<dyn RegistryAdapter>, seed: u64) -> Self {
        let backoff = Backoff { base_ms: config.interval_ms, max_ms: config.backoff_max_ms };
        SyncMachine {
            config,
            adapter,
            phase: Phase::Waiting { until: 0 },
            acceptance: Acceptance::Accepting,
            next_id: 1,
            rng: Rng::new(seed),
            backoff,
            published: None,
            events: Vec::new(),
            stats: SyncStats::default(),
            known_problems: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Counters and last outcomes, for the status record.
    pub fn stats(&self) -> SyncStats {
        SyncStats {
            consecutive_failures: self.phase.failures(),
            held: matches!(self.acceptance, Acceptance::Holding { .. }),
            ..self.stats.clone()
        }
    }

    /// The phase as a word for the status endpoint.
    pub fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Waiting { .. } => "waiting",
            Phase::InFlight { .. } => "in_flight",
            Phase::Backoff { .. } => "backoff",
        }
    }

    pub fn interval_ms(&self) -> u64 {
        self.config.interval_ms
    }

    /// The largest body the host should read; larger ones are refused unread.
    pub fn max_body_bytes(&self) -> usize {
        self.config.max_body_bytes
    }

    /// The member list this machine hands out, if any.
    pub fn published(&self) -> Option<&Published> {
        self.published.as_ref()
    }

    /// When the machine next wants [`SyncMachine::handle_timeout`] (or has a
    /// call to send): never `None`, a machine always waits for something.
    #[must_use]
    pub fn poll_timeout(&self) -> u64 {
        match self.phase {
            Phase::Waiting { until } | Phase::Backoff { until, .. } => until,
            Phase::InFlight { deadline, .. } => deadline,
        }
    }

    /// Gives up a call the host never answered.
    pub fn handle_timeout(&mut self, now: u64) {
        if let Phase::InFlight { deadline, .. } = self.phase {
            if now >= deadline {
                self.fail(now, FailReason::NoAnswer, 0);
            }
        }
    }

    /// The registry pushed "something changed": poll at once; with a call
    /// in flight, right after its answer (which may predate the change). A
    /// push also ends a backoff (the registry is evidently there); the
    /// failure count stays, so a failure right after backs off further.
    pub fn handle_push(&mut self, now: u64) {
        match self.phase {
            Phase::Waiting { until } => self.phase = Phase::Waiting { until: until.min(now) },
            Phase::Backoff { until, failures } => self.phase = Phase::Backoff { until: until.min(now), failures },
            Phase::InFlight { ref mut pushed, .. } => *pushed = true,
        }
    }

    /// The next registry call, when one is due.
    #[must_use]
    pub fn poll_transmit(&mut self, now: u64) -> Option<Outgoing> {
        let failures = match self.phase {
            Phase::Waiting { until } | Phase::Backoff { until, .. } if now >= until => self.phase.failures(),
            _ => return None,
        };
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let timeout_ms = self.config.timeout_ms.saturating_add(self.adapter.hold_ms());
        self.phase = Phase::InFlight {
            id,
            sent: now,
            deadline: now.saturating_add(timeout_ms).saturating_add(DEADLINE_GRACE_MS),
            failures,
            pushed: false,
        };
        let mut request = self.adapter.request();
        request.headers.extend(self.config.extra_headers.iter().cloned());
        Some(Outgoing { id, request, timeout_ms })
    }

    /// The next thing that happened.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<SyncEvent> {
        (!self.events.is_empty()).then(|| self.events.remove(0))
    }

    /// The host could not send call `id`.
    pub fn handle_dispatch_failed(&mut self, now: u64, id: u64, reason: &str) {
        if self.in_flight(id).is_some() {
            self.fail(now, FailReason::Dispatch(reason.to_string()), 0);
        }
    }

    /// An answer to call `id`. Late, duplicate or unknown answers (for a
    /// call already given up) are ignored.
    pub fn handle_response(&mut self, now: u64, id: u64, response: HttpResponse<'_>) {
        let Some(sent) = self.in_flight(id) else {
            return;
        };
        self.stats.call_latency.record(now.saturating_sub(sent));
        if let Some(status @ (429 | 503)) = response.status {
            if let Some(ms) = response.header("retry-after").and_then(retry_after_ms) {
                self.fail(now, FailReason::RetryAfter { status }, ms);
                return;
            }
        }
        if response.body_size > self.config.max_body_bytes {
            let reason = FailReason::Oversize { size: response.body_size, limit: self.config.max_body_bytes };
            self.fail(now, reason, 0);
            return;
        }
        // Plain pollers pause `interval_ms` after each answer. Long pollers
        // ask again at once after news; after "unchanged" they wait until
        // `interval_ms` after the previous send, so a registry that answers
        // blocking queries at once cannot make the plugin spin.
        let long_polls = self.adapter.long_polls();
        let unchanged_pace = if long_polls {
            sent.saturating_add(self.config.interval_ms).saturating_sub(now)
        } else {
            self.config.interval_ms
        };
        let after_news = if long_polls { 0 } else { self.config.interval_ms };
        let poll = match check_json_budget(response.body).and_then(|()| self.adapter.parse(&response)) {
            Ok(poll) => poll,
            Err(e) => return self.fail(now, FailReason::Answer(e), 0),
        };
        let failures = self.phase.failures();
        if failures > 0 {
            self.events.push(SyncEvent::Recovered { failures });
        }
        match poll {
            Poll::Unchanged => {
                self.succeed(now);
                self.wait(now, unchanged_pace);
            }
            Poll::Changed => {
                self.succeed(now);
                self.wait(now, 0);
            }
            Poll::Members(list) => {
                let pause = self.apply(now, list, RefuseReason::Empty);
                self.wait(now, pause.unwrap_or(after_news));
            }
            Poll::NotFound => {
                let pause = self.apply(now, MemberList::default(), RefuseReason::NotFound);
                self.wait(now, pause.unwrap_or(after_news));
            }
            Poll::Delta(list) => {
                let pause = self.apply_delta(now, list);
                self.wait(now, pause.unwrap_or(after_news));
            }
        }
    }

    /// What this upstream's `discover[]` parent read for it (etcd v2: the
    /// parent's full read, or a change its long poll brought), taken by
    /// the rules of this machine's own answers: keep-last-good, the empty
    /// list refused, a mass removal held. The machine makes no call of its
    /// own for it. Returns when the parent should read in full for this
    /// upstream: `Some(0)` now (a change that cannot be applied, a change
    /// to a refused list), `Some(ms)` to confirm a held removal.
    pub fn handle_fed(&mut self, now: u64, news: ParentNews<'_>) -> Option<u64> {
        let full = matches!(news, ParentNews::Read { .. });
        match (self.adapter.fed(news), full) {
            (Some(Poll::Members(list)), true) => self.apply(now, list, RefuseReason::Empty),
            (Some(Poll::Delta(list)), false) => self.apply_delta(now, list),
            _ => {
                log::info!("upstream {}: a change its parent watched cannot be applied; reading again", self.name());
                self.adapter.reset();
                Some(0)
            }
        }
    }

    /// A message of the watch on this upstream's prefix (etcd v3 gRPC
    /// Watch): the adapter applies its events to the member list when they
    /// follow on from what it read, and reads again otherwise. The events
    /// are etcd's own: a registry path whose answers fail (and are refused)
    /// does not stop them.
    pub fn handle_watch(&mut self, now: u64, message: &WatchResponse) {
        let pushed = self.adapter.watch(message);
        self.handle_pushed(now, pushed);
    }

    /// The watch stopped: its stream closed (`garbled: false`), or a
    /// message on it could not be decoded (`garbled: true`).
    pub fn handle_watch_ended(&mut self, now: u64, garbled: bool) {
        let pushed = self.adapter.watch_ended(garbled);
        self.handle_pushed(now, pushed);
    }

    fn handle_pushed(&mut self, now: u64, pushed: Pushed) {
        match pushed {
            Pushed::Nothing => {}
            Pushed::Poll => self.handle_push(now),
            Pushed::Resync(why) => {
                log::info!("upstream {}: {why}; reading every member again", self.config.name);
                self.handle_push(now);
            }
            Pushed::Delta(list) => match self.apply_delta(now, list) {
                None => {}
                // Read in full now.
                Some(0) => self.handle_push(now),
                // A hold's confirming read waits its time; a call out or a backoff goes as planned.
                Some(pause) => {
                    if let Phase::Waiting { .. } = self.phase {
                        self.phase = Phase::Waiting { until: now.saturating_add(pause) };
                    }
                }
            },
        }
    }

    /// A member list after a change the registry described: accepted or
    /// refused by the rules of a full read ([`SyncMachine::apply`]), so a
    /// change that would remove more than `max_removal_share` of the members
    /// is held until a full read `interval_ms` later confirms it. Only a
    /// full read may confirm a hold: a change during one (the adapter reads
    /// in full after a hold, so none comes) leaves it to that read. Nor is a
    /// change applied to a list that was refused (the registry said it had
    /// no members: true, or a fault): it is read in full at once instead.
    fn apply_delta(&mut self, now: u64, list: MemberList) -> Option<u64> {
        match self.acceptance {
            Acceptance::Holding { since } => {
                self.adapter.reset();
                Some(since.saturating_add(self.config.interval_ms).saturating_sub(now))
            }
            Acceptance::Refusing(_) => {
                self.adapter.reset();
                Some(0)
            }
            Acceptance::Accepting => self.apply(now, list, RefuseReason::Empty),
        }
    }

    /// A removal over `max_removal_share` waits for a confirming read.
    pub fn holding(&self) -> bool {
        matches!(self.acceptance, Acceptance::Holding { .. })
    }

    /// The last full read was refused (no members, `allow_empty` false): the last good list stays.
    pub fn refusing(&self) -> bool {
        matches!(self.acceptance, Acceptance::Refusing(_))
    }

    /// A full read. An empty one is refused (as `empty_reason`) unless
    /// `allow_empty`; one removing more than `max_removal_share` of the
    /// members is held until a read `interval_ms` later confirms it.
    /// Returns the pause before the next call when the hold decides it.
    fn apply(&mut self, now: u64, list: MemberList, empty_reason: RefuseReason) -> Option<u64> {
        self.stats.bad_entries = u64::try_from(list.problems.len()).unwrap_or(u64::MAX);
        self.report_new_problems(list.problems);
        if list.members.is_empty() && !self.config.allow_empty {
            // The adapter keeps its cursor: the refusal depends only on the
            // data, so the list is read again when the registry says it
            // changed (a probe, a watch, a blocking query), never in a loop.
            self.stats.updates_refused += 1;
            count_label(&mut self.stats.refused_by_reason, empty_reason.label());
            let first = !matches!(self.acceptance, Acceptance::Refusing(_));
            self.acceptance = Acceptance::Refusing(empty_reason);
            self.note_error(now, empty_reason.to_string());
            self.events.push(SyncEvent::Refused { reason: empty_reason, first });
            if self.published.is_none() {
                self.offer_fallback();
            }
            return None;
        }
        let removed = self.removal(&list.members);
        match (self.acceptance, removed) {
            (Acceptance::Holding { since }, Some(_)) if now >= since.saturating_add(self.config.interval_ms) => {
                self.events.push(SyncEvent::Confirmed);
            }
            (Acceptance::Holding { since }, Some(_)) => {
                // Too early to confirm (a watch fired at once): read again
                // when the hold has lasted interval_ms.
                self.adapter.reset();
                self.succeed(now);
                return Some(since.saturating_add(self.config.interval_ms).saturating_sub(now));
            }
            (Acceptance::Holding { .. }, None) => self.events.push(SyncEvent::HoldReleased),
            (_, Some((removed, of))) => {
                self.stats.updates_held += 1;
                self.acceptance = Acceptance::Holding { since: now };
                self.events.push(SyncEvent::Held { removed, of });
                // The confirming read must be a full one, whatever the cursor says.
                self.adapter.reset();
                self.succeed(now);
                return Some(self.config.interval_ms);
            }
            (Acceptance::Refusing(_), None) => self.events.push(SyncEvent::Accepting),
            (Acceptance::Accepting, None) => {}
        }
        self.acceptance = Acceptance::Accepting;
        self.succeed(now);
        self.offer(list.members, Source::Registry);
        None
    }

    /// `(removed, of)` when `next` would remove more than
    /// `max_removal_share` of the registry members handed out now.
    fn removal(&self, next: &MemberSet) -> Option<(usize, usize)> {
        let current = self.published.as_ref().filter(|p| p.source == Source::Registry)?;
        let of = current.members.len();
        let removed = current.members.removed_from(next);
        #[allow(clippy::cast_precision_loss)] // member counts are far below 2^52
        let over = of > 0 && removed as f64 > self.config.max_removal_share * of as f64;
        over.then_some((removed, of))
    }

    /// Emits the entry problems that the previous full read did not have.
    fn report_new_problems(&mut self, problems: Vec<EntryProblem>) {
        use std::hash::{Hash, Hasher};
        let fingerprint = |p: &EntryProblem| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&p.key, &p.problem).hash(&mut h);
            h.finish()
        };
        let mut seen: Vec<u64> = problems.iter().map(fingerprint).collect();
        let new: Vec<EntryProblem> =
            problems.into_iter().filter(|p| self.known_problems.binary_search(&fingerprint(p)).is_err()).collect();
        seen.sort_unstable();
        self.known_problems = seen;
        if !new.is_empty() {
            self.events.push(SyncEvent::BadEntries { problems: new });
        }
    }

    /// The send time of call `id`, if it is the one in flight.
    fn in_flight(&self, id: u64) -> Option<u64> {
        match self.phase {
            Phase::InFlight { id: current, sent, .. } if current == id => Some(sent),
            _ => None,
        }
    }

    fn wait(&mut self, now: u64, delay: u64) {
        let delay = if matches!(self.phase, Phase::InFlight { pushed: true, .. }) { 0 } else { delay };
        self.phase = Phase::Waiting { until: now.saturating_add(delay) };
    }

    fn succeed(&mut self, now: u64) {
        self.stats.syncs_ok += 1;
        self.stats.last_sync_ms = Some(now);
        self.events.push(SyncEvent::Synced);
    }

    fn note_error(&mut self, now: u64, reason: String) {
        self.stats.last_error = Some(reason);
        self.stats.last_error_ms = Some(now);
    }

    /// Counts a failed call and backs off, for at least `at_least_ms` (a
    /// `Retry-After`, capped at `backoff_max_ms`). The first failure of a
    /// run is tried again at once: a registry target with several
    /// endpoints (an Envoy cluster, an nginx address list) then reaches
    /// another one before any backoff.
    fn fail(&mut self, now: u64, reason: FailReason, at_least_ms: u64) {
        self.stats.syncs_failed += 1;
        count_label(&mut self.stats.failures_by_reason, reason.label());
        let failures = self.phase.failures().saturating_add(1);
        let backoff = match failures {
            1 => 0,
            n => self.backoff.jittered(n - 1, &mut self.rng),
        };
        let delay = backoff.max(at_least_ms.min(self.config.backoff_max_ms));
        self.note_error(now, format!("{reason}; keeping the last good list, next try in {delay} ms"));
        self.phase = Phase::Backoff { until: now.saturating_add(delay), failures };
        self.events.push(SyncEvent::CallFailed { reason, retry_in_ms: delay });
        if self.published.is_none() {
            self.offer_fallback();
        }
    }

    fn offer_fallback(&mut self) {
        if !self.config.fallback.is_empty() {
            self.offer(self.config.fallback.clone(), Source::Fallback);
        }
    }

    fn offer(&mut self, members: MemberSet, source: Source) {
        // One walk of both lists: an empty diff is an equal list.
        let diff = match &self.published {
            Some(old) => old.members.diff(&members),
            None => MemberSet::new().diff(&members),
        };
        if diff.is_empty() && self.published.as_ref().is_some_and(|old| old.source == source) {
            return;
        }
        self.stats.updates_applied += 1;
        self.published = Some(Published { members, source });
        self.events.push(SyncEvent::Published { source, diff });
    }
}

/// `Retry-After` in delta-seconds (the HTTP-date form is not used by registries).
fn retry_after_ms(value: &str) -> Option<u64> {
    value.trim().parse::<u64>().ok().map(|s| s.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::model::member_set::Diff;

    #[derive(Debug, PartialEq, Eq)]
    struct Update {
        members: MemberSet,
        source: Source,
        diff: Diff,
    }

    /// Drains the events; the last member list published among them.
    fn poll_update(m: &mut SyncMachine) -> Option<Update> {
        let mut out = None;
        while let Some(e) = m.poll_event() {
            if let SyncEvent::Published { source, diff } = e {
                out = Some(Update { members: m.published().unwrap().members.clone(), source, diff });
            }
        }
        out
    }
    use crate::sansio::registry::etcd_v3::EtcdV3Adapter;
    use crate::sansio::tests::testkit::{EtcdScript as Registry, PREFIX};

    fn config() -> SyncConfig {
        SyncConfig {
            name: "web".into(),
            interval_ms: 1000,
            timeout_ms: 3000,
            backoff_max_ms: 8000,
            max_body_bytes: 64 * 1024,
            allow_empty: false,
            max_removal_share: 1.0,
            fallback: MemberSet::new(),
            extra_headers: Vec::new(),
        }
    }

    fn machine(config: SyncConfig) -> SyncMachine {
        SyncMachine::new(config, Box::new(EtcdV3Adapter::new(PREFIX)), 42)
    }

    fn ok(body: &[u8]) -> HttpResponse<'_> {
        HttpResponse { status: Some(200), headers: &[], body, body_size: body.len() }
    }

    /// Runs one poll at `now`: returns the request kind sent (by body) and
    /// the update, if any.
    fn poll_once(m: &mut SyncMachine, r: &Registry, now: u64) -> (Option<&'static str>, Option<Update>) {
        m.handle_timeout(now);
        let mut kind = None;
        while let Some(out) = m.poll_transmit(now) {
            let body = r.answer(&out.request);
            let is_probe = String::from_utf8_lossy(&out.request.body).contains("sort_target");
            kind = Some(match (kind, is_probe) {
                (None, true) => "probe",
                (None, false) => "fetch",
                (Some(_), _) => "probe+fetch",
            });
            m.handle_response(now, out.id, ok(&body));
        }
        (kind, poll_update(m))
    }

    fn addrs(u: &Update) -> Vec<String> {
        u.members.iter().map(|m| m.addr.to_string()).collect()
    }

    #[test]
    fn first_poll_reads_everything_then_probes_each_interval() {
        let mut r = Registry::new();
        r.put("10.0.0.1:80", "{}");
        r.put("10.0.0.2:80", r#"{"weight":3}"#);
        let mut m = machine(config());
        let (kind, update) = poll_once(&mut m, &r, 0);
        assert_eq!(kind, Some("fetch"));
        let update = update.unwrap();
        assert_eq!(addrs(&update), ["10.0.0.1:80", "10.0.0.2:80"]);
        assert_eq!(update.source, Source::Registry);
        assert_eq!(update.diff.added.len(), 2);
        assert_eq!(m.poll_timeout(), 1000);

        // Nothing due before the interval, however often the host ticks.
        assert_eq!(poll_once(&mut m, &r, 500), (None, None));
        // Unrelated writes move the cluster revision, not our cursor.
        r.touch_elsewhere();
        assert_eq!(poll_once(&mut m, &r, 1000), (Some("probe"), None));
        assert_eq!(m.stats().syncs_ok, 2);
    }

    #[test]
    fn a_change_is_fetched_right_after_the_probe_sees_it() {
        let mut r = Registry::new();
        r.put("10.0.0.1:80", "{}");
        let mut m = machine(config());
        poll_once(&mut m, &r, 0);

        r.put("10.0.0.2:80", "{}");
        let (kind, update) = poll_once(&mut m, &r, 1000);
        assert_eq!(kind, Some("probe+fetch"));
        assert_eq!(addrs(&update.unwrap()), ["10.0.0.1:80", "10.0.0.2:80"]);

        r.put("10.0.0.1:80", r#"{"down":1}"#);
        let update = poll_once(&mut m, &r, 2000).1.unwrap();
        assert_eq!(update.diff.changed.len(), 1);
        assert!(update.members.get(&"10.0.0.1:80".parse().unwrap()).unwrap().down);

        // A delete alone lowers the count: seen too.
        r.delete("10.0.0.2:80");
        let update = poll_once(&mut m, &r, 3000).1.unwrap();
        assert_eq!(addrs(&update), ["10.0.0.1:80"]);
        assert_eq!(update.diff.removed.len(), 1);

        // A delete plus a put of another key: count equal, revision higher.
        r.delete("10.0.0.1:80");
        r.put("10.0.0.3:80", "{}");
        let update = poll_once(&mut m, &r, 4000).1.unwrap();
        assert_eq!(addrs(&update), ["10.0.0.3:80"]);
    }

    #[test]
    fn rewriting_the_same_value_publishes_nothing() {
        let mut r = Registry::new();
        r.put("10.0.0.1:80", "{}");
        let mut m = machine(config());
        poll_once(&mut m, &r, 0);
        r.put("10.0.0.1:80", "{}");
        assert_eq!(poll_once(&mut m, &r, 1000), (Some("probe+fetch"), None));
        assert_eq!(m.stats().updates_applied, 1);
    }

    #[test]
    fn errors_keep_the_last_good_list_and_back_off_exponentially() {
        let mut r = Registry::new();
        r.put("10.0.0.1:80", "{}");
        let mut m = machine(config());
        poll_once(&mut m, &r, 0).1.unwrap();

        let mut now = 1000;
        let mut delays = Vec::new();
        let failures: [HttpResponse<'_>; 6] = [
            HttpResponse { status: Some(503), headers: &[], body: b"", body_size: 0 },
            HttpResponse { status: Some(200), headers: &[], body: b"garbage", body_size: 7 },
            HttpResponse { status: None, headers: &[], body: b"", body_size: 0 },
            HttpResponse { status: Some(404), headers: &[], body: b"{}", body_size: 2 },
            HttpResponse { status: Some(200), headers: &[], body: b"{\"header\":{},\"kvs\":[{", body_size: 21 },
            HttpResponse { status: Some(500), headers: &[], body: b"", body_size: 0 },
        ];
        for failure in failures {
            let out = m.poll_transmit(now).expect("due");
            m.handle_response(now, out.id, failure);
            assert_eq!(poll_update(&mut m), None, "nothing published on error");
            assert_eq!(m.phase_name(), "backoff");
            let next = m.poll_timeout();
            delays.push(next - now);
            if next > now {
                assert_eq!(m.poll_transmit(next - 1), None, "no call before the backoff ends");
            }
            now = next;
        }
        // The first failure of a run is tried again at once (another
        // endpoint of the target may answer); then equal jitter: each delay
        // in [full/2, full], full doubling to the cap.
        assert_eq!(delays[0], 0, "{delays:?}");
        for (i, d) in delays.iter().enumerate().skip(1) {
            let full = (1000u64 << (i - 1)).min(8000);
            assert!((full / 2..=full).contains(d), "delay {i} = {d}, full {full}");
        }
        assert_eq!(m.stats().syncs_failed, 6);
        assert_eq!(m.stats().consecutive_failures, 6);
        assert!(m.stats().last_error.as_deref().unwrap().contains("HTTP 500"));

        // Recovery: the first good answer resets the backoff.
        r.put("10.0.0.2:80", "{}");
        let (kind, update) = poll_once(&mut m, &r, now);
        assert_eq!(kind, Some("probe+fetch"));
        assert_eq!(addrs(&update.unwrap()), ["10.0.0.1:80", "10.0.0.2:80"]);
        assert_eq!(m.stats().consecutive_failures, 0);
        assert_eq!(m.poll_timeout(), now + 1000);
    }

    #[test]
    fn an_empty_list_is_refused_unless_allowed() {
        let mut r = Registry::new();
        r.put("10.0.0.1:80", "{}");
        let mut m = machine(config());
        poll_once(&mut m, &r, 0).1.unwrap();
        r.delete("10.0.0.1:80");
        assert_eq!(poll_once(&mut m, &r, 1000), (Some("probe+fetch"), None));
        assert_eq!(m.stats().updates_refused, 1);
        assert!(m.stats().last_error.as_deref().unwrap().contains("no members"));
        // Still empty: the probe sees no change, nothing is read or refused again.
        assert_eq!(poll_once(&mut m, &r, 2000), (Some("probe"), None));
        assert_eq!(m.stats().updates_refused, 1);
        r.put("10.0.0.5:80", "{}");
        assert_eq!(addrs(&poll_once(&mut m, &r, 3000).1.unwrap()), ["10.0.0.5:80"]);

        let mut allowed = machine(SyncConfig { allow_empty: true, ..config() });
        poll_once(&mut allowed, &r, 0).1.unwrap();
        r.delete("10.0.0.5:80");
        let update = poll_once(&mut allowed, &r, 1000).1.unwrap();
        assert!(update.members.is_empty());
    }

    #[test]
    fn fallback_serves_until_the_registry_answers_and_never_after() {
        let fallback = MemberSet::from_members(vec![crate::sansio::model::member::Member {
            addr: "127.0.0.1:9009".parse().unwrap(),
            attrs: Default::default(),
            meta: Default::default(),
        }])
        .0;
        let mut m = machine(SyncConfig { fallback, ..config() });
        let out = m.poll_transmit(0).unwrap();
        m.handle_dispatch_failed(0, out.id, "cluster not found");
        let update = poll_update(&mut m).unwrap();
        assert_eq!(update.source, Source::Fallback);
        assert_eq!(addrs(&update), ["127.0.0.1:9009"]);
        // Further failures do not republish it.
        let next = m.poll_timeout();
        let out = m.poll_transmit(next).unwrap();
        m.handle_response(next, out.id, HttpResponse { status: Some(503), headers: &[], body: b"", body_size: 0 });
        assert_eq!(poll_update(&mut m), None);

        let mut r = Registry::new();
        r.put("10.0.0.1:80", "{}");
        let now = m.poll_timeout();
        let update = poll_once(&mut m, &r, now).1.unwrap();
        assert_eq!(update.source, Source::Registry);
        assert_eq!(update.diff.removed.len(), 1);

        // Registry gone again: the registry list stays, no fallback.
        let now = m.poll_timeout();
        let out = m.poll_transmit(now).unwrap();
        m.handle_dispatch_failed(now, out.id, "down");
        assert_eq!(poll_update(&mut m), None);
    }

    #[test]
    fn one_call_in_flight_and_stale_answers_are_ignored() {
        let mut r = Registry::new();
        r.put("10.0.0.1:80", "{}");
        let mut m = machine(config());
        let first = m.poll_transmit(0).unwrap();
        assert_eq!(m.poll_transmit(0), None);
        assert_eq!(m.poll_transmit(100), None, "ticks while in flight send nothing");
        m.handle_response(0, first.id + 1, ok(b"{}"));
        assert_eq!(m.phase_name(), "in_flight", "unknown id ignored");
        assert_eq!(m.poll_event(), None);

        // The host never answers: given up after timeout + grace.
        m.handle_timeout(first.timeout_ms);
        assert_eq!(m.phase_name(), "in_flight");
        m.handle_timeout(first.timeout_ms + DEADLINE_GRACE_MS);
        assert_eq!(m.phase_name(), "backoff");
        assert_eq!(m.stats().syncs_failed, 1);
        m.handle_timeout(first.timeout_ms + DEADLINE_GRACE_MS);
        assert_eq!(m.stats().syncs_failed, 1, "a second timeout event is harmless");

        // The late answer arrives: ignored, counters unchanged.
        let body = r.answer(&first.request);
        m.handle_response(5000, first.id, ok(&body));
        assert_eq!(m.phase_name(), "backoff", "the late answer is ignored");
        assert_eq!(poll_update(&mut m), None);
        assert_eq!(m.stats().syncs_ok, 0);
        assert!(first.timeout_ms > 0);
    }

    #[test]
    fn an_oversize_body_is_refused_unread() {
        let mut m = machine(SyncConfig { max_body_bytes: 1024, ..config() });
        let out = m.poll_transmit(0).unwrap();
        m.handle_response(0, out.id, HttpResponse { status: Some(200), headers: &[], body: b"", body_size: 5 << 20 });
        assert_eq!(m.stats().syncs_failed, 1);
        assert!(m.stats().last_error.as_deref().unwrap().contains("max_body_bytes"));
        assert_eq!(m.max_body_bytes(), 1024);
    }

    #[test]
    fn bad_entries_are_counted_per_read() {
        let mut r = Registry::new();
        r.put("10.0.0.1:80", "not json");
        r.put("garbage", "{}");
        let mut m = machine(config());
        let out = m.poll_transmit(0).unwrap();
        m.handle_response(0, out.id, ok(&r.answer(&out.request)));
        let events: Vec<SyncEvent> = std::iter::from_fn(|| m.poll_event()).collect();
        let problems = events.iter().find_map(|e| match e {
            SyncEvent::BadEntries { problems } => Some(problems.len()),
            _ => None,
        });
        assert_eq!(problems, Some(2), "{events:?}");
        assert!(events.iter().any(|e| matches!(e, SyncEvent::Published { source: Source::Registry, .. })));
        let members: Vec<String> = m.published().unwrap().members.iter().map(|m| m.addr.to_string()).collect();
        assert_eq!(members, ["10.0.0.1:80"]);
        assert_eq!(m.stats().bad_entries, 2);
        assert_eq!(m.poll_event(), None, "each event once");
    }

    #[test]
    fn retry_after_is_honoured_on_429() {
        let mut m = machine(config());
        let out = m.poll_transmit(0).unwrap();
        let headers = [("Retry-After".to_string(), "7".to_string())];
        m.handle_response(0, out.id, HttpResponse { status: Some(429), headers: &headers, body: b"", body_size: 0 });
        assert_eq!(m.phase_name(), "backoff");
        assert!(m.poll_timeout() >= 7000, "next try at {}", m.poll_timeout());
        assert!(m.stats().last_error.as_deref().unwrap().contains("429"));
        // Without Retry-After a 429 is an ordinary failure.
        let mut m = machine(config());
        let out = m.poll_transmit(0).unwrap();
        m.handle_response(0, out.id, HttpResponse { status: Some(429), headers: &[], body: b"", body_size: 0 });
        assert!(m.poll_timeout() <= 1000);
    }

    /// A long-polling adapter that always says "unchanged".
    struct Blocking;

    impl RegistryAdapter for Blocking {
        fn request(&self) -> HttpRequest {
            HttpRequest { method: "GET", path: "/watch".into(), headers: vec![], body: vec![] }
        }
        fn parse(&mut self, response: &HttpResponse<'_>) -> Result<Poll, crate::sansio::registry::AdapterError> {
            response.expect_ok().map(|_| Poll::Unchanged)
        }
        fn reset(&mut self) {}
        fn hold_ms(&self) -> u64 {
            30_000
        }
        fn long_polls(&self) -> bool {
            true
        }
    }

    #[test]
    fn long_polls_go_again_at_once_but_never_spin() {
        let cfg =
            SyncConfig { extra_headers: vec![("x-consul-token".into(), "t".into())], interval_ms: 100, ..config() };
        let mut m = SyncMachine::new(cfg, Box::new(Blocking), 1);
        let out = m.poll_transmit(0).unwrap();
        assert_eq!(out.timeout_ms, 3000 + 30_000, "the hold is added to the timeout");
        assert_eq!(out.request.headers, [("x-consul-token".to_string(), "t".to_string())]);
        // Held 30 s, then answered: the next call goes at once.
        m.handle_response(30_000, out.id, ok(b""));
        let out = m.poll_transmit(30_000).expect("asked again at once");
        // Answered at once (a registry ignoring the wait): paced by interval_ms.
        m.handle_response(30_001, out.id, ok(b""));
        assert_eq!(m.poll_transmit(30_050), None);
        assert!(m.poll_transmit(30_100).is_some());
    }

    #[test]
    fn poll_now_brings_a_waiting_poll_forward_only() {
        let mut r = Registry::new();
        r.put("10.0.0.1:80", "{}");
        let mut m = machine(config());
        poll_once(&mut m, &r, 0);
        assert_eq!(m.poll_transmit(10), None);
        m.handle_push(10);
        assert!(m.poll_transmit(10).is_some());
        m.handle_push(20);
        assert_eq!(m.poll_transmit(20), None, "one call in flight at most");
    }

    /// Events of the last handle, drained.
    fn events(m: &mut SyncMachine) -> Vec<SyncEvent> {
        std::iter::from_fn(|| m.poll_event()).collect()
    }

    fn guarded() -> SyncConfig {
        SyncConfig { max_removal_share: 0.5, ..config() }
    }

    fn registry_of(n: usize) -> Registry {
        let mut r = Registry::new();
        for i in 1..=n {
            r.put(&format!("10.0.0.{i}:80"), "{}");
        }
        r
    }

    #[test]
    fn a_mass_deletion_is_held_until_a_later_read_confirms_it() {
        let mut r = registry_of(10);
        let mut m = machine(guarded());
        poll_once(&mut m, &r, 0).1.unwrap();
        for i in 1..=8 {
            r.delete(&format!("10.0.0.{i}:80"));
        }
        // 8 of 10 gone: held, nothing published, counted, shown.
        let (kind, update) = poll_once(&mut m, &r, 1000);
        assert_eq!((kind, update), (Some("probe+fetch"), None));
        assert!(m.stats().held && m.stats().updates_held == 1, "{:?}", m.stats());
        assert_eq!(m.published().unwrap().members.len(), 10);
        // The confirming read is a full read interval_ms later, even with no news.
        assert_eq!(m.poll_timeout(), 2000);
        let (kind, update) = poll_once(&mut m, &r, 2000);
        assert_eq!(kind, Some("fetch"), "a full read, not a probe");
        let update = update.expect("confirmed: applied");
        assert_eq!(update.members.len(), 2);
        assert_eq!(update.diff.removed.len(), 8);
        assert!(!m.stats().held);
    }

    #[test]
    fn a_deletion_restored_before_confirmation_loses_nothing() {
        let mut r = registry_of(10);
        let mut m = machine(guarded());
        poll_once(&mut m, &r, 0).1.unwrap();
        for i in 1..=8 {
            r.delete(&format!("10.0.0.{i}:80"));
        }
        m.handle_timeout(1000);
        let out = m.poll_transmit(1000).unwrap();
        m.handle_response(1000, out.id, ok(&r.answer(&out.request)));
        let out = m.poll_transmit(1000).unwrap();
        m.handle_response(1000, out.id, ok(&r.answer(&out.request)));
        assert!(events(&mut m).iter().any(|e| matches!(e, SyncEvent::Held { removed: 8, of: 10 })));
        for i in 1..=8 {
            r.put(&format!("10.0.0.{i}:80"), "{}");
        }
        let (kind, update) = poll_once(&mut m, &r, 2000);
        assert_eq!((kind, update), (Some("fetch"), None), "the same 10 members: nothing to publish");
        assert!(!m.stats().held);
        assert_eq!(m.published().unwrap().members.len(), 10);
    }

    #[test]
    fn a_read_sooner_than_interval_ms_does_not_confirm() {
        let mut r = registry_of(4);
        let mut m = machine(guarded());
        poll_once(&mut m, &r, 0).1.unwrap();
        for i in 1..=3 {
            r.delete(&format!("10.0.0.{i}:80"));
        }
        assert_eq!(poll_once(&mut m, &r, 1000).1, None, "held");
        // A watch event makes the machine read again at once: not yet a confirmation.
        m.handle_push(1200);
        assert_eq!(poll_once(&mut m, &r, 1200), (Some("fetch"), None));
        assert!(m.stats().held);
        assert_eq!(m.poll_timeout(), 2000, "the hold lasts interval_ms from the first read");
        let (_, update) = poll_once(&mut m, &r, 2000);
        assert_eq!(update.unwrap().members.len(), 1);
        // Removals within the share apply at once; so does a first list.
        let mut small = registry_of(4);
        let mut m = machine(guarded());
        poll_once(&mut m, &small, 0).1.unwrap();
        small.delete("10.0.0.1:80");
        assert_eq!(poll_once(&mut m, &small, 1000).1.unwrap().members.len(), 3);
    }

    #[test]
    fn retry_after_is_capped_at_backoff_max_ms_and_a_push_ends_a_backoff() {
        let mut m = machine(SyncConfig { backoff_max_ms: 2000, ..config() });
        let out = m.poll_transmit(0).unwrap();
        let headers = [("retry-after".to_string(), "20".to_string())];
        m.handle_response(0, out.id, HttpResponse::new(Some(503), &headers, b""));
        assert_eq!(m.poll_timeout(), 2000, "Retry-After 20 s capped at backoff_max_ms");
        m.handle_push(500);
        assert!(m.poll_transmit(500).is_some(), "a watch event ends the backoff");
    }

    #[test]
    fn a_bad_entry_is_reported_once_per_change_not_per_read() {
        let mut r = Registry::new();
        r.put("10.0.0.1:80", "{}");
        r.put_key(&format!("{PREFIX}{}", "x".repeat(2000)), "{}");
        let mut m = machine(config());
        let reported = |m: &mut SyncMachine| {
            events(m)
                .into_iter()
                .filter_map(|e| match e {
                    SyncEvent::BadEntries { problems } => Some(problems.len()),
                    _ => None,
                })
                .sum::<usize>()
        };
        let out = m.poll_transmit(0).unwrap();
        m.handle_response(0, out.id, ok(&r.answer(&out.request)));
        assert_eq!(reported(&mut m), 1);
        // Two changes of another member: full reads, the bad key is not reported again.
        for (t, w) in [(1000, 2), (2000, 3)] {
            r.put("10.0.0.1:80", &format!(r#"{{"weight":{w}}}"#));
            m.handle_timeout(t);
            while let Some(out) = m.poll_transmit(t) {
                m.handle_response(t, out.id, ok(&r.answer(&out.request)));
            }
            assert_eq!(reported(&mut m), 0, "read at {t}");
            assert_eq!(m.stats().bad_entries, 1, "still counted");
        }
        // A new bad entry is.
        r.put("0.0.0.0:80", "{}");
        m.handle_timeout(3000);
        while let Some(out) = m.poll_transmit(3000) {
            m.handle_response(3000, out.id, ok(&r.answer(&out.request)));
        }
        assert_eq!(reported(&mut m), 1);
        assert_eq!(m.stats().bad_entries, 2);
        assert_eq!(m.published().unwrap().members.len(), 1, "0.0.0.0 is not a member");
    }

    #[test]
    fn a_push_while_a_call_is_out_polls_again_right_after_its_answer() {
        let mut r = Registry::new();
        r.put("10.0.0.1:80", "{}");
        let mut m = machine(config());
        poll_once(&mut m, &r, 0).1.unwrap();
        // The probe at 1000 is out when etcd pushes a change it may not include.
        m.handle_timeout(1000);
        let probe = m.poll_transmit(1000).unwrap();
        let stale = r.answer(&probe.request);
        r.put("10.0.0.2:80", "{}");
        m.handle_push(1001);
        m.handle_response(1002, probe.id, ok(&stale));
        assert_eq!(m.poll_timeout(), 1002, "asked again at once, not after interval_ms");
        let (kind, update) = poll_once(&mut m, &r, 1002);
        assert_eq!(kind, Some("probe+fetch"));
        assert_eq!(addrs(&update.unwrap()), ["10.0.0.1:80", "10.0.0.2:80"]);
        assert_eq!(m.poll_timeout(), 2002, "then the normal pace");
    }
}
