//! EDS long polls: with `eds_hold_ms` > 0, an EDS request whose version is
//! already current is held instead of answered 304 at once, and answered
//! as soon as one of its clusters is published again, or with 304 when the
//! hold runs out. Envoy's REST EDS then behaves like a long poll: a short
//! `refresh_delay` costs few requests, and a change reaches Envoy within a
//! tick instead of within `refresh_delay`.
//!
//! One [`EdsHold`] per worker (the requests of that worker's streams),
//! checked on the worker's tick. An idle tick costs one small read (the
//! poller's publish sequence) and one comparison, however many requests
//! are held: the held requests' versions are read only when the sequence
//! moved or a hold ran out.
//!
//! A tick answers at most [`MAX_ANSWERS_PER_CALL`] requests; the rest of
//! those due wait, in order, for the next ticks. Envoy sends a local reply
//! only after the VM call that asked for it returns, and each reply runs
//! the filter's response callback, a VM call that sends the next queued
//! reply before it returns: the replies of one call nest, one level each.
//! Measured on Envoy 1.40 (V8): 150 replies from one tick went out, 400
//! overflowed V8's stack (`RangeError: Maximum call stack size exceeded`
//! in `proxy_on_response_headers`) and the worker's VM was lost, every EDS
//! request on it answered 503 from then on.
//!
//! The tick itself runs only while requests are held ([`EdsHold::tick_change`]):
//! a VM that holds nothing (Envoy's main-thread instance of the filter, which
//! never gets a request, or a worker with no EDS stream) is never woken.
//! Once the poller's wake-ups reach the worker ([`EdsHold::woken`]: on
//! Envoy a shared queue, which answers the due requests the moment a list
//! is published), the tick only ends holds and drains a backlog: every
//! [`WOKEN_TICK_MS`] while nothing is left over, every [`HOLD_TICK_MS`]
//! otherwise.

use crate::sansio::config::roles::HOLD_TICK_MS;
use crate::sansio::serve::eds::{current_version, DiscoveryRequest};
use crate::sansio::shared::snapshot::read_sequence;
use crate::sansio::shared::store::SharedStore;
use std::collections::VecDeque;

/// The most held requests one tick answers: well below the 150 measured
/// safe in one VM call (module docs); 1,000 due at once go out within 16
/// ticks (160 ms at the 10 ms hold tick).
pub const MAX_ANSWERS_PER_CALL: usize = 64;

/// The tick while requests are held and the poller's wake-ups answer
/// them: it ends holds that ran out, and answers within this long what a
/// lost wake-up left (a worker whose queue fell off the poller's list).
/// A tenth of the ticks of [`HOLD_TICK_MS`]: each costs a worker ~25 µs.
pub const WOKEN_TICK_MS: u64 = 100;

/// A held EDS request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The host's stream (context) id.
    pub stream: u32,
    pub request: DiscoveryRequest,
    until: u64,
}

#[derive(Debug)]
pub struct EdsHold {
    held: Vec<Held>,
    /// Due, not answered yet: over [`MAX_ANSWERS_PER_CALL`] came due at once.
    backlog: VecDeque<Held>,
    /// The publish sequence when the held requests were last checked.
    seen: Option<u64>,
    /// The earliest end of a hold.
    earliest: u64,
    /// The host's tick period in ms, 0 when stopped (on_configure arms it).
    tick_ms: u64,
    /// A wake-up from the poller came: they reach this worker.
    woken: bool,
}

impl Default for EdsHold {
    fn default() -> Self {
        EdsHold {
            held: Vec::new(),
            backlog: VecDeque::new(),
            seen: None,
            earliest: 0,
            tick_ms: HOLD_TICK_MS,
            woken: false,
        }
    }
}

/// What to do with the host's tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Tick every this many ms.
    Every(u64),
    /// Nothing is held: stop it.
    Stop,
}

impl EdsHold {
    /// Holds `request` of `stream` until `until` at the latest.
    pub fn hold(&mut self, stream: u32, request: DiscoveryRequest, until: u64) {
        if self.held.is_empty() || until < self.earliest {
            self.earliest = until;
        }
        self.held.push(Held { stream, request, until });
    }

    /// The stream is gone (answered, reset or timed out): never answer it.
    pub fn release(&mut self, stream: u32) {
        self.held.retain(|h| h.stream != stream);
        self.backlog.retain(|h| h.stream != stream);
    }

