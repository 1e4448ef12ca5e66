//! The life of an etcd Watch stream, for hosts with gRPC streams (Envoy).
//! One stream per etcd cluster carries the watch of every upstream on it,
//! told apart by `watch_id` (etcd multiplexes watches on a stream), so a
//! thousand upstreams cost etcd one stream per proxy, not a thousand. Each
//! message goes to that upstream's sync machine, whose adapter applies the
//! events to its member list when they follow on from what it read, and
//! reads again otherwise (`EtcdV3Adapter::watch`). Polling stays on as the
//! safety net, so a lost stream costs freshness, never correctness.

use crate::sansio::registry::etcd_watch::{decode_response, WatchMessage, WatchResponse};

/// What a message on the stream means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchNews {
    /// Watch `id` was created or saw events: its upstream polls now.
    Poll(u64),
    /// Not decodable: every upstream on the stream reads everything again.
    PollAll,
    /// etcd ended watch `id` alone (e.g. compaction): create it again.
    Canceled(u64),
    /// A progress notification.
    Nothing,
}
use crate::sansio::util::backoff::Backoff;

/// The life of the watch stream: open it, and reopen it with backoff when
/// it closes (etcd down, compaction, proxy restart of the cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchStream {
    phase: WatchPhase,
    failures: u32,
    backoff_max_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WatchPhase {
    Closed {
        retry_at: u64,
    },
    /// Open since `since`.
    Open {
        since: u64,
    },
}

/// The first reopen after a failed one waits this long; doubles per
/// consecutive failure up to `backoff_max_ms`.
const REOPEN_MS: u64 = 100;
/// A first reopen waits this little: not inside the close callback, where
/// Envoy's HTTP/2 pool still hands out the closing connection (the new
/// stream would fail in the same millisecond), but on the next tick.
const NEXT_TICK_MS: u64 = 1;
/// A stream open this long closed for a reason of the moment: reopen at once.
const STABLE_MS: u64 = 1_000;

impl WatchStream {
    pub fn new(backoff_max_ms: u64) -> Self {
        WatchStream { phase: WatchPhase::Closed { retry_at: 0 }, failures: 0, backoff_max_ms }
    }

    /// `true` when the host should open the stream now (it is then counted open).
    #[must_use]
    pub fn poll_open(&mut self, now: u64) -> bool {
        match self.phase {
            WatchPhase::Closed { retry_at } if now >= retry_at => {
                self.phase = WatchPhase::Open { since: now };
                true
            }
            _ => false,
        }
    }

    /// When a closed stream may be opened again; `None` while open.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.phase {
            WatchPhase::Closed { retry_at } => Some(retry_at),
            WatchPhase::Open { .. } => None,
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.phase, WatchPhase::Open { .. })
    }

    /// A message arrived: what it means for the watches on this stream.
    pub fn handle_message(&mut self, bytes: &[u8]) -> WatchNews {
        self.handle_decoded(&decode_response(bytes))
    }

    /// [`WatchStream::handle_message`] for a message already decoded (the
    /// poller hands the decoded events on to the upstream's machine).
    pub fn handle_decoded(&mut self, decoded: &Result<WatchResponse, String>) -> WatchNews {
        match decoded {
            // Created: poll once, to catch changes made while it was down.
            Ok(r @ WatchResponse { message: WatchMessage::Created | WatchMessage::Events(_), .. }) => {
                WatchNews::Poll(r.watch_id)
            }
            Ok(WatchResponse { message: WatchMessage::Other, .. }) => WatchNews::Nothing,
            Ok(WatchResponse { watch_id, message: WatchMessage::Canceled(reason), .. }) => {
                log::info!("etcd watch {watch_id} canceled ({reason}); creating it again");
                WatchNews::Canceled(*watch_id)
            }
            Err(e) => {
                log::warn!("etcd watch: undecodable message ({e}); reading every upstream on the stream again");
                WatchNews::PollAll
            }
        }
    }

    /// The stream closed or could not be opened. A stream that had lived
    /// for a while is reopened at once (etcd lost a member: another one
    /// takes it); one that keeps closing backs off.
    pub fn handle_closed(&mut self, now: u64) {
        if let WatchPhase::Open { since } = self.phase {
            if now.saturating_sub(since) >= STABLE_MS {
                self.failures = 0;
            }
        }
        self.failures = self.failures.saturating_add(1);
        let delay = match self.failures {
            1 => NEXT_TICK_MS,
            n => Backoff { base_ms: REOPEN_MS, max_ms: self.backoff_max_ms }.full(n - 1),
        };
        self.phase = WatchPhase::Closed { retry_at: now.saturating_add(delay) };
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn stream_reopens_at_once_then_with_backoff() {
        let mut w = WatchStream::new(4000);
        assert!(w.poll_open(0));
        assert!(!w.poll_open(1), "already open");
        assert_eq!(w.poll_timeout(), None);
        assert_eq!(w.handle_message(&[0x10, 0x03, 0x18, 0x01]), WatchNews::Poll(3), "created: poll once");
        w.handle_closed(10);
        assert!(!w.is_open());
        assert!(!w.poll_open(10), "not inside the close callback");
        assert!(w.poll_open(11), "the first close reopens on the next tick");
        w.handle_closed(20);
        assert_eq!(w.poll_timeout(), Some(120), "closed again within a second: 100 ms");
        assert!(!w.poll_open(119));
        assert!(w.poll_open(120));
        w.handle_closed(600);
        assert!(!w.poll_open(799));
        assert!(w.poll_open(800), "third failure: 200 ms");
        for _ in 0..10 {
            w.handle_closed(1601);
        }
        assert_eq!(w.poll_timeout(), Some(1601 + 4000), "capped at backoff_max_ms");
        assert!(w.poll_open(5601));
        // Open for more than a second: a close is news, not a failure run.
        w.handle_closed(7000);
        assert!(w.poll_open(7001), "a stable stream reopens on the next tick");
        assert_eq!(w.handle_message(&[0x10, 0x02, 0x20, 0x01]), WatchNews::Canceled(2), "one watch ended");
        assert!(w.is_open(), "the stream and its other watches stay");
        assert_eq!(w.handle_message(&[0x10, 0x01]), WatchNews::Nothing, "progress only: nothing to do");
        assert_eq!(w.handle_message(&[0x80]), WatchNews::PollAll);
    }
}
