//! The ZooKeeper side: one session for the whole bridge, one reader task
//! per mount.
//!
//! Each reader sets a persistent recursive watch (`addWatch`, ZooKeeper
//! 3.6+) on its mount path *before* it reads, so no change can fall
//! between a read and the watch: every change after the watch was set
//! produces an event, and every event is followed by a read of the znode
//! it names. Events of the mount path itself, and any reconnection, lead
//! to a full re-read. When the session expires the readers stop, a new
//! session is opened, the watches are set again and every mount is read
//! again in full. While there is no live session nothing is served (503).

use crate::config::MountConfig;
use crate::mount::{ChildRead, FullRead, MountState, Stamp};
use crate::state::{MountView, SessionView, Shared};
use futures::{FutureExt, StreamExt};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, Instant};
use zookeeper_client::{
    AddWatchMode, Client, Error as ZkError, EventType, PersistentWatcher, SessionState, WatchedEvent,
};

/// Reads in flight at once during a full read of a mount.
const READ_CONCURRENCY: usize = 256;

fn session_update(shared: &Shared, f: impl FnOnce(&mut SessionView)) {
    shared.session.send_modify(f);
}

/// Runs forever: opens a session, serves it until it ends, opens another.
pub async fn run(shared: Arc<Shared>) {
    let zk = shared.config.zookeeper.clone();
    let max_backoff = Duration::from_millis(zk.reconnect_backoff_max_ms);
    let mut backoff = Duration::from_millis(100).min(max_backoff);
    loop {
        session_update(&shared, |s| {
            s.live = false;
            s.session_id = None;
            s.state = "connecting".into();
        });
        shared.clear_lease();
        let mut connector = Client::connector()
            .with_session_timeout(Duration::from_millis(zk.session_timeout_ms))
            .with_connection_timeout(Duration::from_millis(zk.connection_timeout_ms));
        if let Some(auth) = &zk.auth {
            connector = connector.with_auth("digest", &auth.credentials());
        }
        let client = match connector.connect(&zk.connect).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot open a ZooKeeper session with {}: {e}; retrying in {backoff:?}", zk.connect);
                session_update(&shared, |s| s.state = format!("connecting (last attempt: {e})"));
                sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
                continue;
            }
        };
        backoff = Duration::from_millis(100).min(max_backoff);
        let ended = serve_session(&shared, client).await;
        tracing::warn!("ZooKeeper session ended: {ended}; opening a new one");
        sleep(Duration::from_millis(50)).await;
    }
}

fn session_hex(client: &Client) -> String {
    format!("0x{:x}", client.session_id().0)
}