    /// Requests held or due and not answered yet.
    pub fn len(&self) -> usize {
        self.held.len() + self.backlog.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.backlog.is_empty()
    }

    /// The tick change needed now, if any: the tick is wanted exactly while
    /// a request is held, at [`HOLD_TICK_MS`] until wake-ups arrive or while
    /// a backlog is left, else at [`WOKEN_TICK_MS`]. The caller makes it and
    /// reports it with [`EdsHold::ticked`] (a change the host refused is
    /// asked again).
    pub fn tick_change(&self) -> Option<Tick> {
        let want = match (self.is_empty(), self.woken && self.backlog.is_empty()) {
            (true, _) => 0,
            (false, true) => WOKEN_TICK_MS,
            (false, false) => HOLD_TICK_MS,
        };
        if want == self.tick_ms {
            return None;
        }
        Some(if want == 0 { Tick::Stop } else { Tick::Every(want) })
    }

    /// The host made `change`.
    pub fn ticked(&mut self, change: Tick) {
        self.tick_ms = match change {
            Tick::Every(ms) => ms,
            Tick::Stop => 0,
        };
    }

    /// A wake-up from the poller arrived: from now on the tick only ends
    /// holds and drains backlogs ([`EdsHold::tick_change`]). `true` for the
    /// first one.
    pub fn woken(&mut self) -> bool {
        !std::mem::replace(&mut self.woken, true)
    }

    /// Whether the host's tick runs (at whatever period).
    pub fn is_ticking(&self) -> bool {
        self.tick_ms != 0
    }

    /// The held requests to answer now, at most [`MAX_ANSWERS_PER_CALL`]:
    /// their hold ran out, or the version of their clusters moved (one with
    /// no snapshot yet is due as soon as one appears). Those due earlier
    /// and left over come first.
    pub fn take_due(&mut self, store: &dyn SharedStore, now: u64) -> Vec<Held> {
        let due = self.newly_due(store, now);
        self.backlog.extend(due);
        let n = self.backlog.len().min(MAX_ANSWERS_PER_CALL);
        self.backlog.drain(..n).collect()
    }

    fn newly_due(&mut self, store: &dyn SharedStore, now: u64) -> Vec<Held> {
        if self.held.is_empty() {
            return Vec::new();
        }
        let seq = read_sequence(store);
        if seq == self.seen && now < self.earliest {
            return Vec::new();
        }
        let moved = seq != self.seen;
        self.seen = seq;
        let (due, waiting): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held).into_iter().partition(|h| {
            now >= h.until
                || (moved
                    && current_version(store, &h.request.resource_names).is_some_and(|v| v != h.request.version_info))
        });
        self.held = waiting;
        self.earliest = self.held.iter().map(|h| h.until).min().unwrap_or(0);
        due
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
    use crate::sansio::shared::snapshot;
    use crate::sansio::shared::store::{MemoryStore, StoreRules};

    fn publish(store: &mut MemoryStore, name: &str, addr: &str) {
        let members = MemberSet::from_members([Member::new(addr.parse().unwrap(), Default::default())]).0;
        snapshot::publish(store, name, &Published { members, source: Source::Registry }).unwrap();
        // As the poller's flush does after its snapshots.
        snapshot::bump_sequence(store).unwrap();
    }

