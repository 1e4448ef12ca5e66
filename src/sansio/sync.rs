//! The sync state machine of one upstream.
//!
//! Call order, on every host event:
//! 1. feed the event: [`SyncState::handle_timeout`] on a tick,
//!    [`SyncState::handle_response`] / [`SyncState::handle_dispatch_failed`]
//!    for a registry call;
//! 2. drain the actions: [`SyncState::poll_request`] until `None` (dispatch
//!    each), then [`SyncState::poll_update`] (publish it).
//!
//! Every input carries `now` (milliseconds on any monotonic-enough clock);
//! the machine never reads a clock and draws jitter from a seeded [`Rng`].
//! Calling `handle_timeout` early, late or twice is harmless, and at most
//! one registry call is in flight. The registry protocol itself lives in a
//! [`RegistryAdapter`]; the machine owns pacing, backoff, and what to
//! accept.

use super::adapter::{MemberList, Poll, RegistryAdapter, RegistryResponse};
use super::config::UpstreamConfig;
use super::member_set::{Diff, MemberSet};
use super::request::{HttpRequest, HttpResponse};
use super::rng::Rng;
use serde::{Deserialize, Serialize};

/// Where a published member list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Read from the registry.
    Registry,
    /// The configured `fallback`, used until the registry first answers.
    Fallback,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Registry => "registry",
            Source::Fallback => "fallback",
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        match s {
            "registry" => Some(Source::Registry),
            "fallback" => Some(Source::Fallback),
            _ => None,
        }
    }
}

/// A member list to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub members: MemberSet,
    pub source: Source,
    /// What changed since the previous update of this machine.
    pub diff: Diff,
}

/// A registry call the host must make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Hand this back with the answer; answers with any other id are ignored.
    pub id: u64,
    pub request: HttpRequest,
    /// Always > 0: a 0 timeout means "never" on some hosts.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Next call at `until`.
    Waiting { until: u64 },
    /// A call sent at `sent` is out; given up at `deadline` if the host never answers.
    InFlight { id: u64, sent: u64, deadline: u64 },
    /// The registry failed; next try at `until`.
    Backoff { until: u64 },
}

/// Counters and last outcomes, as shown by the status endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStats {
    /// Registry answers that were usable (including "nothing changed").
    pub syncs_ok: u64,
    /// Calls that failed: dispatch error, timeout, bad status, bad body.
    pub syncs_failed: u64,
    /// Usable member lists that were refused (empty without `allow_empty`).
    pub updates_refused: u64,
    /// Member list changes handed to the host.
    pub updates_applied: u64,
    /// Entries skipped or repaired in the last full read.
    pub bad_entries: u64,
    pub consecutive_failures: u32,
    pub last_sync_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
}

/// Timing and policy knobs, taken from [`UpstreamConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    pub name: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub backoff_max_ms: u64,
    pub max_body_bytes: usize,
    pub allow_empty: bool,
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
            fallback: MemberSet::from_members(u.fallback.iter().cloned()).0,
            extra_headers: u.registry.auth_headers(),
        }
    }
}

/// Extra time past the host's own timeout before the machine gives a call up.
const DEADLINE_GRACE_MS: u64 = 1_000;
/// The longest `Retry-After` honoured; a registry asking for more is retried then.
const MAX_RETRY_AFTER_MS: u64 = 600_000;

/// The sync state of one upstream.
pub struct SyncState {
    config: SyncConfig,
    adapter: Box<dyn RegistryAdapter>,
    phase: Phase,
    next_id: u64,
    rng: Rng,
    /// The last full read was refused as empty.
    refusing_empty: bool,
    /// What this machine last handed out, if anything.
    published: Option<(MemberSet, Source)>,
    pending: Option<Update>,
    stats: SyncStats,
    stats_changed: bool,
}