/// Serves one session until it expires, is closed, or fails to
/// authenticate; returns why it ended.
async fn serve_session(shared: &Arc<Shared>, client: Client) -> String {
    let timeout_d = client.session_timeout();
    let lease = timeout_d * 2 / 3;
    let id = session_hex(&client);
    let user = shared.config.zookeeper.auth.as_ref().map(|a| a.user.clone());
    tracing::info!(
        "ZooKeeper session {id} open (timeout {} ms{})",
        timeout_d.as_millis(),
        user.as_ref().map(|u| format!(", digest user {u:?}")).unwrap_or_default()
    );
    shared.extend_lease(Instant::now() + lease);
    session_update(shared, |s| {
        s.live = true;
        s.generation += 1;
        s.session_id = Some(id.clone());
        s.state = "connected".into();
        s.timeout_ms = u64::try_from(timeout_d.as_millis()).unwrap_or(u64::MAX);
        s.sessions_opened += 1;
    });
    let mut tasks = JoinSet::new();
    for i in 0..shared.mounts.len() {
        tasks.spawn(run_mount(client.clone(), shared.clone(), i));
    }
    tasks.spawn(probe(client.clone(), shared.clone(), timeout_d / 3, lease));
    let mut states = client.state_watcher();
    let ended = loop {
        let state = tokio::select! {
            st = states.changed() => st,
            Some(done) = tasks.join_next() => {
                // A reader or the probe stopped. With the session over, that
                // is expected (its state is handled below); with the session
                // alive, only a bug does that: start over with a new session
                // (and full reads) rather than serve a mount nobody follows.
                if let Err(e) = &done {
                    if e.is_panic() {
                        tracing::error!("a ZooKeeper reader task panicked");
                    }
                }
                let terminal = |st: SessionState| {
                    matches!(st, SessionState::Expired | SessionState::Closed | SessionState::AuthFailed)
                };
                let now = client.state();
                if terminal(now) {
                    now
                } else {
                    // The state may arrive a moment after the reader saw it.
                    let wait_terminal = async {
                        loop {
                            let st = states.changed().await;
                            if terminal(st) {
                                return st;
                            }
                        }
                    };
                    match timeout(Duration::from_secs(1), wait_terminal).await {
                        Ok(st) => st,
                        Err(_) => break "a reader task stopped while the session was alive".to_string(),
                    }
                }
            }
        };
        match state {
            SessionState::SyncConnected => {
                tracing::info!("ZooKeeper session {id} reconnected; reading every mount again");
                shared.extend_lease(Instant::now() + lease);
                session_update(shared, |s| {
                    s.live = true;
                    s.generation += 1;
                    s.state = "connected".into();
                    s.reconnects += 1;
                });
            }
            SessionState::Disconnected => {
                tracing::warn!("ZooKeeper session {id} disconnected; answering 503 until it reconnects");
                session_update(shared, |s| {
                    s.live = false;
                    s.state = "disconnected".into();
                });
            }
            SessionState::ConnectedReadOnly => {
                tracing::warn!("ZooKeeper session {id} is on a read-only server; answering 503");
                session_update(shared, |s| {
                    s.live = false;
                    s.state = "read-only server".into();
                });
            }
            SessionState::Expired => {
                session_update(shared, |s| s.sessions_expired += 1);
                break format!("session {id} expired");
            }
            SessionState::AuthFailed => {
                let who = user.as_deref().unwrap_or("(none)");
                tracing::error!("ZooKeeper refused the digest credentials of user {who:?}");
                break "authentication failed".to_string();
            }
            SessionState::Closed => break format!("session {id} closed"),
        }
    };
    tasks.abort_all();
    shared.clear_lease();
    session_update(shared, |s| {
        s.live = false;
        s.session_id = None;
        s.state = ended.clone();
    });
    drop(client);
    ended
}

/// Extends the lease on every answered probe (an `exists` on `/`). When
/// the lease runs out (the server stopped answering but the connection
/// still looks open) the session is published as not live, so held
/// blocking queries answer 503 at once; the next answered probe makes it
/// live again, in a new generation (every mount is read again).
async fn probe(client: Client, shared: Arc<Shared>, every: Duration, lease: Duration) {
    let every = every.max(Duration::from_millis(100));
    let mut unresponsive = false;
    loop {
        sleep(every).await;
        let sent = Instant::now();
        match timeout(every, client.check_stat("/")).await {
            Ok(Ok(_)) => {
                shared.extend_lease(sent + lease);
                if unresponsive {
                    unresponsive = false;
                    tracing::info!("ZooKeeper answers again; reading every mount again");
                    session_update(&shared, |s| {
                        s.live = true;
                        s.generation += 1;
                        s.state = "connected".into();
                    });
                }
            }
            Ok(Err(e)) => tracing::debug!("ZooKeeper probe failed: {e}"),
            Err(_) => tracing::debug!("ZooKeeper probe unanswered after {every:?}"),
        }
        if !unresponsive && shared.lease_left_ms().unwrap_or(0) == 0 && shared.session.borrow().live {
            unresponsive = true;
            tracing::warn!("ZooKeeper has not answered for {} ms; answering 503", lease.as_millis());
            session_update(&shared, |s| {
                s.live = false;
                s.state = "unresponsive (probes unanswered)".into();
            });
        }
    }
}

fn publish(shared: &Shared, i: usize, state: &MountState, generation: u64, error: Option<String>) {
    if let Some(slot) = shared.mounts.get(i) {
        slot.view.send_replace(Arc::new(MountView { served: state.served(), generation, error }));
    }
}

/// The child of the mount path an event names: `Some(name)` for a direct
/// child, `None` for the mount path itself; deeper znodes are ignored.
pub fn event_target(mount_path: &str, event_path: &str) -> Option<Option<String>> {
    if event_path == mount_path {
        return Some(None);
    }
    let base = if mount_path == "/" { "" } else { mount_path };
    let rest = event_path.strip_prefix(base)?.strip_prefix('/')?;
    if rest.is_empty() || rest.contains('/') {
        return None;
    }
    Some(Some(rest.to_string()))
}

