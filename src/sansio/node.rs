//! A poller node: every upstream's sync machine, who may poll (leadership),
//! which registry address to use (failover), and what gets written to
//! shared data (snapshots, status). The host only carries out the
//! [`Dispatch`]es and [`OpenWatch`]es it returns and feeds back answers.
//!
//! - Envoy runs one node per process ([`Leadership::Singleton`]).
//! - nginx runs one node per worker; the workers elect one leader per
//!   upstream through a lease in shared data ([`Leadership::Lease`]), so
//!   the registry sees one poller per nginx instance, not one per worker.

use super::config::{HostKind, PluginConfig, RegistryConfig};
use super::etcd_watch::{self, WatchStream};
use super::lease::{self, Role};
use super::registry::adapter_for;
use super::request::{HttpRequest, HttpResponse};
use super::snapshot::{self, PublishOutcome};
use super::status::{self, StatusRecord};
use super::store::SharedStore;
use super::sync::{SyncConfig, SyncState, Update};

/// Who polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// This node is the only poller (Envoy's bootstrap singleton).
    Singleton,
    /// Workers compete for a lease per upstream; `me` must be unique.
    Lease { me: u64, ttl_ms: u64 },
}

/// A registry call for the host to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    pub upstream: usize,
    pub id: u64,
    /// Envoy cluster name, or an nginx `ip:port` / `unix:` address.
    pub target: String,
    pub authority: String,
    pub request: HttpRequest,
    pub timeout_ms: u64,
}

/// An etcd Watch stream for the host to open (gRPC hosts only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenWatch {
    pub upstream: usize,
    pub target: String,
    pub service: &'static str,
    pub method: &'static str,
    pub message: Vec<u8>,
}

struct Upstream {
    registry: RegistryConfig,
    sync: SyncState,
    watch: Option<WatchStream>,
    /// Index into `registry.targets` of the address in use.
    target: usize,
    leading: bool,
}

pub struct PollerNode {
    upstreams: Vec<Upstream>,
    leadership: Leadership,
    host: HostKind,
    index_written: bool,
}

impl PollerNode {
    pub fn new(config: &PluginConfig, leadership: Leadership, seed: u64) -> Self {
        let upstreams = config
            .upstreams
            .iter()
            .zip(0u64..)
            .map(|(u, i)| Upstream {
                watch: u.registry.grpc_target.as_ref().map(|_| WatchStream::new(u.backoff_max_ms)),
                registry: u.registry.clone(),
                sync: SyncState::new(
                    SyncConfig::from(u),
                    adapter_for(&u.registry),
                    seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ),
                target: 0,
                leading: leadership == Leadership::Singleton,
            })
            .collect();
        PollerNode { upstreams, leadership, host: config.host, index_written: false }
    }

    pub fn name(&self, upstream: usize) -> &str {
        self.upstreams.get(upstream).map_or("", |u| u.sync.name())
    }

    /// The largest registry body to read for `upstream`.
    pub fn max_body_bytes(&self, upstream: usize) -> usize {
        self.upstreams.get(upstream).map_or(0, |u| u.sync.max_body_bytes())
    }

    /// A tick: elections, given-up calls, due polls.
    pub fn on_tick(&mut self, store: &mut dyn SharedStore, now: u64) -> Vec<Dispatch> {
        if !self.index_written {
            let names: Vec<String> = self.upstreams.iter().map(|u| u.sync.name().to_string()).collect();
            match status::write_index(store, &names) {
                Ok(()) => self.index_written = true,
                Err(e) => log::warn!("cannot write the upstream index: {e}"),
            }
        }
        let mut out = Vec::new();
        for i in 0..self.upstreams.len() {
            self.elect(store, i, now);
            if let Some(u) = self.upstreams.get_mut(i) {
                if u.leading {
                    u.sync.handle_timeout(now);
                }
            }
            out.extend(self.drive(store, i, now));
        }
        out
    }

    fn elect(&mut self, store: &mut dyn SharedStore, i: usize, now: u64) {
        let Leadership::Lease { me, ttl_ms } = self.leadership else {
            return;
        };
        let Some(u) = self.upstreams.get_mut(i) else {
            return;
        };
        let leading = match lease::elect(store, u.sync.name(), me, now, ttl_ms) {
            Ok(Role::Leader) => true,
            Ok(Role::Follower { .. }) => false,
            Err(e) => {
                log::warn!("upstream {}: lease unreadable ({e}); not polling this round", u.sync.name());
                false
            }
        };
        if leading != u.leading {
            log::info!(
                "upstream {}: this worker {} the registry poller",
                u.sync.name(),
                if leading { "becomes" } else { "is no longer" }
            );
            u.leading = leading;
            if leading {
                // Catch up at once: the previous leader may have died mid-poll.
                u.sync.poll_now(now);
            }
        }
    }

