//! The poller: every upstream's [`SyncMachine`] on one [`TimerTable`], who
//! may poll (leadership), which registry address to use (failover), etcd
//! watch streams, and what gets written to shared data.
//!
//! - Envoy runs one poller per process ([`Leadership::Singleton`]).
//! - nginx runs one per worker; the workers elect one leader per upstream
//!   through a lease in shared data ([`Leadership::Lease`]), so the
//!   registry sees one poller per nginx instance, not one per worker.
//!
//! Call order, like [`SyncMachine`]'s: feed an input (`handle_*`), then
//! drain [`Poller::poll_action`] (carry each out), then [`Poller::flush`]
//! (the only place snapshots and status records are written). A host
//! ticks on a fixed period and calls [`Poller::handle_timeout`] only when
//! [`Poller::poll_timeout`] is due: an idle tick costs one comparison, and
//! a due one touches only the upstreams whose deadlines passed.

use crate::sansio::config::{DiscoverConfig, HostKind, PluginConfig, RegistryConfig, UpstreamConfig, MAX_UPSTREAMS};
use crate::sansio::model::update::Source;
use crate::sansio::registry::etcd_v2::V2Event;
use crate::sansio::registry::etcd_watch;
use crate::sansio::registry::listing::ChildMark;
use crate::sansio::registry::{adapter_for, ChildKeys, HttpRequest, HttpResponse, ParentNews};
use crate::sansio::shared::keys::{cds_key, discovered_key};
use crate::sansio::shared::lease::{self, Election};
use crate::sansio::shared::names;
use crate::sansio::shared::snapshot::{self, PublishOutcome};
use crate::sansio::shared::status::{self, discovery_status_key, DiscoveryRecord, StatusRecord, SyncStats};
use crate::sansio::shared::store::SharedStore;
use crate::sansio::sync::discovery::{DiscoveryEvent, ListingMachine};
use crate::sansio::sync::machine::{SyncConfig, SyncEvent, SyncMachine};
use crate::sansio::sync::timers::{Timer, TimerKind, TimerTable};
use crate::sansio::sync::watch::{WatchNews, WatchStream};
use crate::sansio::util::text::clip;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Who polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// This poller is the only one (Envoy's bootstrap singleton).
    Singleton,
    /// Workers compete for a lease per upstream; `me` must be unique.
    Lease { me: u64, ttl_ms: u64 },
}

/// `Dispatch::upstream` of the listing calls of `discover[d]` is
/// `DISCOVERY_CALLER + d`: far above any upstream index, even on 32 bits.
pub const DISCOVERY_CALLER: usize = usize::MAX / 2;

/// A registry call for the host to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// Who asked: an upstream index, or [`DISCOVERY_CALLER`] + a
    /// `discover[]` entry. The host hands it back with the answer.
    pub upstream: usize,
    pub id: u64,
    /// Envoy cluster name, or an nginx `ip:port` / `unix:` address.
    pub target: String,
    pub authority: String,
    pub request: HttpRequest,
    pub timeout_ms: u64,
}

/// An etcd Watch stream for the host to open (gRPC hosts only), and the
/// watch creations to send on it, one per upstream on that etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenWatch {
    pub stream: usize,
    pub target: String,
    pub service: &'static str,
    pub method: &'static str,
    pub messages: Vec<Vec<u8>>,
}

/// What the host must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Dispatch(Dispatch),
    OpenWatch(OpenWatch),
    /// Send `message` on the open watch stream `stream` (a watch etcd
    /// canceled, created again).
    SendWatch {
        stream: usize,
        message: Vec<u8>,
    },
}

/// One etcd Watch stream and the upstreams it carries: upstream `i` is
/// watch id `i + 1`.
struct WatchSlot {
    target: String,
    stream: WatchStream,
    upstreams: Vec<usize>,
}

/// This worker's part in an upstream's polling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Leading,
    Following,
}

/// When a lease is unreadable, how soon to look again.
const LEASE_RETRY_MS: u64 = 100;

/// How often a worker that does not list a `discover[]` entry reads the
/// leader's listing.
const FOLLOWER_LOOK_MS: u64 = 1_000;

struct Upstream {
    /// The `discover[]` entry that found it (its lease decides who polls it on nginx).
    group: Option<usize>,
    /// Found by `discover[]` and gone from the registry since: no timers,
    /// not in the index. Its index (and etcd watch id) stays reserved, so a
    /// name that comes back gets it again.
    retired: bool,
    registry: RegistryConfig,
    machine: SyncMachine,
    /// The watch stream (index into `Poller::watches`) this upstream's watch is on.
    watch: Option<usize>,
    /// Index into `registry.targets` of the address in use.
    target: usize,
    part: Part,
    /// A new member list waits for [`Poller::flush`].
    unpublished: bool,
    /// The status record waits for [`Poller::flush`].
    status_stale: bool,
    /// Listed in [`Poller::dirty`].
    queued: bool,
    /// What the last etcd v3 listing of its `discover[]` parent said of it.
    mark: Option<ChildMark>,
    /// Its `discover[]` parent reads and watches its members for it (etcd
    /// v2): it makes no calls of its own.
    fed: bool,
    /// A hash of the keys the parent's last full read handed it (none
    /// since a change came through the watch): an unchanged child of a
    /// full read is not read again, as the etcd v3 listing's marks do.
    fed_print: Option<u64>,
}

/// One `discover[]` entry: its listing machine and what it found.
struct Discovery {
    config: DiscoverConfig,
    machine: ListingMachine,
    /// Index into `config.registry.targets` of the address in use.
    target: usize,
    part: Part,
    /// The leader's listing waits for [`Poller::flush`] (nginx followers read it).
    unwritten: bool,
    /// The status record waits for [`Poller::flush`].
    status_stale: bool,
    /// nginx followers: the cas of the leader's listing they last adopted.
    listing_seen: Option<u32>,
}

pub struct Poller {
    upstreams: Vec<Upstream>,
    /// Every upstream's index by name, retired ones included.
    by_name: HashMap<String, usize>,
    discoveries: Vec<Discovery>,
    /// The CDS list (every live upstream found by `discover[]`) waits for flush.
    cds_stale: bool,
    watches: Vec<WatchSlot>,
    leadership: Leadership,
    host: HostKind,
    /// Seeds the jitter of every upstream's machine.
    seed: u64,
    timers: TimerTable,
    /// Carried out in any order: each stands alone.
    actions: Vec<Action>,
    /// Upstreams with something for [`Poller::flush`], each once.
    dirty: Vec<usize>,
    index_written: bool,
    /// Flushes that published anything, so far.
    publishes: u64,
    /// The host's last report of this VM's linear memory, and what was written.
    memory: Option<u64>,
    memory_written: Option<u64>,
}

/// The poller's memory is rewritten when it moved by this much.
const MEMORY_REPORT_STEP: u64 = 64 * 1024;