enum Wake {
    /// Read the whole mount again.
    Full,
    /// Read these children again.
    Children,
    Nothing,
    /// The session is over: stop (the watcher must not be polled again).
    Stop,
}

fn classify(cfg: &MountConfig, ev: &WatchedEvent, dirty: &mut BTreeSet<String>) -> Wake {
    match ev.event_type {
        EventType::Session => match ev.session_state {
            SessionState::Expired | SessionState::Closed | SessionState::AuthFailed => Wake::Stop,
            _ => Wake::Full,
        },
        _ => match event_target(&cfg.path, &ev.path) {
            Some(None) => Wake::Full,
            Some(Some(name)) => {
                dirty.insert(name);
                Wake::Children
            }
            None => Wake::Nothing,
        },
    }
}

fn read_error(path: &str, e: &ZkError) -> (String, bool) {
    match e {
        ZkError::NoAuth => (
            format!(
                "ZooKeeper refuses to let the bridge read {path} (NoAuth): check zookeeper.auth and the path's ACL"
            ),
            true,
        ),
        other => (format!("reading {path} failed: {other}"), false),
    }
}

async fn read_children(client: &Client, state: &MountState, names: Vec<String>) -> Result<Vec<ChildRead>, ZkError> {
    let reads = names.into_iter().map(|name| {
        let fut = client.get_data(&state.child_path(&name));
        async move { (name, fut.await) }
    });
    let results: Vec<_> = futures::stream::iter(reads).buffer_unordered(READ_CONCURRENCY).collect().await;
    let mut out = Vec::with_capacity(results.len());
    for (name, r) in results {
        match r {
            Ok((data, stat)) => out.push((name, Some((data, Stamp::new(stat.czxid, stat.mzxid))))),
            Err(ZkError::NoNode) => out.push((name, None)),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

enum Full {
    Read(FullRead),
    TooMany(usize),
}

async fn read_full(client: &Client, cfg: &MountConfig, state: &MountState) -> Result<Full, ZkError> {
    let Some(stat) = client.check_stat(&cfg.path).await? else {
        return Ok(Full::Read(FullRead { root: None, children: Vec::new() }));
    };
    let n = usize::try_from(stat.num_children).unwrap_or(0);
    if n > cfg.max_znodes {
        return Ok(Full::TooMany(n));
    }
    let (names, stat) = match client.get_children(&cfg.path).await {
        Ok(r) => r,
        Err(ZkError::NoNode) => return Ok(Full::Read(FullRead { root: None, children: Vec::new() })),
        Err(e) => return Err(e),
    };
    if names.len() > cfg.max_znodes {
        return Ok(Full::TooMany(names.len()));
    }
    let children = read_children(client, state, names).await?;
    Ok(Full::Read(FullRead { root: Some((stat.czxid, stat.mzxid, stat.pzxid)), children }))
}

/// Sets the mount's persistent recursive watch.
async fn add_watch(client: &Client, cfg: &MountConfig) -> Result<PersistentWatcher, (String, bool)> {
    match client.watch(&cfg.path, AddWatchMode::PersistentRecursive).await {
        Ok(w) => Ok(w),
        Err(e @ (ZkError::SessionExpired | ZkError::ClientClosed)) => Err((e.to_string(), true)),
        Err(ZkError::NoAuth) => Err((read_error(&cfg.path, &ZkError::NoAuth).0, false)),
        Err(e) => Err((format!("cannot watch {} (addWatch needs ZooKeeper 3.6 or later): {e}", cfg.path), false)),
    }
}

/// One mount's reader for the life of one session.
async fn run_mount(client: Client, shared: Arc<Shared>, i: usize) {
    let Some(slot) = shared.mounts.get(i) else { return };
    let cfg = slot.config.clone();
    let mut session = shared.session.subscribe();
    let mut state = MountState::new(cfg.clone());
    // Start from what was served before (a previous session), so the
    // index keeps growing across sessions.
    let previous = slot.view.borrow().clone();
    state.resume_from(&previous.served);
    let mut watcher: Option<PersistentWatcher> = None;
    // The session generation the watch was set in. zookeeper-client 0.11
    // does not restore persistent watches when it reconnects (its
    // SetWatches request leaves them out), so after every reconnection the
    // watch is set again, before the full read.
    let mut watched_generation = 0;
    let mut full = true;
    let mut dirty: BTreeSet<String> = BTreeSet::new();
    let mut synced_generation = 0;
    let mut retry_after: Option<Instant> = None;
    loop {
        let (live, generation) = {
            let s = session.borrow_and_update();
            (s.live, s.generation)
        };
        let due = retry_after.is_none_or(|t| Instant::now() >= t);
        if live && due {
            retry_after = None;
            if watched_generation != generation {
                match add_watch(&client, &cfg).await {
                    Ok(w) => {
                        // Dropping the previous watcher removes nothing on
                        // the server: the new one watches the same path.
                        watcher = Some(w);
                        watched_generation = generation;
                        full = true;
                    }
                    Err((why, true)) => {
                        tracing::debug!(mount = %cfg.path, "reader stops: {why}");
                        return;
                    }
                    Err((why, false)) => {
                        tracing::warn!(mount = %cfg.path, "{why}; trying again");
                        publish(&shared, i, &state, generation, Some(why));
                        retry_after = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
            }
        }
        if live && retry_after.is_none() {
            let need_full = full || synced_generation != generation || state.needs_full_read();
            let result = if need_full {
                // Events from now on are re-read after this full read.
                dirty.clear();
                read_full(&client, &cfg, &state).await.map(|r| {
                    match r {
                        Full::Read(read) => state.apply_full(read),
                        Full::TooMany(n) => state.set_too_many(n),
                    }
                    full = false;
                    synced_generation = generation;
                })
            } else if !dirty.is_empty() {
                let names: Vec<String> = std::mem::take(&mut dirty).into_iter().collect();
                read_children(&client, &state, names).await.map(|reads| state.apply_children(reads))
            } else {
                Ok(())
            };
            match result {
                Ok(()) => publish(&shared, i, &state, synced_generation, None),
                Err(e @ (ZkError::SessionExpired | ZkError::ClientClosed)) => {
                    tracing::debug!(mount = %cfg.path, "reader stops: {e}");
                    return;
                }
                Err(e) => {
                    let (why, permanent) = read_error(&cfg.path, &e);
                    // Published for the current generation: this is what
                    // the mount is now (never served: refused or an error).
                    if permanent {
                        state.set_refused(why);
                        publish(&shared, i, &state, generation, None);
                    } else {
                        tracing::warn!(mount = %cfg.path, "{why}; reading again");
                        publish(&shared, i, &state, generation, Some(why));
                    }
                    full = true;
                    retry_after = Some(Instant::now() + Duration::from_millis(500));
                }
            }
        }
        // Wait for an event, a session change, or the retry time.
        let retry = async {
            match retry_after {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let event = async {
            match watcher.as_mut() {
                Some(w) => w.changed().await,
                None => std::future::pending().await,
            }
        };
        let first = tokio::select! {
            ev = event => Some(ev),
            r = session.changed() => {
                if r.is_err() {
                    return;
                }
                None
            }
            () = retry => None,
        };
        let mut next = first;
        // Take every event already queued, so a burst is read in one go.
        while let Some(ev) = next.take() {
            match classify(&cfg, &ev, &mut dirty) {
                Wake::Stop => return,
                Wake::Full => full = true,
                Wake::Children | Wake::Nothing => {}
            }
            next = watcher.as_mut().and_then(|w| w.changed().now_or_never());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_map_to_children_of_the_mount() {
        assert_eq!(event_target("/services/web", "/services/web"), Some(None));
        assert_eq!(event_target("/services/web", "/services/web/abc"), Some(Some("abc".into())));
        assert_eq!(event_target("/services/web", "/services/web/abc/deeper"), None);
        assert_eq!(event_target("/services/web", "/services/webx/abc"), None);
        assert_eq!(event_target("/", "/abc"), Some(Some("abc".into())));
        assert_eq!(event_target("/", "/"), Some(None));
        assert_eq!(event_target("/", "/a/b"), None);
    }
}