    /// An answer to call `id` of `upstream`.
    pub fn on_response(
        &mut self,
        store: &mut dyn SharedStore,
        now: u64,
        upstream: usize,
        id: u64,
        response: HttpResponse<'_>,
    ) -> Vec<Dispatch> {
        let Some(u) = self.upstreams.get_mut(upstream) else {
            return Vec::new();
        };
        let failures = u.sync.stats().syncs_failed;
        if u.leading && u.sync.handle_response(now, id, response) {
            u.fail_over_if(failures);
        }
        self.drive(store, upstream, now)
    }

    /// The host could not send call `id` of `upstream`.
    pub fn on_dispatch_failed(
        &mut self,
        store: &mut dyn SharedStore,
        now: u64,
        upstream: usize,
        id: u64,
        reason: &str,
    ) -> Vec<Dispatch> {
        if let Some(u) = self.upstreams.get_mut(upstream) {
            let failures = u.sync.stats().syncs_failed;
            u.sync.handle_dispatch_failed(now, id, reason);
            u.fail_over_if(failures);
        }
        self.drive(store, upstream, now)
    }

    /// Watch streams due to be opened.
    pub fn poll_watch_opens(&mut self, now: u64) -> Vec<OpenWatch> {
        let mut out = Vec::new();
        for (i, u) in self.upstreams.iter_mut().enumerate() {
            let (Some(watch), Some(target)) = (u.watch.as_mut(), u.registry.grpc_target.as_ref()) else {
                continue;
            };
            if u.leading && watch.poll_open(now) {
                out.push(OpenWatch {
                    upstream: i,
                    target: target.clone(),
                    service: etcd_watch::SERVICE,
                    method: etcd_watch::METHOD,
                    message: etcd_watch::create_request(&u.registry.prefix),
                });
            }
        }
        out
    }

    /// A Watch message. Returns the calls to make, and whether the host
    /// should drop the stream (etcd canceled it).
    pub fn on_watch_message(
        &mut self,
        store: &mut dyn SharedStore,
        now: u64,
        upstream: usize,
        message: &[u8],
    ) -> (Vec<Dispatch>, bool) {
        let Some(u) = self.upstreams.get_mut(upstream) else {
            return (Vec::new(), false);
        };
        let Some(watch) = u.watch.as_mut() else {
            return (Vec::new(), false);
        };
        let poll = watch.handle_message(now, message);
        let closed = !watch.is_open();
        if poll {
            u.sync.poll_now(now);
        }
        (self.drive(store, upstream, now), closed)
    }

    /// The Watch stream closed, or could not be opened.
    pub fn on_watch_closed(&mut self, now: u64, upstream: usize) {
        if let Some(w) = self.upstreams.get_mut(upstream).and_then(|u| u.watch.as_mut()) {
            w.handle_closed(now);
        }
    }

    /// Drains the actions of `upstream`'s machine.
    fn drive(&mut self, store: &mut dyn SharedStore, i: usize, now: u64) -> Vec<Dispatch> {
        let Some(u) = self.upstreams.get_mut(i) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if !u.leading {
            return out;
        }
        while let Some(call) = u.sync.poll_request(now) {
            out.push(Dispatch {
                upstream: i,
                id: call.id,
                target: u.registry.targets.get(u.target).cloned().unwrap_or_default(),
                authority: u.registry.authority.clone(),
                request: call.request,
                timeout_ms: call.timeout_ms,
            });
        }
        if let Some(update) = u.sync.poll_update() {
            let hostnames = update.members.iter().filter(|m| !m.addr.host.is_ip()).count();
            if hostnames > 0 && self.host == HostKind::Envoy {
                log::warn!(
                    "upstream {}: {hostnames} member(s) given by hostname; Envoy's EDS routes IP members only",
                    u.sync.name()
                );
            }
            publish(store, u.sync.name(), &update);
        }
        if u.sync.take_stats_changed() {
            let record = StatusRecord::of(&u.sync, &u.registry);
            if let Err(e) = snapshot::put_json(store, &record.key, &record) {
                log::warn!("upstream {}: cannot write status: {e}", u.sync.name());
            }
        }
        out
    }
}

impl Upstream {
    /// Moves to the next registry address after a failed call, so a dead
    /// registry node costs one backoff, not every call until it returns.
    fn fail_over_if(&mut self, failures_before: u64) {
        let n = self.registry.targets.len();
        if n > 1 && self.sync.stats().syncs_failed > failures_before {
            self.target = (self.target + 1) % n;
            log::info!(
                "upstream {}: next registry call goes to {}",
                self.sync.name(),
                self.registry.targets.get(self.target).map_or("?", String::as_str)
            );
        }
    }
}

fn publish(store: &mut dyn SharedStore, name: &str, update: &Update) {
    match snapshot::publish(store, name, update) {
        Ok(PublishOutcome::Written { version }) => {
            log::info!(
                "upstream {name}: published version {version} ({} members, {})",
                update.members.len(),
                update.diff
            )
        }
        Ok(PublishOutcome::Unchanged { version }) => log::debug!("upstream {name}: version {version} already current"),
        Ok(PublishOutcome::KeptStored { version }) => {
            log::info!("upstream {name}: kept stored version {version} rather than the fallback list")
        }
        Err(e) => log::error!("upstream {name}: cannot publish: {e}; will retry on the next change"),
    }
}
