//! One table of deadlines for everything a poller waits on (each
//! upstream's sync machine, lease and watch stream), so that a tick does
//! work only for what is due: O(due · log n), not O(upstreams).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    /// The sync machine's next call, backoff end or call deadline.
    Sync = 0,
    /// The next lease renewal or takeover check (nginx).
    Lease = 1,
    /// The next reopen of a closed etcd watch stream (one per etcd target).
    Watch = 2,
    /// A `discover[]` entry's next listing call or call deadline.
    Discover = 3,
    /// A `discover[]` entry's lease renewal or takeover check, and (on a
    /// follower) its next look at the leader's listing (nginx).
    DiscoverLease = 4,
}

const KINDS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timer {
    /// The upstream (`Sync`, `Lease`), the watch stream (`Watch`) or the
    /// `discover[]` entry (`Discover`, `DiscoverLease`).
    pub index: usize,
    pub kind: TimerKind,
}

/// At most one deadline per [`Timer`]. A min-heap of deadlines with lazy
/// removal: re-arming pushes a new entry and leaves the old one to be
/// dropped when it surfaces, so every operation is O(log n). The top of
/// the heap is always a live entry, so [`TimerTable::next`] is exact.
#[derive(Debug, Default)]
pub struct TimerTable {
    heap: BinaryHeap<Reverse<(u64, Timer)>>,
    /// Per upstream, the armed deadline of each [`TimerKind`].
    armed: Vec<[Option<u64>; KINDS]>,
    live: usize,
}

fn live_in(armed: &[[Option<u64>; KINDS]], at: u64, timer: Timer) -> bool {
    armed.get(timer.index).and_then(|a| a.get(timer.kind as usize)).is_some_and(|d| *d == Some(at))
}

impl TimerTable {
    fn slot(&mut self, timer: Timer) -> Option<&mut Option<u64>> {
        if self.armed.len() <= timer.index {
            self.armed.resize(timer.index + 1, [None; KINDS]);
        }
        self.armed.get_mut(timer.index)?.get_mut(timer.kind as usize)
    }

    fn is_live(&self, at: u64, timer: Timer) -> bool {
        live_in(&self.armed, at, timer)
    }

    /// Drops stale entries from the top, and compacts the heap when stale
    /// entries outnumber live ones.
    fn clean(&mut self) {
        while let Some(&Reverse((at, timer))) = self.heap.peek() {
            if self.is_live(at, timer) {
                break;
            }
            self.heap.pop();
        }
        if self.heap.len() > 2 * self.live + 64 {
            let armed = &self.armed;
            self.heap.retain(|Reverse((at, timer))| live_in(armed, *at, *timer));
        }
    }

    /// Arms `timer` at `deadline`, or disarms it with `None`.
    pub fn set(&mut self, timer: Timer, deadline: Option<u64>) {
        let Some(slot) = self.slot(timer) else {
            return;
        };
        let old = std::mem::replace(slot, deadline);
        if old == deadline {
            return;
        }
        match (old, deadline) {
            (None, Some(_)) => self.live += 1,
            (Some(_), None) => self.live = self.live.saturating_sub(1),
            _ => {}
        }
        if let Some(at) = deadline {
            self.heap.push(Reverse((at, timer)));
        }
        self.clean();
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes one timer due at `now` (disarmed as it is taken).
    pub fn pop_due(&mut self, now: u64) -> Option<Timer> {
        let &Reverse((at, timer)) = self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        if let Some(slot) = self.slot(timer) {
            *slot = None;
        }
        self.live = self.live.saturating_sub(1);
        self.clean();
        Some(timer)
    }

    /// How many timers are armed.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn t(upstream: usize, kind: TimerKind) -> Timer {
        Timer { index: upstream, kind }
    }

    #[test]
    fn pops_only_what_is_due_in_deadline_order() {
        let mut table = TimerTable::default();
        table.set(t(0, TimerKind::Sync), Some(300));
        table.set(t(1, TimerKind::Sync), Some(100));
        table.set(t(1, TimerKind::Lease), Some(200));
        assert_eq!(table.next(), Some(100));
        assert_eq!(table.pop_due(99), None);
        assert_eq!(table.pop_due(250), Some(t(1, TimerKind::Sync)));
        assert_eq!(table.pop_due(250), Some(t(1, TimerKind::Lease)));
        assert_eq!(table.pop_due(250), None);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn rearming_moves_a_timer_and_none_disarms_it() {
        let mut table = TimerTable::default();
        let sync = t(0, TimerKind::Sync);
        table.set(sync, Some(100));
        table.set(sync, Some(500));
        assert_eq!(table.len(), 1, "one deadline per timer");
        assert_eq!(table.pop_due(400), None);
        table.set(sync, Some(500));
        table.set(sync, None);
        assert!(table.is_empty());
        assert_eq!(table.next(), None);
    }

    #[test]
    fn many_rearms_keep_the_heap_small_and_the_top_exact() {
        let mut table = TimerTable::default();
        for round in 0..1000u64 {
            for u in 0..10 {
                table.set(t(u, TimerKind::Sync), Some(1_000 + round * 10 + u as u64));
            }
        }
        assert_eq!(table.len(), 10);
        assert!(table.heap.len() <= 2 * 10 + 64 + 1, "{} entries", table.heap.len());
        assert_eq!(table.next(), Some(1_000 + 999 * 10));
        let due: Vec<usize> = std::iter::from_fn(|| table.pop_due(u64::MAX)).map(|t| t.index).collect();
        assert_eq!(due, (0..10).collect::<Vec<_>>());
    }
}