    fn request(names: &[&str], version: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: version.to_string(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn a_held_request_is_due_when_its_version_moves_or_its_hold_ends() {
        let mut store = MemoryStore::new(StoreRules::Envoy);
        publish(&mut store, "web", "10.0.0.1:80");
        publish(&mut store, "api", "10.0.0.9:80");
        let mut hold = EdsHold::default();
        hold.hold(1, request(&["web"], "1"), 30_000);
        hold.hold(2, request(&["api"], "1"), 500);
        hold.hold(3, request(&["new"], ""), 30_000);
        assert!(hold.take_due(&store, 10).is_empty(), "nothing moved");

        publish(&mut store, "web", "10.0.0.2:80");
        let due: Vec<u32> = hold.take_due(&store, 20).iter().map(|h| h.stream).collect();
        assert_eq!(due, [1], "web moved to version 2");
        let due: Vec<u32> = hold.take_due(&store, 500).iter().map(|h| h.stream).collect();
        assert_eq!(due, [2], "api's hold ran out");
        publish(&mut store, "new", "10.0.0.3:80");
        let due: Vec<u32> = hold.take_due(&store, 600).iter().map(|h| h.stream).collect();
        assert_eq!(due, [3], "a first snapshot of a cluster with none");
        assert!(hold.is_empty());
    }

    #[test]
    fn the_tick_runs_only_while_a_request_is_held() {
        let store = MemoryStore::new(StoreRules::Envoy);
        let mut hold = EdsHold::default();
        // Armed by on_configure; nothing held (e.g. the main thread's VM): stop it.
        assert_eq!(hold.tick_change(), Some(Tick::Stop));
        hold.ticked(Tick::Stop);
        assert_eq!(hold.tick_change(), None);
        hold.hold(1, request(&["web"], ""), 100);
        assert_eq!(hold.tick_change(), Some(Tick::Every(HOLD_TICK_MS)), "a held request needs the tick");
        // The host refused: asked again.
        assert_eq!(hold.tick_change(), Some(Tick::Every(HOLD_TICK_MS)));
        hold.ticked(Tick::Every(HOLD_TICK_MS));
        hold.hold(2, request(&["web"], ""), 200);
        assert_eq!(hold.tick_change(), None, "armed once, however many are held");
        assert_eq!(hold.take_due(&store, 100).len(), 1);
        assert_eq!(hold.tick_change(), None, "one still held");
        hold.release(2);
        assert_eq!(hold.tick_change(), Some(Tick::Stop), "the last stream went away");
        hold.ticked(Tick::Stop);
        hold.hold(3, request(&["web"], ""), 300);
        assert_eq!(hold.tick_change(), Some(Tick::Every(HOLD_TICK_MS)));
        hold.ticked(Tick::Every(HOLD_TICK_MS));
        assert_eq!(hold.take_due(&store, 300).len(), 1);
        assert_eq!(hold.tick_change(), Some(Tick::Stop), "the last hold ran out");
    }

    #[test]
    fn a_released_stream_is_never_answered() {
        let store = MemoryStore::new(StoreRules::Envoy);
        let mut hold = EdsHold::default();
        hold.hold(7, request(&["web"], ""), 100);
        hold.hold(8, request(&["web"], ""), 100);
        hold.release(7);
        let due: Vec<u32> = hold.take_due(&store, 100).iter().map(|h| h.stream).collect();
        assert_eq!(due, [8]);
    }

    #[test]
    fn a_tick_answers_a_bounded_number_and_the_rest_come_at_the_next_ticks() {
        // 1,000 held requests all due at once (their cluster moved): one
        // tick answering them all overflows V8's stack on Envoy.
        let mut store = MemoryStore::new(StoreRules::Envoy);
        publish(&mut store, "web", "10.0.0.1:80");
        let mut hold = EdsHold::default();
        for i in 0..1000u32 {
            hold.hold(i, request(&["web"], "1"), 30_000);
        }
        assert!(hold.take_due(&store, 10).is_empty());
        publish(&mut store, "web", "10.0.0.2:80");
        // Gone before its turn: never answered.
        let mut answered = Vec::new();
        let mut ticks = 0;
        while !hold.is_empty() {
            let due = hold.take_due(&store, 20 + ticks);
            assert!(!due.is_empty(), "a due request waits no longer than the next tick");
            assert!(due.len() <= MAX_ANSWERS_PER_CALL, "{} answered in one tick", due.len());
            if !hold.is_empty() {
                assert_eq!(hold.tick_change(), None, "the tick stays armed while some are due");
            }
            answered.extend(due.iter().map(|h| h.stream));
            ticks += 1;
            if ticks == 1 {
                hold.release(999);
            }
        }
        assert_eq!(answered, (0..999).collect::<Vec<u32>>(), "each once, in order, 999 released");
        assert_eq!(ticks as usize, 999_usize.div_ceil(MAX_ANSWERS_PER_CALL));
        assert_eq!(hold.tick_change(), Some(Tick::Stop));
    }

    #[test]
    fn requests_due_later_queue_behind_those_left_over() {
        let mut store = MemoryStore::new(StoreRules::Envoy);
        publish(&mut store, "web", "10.0.0.1:80");
        publish(&mut store, "api", "10.0.0.9:80");
        let mut hold = EdsHold::default();
        let over = MAX_ANSWERS_PER_CALL as u32 + 10;
        for i in 0..over {
            hold.hold(i, request(&["web"], "1"), 30_000);
        }
        hold.hold(500, request(&["api"], "1"), 30_000);
        assert!(hold.take_due(&store, 10).is_empty());
        publish(&mut store, "web", "10.0.0.2:80");
        assert_eq!(hold.take_due(&store, 20).len(), MAX_ANSWERS_PER_CALL);
        publish(&mut store, "api", "10.0.0.8:80");
        let next: Vec<u32> = hold.take_due(&store, 30).iter().map(|h| h.stream).collect();
        let mut want: Vec<u32> = (MAX_ANSWERS_PER_CALL as u32..over).collect();
        want.push(500);
        assert_eq!(next, want, "the left-over first, then the newly due");
        assert!(hold.is_empty());
    }

    #[test]
    fn once_woken_the_tick_only_ends_holds_unless_a_backlog_is_left() {
        let mut store = MemoryStore::new(StoreRules::Envoy);
        publish(&mut store, "web", "10.0.0.1:80");
        let mut hold = EdsHold::default();
        let tick = |hold: &mut EdsHold| {
            let change = hold.tick_change();
            if let Some(c) = change {
                hold.ticked(c);
            }
            change
        };
        for i in 0..(MAX_ANSWERS_PER_CALL as u32 + 1) {
            hold.hold(i, request(&["web"], "1"), 30_000);
        }
        assert_eq!(tick(&mut hold), None, "not woken: the fast tick checks the held requests");
        hold.woken();
        assert_eq!(tick(&mut hold), Some(Tick::Every(WOKEN_TICK_MS)), "woken: the tick only ends holds");
        assert!(hold.take_due(&store, 10).is_empty());
        publish(&mut store, "web", "10.0.0.2:80");
        assert_eq!(hold.take_due(&store, 20).len(), MAX_ANSWERS_PER_CALL, "a wake-up answers a tick's worth");
        assert_eq!(tick(&mut hold), Some(Tick::Every(HOLD_TICK_MS)), "the backlog is drained at the fast tick");
        assert_eq!(hold.take_due(&store, 30).len(), 1);
        assert_eq!(tick(&mut hold), Some(Tick::Stop), "nothing held");
        hold.hold(100, request(&["web"], "2"), 30_000);
        assert_eq!(tick(&mut hold), Some(Tick::Every(WOKEN_TICK_MS)));
        assert!(hold.is_ticking());
    }

    /// Counts reads.
    struct Counting(MemoryStore, std::cell::Cell<usize>);

    impl SharedStore for Counting {
        fn get(
            &self,
            key: &str,
        ) -> Result<crate::sansio::shared::store::Entry, crate::sansio::shared::store::StoreError> {
            self.1.set(self.1.get() + 1);
            self.0.get(key)
        }
        fn set(&mut self, k: &str, v: &[u8], cas: Option<u32>) -> Result<(), crate::sansio::shared::store::StoreError> {
            self.0.set(k, v, cas)
        }
    }

    #[test]
    fn an_idle_tick_reads_one_entry_however_many_requests_are_held() {
        let mut store = MemoryStore::new(StoreRules::Envoy);
        let mut hold = EdsHold::default();
        for i in 0..1000u32 {
            let name = format!("u{i}");
            publish(&mut store, &name, "10.0.0.1:80");
            hold.hold(i, request(&[name.as_str()], "1"), 30_000);
        }
        let counting = Counting(store, std::cell::Cell::new(0));
        assert_eq!(hold.take_due(&counting, 10).len(), 0);
        let first = counting.1.get();
        assert!(first >= 1000, "the first check reads every held request's version ({first})");
        for now in [20, 30, 40] {
            assert!(hold.take_due(&counting, now).is_empty());
        }
        assert_eq!(counting.1.get() - first, 3, "then one read per idle tick");
        let mut store = counting.0;
        publish(&mut store, "u7", "10.0.0.2:80");
        let due: Vec<u32> = hold.take_due(&store, 50).iter().map(|h| h.stream).collect();
        assert_eq!(due, [7]);
        let mut ended = 0;
        for _ in 0..100 {
            ended += hold.take_due(&store, 30_000).len();
        }
        assert_eq!(ended, 999, "the holds end");
    }
}