impl SyncState {
    pub fn new(config: SyncConfig, adapter: Box<dyn RegistryAdapter>, seed: u64) -> Self {
        SyncState {
            config,
            adapter,
            phase: Phase::Waiting { until: 0 },
            next_id: 1,
            rng: Rng::new(seed),
            refusing_empty: false,
            published: None,
            pending: None,
            stats: SyncStats::default(),
            stats_changed: true,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// `true` once after any counter or outcome changed (to rewrite status).
    pub fn take_stats_changed(&mut self) -> bool {
        std::mem::take(&mut self.stats_changed)
    }

    /// The phase as a word for the status endpoint.
    pub fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Waiting { .. } => "waiting",
            Phase::InFlight { .. } => "in_flight",
            Phase::Backoff { .. } => "backoff",
        }
    }

    /// The largest body the host should read; larger ones are refused unread.
    pub fn max_body_bytes(&self) -> usize {
        self.config.max_body_bytes
    }

    /// When the machine next wants `handle_timeout`.
    #[must_use]
    pub fn poll_timeout(&self) -> u64 {
        match self.phase {
            Phase::Waiting { until } | Phase::Backoff { until } => until,
            Phase::InFlight { deadline, .. } => deadline,
        }
    }

    /// Gives up a call the host never answered.
    pub fn handle_timeout(&mut self, now: u64) {
        if let Phase::InFlight { deadline, .. } = self.phase {
            if now >= deadline {
                self.fail(now, "registry call timed out with no answer from the host".into(), 0);
            }
        }
    }

    /// Asks for a call at once (e.g. a push from the registry said something
    /// changed), unless one is in flight or the registry is backing off.
    pub fn poll_now(&mut self, now: u64) {
        if let Phase::Waiting { until } = self.phase {
            self.phase = Phase::Waiting { until: until.min(now) };
        }
    }