impl Poller {
    pub fn new(config: &PluginConfig, leadership: Leadership, seed: u64) -> Self {
        let part = if leadership == Leadership::Singleton { Part::Leading } else { Part::Following };
        let discoveries = config
            .discover
            .iter()
            .zip(1u64..)
            .map(|(d, i)| Discovery {
                config: d.clone(),
                machine: ListingMachine::new(d, seed ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03)),
                target: 0,
                part,
                unwritten: false,
                status_stale: true,
                listing_seen: None,
            })
            .collect();
        let mut poller = Poller {
            upstreams: Vec::with_capacity(config.upstreams.len()),
            by_name: HashMap::with_capacity(config.upstreams.len()),
            discoveries,
            cds_stale: false,
            watches: Vec::new(),
            leadership,
            host: config.host,
            seed,
            timers: TimerTable::default(),
            actions: Vec::new(),
            dirty: Vec::new(),
            index_written: false,
            publishes: 0,
            memory: None,
            memory_written: None,
        };
        for u in &config.upstreams {
            poller.add_upstream(u, None, 0);
        }
        for d in 0..poller.discoveries.len() {
            let kind = if leadership == Leadership::Singleton { TimerKind::Discover } else { TimerKind::DiscoverLease };
            poller.timers.set(Timer { index: d, kind }, Some(0));
        }
        poller
    }

    /// Adds (or, for a retired name, brings back) the upstream `cfg`,
    /// found by `discover[group]` or listed in the configuration. Its first
    /// poll is due at `now`. `None` when the name is taken or the poller is full.
    fn add_upstream(&mut self, cfg: &UpstreamConfig, group: Option<usize>, now: u64) -> Option<usize> {
        let seed = self.seed;
        let machine = |i: usize| {
            let i = u64::try_from(i).unwrap_or(u64::MAX);
            SyncMachine::new(
                SyncConfig::from(cfg),
                adapter_for(&cfg.registry.spec),
                seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            )
        };
        let part = match group {
            Some(d) => self.discoveries.get(d).map_or(Part::Following, |d| d.part),
            None if self.leadership == Leadership::Singleton => Part::Leading,
            None => Part::Following,
        };
        let fed = group.and_then(|d| self.discoveries.get(d)).is_some_and(|d| d.machine.feeds_children());
        let i = match self.by_name.get(&cfg.name) {
            Some(&i) => {
                let u = self.upstreams.get_mut(i)?;
                if !u.retired || u.group != group {
                    return None;
                }
                u.retired = false;
                u.mark = None;
                u.machine = machine(i);
                u.registry = cfg.registry.clone();
                u.part = part;
                u.fed = fed;
                u.fed_print = None;
                i
            }
            None => {
                if self.upstreams.len() >= MAX_UPSTREAMS {
                    return None;
                }
                let i = self.upstreams.len();
                self.upstreams.push(Upstream {
                    group,
                    retired: false,
                    watch: None,
                    registry: cfg.registry.clone(),
                    machine: machine(i),
                    target: 0,
                    part,
                    unpublished: false,
                    status_stale: true,
                    queued: false,
                    mark: None,
                    fed,
                    fed_print: None,
                });
                self.by_name.insert(cfg.name.clone(), i);
                self.join_watch(i, cfg, now);
                i
            }
        };
        self.index_written = false;
        if let Some(u) = self.upstreams.get_mut(i) {
            u.status_stale = true;
            u.queue(&mut self.dirty, i);
        }
        match (group, self.leadership) {
            // Explicit upstreams on nginx elect their own poller.
            (None, Leadership::Lease { .. }) => self.timers.set(Timer { index: i, kind: TimerKind::Lease }, Some(now)),
            _ if part == Part::Leading && !fed => self.timers.set(Timer { index: i, kind: TimerKind::Sync }, Some(now)),
            _ => {}
        }
        Some(i)
    }

    /// Puts upstream `i` on the watch stream of its etcd gRPC target (one
    /// stream per target); an open stream gets the new watch at once.
    fn join_watch(&mut self, i: usize, cfg: &UpstreamConfig, now: u64) {
        let Some(target) = cfg.registry.spec.grpc_target() else {
            return;
        };
        let slot = match self.watches.iter().position(|w| w.target == target) {
            Some(slot) => slot,
            None => {
                let stream = WatchStream::new(cfg.backoff_max_ms);
                self.watches.push(WatchSlot { target: target.to_string(), stream, upstreams: Vec::new() });
                let slot = self.watches.len() - 1;
                self.timers.set(Timer { index: slot, kind: TimerKind::Watch }, Some(now));
                slot
            }
        };
        if let Some(w) = self.watches.get_mut(slot) {
            w.upstreams.push(i);
            let id = u64::try_from(i).ok().and_then(|i| i.checked_add(1));
            if let (true, Some(id), Some(prefix)) = (w.stream.is_open(), id, cfg.registry.spec.prefix()) {
                self.actions.push(Action::SendWatch { stream: slot, message: etcd_watch::create_request(prefix, id) });
            }
        }
        if let Some(u) = self.upstreams.get_mut(i) {
            u.watch = Some(slot);
        }
    }

    /// Stops polling a found upstream that left the registry.
    fn retire(&mut self, i: usize) {
        let Some(u) = self.upstreams.get_mut(i) else {
            return;
        };
        u.retired = true;
        u.unpublished = false;
        self.index_written = false;
        self.timers.set(Timer { index: i, kind: TimerKind::Sync }, None);
        self.timers.set(Timer { index: i, kind: TimerKind::Lease }, None);
    }

    pub fn name(&self, upstream: usize) -> &str {
        if upstream >= DISCOVERY_CALLER {
            return "(discover)";
        }
        self.upstreams.get(upstream).map_or("", |u| u.machine.name())
    }

    /// The largest registry body to read for `upstream`.
    pub fn max_body_bytes(&self, upstream: usize) -> usize {
        if let Some(d) = upstream.checked_sub(DISCOVERY_CALLER) {
            return self.discoveries.get(d).map_or(0, |d| d.config.max_body_bytes);
        }
        self.upstreams.get(upstream).map_or(0, |u| u.machine.max_body_bytes())
    }

    /// The earliest deadline; `handle_timeout` before it does nothing.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.next()
    }

    /// How many deadlines are armed (for tests and benchmarks).
    pub fn armed_timers(&self) -> usize {
        self.timers.len()
    }

    /// Fires the deadlines due at `now`: elections, given-up calls, due
    /// polls, watch reopens. Elections read and write the lease in `store`.
    pub fn handle_timeout(&mut self, store: &mut dyn SharedStore, now: u64) {
        while let Some(timer) = self.timers.pop_due(now) {
            let i = timer.index;
            match timer.kind {
                TimerKind::Lease => self.elect(store, i, now),
                TimerKind::Sync => {
                    if let Some(u) = self.upstreams.get_mut(i) {
                        u.machine.handle_timeout(now);
                    }
                }
                TimerKind::Watch => {
                    self.drive_watch(i, now);
                    continue;
                }
                TimerKind::Discover => {
                    if let Some(d) = self.discoveries.get_mut(i) {
                        d.machine.handle_timeout(now);
                    }
                    self.drive_discovery(i, now);
                    continue;
                }
                TimerKind::DiscoverLease => {
                    self.elect_discovery(store, i, now);
                    continue;
                }
            }
            self.drive(i, now);
        }
    }

    /// An answer to call `id` of `upstream`.
    pub fn handle_response(&mut self, now: u64, upstream: usize, id: u64, response: HttpResponse<'_>) {
        if let Some(d) = upstream.checked_sub(DISCOVERY_CALLER) {
            if let Some(entry) = self.discoveries.get_mut(d) {
                if entry.part == Part::Leading {
                    entry.machine.handle_response(now, id, response);
                }
            }
            self.drive_discovery(d, now);
            return;
        }
        if let Some(u) = self.upstreams.get_mut(upstream) {
            // A worker that lost the lease meanwhile leaves the answer to the new leader.
            if u.part == Part::Leading {
                u.machine.handle_response(now, id, response);
            }
        }
        self.drive(upstream, now);
    }

    /// The host could not send call `id` of `upstream`.
    pub fn handle_dispatch_failed(&mut self, now: u64, upstream: usize, id: u64, reason: &str) {
        if let Some(d) = upstream.checked_sub(DISCOVERY_CALLER) {
            if let Some(entry) = self.discoveries.get_mut(d) {
                entry.machine.handle_dispatch_failed(now, id, reason);
            }
            self.drive_discovery(d, now);
            return;
        }
        if let Some(u) = self.upstreams.get_mut(upstream) {
            u.machine.handle_dispatch_failed(now, id, reason);
        }
        self.drive(upstream, now);
    }

    /// A message on watch stream `stream`.
    pub fn handle_watch_message(&mut self, now: u64, stream: usize, message: &[u8]) {
        let Some(slot) = self.watches.get_mut(stream) else {
            return;
        };
        let on_stream = |id: u64| usize::try_from(id).ok().and_then(|id| id.checked_sub(1));
        let decoded = etcd_watch::decode_response(message);
        // The upstreams the message is for; `None`: undecodable, for every upstream on the stream.
        let (targets, response) = match (slot.stream.handle_decoded(&decoded), decoded.as_ref().ok()) {
            (WatchNews::Poll(id) | WatchNews::Canceled(id), Some(r)) => {
                let upstream = on_stream(id).filter(|i| slot.upstreams.contains(i));
                let prefix = upstream.and_then(|i| self.upstreams.get(i)).and_then(|u| u.registry.spec.prefix());
                if let (Some(prefix), etcd_watch::WatchMessage::Canceled(_)) = (prefix, &r.message) {
                    self.actions.push(Action::SendWatch { stream, message: etcd_watch::create_request(prefix, id) });
                }
                (upstream.into_iter().collect(), Some(r))
            }
            (WatchNews::PollAll, _) => (slot.upstreams.clone(), None),
            _ => (Vec::new(), None),
        };
        for i in targets {
            if let Some(u) = self.upstreams.get_mut(i) {
                match response {
                    Some(r) => u.machine.handle_watch(now, r),
                    None => u.machine.handle_watch_ended(now, true),
                }
            }
            self.drive(i, now);
        }
    }

    /// Watch stream `stream` closed, or could not be opened.
    pub fn handle_watch_closed(&mut self, now: u64, stream: usize) {
        let Some(slot) = self.watches.get_mut(stream) else {
            return;
        };
        slot.stream.handle_closed(now);
        for &i in &slot.upstreams {
            if let Some(u) = self.upstreams.get_mut(i) {
                u.machine.handle_watch_ended(now, false);
                u.status_stale = true;
                u.queue(&mut self.dirty, i);
            }
        }
        self.drive_watch(stream, now);
    }

    /// Opens watch stream `stream` when it is due, with a watch for every
    /// upstream on it, and re-arms its timer.
    fn drive_watch(&mut self, stream: usize, now: u64) {
        let Some(slot) = self.watches.get_mut(stream) else {
            return;
        };
        if slot.stream.poll_open(now) {
            let messages = slot
                .upstreams
                .iter()
                .filter_map(|&i| {
                    let u = self.upstreams.get_mut(i)?;
                    u.status_stale = true;
                    u.queue(&mut self.dirty, i);
                    let id = u64::try_from(i).ok()?.checked_add(1)?;
                    Some(etcd_watch::create_request(u.registry.spec.prefix()?, id))
                })
                .collect();
            self.actions.push(Action::OpenWatch(OpenWatch {
                stream,
                target: slot.target.clone(),
                service: etcd_watch::SERVICE,
                method: etcd_watch::METHOD,
                messages,
            }));
        }
        self.timers.set(Timer { index: stream, kind: TimerKind::Watch }, slot.stream.poll_timeout());
    }

    /// The host's measure of this VM's linear memory (wasm pages × 64 KiB),
    /// shown by the status endpoint.
    pub fn handle_memory(&mut self, bytes: u64) {
        self.memory = Some(bytes);
    }

    /// The next thing for the host to do.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop()
    }

    /// How many flushes published a member list so far: a host with picks
    /// in the same instance refreshes them when it moves.
    pub fn publishes(&self) -> u64 {
        self.publishes
    }

    /// Counters and outcomes of `upstream`, as its status record has them.
    pub fn stats(&self, upstream: usize) -> Option<SyncStats> {
        self.upstreams.get(upstream).map(|u| u.machine.stats())
    }

    /// Writes what changed to shared data: per upstream, the snapshot
    /// first, then the status record (the status endpoint relies on that
    /// order), and the upstream index once. Returns the upstreams whose
    /// status was written (their counters moved).
    pub fn flush(&mut self, store: &mut dyn SharedStore) -> Vec<usize> {
        let mut written = Vec::new();
        let mut published_any = false;
        if !self.index_written {
            let names: Vec<String> =
                self.upstreams.iter().filter(|u| !u.retired).map(|u| u.machine.name().to_string()).collect();
            // Envoy's one poller owns the index (replacing it drops the
            // upstreams of an older configuration); nginx filters share it.
            let written = match self.leadership {
                Leadership::Singleton => status::write_index(store, &names),
                Leadership::Lease { .. } => {
                    let dropped: Vec<String> =
                        self.upstreams.iter().filter(|u| u.retired).map(|u| u.machine.name().to_string()).collect();
                    status::merge_index(store, &names, &dropped)
                }
            };
            match written {
                Ok(()) => self.index_written = true,
                Err(e) => log::warn!("cannot write the upstream index: {e}"),
            }
        }
        self.flush_discoveries(store);
        for i in std::mem::take(&mut self.dirty) {
            let Some(u) = self.upstreams.get_mut(i) else {
                continue;
            };
            u.queued = false;
            if u.retired {
                continue;
            }
            if std::mem::take(&mut u.unpublished) {
                if let Some(published) = u.machine.published() {
                    let name = u.machine.name();
                    match snapshot::publish(store, name, published) {
                        Ok(PublishOutcome::Written { version }) => {
                            published_any = true;
                            log::info!(
                                "upstream {name}: published version {version} ({} members)",
                                published.members.len()
                            )
                        }
                        Ok(PublishOutcome::Unchanged { version }) => {
                            log::debug!("upstream {name}: version {version} already current")
                        }
                        Ok(PublishOutcome::KeptStored { version }) => {
                            log::info!("upstream {name}: kept stored version {version} rather than the fallback list")
                        }
                        Err(e) => log::error!("upstream {name}: cannot publish: {e}; will retry on the next change"),
                    }
                }
            }
            // Followers leave the record to the leader.
            if u.part == Part::Leading && std::mem::take(&mut u.status_stale) {
                let watch = u.watch.and_then(|slot| self.watches.get(slot)).map(|w| w.stream.is_open());
                let record =
                    StatusRecord::new(u.machine.name(), &u.registry, u.machine.phase_name(), watch, u.machine.stats());
                if let Err(e) = record.write(store) {
                    log::warn!("upstream {}: cannot write status: {e}", u.machine.name());
                }
                written.push(i);
            }
        }
        if let Some(bytes) = self.memory {
            if self.memory_written.is_none_or(|w| w.abs_diff(bytes) >= MEMORY_REPORT_STEP) {
                match status::write_poller_memory(store, bytes) {
                    Ok(()) => self.memory_written = Some(bytes),
                    Err(e) => log::debug!("cannot record the poller's memory: {e}"),
                }
            }
        }
        if published_any {
            self.publishes += 1;
            if let Err(e) = snapshot::bump_sequence(store) {
                log::warn!("cannot move the publish sequence: {e}; held EDS requests answer at their hold's end");
            }
        }
        written
    }

    /// Writes what `discover[]` found: each led entry's names (nginx: for
    /// the other workers) and, on Envoy, the CDS list.
    fn flush_discoveries(&mut self, store: &mut dyn SharedStore) {
        let upstreams = &self.upstreams;
        let found_in = |d: usize| upstreams.iter().filter(|u| u.group == Some(d) && !u.retired).count();
        for (d, entry) in self.discoveries.iter_mut().enumerate() {
            if entry.part == Part::Leading && std::mem::take(&mut entry.status_stale) {
                let (listings_ok, listings_failed, last_error, last_listing_ms) = entry.machine.report();
                let record = DiscoveryRecord {
                    key: discovery_status_key(d),
                    entry: d,
                    registry: (&entry.config.registry).into(),
                    upstreams: found_in(d),
                    listings_ok,
                    listings_failed,
                    last_error: last_error.map(str::to_string),
                    last_listing_ms,
                };
                if let Err(e) = record.write(store) {
                    log::debug!("discover[{d}]: cannot write status: {e}");
                }
            }
            if entry.part == Part::Leading && self.leadership != Leadership::Singleton && entry.unwritten {
                let found: Vec<String> = entry.machine.names().iter().cloned().collect();
                match names::write(store, &discovered_key(d), &found) {
                    Ok(()) => entry.unwritten = false,
                    Err(e) => log::warn!("discover[{d}]: cannot share the listing with the other workers: {e}"),
                }
            }
        }
        if self.cds_stale && self.host == HostKind::Envoy {
            let mut found: Vec<String> = self
                .upstreams
                .iter()
                .filter(|u| u.group.is_some() && !u.retired)
                .map(|u| u.machine.name().to_string())
                .collect();
            found.sort_unstable();
            match names::write(store, &cds_key(), &found) {
                Ok(()) => self.cds_stale = false,
                Err(e) => log::warn!("cannot write the CDS cluster list: {e}"),
            }
        }
    }

    /// Drains `discover[d]`'s listing machine: sends its call, applies what
    /// it found, re-arms its timer.
    fn drive_discovery(&mut self, d: usize, now: u64) {
        let Some(entry) = self.discoveries.get_mut(d) else {
            return;
        };
        if entry.part != Part::Leading {
            self.timers.set(Timer { index: d, kind: TimerKind::Discover }, None);
            return;
        }
        entry.status_stale = true;
        let mut events = Vec::new();
        while let Some(event) = entry.machine.poll_event() {
            events.push(event);
        }
        // What the answer brought first: an upstream it feeds may want the
        // next call to be a full read rather than the long poll.
        for event in events {
            self.react_discovery(d, event, now);
        }
        let Some(entry) = self.discoveries.get_mut(d) else {
            return;
        };
        while let Some(call) = entry.machine.poll_transmit(now) {
            self.actions.push(Action::Dispatch(Dispatch {
                upstream: DISCOVERY_CALLER + d,
                id: call.id,
                target: entry.config.registry.targets.get(entry.target).cloned().unwrap_or_default(),
                authority: entry.config.registry.authority.clone(),
                request: call.request,
                timeout_ms: call.timeout_ms,
            }));
        }
        let at = entry.machine.poll_timeout();
        self.timers.set(Timer { index: d, kind: TimerKind::Discover }, Some(at));
    }

    /// The live upstream named `name` that `discover[d]` found.
    fn found(&self, d: usize, name: &str) -> Option<usize> {
        let i = *self.by_name.get(name)?;
        self.upstreams.get(i).filter(|u| u.group == Some(d) && !u.retired).map(|_| i)
    }

    /// Hands what `discover[d]`'s parent read to the upstreams it feeds;
    /// asks the parent for a full read when one of them wants it.
    fn feed(&mut self, d: usize, news: Vec<(String, FeedNews)>, now: u64) {
        let mut reread: Vec<(String, u64)> = Vec::new();
        for (name, item) in news {
            let fed = |u: &mut Upstream, news: ParentNews<'_>| u.machine.handle_fed(now, news);
            let wants = match (self.found(d, &name), item) {
                (Some(i), FeedNews::Read { index, entries }) => {
                    let print = fingerprint(&entries);
                    let Some(u) = self.upstreams.get_mut(i) else { continue };
                    // Unchanged since the last full read, and no hold to confirm: nothing to do.
                    if u.fed_print == Some(print) && !u.machine.holding() {
                        continue;
                    }
                    u.fed_print = Some(print);
                    let wants = fed(u, ParentNews::Read { index, entries });
                    self.drive(i, now);
                    wants
                }
                (Some(i), FeedNews::Change(event)) => {
                    let wants = self.upstreams.get_mut(i).and_then(|u| {
                        u.fed_print = None;
                        fed(u, ParentNews::Change(&event))
                    });
                    self.drive(i, now);
                    wants
                }
                // A change under a child that is no upstream yet: read it
                // all (unless the listing would not take the name anyway).
                (None, FeedNews::Change(_)) => {
                    self.discoveries.get(d).filter(|e| e.machine.would_add(&name)).map(|_| 0)
                }
                (None, FeedNews::Read { .. }) => None,
            };
            if let Some(ms) = wants {
                reread.push((name, now.saturating_add(ms)));
            }
        }
        if let Some(entry) = self.discoveries.get_mut(d) {
            for (name, at) in reread {
                entry.machine.reread(&name, now, at);
            }
        }
    }

    fn react_discovery(&mut self, d: usize, event: DiscoveryEvent, now: u64) {
        match event {
            DiscoveryEvent::Changed { added, removed } => {
                if let Some(entry) = self.discoveries.get_mut(d) {
                    entry.unwritten = true;
                }
                self.apply_listing(d, &added, &removed, now);
            }
            DiscoveryEvent::Marks(marks) => self.check_marks(d, &marks, now),
            DiscoveryEvent::Read { index, children } => {
                let news =
                    children.into_iter().map(|(name, entries)| (name, FeedNews::Read { index, entries })).collect();
                self.feed(d, news, now);
            }
            DiscoveryEvent::Change { name, event } => self.feed(d, vec![(name, FeedNews::Change(event))], now),
            DiscoveryEvent::Skipped { name, why } => {
                log::warn!("discover[{d}]: {:?} {why}; not an upstream", clip(&name))
            }
            DiscoveryEvent::RemovalHeld { names } => log::warn!(
                "discover[{d}]: {} upstream(s) no longer listed ({}{}); kept until a later listing confirms",
                names.len(),
                names.iter().take(5).map(|n| clip(n)).collect::<Vec<_>>().join(", "),
                if names.len() > 5 { ", ..." } else { "" }
            ),
            DiscoveryEvent::EmptyRefused => {
                log::warn!("discover[{d}]: the registry lists no upstreams; keeping every upstream found so far")
            }
            DiscoveryEvent::Failed { reason, retry_in_ms } => {
                log::warn!(
                    "discover[{d}]: listing failed: {reason}; keeping what was found, next try in {retry_in_ms} ms"
                );
                if let Some(entry) = self.discoveries.get_mut(d) {
                    let n = entry.config.registry.targets.len();
                    if n > 1 {
                        entry.target = (entry.target + 1) % n;
                    }
                }
            }
        }
    }

    /// The parent's listing as the safety probe of every upstream it found:
    /// one whose key count or newest revision moved since the last listing
    /// is read now (a change its watch missed, or its poll has not seen yet).
    fn check_marks(&mut self, d: usize, marks: &BTreeMap<String, ChildMark>, now: u64) {
        let mut moved = Vec::new();
        for (name, mark) in marks {
            let Some(&i) = self.by_name.get(name) else {
                continue;
            };
            let Some(u) = self.upstreams.get_mut(i).filter(|u| u.group == Some(d) && !u.retired) else {
                continue;
            };
            if u.mark.replace(*mark).is_some_and(|old| old != *mark) {
                u.machine.handle_push(now);
                moved.push(i);
            }
        }
        for i in moved {
            self.drive(i, now);
        }
    }

    /// Starts polling the upstreams `discover[d]` found and stops the ones
    /// that left the registry.
    fn apply_listing(&mut self, d: usize, added: &[String], removed: &[String], now: u64) {
        let Some(entry) = self.discoveries.get(d) else {
            return;
        };
        let configs: Vec<UpstreamConfig> = added.iter().map(|name| entry.config.upstream(name)).collect();
        let (mut started, mut taken) = (0usize, Vec::new());
        for cfg in &configs {
            match self.add_upstream(cfg, Some(d), now) {
                Some(i) => {
                    started += 1;
                    self.drive(i, now);
                }
                None => taken.push(cfg.name.as_str()),
            }
        }
        for name in removed {
            let i = self.by_name.get(name).copied();
            if let Some(i) = i.filter(|&i| self.upstreams.get(i).is_some_and(|u| u.group == Some(d))) {
                self.retire(i);
            }
        }
        if !taken.is_empty() {
            log::warn!(
                "discover[{d}]: {} listed name(s) not added: already an upstream of the configuration or of an \
                 earlier discover[] entry, or {MAX_UPSTREAMS} upstreams reached (first: {:?})",
                taken.len(),
                taken.first().map(|n| clip(n)).unwrap_or_default()
            );
        }
        if started > 0 || !removed.is_empty() {
            log::info!("discover[{d}]: {started} upstream(s) added, {} removed", removed.len());
            self.cds_stale = true;
        }
    }

    /// nginx: elects who lists `discover[d]`; the followers take the
    /// leader's listing from shared data. The upstreams an entry found
    /// are polled by the worker holding that entry's lease.
    fn elect_discovery(&mut self, store: &mut dyn SharedStore, d: usize, now: u64) {
        let Leadership::Lease { me, ttl_ms } = self.leadership else {
            return;
        };
        let Some(entry) = self.discoveries.get_mut(d) else {
            return;
        };
        let lease_name = format!("~discover/{d}");
        let election = lease::elect(store, &lease_name, me, now, ttl_ms);
        if let Err(e) = &election {
            log::warn!("discover[{d}]: lease unreadable ({e}); not listing this round");
        }
        // Followers look at the leader's listing at least every second.
        let (part, check_at) = lease_outcome(&election, now, ttl_ms, FOLLOWER_LOOK_MS);
        self.timers.set(Timer { index: d, kind: TimerKind::DiscoverLease }, Some(check_at));
        let changed = part != entry.part;
        entry.part = part;
        if part == Part::Following {
            match names::read_changed(store, &discovered_key(d), &mut entry.listing_seen) {
                Ok(Some(found)) => {
                    if let Some(DiscoveryEvent::Changed { added, removed }) =
                        entry.machine.adopt(found.into_iter().collect::<BTreeSet<String>>())
                    {
                        self.apply_listing(d, &added, &removed, now);
                    }
                }
                Ok(None) => {}
                Err(e) => log::debug!("discover[{d}]: cannot read the leader's listing: {e}"),
            }
        }
        if changed {
            log::info!(
                "discover[{d}]: this worker {} the poller of the upstreams it finds",
                if part == Part::Leading { "becomes" } else { "is no longer" }
            );
            let members: Vec<usize> = self
                .upstreams
                .iter()
                .enumerate()
                .filter(|(_, u)| u.group == Some(d) && !u.retired)
                .map(|(i, _)| i)
                .collect();
            for i in members {
                if let Some(u) = self.upstreams.get_mut(i) {
                    u.part = part;
                    if part == Part::Leading {
                        // Catch up at once: the previous leader may have died mid-poll.
                        u.machine.handle_push(now);
                    }
                }
                self.drive(i, now);
            }
            if part == Part::Leading {
                // What it last watched may be long past: read in full first.
                if let Some(entry) = self.discoveries.get_mut(d) {
                    entry.machine.restart();
                }
                self.timers.set(Timer { index: d, kind: TimerKind::Discover }, Some(now));
            } else {
                self.timers.set(Timer { index: d, kind: TimerKind::Discover }, None);
            }
        }
    }

    fn elect(&mut self, store: &mut dyn SharedStore, i: usize, now: u64) {
        let Leadership::Lease { me, ttl_ms } = self.leadership else {
            return;
        };
        let Some(u) = self.upstreams.get_mut(i).filter(|u| !u.retired && u.group.is_none()) else {
            return;
        };
        let election = lease::elect(store, u.machine.name(), me, now, ttl_ms);
        if let Err(e) = &election {
            log::warn!("upstream {}: lease unreadable ({e}); not polling this round", u.machine.name());
        }
        let (part, check_at) = lease_outcome(&election, now, ttl_ms, u64::MAX);
        self.timers.set(Timer { index: i, kind: TimerKind::Lease }, Some(check_at));
        if part != u.part {
            log::info!(
                "upstream {}: this worker {} the registry poller",
                u.machine.name(),
                if part == Part::Leading { "becomes" } else { "is no longer" }
            );
            u.part = part;
            if part == Part::Leading {
                // Catch up at once: the previous leader may have died mid-poll.
                u.machine.handle_push(now);
            }
        }
    }

    /// Drains `i`'s machine and watch into actions, reacts to its events,
    /// and re-arms its timers.
    fn drive(&mut self, i: usize, now: u64) {
        let Some(u) = self.upstreams.get_mut(i).filter(|u| !u.retired) else {
            return;
        };
        let leading = u.part == Part::Leading;
        let mut dirty = false;
        if leading {
            while let Some(event) = u.machine.poll_event() {
                dirty = true;
                u.react(&event, self.host);
            }
            while let Some(call) = u.machine.poll_transmit(now).filter(|_| !u.fed) {
                self.actions.push(Action::Dispatch(Dispatch {
                    upstream: i,
                    id: call.id,
                    target: u.registry.targets.get(u.target).cloned().unwrap_or_default(),
                    authority: u.registry.authority.clone(),
                    request: call.request,
                    timeout_ms: call.timeout_ms,
                }));
            }
        }
        if dirty {
            u.status_stale = true;
            u.queue(&mut self.dirty, i);
        }
        let sync_at = (leading && !u.fed).then(|| u.machine.poll_timeout());
        self.timers.set(Timer { index: i, kind: TimerKind::Sync }, sync_at);
    }
}

