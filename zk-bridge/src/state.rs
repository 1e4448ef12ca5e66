//! What the ZooKeeper side publishes and the HTTP side reads.

use crate::config::{Config, MountConfig};
use crate::mount::Served;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::time::Instant;

/// The bridge's one ZooKeeper session, as the HTTP side sees it.
#[derive(Debug, Clone, Default)]
pub struct SessionView {
    /// Connected to a server of the ensemble, in a valid session.
    pub live: bool,
    /// Moves on every new session and every reconnection: a mount's data
    /// is served only once it was read again in the current generation
    /// (events during a disconnection may be lost: ZOOKEEPER-4698).
    pub generation: u64,
    /// `0x…` while a session exists. Not a secret (the session password is).
    pub session_id: Option<String>,
    /// Human-readable state: connecting, connected, disconnected, ...
    pub state: String,
    pub timeout_ms: u64,
    pub sessions_opened: u64,
    pub sessions_expired: u64,
    pub reconnects: u64,
}

/// One mount as last published by its reader task.
#[derive(Debug, Clone)]
pub struct MountView {
    pub served: Served,
    /// The session generation this data was read in (0: never read).
    pub generation: u64,
    /// The last read failed (connection loss, ...); cleared by a good read.
    pub error: Option<String>,
}

pub struct MountSlot {
    pub config: MountConfig,
    pub view: watch::Sender<Arc<MountView>>,
}

pub struct Shared {
    pub config: Config,
    pub session: watch::Sender<SessionView>,
    /// Until when the session is known to be alive: the send time of the
    /// last answered probe plus two thirds of the session timeout. Past it
    /// nothing is served, even if the client library still believes it is
    /// connected (a stopped server, a stopped bridge process).
    lease_until: Mutex<Option<Instant>>,
    pub mounts: Vec<MountSlot>,
}

impl Shared {
    pub fn new(config: Config) -> Arc<Self> {
        let mounts = config
            .mounts
            .iter()
            .map(|m| {
                let state = crate::mount::MountState::new(m.clone());
                let view = MountView { served: state.served(), generation: 0, error: None };
                MountSlot { config: m.clone(), view: watch::Sender::new(Arc::new(view)) }
            })
            .collect();
        Arc::new(Shared {
            config,
            session: watch::Sender::new(SessionView { state: "starting".into(), ..Default::default() }),
            lease_until: Mutex::new(None),
            mounts,
        })
    }

    pub fn extend_lease(&self, until: Instant) {
        if let Ok(mut l) = self.lease_until.lock() {
            if l.is_none_or(|cur| cur < until) {
                *l = Some(until);
            }
        }
    }

    pub fn clear_lease(&self) {
        if let Ok(mut l) = self.lease_until.lock() {
            *l = None;
        }
    }

    /// Milliseconds left on the lease (None: no lease).
    pub fn lease_left_ms(&self) -> Option<u64> {
        let l = self.lease_until.lock().ok().and_then(|l| *l)?;
        let left = l.saturating_duration_since(Instant::now());
        Some(u64::try_from(left.as_millis()).unwrap_or(u64::MAX))
    }

    /// Ok when `view` may be served as fresh; otherwise why not (the
    /// text of the 503 answer).
    pub fn freshness(&self, view: &MountView) -> Result<(), String> {
        let s = self.session.borrow();
        if !s.live {
            return Err(format!("no live ZooKeeper session ({})", s.state));
        }
        if self.lease_left_ms().unwrap_or(0) == 0 {
            return Err("ZooKeeper has not answered the bridge's probes lately; its data may be stale".into());
        }
        if let Some(e) = &view.error {
            return Err(e.clone());
        }
        if view.generation != s.generation {
            return Err("not yet read again since the ZooKeeper session (re)connected".into());
        }
        if let Some(r) = &view.served.refused {
            return Err(r.clone());
        }
        Ok(())
    }
}