    /// The next registry call, when one is due.
    #[must_use]
    pub fn poll_request(&mut self, now: u64) -> Option<Outgoing> {
        match self.phase {
            Phase::Waiting { until } | Phase::Backoff { until } if now >= until => {}
            _ => return None,
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let timeout_ms = self.config.timeout_ms.saturating_add(self.adapter.hold_ms());
        self.phase = Phase::InFlight {
            id,
            sent: now,
            deadline: now.saturating_add(timeout_ms).saturating_add(DEADLINE_GRACE_MS),
        };
        let mut request = self.adapter.request();
        request.headers.extend(self.config.extra_headers.iter().cloned());
        Some(Outgoing { id, request, timeout_ms })
    }

    /// The member list to publish, if it changed.
    #[must_use]
    pub fn poll_update(&mut self) -> Option<Update> {
        self.pending.take()
    }

    /// The host could not send call `id`.
    pub fn handle_dispatch_failed(&mut self, now: u64, id: u64, reason: &str) {
        if self.in_flight(id).is_some() {
            self.fail(now, format!("dispatch failed: {reason}"), 0);
        }
    }

    /// An answer to call `id`. Returns `false` when the answer was not
    /// expected (late, duplicate, or for a call already given up).
    pub fn handle_response(&mut self, now: u64, id: u64, response: HttpResponse<'_>) -> bool {
        let Some(sent) = self.in_flight(id) else {
            return false;
        };
        let answer = RegistryResponse { status: response.status, headers: response.headers, body: response.body };
        if let Some(status @ (429 | 503)) = response.status {
            if let Some(ms) = answer.header("retry-after").and_then(retry_after_ms) {
                self.fail(now, format!("registry answered HTTP {status} with Retry-After"), ms);
                return true;
            }
        }
        if response.body_size > self.config.max_body_bytes {
            let limit = self.config.max_body_bytes;
            self.fail(now, format!("body of {} bytes is over max_body_bytes ({limit})", response.body_size), 0);
            return true;
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
        match self.adapter.parse(&answer) {
            Ok(Poll::Unchanged) => {
                self.succeed(now);
                self.wait(now, unchanged_pace);
            }
            Ok(Poll::Changed) => {
                self.succeed(now);
                self.wait(now, 0);
            }
            Ok(Poll::Members(list)) => {
                self.apply(now, list);
                self.wait(now, if long_polls { 0 } else { self.config.interval_ms });
            }
            Err(e) => self.fail(now, e.to_string(), 0),
        }
        true
    }

    fn apply(&mut self, now: u64, list: MemberList) {
        self.stats.bad_entries = u64::try_from(list.problems.len()).unwrap_or(u64::MAX);
        for p in &list.problems {
            let effect = if p.skipped { "; entry skipped" } else { "" };
            log::warn!("upstream {}: registry entry {:?}: {}{effect}", self.config.name, p.key, p.problem);
        }
        if list.members.is_empty() && !self.config.allow_empty {
            // The adapter keeps its cursor: the refusal depends only on the
            // data, so the list is read again when the registry says it
            // changed (a probe, a watch, a blocking query), never in a loop.
            self.stats.updates_refused += 1;
            // Logged once per run of refusals, not every interval.
            let first = !std::mem::replace(&mut self.refusing_empty, true);
            let reason = "registry returned no members; last good list kept (allow_empty is false)";
            self.note_error(now, reason.into(), first);
            if self.published.is_none() {
                self.offer_fallback();
            }
        } else {
            if std::mem::take(&mut self.refusing_empty) {
                log::info!("upstream {}: registry lists members again", self.config.name);
            }
            self.succeed(now);
            self.offer(list.members, Source::Registry);
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
        self.phase = Phase::Waiting { until: now.saturating_add(delay) };
    }

    fn succeed(&mut self, now: u64) {
        if self.stats.consecutive_failures > 0 {
            log::info!(
                "upstream {}: registry answers again after {} failed calls",
                self.config.name,
                self.stats.consecutive_failures
            );
        }
        self.stats.syncs_ok += 1;
        self.stats.consecutive_failures = 0;
        self.stats.last_sync_ms = Some(now);
        self.stats_changed = true;
    }

    fn note_error(&mut self, now: u64, reason: String, log_it: bool) {
        if log_it {
            log::warn!("upstream {}: {reason}", self.config.name);
        }
        self.stats.last_error = Some(reason);
        self.stats.last_error_ms = Some(now);
        self.stats_changed = true;
    }

    /// Counts a failed call and backs off, for at least `at_least_ms`.
    fn fail(&mut self, now: u64, reason: String, at_least_ms: u64) {
        self.stats.syncs_failed += 1;
        self.stats.consecutive_failures = self.stats.consecutive_failures.saturating_add(1);
        let delay = self.backoff_delay().max(at_least_ms.min(MAX_RETRY_AFTER_MS));
        self.note_error(now, format!("{reason}; keeping the last good list, next try in {delay} ms"), true);
        self.phase = Phase::Backoff { until: now.saturating_add(delay) };
        if self.published.is_none() {
            self.offer_fallback();
        }
    }

    /// Exponential in the number of consecutive failures, capped, with
    /// "equal jitter": half fixed, half random, so pollers spread out.
    fn backoff_delay(&mut self) -> u64 {
        let shift = self.stats.consecutive_failures.saturating_sub(1).min(20);
        let full = self.config.interval_ms.saturating_mul(1 << shift).min(self.config.backoff_max_ms);
        let half = full / 2;
        half + self.rng.up_to(full - half)
    }

    fn offer_fallback(&mut self) {
        if !self.config.fallback.is_empty() {
            log::warn!(
                "upstream {}: no member list yet; serving the {} fallback members",
                self.config.name,
                self.config.fallback.len()
            );
            self.offer(self.config.fallback.clone(), Source::Fallback);
        }
    }

    fn offer(&mut self, members: MemberSet, source: Source) {
        let diff = match &self.published {
            Some((old, old_source)) if *old == members && *old_source == source => return,
            Some((old, _)) => old.diff(&members),
            None => MemberSet::new().diff(&members),
        };
        log::info!("upstream {}: {} members from the {} ({diff})", self.config.name, members.len(), source.as_str());
        self.stats.updates_applied += 1;
        self.stats_changed = true;
        self.published = Some((members.clone(), source));
        self.pending = Some(Update { members, source, diff });
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
    use crate::sansio::etcd_v3::EtcdV3Adapter;
    use crate::sansio::tests::testkit::{EtcdScript as Registry, PREFIX};

    fn config() -> SyncConfig {
        SyncConfig {
            name: "web".into(),
            interval_ms: 1000,
            timeout_ms: 3000,
            backoff_max_ms: 8000,
            max_body_bytes: 64 * 1024,
            allow_empty: false,
            fallback: MemberSet::new(),
            extra_headers: Vec::new(),
        }
    }

    fn machine(config: SyncConfig) -> SyncState {
        SyncState::new(config, Box::new(EtcdV3Adapter::new(PREFIX)), 42)
    }

    fn ok(body: &[u8]) -> HttpResponse<'_> {
        HttpResponse { status: Some(200), headers: &[], body, body_size: body.len() }
    }

    /// Runs one poll at `now`: returns the request kind sent (by body) and
    /// the update, if any.
    fn poll_once(m: &mut SyncState, r: &Registry, now: u64) -> (Option<&'static str>, Option<Update>) {
        m.handle_timeout(now);
        let mut kind = None;
        while let Some(out) = m.poll_request(now) {
            let body = r.answer(&out.request);
            let is_probe = String::from_utf8_lossy(&out.request.body).contains("sort_target");
            kind = Some(match (kind, is_probe) {
                (None, true) => "probe",
                (None, false) => "fetch",
                (Some(_), _) => "probe+fetch",
            });
            assert!(m.handle_response(now, out.id, ok(&body)));
        }
        (kind, m.poll_update())
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
            let out = m.poll_request(now).expect("due");
            assert!(m.handle_response(now, out.id, failure));
            assert_eq!(m.poll_update(), None, "nothing published on error");
            assert_eq!(m.phase_name(), "backoff");
            let next = m.poll_timeout();
            delays.push(next - now);
            assert_eq!(m.poll_request(next - 1), None, "no call before the backoff ends");
            now = next;
        }
        // Equal jitter: each delay in [full/2, full], full doubling to the cap.
        for (i, d) in delays.iter().enumerate() {
            let full = (1000u64 << i).min(8000);
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
        let fallback = MemberSet::from_members(vec![crate::sansio::member::Member {
            addr: "127.0.0.1:9009".parse().unwrap(),
            attrs: Default::default(),
        }])
        .0;
        let mut m = machine(SyncConfig { fallback, ..config() });
        let out = m.poll_request(0).unwrap();
        m.handle_dispatch_failed(0, out.id, "cluster not found");
        let update = m.poll_update().unwrap();
        assert_eq!(update.source, Source::Fallback);
        assert_eq!(addrs(&update), ["127.0.0.1:9009"]);
        // Further failures do not republish it.
        let next = m.poll_timeout();
        let out = m.poll_request(next).unwrap();
        assert!(m.handle_response(
            next,
            out.id,
            HttpResponse { status: Some(503), headers: &[], body: b"", body_size: 0 }
        ));
        assert_eq!(m.poll_update(), None);

        let mut r = Registry::new();
        r.put("10.0.0.1:80", "{}");
        let now = m.poll_timeout();
        let update = poll_once(&mut m, &r, now).1.unwrap();
        assert_eq!(update.source, Source::Registry);
        assert_eq!(update.diff.removed.len(), 1);

        // Registry gone again: the registry list stays, no fallback.
        let now = m.poll_timeout();
        let out = m.poll_request(now).unwrap();
        m.handle_dispatch_failed(now, out.id, "down");
        assert_eq!(m.poll_update(), None);
    }

    #[test]
    fn one_call_in_flight_and_stale_answers_are_ignored() {
        let mut r = Registry::new();
        r.put("10.0.0.1:80", "{}");
        let mut m = machine(config());
        let first = m.poll_request(0).unwrap();
        assert_eq!(m.poll_request(0), None);
        assert_eq!(m.poll_request(100), None, "ticks while in flight send nothing");
        assert!(!m.handle_response(0, first.id + 1, ok(b"{}")), "unknown id ignored");

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
        assert!(!m.handle_response(5000, first.id, ok(&body)));
        assert_eq!(m.poll_update(), None);
        assert_eq!(m.stats().syncs_ok, 0);
        assert!(first.timeout_ms > 0);
    }

    #[test]
    fn an_oversize_body_is_refused_unread() {
        let mut m = machine(SyncConfig { max_body_bytes: 1024, ..config() });
        let out = m.poll_request(0).unwrap();
        assert!(m.handle_response(
            0,
            out.id,
            HttpResponse { status: Some(200), headers: &[], body: b"", body_size: 5 << 20 }
        ));
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
        let update = poll_once(&mut m, &r, 0).1.unwrap();
        assert_eq!(addrs(&update), ["10.0.0.1:80"]);
        assert_eq!(m.stats().bad_entries, 2);
        assert!(m.take_stats_changed());
        assert!(!m.take_stats_changed());
    }

    #[test]
    fn retry_after_is_honoured_on_429() {
        let mut m = machine(config());
        let out = m.poll_request(0).unwrap();
        let headers = [("Retry-After".to_string(), "7".to_string())];
        assert!(m.handle_response(
            0,
            out.id,
            HttpResponse { status: Some(429), headers: &headers, body: b"", body_size: 0 }
        ));
        assert_eq!(m.phase_name(), "backoff");
        assert!(m.poll_timeout() >= 7000, "next try at {}", m.poll_timeout());
        assert!(m.stats().last_error.as_deref().unwrap().contains("429"));
        // Without Retry-After a 429 is an ordinary failure.
        let mut m = machine(config());
        let out = m.poll_request(0).unwrap();
        m.handle_response(0, out.id, HttpResponse { status: Some(429), headers: &[], body: b"", body_size: 0 });
        assert!(m.poll_timeout() <= 1000);
    }

    /// A long-polling adapter that always says "unchanged".
    struct Blocking;

    impl RegistryAdapter for Blocking {
        fn request(&self) -> HttpRequest {
            HttpRequest { method: "GET", path: "/watch".into(), headers: vec![], body: vec![] }
        }
        fn parse(&mut self, response: &RegistryResponse<'_>) -> Result<Poll, crate::sansio::request::AdapterError> {
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
        let mut m = SyncState::new(cfg, Box::new(Blocking), 1);
        let out = m.poll_request(0).unwrap();
        assert_eq!(out.timeout_ms, 3000 + 30_000, "the hold is added to the timeout");
        assert_eq!(out.request.headers, [("x-consul-token".to_string(), "t".to_string())]);
        // Held 30 s, then answered: the next call goes at once.
        assert!(m.handle_response(30_000, out.id, ok(b"")));
        let out = m.poll_request(30_000).expect("asked again at once");
        // Answered at once (a registry ignoring the wait): paced by interval_ms.
        assert!(m.handle_response(30_001, out.id, ok(b"")));
        assert_eq!(m.poll_request(30_050), None);
        assert!(m.poll_request(30_100).is_some());
    }

    #[test]
    fn poll_now_brings_a_waiting_poll_forward_only() {
        let mut r = Registry::new();
        r.put("10.0.0.1:80", "{}");
        let mut m = machine(config());
        poll_once(&mut m, &r, 0);
        assert_eq!(m.poll_request(10), None);
        m.poll_now(10);
        assert!(m.poll_request(10).is_some());
        m.poll_now(20);
        assert_eq!(m.poll_request(20), None, "one call in flight at most");
    }
}