/// What an etcd v2 parent read for one child, as the poller hands it on.
enum FeedNews {
    Read { index: u64, entries: ChildKeys },
    Change(V2Event),
}

/// What a full read handed a child, in a word.
fn fingerprint(entries: &ChildKeys) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    entries.hash(&mut h);
    h.finish()
}

/// This worker's part after an election, and when to look at the lease
/// again: a winner renews once half the lease is gone; a loser looks the
/// moment the holder's lease could run out, or after `follower_look_ms` if
/// that is sooner; an unreadable lease is tried again soon.
fn lease_outcome<E>(election: &Result<Election, E>, now: u64, ttl_ms: u64, follower_look_ms: u64) -> (Part, u64) {
    match election {
        Ok(Election::Won { expires_ms }) => (Part::Leading, expires_ms.saturating_sub(ttl_ms / 2).max(now + 1)),
        Ok(Election::Lost { expires_ms, .. }) => {
            (Part::Following, (*expires_ms).max(now + LEASE_RETRY_MS).min(now.saturating_add(follower_look_ms)))
        }
        Err(_) => (Part::Following, now + LEASE_RETRY_MS),
    }
}

impl Upstream {
    /// Lists this upstream (index `i`) for the next flush, once.
    fn queue(&mut self, dirty: &mut Vec<usize>, i: usize) {
        if !std::mem::replace(&mut self.queued, true) {
            dirty.push(i);
        }
    }

    fn machine_interval(&self) -> u64 {
        self.machine.interval_ms()
    }

    /// What the poller does with one event of this upstream's machine:
    /// logs it, marks what `flush` must write, fails over.
    fn react(&mut self, event: &SyncEvent, host: HostKind) {
        let name = self.machine.name();
        match event {
            SyncEvent::Published { source, diff } => {
                let members = self.machine.published().map_or(0, |p| p.members.len());
                log::info!("upstream {name}: {members} members from the {} ({diff})", source.as_str());
                if *source == Source::Fallback {
                    log::warn!("upstream {name}: no member list yet; serving the {members} fallback members");
                }
                let hostnames =
                    self.machine.published().map_or(0, |p| p.members.iter().filter(|m| !m.addr.host.is_ip()).count());
                if hostnames > 0 && host == HostKind::Envoy {
                    log::warn!(
                        "upstream {name}: {hostnames} member(s) given by hostname; Envoy's EDS routes IP members only"
                    );
                }
                self.unpublished = true;
            }
            SyncEvent::CallFailed { reason, retry_in_ms } => {
                log::warn!("upstream {name}: {reason}; keeping the last good list, next try in {retry_in_ms} ms");
                // A dead registry node costs one backoff, not every call until it returns.
                let n = self.registry.targets.len();
                if n > 1 {
                    self.target = (self.target + 1) % n;
                    log::info!(
                        "upstream {name}: next registry call goes to {}",
                        self.registry.targets.get(self.target).map_or("?", String::as_str)
                    );
                }
            }
            SyncEvent::Recovered { failures } => {
                log::info!("upstream {name}: registry answers again after {failures} failed calls")
            }
            SyncEvent::Refused { reason, first } => {
                // Logged once per run of refusals, not every interval.
                if *first {
                    log::warn!("upstream {name}: {reason}");
                }
            }
            SyncEvent::Accepting => log::info!("upstream {name}: registry lists members again"),
            SyncEvent::BadEntries { problems } => {
                for p in problems {
                    let effect = if p.skipped { "; entry skipped" } else { "" };
                    log::warn!("upstream {name}: registry entry {:?}: {}{effect}", clip(&p.key), clip(&p.problem));
                }
            }
            SyncEvent::Held { removed, of } => log::warn!(
                "upstream {name}: the registry would remove {removed} of {of} members (over max_removal_share); \
                 held until a read {} ms from now confirms it",
                self.machine_interval()
            ),
            SyncEvent::Confirmed => log::warn!("upstream {name}: a later read confirms the removal; applied"),
            SyncEvent::HoldReleased => {
                log::info!("upstream {name}: the registry lists the members again; the held removal is dropped")
            }
            SyncEvent::Synced => {}
        }
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::registry::etcd_watch;
    use crate::sansio::shared::snapshot;
    use crate::sansio::shared::status::read_index;
    use crate::sansio::shared::store::{Entry, MemoryStore, StoreError, StoreRules};
    use crate::sansio::tests::testkit::EtcdScript;
    use std::cell::Cell;

    fn config(json: &str) -> PluginConfig {
        PluginConfig::parse(json.as_bytes()).unwrap()
    }

    fn envoy(upstreams: usize, extra: &str) -> PluginConfig {
        let ups: Vec<String> = (0..upstreams)
            .map(|i| {
                format!(
                    r#"{{"name":"u{i}","registry":{{"type":"etcd_v3","target":"etcd","prefix":"/upstreams/web/"{extra}}},"interval_ms":1000}}"#
                )
            })
            .collect();
        config(&format!(r#"{{"upstreams":[{}]}}"#, ups.join(",")))
    }

    fn ok(body: &[u8]) -> HttpResponse<'_> {
        HttpResponse::new(Some(200), &[], body)
    }

    fn dispatches(p: &mut Poller) -> Vec<Dispatch> {
        std::iter::from_fn(|| p.poll_action())
            .map(|a| match a {
                Action::Dispatch(d) => d,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    /// Answers every call from `etcd` until none is left.
    fn answer_all(p: &mut Poller, etcd: &EtcdScript, now: u64) -> usize {
        let mut n = 0;
        loop {
            let calls = dispatches(p);
            if calls.is_empty() {
                return n;
            }
            for call in calls {
                n += 1;
                let body = etcd.answer(&call.request);
                p.handle_response(now, call.upstream, call.id, ok(&body));
            }
        }
    }

    #[test]
    fn a_singleton_polls_at_once_publishes_and_writes_status_in_flush() {
        let mut etcd = EtcdScript::new();
        etcd.put("10.0.0.1:80", "{}");
        let mut store = MemoryStore::new(StoreRules::Envoy);
        let mut p = Poller::new(&envoy(1, ""), Leadership::Singleton, 1);
        assert_eq!(p.poll_timeout(), Some(0), "the first poll is due at once");
        p.handle_timeout(&mut store, 0);
        assert_eq!(answer_all(&mut p, &etcd, 0), 1);
        assert!(snapshot::read(&store, "u0").unwrap().is_none(), "nothing is written before flush");
        p.flush(&mut store);
        let snap = snapshot::read(&store, "u0").unwrap().unwrap();
        assert_eq!(snap.members.len(), 1);
        assert_eq!(read_index(&store), ["u0"]);
        let record = StatusRecord::read(&store, "u0").unwrap();
        assert_eq!((record.sync.stats.syncs_ok, record.sync.state.as_str()), (1, "waiting"));
        assert_eq!(p.poll_timeout(), Some(1000), "next probe after interval_ms");
    }

    #[test]
    fn a_timeout_before_the_deadline_does_nothing() {
        let etcd = EtcdScript::new();
        let mut store = MemoryStore::new(StoreRules::Envoy);
        let mut p = Poller::new(&envoy(3, ""), Leadership::Singleton, 1);
        p.handle_timeout(&mut store, 0);
        answer_all(&mut p, &etcd, 0);
        let due = p.poll_timeout().unwrap();
        for early in [1, due / 2, due - 1] {
            p.handle_timeout(&mut store, early);
            assert_eq!(p.poll_action(), None, "nothing due at {early}");
        }
        p.handle_timeout(&mut store, due);
        assert_eq!(dispatches(&mut p).len(), 3);
    }

    #[test]
    fn a_tick_touches_only_the_upstreams_that_are_due() {
        // 200 upstreams whose first answers arrive 1 ms apart: each later
        // deadline fires exactly the upstream it belongs to.
        let etcd = EtcdScript::new();
        let mut store = MemoryStore::new(StoreRules::Envoy);
        let mut p = Poller::new(&envoy(200, ""), Leadership::Singleton, 1);
        p.handle_timeout(&mut store, 0);
        let calls = dispatches(&mut p);
        assert_eq!(calls.len(), 200);
        for call in calls {
            let body = etcd.answer(&call.request);
            p.handle_response(call.upstream as u64, call.upstream, call.id, ok(&body));
        }
        assert_eq!(p.armed_timers(), 200);
        for i in 0..200u64 {
            let due = p.poll_timeout().unwrap();
            assert_eq!(due, 1000 + i);
            p.handle_timeout(&mut store, due);
            let fired = dispatches(&mut p);
            assert_eq!(fired.iter().map(|d| d.upstream as u64).collect::<Vec<_>>(), [i]);
        }
    }

    /// Counts reads, to see which shared-data work a timeout does.
    struct Counting {
        inner: MemoryStore,
        reads: Cell<usize>,
    }

    impl SharedStore for Counting {
        fn get(&self, key: &str) -> Result<Entry, StoreError> {
            self.reads.set(self.reads.get() + 1);
            self.inner.get(key)
        }
        fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            self.inner.set(key, value, cas)
        }
    }

    fn nginx(targets: &str, upstreams: usize) -> PluginConfig {
        let ups: Vec<String> = (0..upstreams)
            .map(|i| {
                format!(
                    r#"{{"name":"u{i}","registry":{{"type":"etcd_v3","target":{targets},"prefix":"/upstreams/web/"}},"interval_ms":200,"backoff_max_ms":1000}}"#
                )
            })
            .collect();
        config(&format!(r#"{{"host":"nginx","lease_ms":3000,"pick":"u0","upstreams":[{}]}}"#, ups.join(",")))
    }

    #[test]
    fn leases_are_read_when_their_renewal_is_due_not_on_every_poll() {
        let etcd = EtcdScript::new();
        let mut store = Counting { inner: MemoryStore::new(StoreRules::NgxWasm), reads: Cell::new(0) };
        let mut p = Poller::new(&nginx(r#""127.0.0.1:2379""#, 50), Leadership::Lease { me: 7, ttl_ms: 3000 }, 1);
        p.handle_timeout(&mut store, 0);
        answer_all(&mut p, &etcd, 0);
        p.flush(&mut store);
        // Polls every 200 ms until the first renewal at 1500 ms: no lease reads.
        let mut now = 0;
        while now < 1400 {
            now = p.poll_timeout().unwrap();
            let before = store.reads.get();
            p.handle_timeout(&mut store, now);
            assert_eq!(store.reads.get(), before, "a lease read at {now}");
            answer_all(&mut p, &etcd, now);
        }
        // The renewal: one read per upstream's lease.
        let renew_at = p.poll_timeout().unwrap();
        assert_eq!(renew_at, 1500);
        let before = store.reads.get();
        p.handle_timeout(&mut store, renew_at);
        assert!(store.reads.get() - before >= 50, "every lease renewed at half its life");
    }

    #[test]
    fn a_failed_call_moves_the_next_one_to_the_next_registry_address() {
        let mut etcd = EtcdScript::new();
        etcd.put("10.0.0.1:80", "{}");
        let targets = r#"["127.0.0.1:2379","127.0.0.2:2379","127.0.0.3:2379"]"#;
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        let mut p = Poller::new(&nginx(targets, 1), Leadership::Lease { me: 1, ttl_ms: 3000 }, 1);
        // Steps to the deadlines until a call comes out (lease renewals come due too).
        let mut now = 0;
        let next_call = |p: &mut Poller, store: &mut MemoryStore, now: &mut u64| loop {
            if let Some(call) = dispatches(p).pop() {
                return call;
            }
            *now = p.poll_timeout().unwrap();
            p.handle_timeout(store, *now);
        };
        let mut seen = Vec::new();
        for _ in 0..4 {
            let call = next_call(&mut p, &mut store, &mut now);
            seen.push(call.target.clone());
            p.handle_dispatch_failed(now, call.upstream, call.id, "connection refused");
        }
        assert_eq!(seen, ["127.0.0.1:2379", "127.0.0.2:2379", "127.0.0.3:2379", "127.0.0.1:2379"]);
        // A refused answer (HTTP 503) is a failure too; then success stays put.
        let call = next_call(&mut p, &mut store, &mut now);
        assert_eq!(call.target, "127.0.0.2:2379");
        p.handle_response(now, call.upstream, call.id, HttpResponse::new(Some(503), &[], b""));
        let call = next_call(&mut p, &mut store, &mut now);
        assert_eq!(call.target, "127.0.0.3:2379");
        let body = etcd.answer(&call.request);
        p.handle_response(now, call.upstream, call.id, ok(&body));
        p.flush(&mut store);
        assert_eq!(next_call(&mut p, &mut store, &mut now).target, "127.0.0.3:2379", "a good address is kept");
        let record = StatusRecord::read(&store, "u0").unwrap();
        assert_eq!(record.sync.stats.syncs_failed, 5);
        assert_eq!(record.sync.registry.target, "127.0.0.1:2379,127.0.0.2:2379,127.0.0.3:2379");
    }

    #[test]
    fn one_watch_stream_carries_every_upstream_and_events_poll_only_theirs() {
        let etcd = EtcdScript::new();
        let mut store = MemoryStore::new(StoreRules::Envoy);
        let mut p = Poller::new(&envoy(3, r#","grpc_target":"etcd_grpc""#), Leadership::Singleton, 1);
        p.handle_timeout(&mut store, 0);
        let actions: Vec<Action> = std::iter::from_fn(|| p.poll_action()).collect();
        let opens: Vec<&OpenWatch> = actions
            .iter()
            .filter_map(|a| match a {
                Action::OpenWatch(w) => Some(w),
                _ => None,
            })
            .collect();
        assert_eq!(opens.len(), 1, "one stream for the three upstreams: {actions:?}");
        assert_eq!((opens[0].target.as_str(), opens[0].messages.len()), ("etcd_grpc", 3));
        assert_eq!(opens[0].messages[1], etcd_watch::create_request("/upstreams/web/", 2));
        for a in &actions {
            if let Action::Dispatch(d) = a {
                let body = etcd.answer(&d.request);
                p.handle_response(0, d.upstream, d.id, ok(&body));
            }
        }
        assert_eq!(p.poll_action(), None);
        // Events on watch 2 (upstream 1): that upstream probes at once, the others wait.
        p.handle_watch_message(10, 0, &[0x10, 0x02, 0x5a, 0x00]);
        let calls = dispatches(&mut p);
        assert_eq!(calls.iter().map(|d| d.upstream).collect::<Vec<_>>(), [1]);
        p.handle_response(10, 1, calls[0].id, ok(&etcd.answer(&calls[0].request)));
        // etcd cancels watch 3 alone: created again on the same stream.
        p.handle_watch_message(20, 0, &[0x10, 0x03, 0x20, 0x01]);
        let actions: Vec<Action> = std::iter::from_fn(|| p.poll_action()).collect();
        let again = etcd_watch::create_request("/upstreams/web/", 3);
        assert!(actions.contains(&Action::SendWatch { stream: 0, message: again }), "{actions:?}");
        // The stream closes after living a while: reopened on the next tick
        // (not inside the close callback) with every watch.
        p.handle_watch_closed(2000, 0);
        assert_eq!(p.poll_action(), None, "not inside the close callback");
        p.handle_timeout(&mut store, 2001);
        let actions: Vec<Action> = std::iter::from_fn(|| p.poll_action()).collect();
        assert!(actions.iter().any(|a| matches!(a, Action::OpenWatch(w) if w.messages.len() == 3)), "{actions:?}");
        // Closing again at once backs off.
        p.handle_watch_closed(2010, 0);
        p.handle_timeout(&mut store, 2011);
        assert!(std::iter::from_fn(|| p.poll_action()).all(|a| !matches!(a, Action::OpenWatch(_))));
        p.flush(&mut store);
        let record = StatusRecord::read(&store, "u0").unwrap();
        assert_eq!(record.sync.watch.as_deref(), Some("closed"));
    }

    #[test]
    fn followers_leave_status_and_snapshots_to_the_leader() {
        let mut etcd = EtcdScript::new();
        etcd.put("10.0.0.1:80", "{}");
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        let cfg = nginx(r#""127.0.0.1:2379""#, 1);
        let mut leader = Poller::new(&cfg, Leadership::Lease { me: 1, ttl_ms: 3000 }, 1);
        let mut follower = Poller::new(&cfg, Leadership::Lease { me: 2, ttl_ms: 3000 }, 2);
        leader.handle_timeout(&mut store, 0);
        answer_all(&mut leader, &etcd, 0);
        leader.flush(&mut store);
        follower.handle_timeout(&mut store, 0);
        assert_eq!(follower.poll_action(), None, "the follower does not poll");
        follower.flush(&mut store);
        let record = StatusRecord::read(&store, "u0").unwrap();
        assert_eq!(record.sync.stats.syncs_ok, 1, "the leader's record stands");
        assert_eq!(follower.poll_timeout(), Some(3000), "the follower looks again when the lease could expire");
    }

    #[test]
    fn nginx_filters_share_the_upstream_index_and_envoy_replaces_it() {
        let filter = |names: &[&str]| {
            let ups: Vec<String> = names
                .iter()
                .map(|n| {
                    format!(
                        r#"{{"name":"{n}","registry":{{"type":"etcd_v3","target":"127.0.0.1:1","prefix":"/{n}/"}}}}"#
                    )
                })
                .collect();
            config(&format!(r#"{{"host":"nginx","pick":"{}","upstreams":[{}]}}"#, names[0], ups.join(",")))
        };
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        let lease = Leadership::Lease { me: 1, ttl_ms: 3000 };
        let mut a = Poller::new(&filter(&["a1", "a2"]), lease, 1);
        let mut b = Poller::new(&filter(&["b1"]), lease, 2);
        a.flush(&mut store);
        b.flush(&mut store);
        let mut index = read_index(&store);
        index.sort();
        assert_eq!(index, ["a1", "a2", "b1"], "every filter's upstreams are listed");

        let mut store = MemoryStore::new(StoreRules::Envoy);
        Poller::new(&envoy(3, ""), Leadership::Singleton, 1).flush(&mut store);
        Poller::new(&envoy(1, ""), Leadership::Singleton, 1).flush(&mut store);
        assert_eq!(read_index(&store), ["u0"], "a new Envoy configuration replaces the index");
    }
}
