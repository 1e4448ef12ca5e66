//! The registry poller: turns ticks and call responses into core events,
//! dispatches the calls the core asks for, publishes what it decides.

use super::store::HostStore;
use super::{logger, now_ms};
use crate::sansio::config::{ConfigError, PluginConfig, RegistryConfig};
use crate::sansio::etcd_watch::{self, WatchStream};
use crate::sansio::registry::adapter_for;
use crate::sansio::request::HttpResponse;
use crate::sansio::snapshot::{self, PublishOutcome};
use crate::sansio::status::{self, StatusRecord};
use crate::sansio::sync::{SyncConfig, SyncState, Update};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use std::collections::HashMap;
use std::time::Duration;

/// Tick period. The core decides what is due; the tick only bounds how
/// late a due poll can start.
pub const TICK_MS: u64 = 50;

struct Upstream {
    registry: RegistryConfig,
    sync: SyncState,
    /// The etcd gRPC Watch push trigger, when `grpc_target` is set.
    watch: Option<WatchStream>,
}

pub struct Poller {
    upstreams: Vec<Upstream>,
    /// Host call token → (upstream index, core request id).
    calls: HashMap<u32, (usize, u64)>,
    /// Host gRPC stream token → upstream index.
    streams: HashMap<u32, usize>,
    index_written: bool,
}

impl Poller {
    pub fn configure(bytes: &[u8]) -> Result<Poller, ConfigError> {
        let config = PluginConfig::parse(bytes)?;
        logger::set_level(config.log_level);
        let seed = now_ms();
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
            })
            .collect();
        log::info!("poller configured with {} upstream(s)", config.upstreams.len());
        Ok(Poller { upstreams, calls: HashMap::new(), streams: HashMap::new(), index_written: false })
    }

    pub fn on_tick(&mut self) {
        let now = now_ms();
        if !self.index_written {
            let names: Vec<String> = self.upstreams.iter().map(|u| u.sync.name().to_string()).collect();
            match status::write_index(&mut HostStore, &names) {
                Ok(()) => self.index_written = true,
                Err(e) => log::warn!("cannot write the upstream index: {e}"),
            }
        }
        for i in 0..self.upstreams.len() {
            if let Some(u) = self.upstreams.get_mut(i) {
                u.sync.handle_timeout(now);
            }
            self.open_watch(i, now);
            self.drive(i, now);
        }
    }

    /// Opens the upstream's etcd Watch stream when it is due.
    fn open_watch(&mut self, i: usize, now: u64) {
        let Some(u) = self.upstreams.get_mut(i) else {
            return;
        };
        let (Some(watch), Some(target)) = (u.watch.as_mut(), u.registry.grpc_target.as_deref()) else {
            return;
        };
        if !watch.poll_open(now) {
            return;
        }
        let opened = hostcalls::open_grpc_stream(target, etcd_watch::SERVICE, etcd_watch::METHOD, vec![]);
        let sent = opened.and_then(|token| {
            hostcalls::send_grpc_stream_message(token, Some(&etcd_watch::create_request(&u.registry.prefix)), false)
                .map(|()| token)
        });
        match sent {
            Ok(token) => {
                self.streams.insert(token, i);
            }
            Err(e) => {
                log::warn!("upstream {}: cannot open the etcd watch on {target:?}: {e:?}", u.sync.name());
                watch.handle_closed(now);
            }
        }
    }

    pub fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        let Some(&i) = self.streams.get(&token) else {
            return;
        };
        let now = now_ms();
        let message = match hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size) {
            Ok(Some(b)) => b,
            _ => Vec::new(),
        };
        if let Some(u) = self.upstreams.get_mut(i) {
            let poll = u.watch.as_mut().is_some_and(|w| w.handle_message(now, &message));
            if u.watch.as_ref().is_some_and(|w| !w.is_open()) {
                // etcd canceled the watch: let go of the stream, reopen later.
                self.streams.remove(&token);
                let _ = hostcalls::cancel_grpc_stream(token);
            }
            if poll {
                u.sync.poll_now(now);
            }
        }
        self.drive(i, now);
    }

    pub fn on_grpc_stream_close(&mut self, token: u32, status_code: u32) {
        let Some(i) = self.streams.remove(&token) else {
            return;
        };
        if let Some(u) = self.upstreams.get_mut(i) {
            log::info!("upstream {}: etcd watch closed (grpc-status {status_code}); reopening later", u.sync.name());
            if let Some(w) = u.watch.as_mut() {
                w.handle_closed(now_ms());
            }
        }
    }

    pub fn on_http_call_response(&mut self, token: u32, _num_headers: usize, body_size: usize) {
        let Some((i, id)) = self.calls.remove(&token) else {
            log::debug!("answer for unknown call {token} ignored");
            return;
        };
        let now = now_ms();
        let Some(u) = self.upstreams.get_mut(i) else {
            return;
        };
        // The whole-map getter: a response cut after its headers arrives
        // with no headers, where single-header getters misbehave.
        let headers = hostcalls::get_map(MapType::HttpCallResponseHeaders).unwrap_or_default();
        let status = headers.iter().find(|(k, _)| k == ":status").and_then(|(_, v)| v.parse::<u16>().ok());
        let body = if body_size > 0 && body_size <= u.sync.max_body_bytes() {
            match hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size) {
                Ok(Some(b)) => b,
                Ok(None) => Vec::new(),
                Err(e) => {
                    log::warn!("upstream {}: cannot read the registry answer: {e:?}", u.sync.name());
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        u.sync.handle_response(now, id, HttpResponse { status, headers: &headers, body: &body, body_size });
        self.drive(i, now);
    }

    /// Drains the core's actions for upstream `i`.
    fn drive(&mut self, i: usize, now: u64) {
        let Some(u) = self.upstreams.get_mut(i) else {
            return;
        };
        while let Some(out) = u.sync.poll_request(now) {
            let mut headers: Vec<(&str, &str)> = vec![
                (":method", out.request.method),
                (":path", out.request.path.as_str()),
                (":authority", u.registry.authority.as_str()),
            ];
            headers.extend(out.request.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let sent = hostcalls::dispatch_http_call(
                u.registry.targets.first().map(String::as_str).unwrap_or_default(),
                headers,
                Some(&out.request.body),
                vec![],
                Duration::from_millis(out.timeout_ms),
            );
            match sent {
                Ok(token) => {
                    self.calls.insert(token, (i, out.id));
                }
                Err(e) => u.sync.handle_dispatch_failed(
                    now,
                    out.id,
                    &format!("{e:?} (is {:?} a cluster the proxy knows?)", u.registry.targets),
                ),
            }
        }
        if let Some(update) = u.sync.poll_update() {
            publish(u.sync.name(), &update);
        }
        if u.sync.take_stats_changed() {
            let record = StatusRecord::of(&u.sync, &u.registry);
            if let Err(e) = snapshot::put_json(&mut HostStore, &record.key, &record) {
                log::warn!("upstream {}: cannot write status: {e}", u.sync.name());
            }
        }
    }
}

fn publish(name: &str, update: &Update) {
    let hostnames = update.members.iter().filter(|m| !m.addr.host.is_ip()).count();
    if hostnames > 0 {
        log::warn!("upstream {name}: {hostnames} member(s) given by hostname; Envoy's EDS routes IP members only");
    }
    match snapshot::publish(&mut HostStore, name, update) {
        Ok(PublishOutcome::Written { version }) => {
            log::info!(
                "upstream {name}: published version {version} ({} members, {})",
                update.members.len(),
                update.diff
            )
        }
        Ok(PublishOutcome::Unchanged { version }) => {
            log::debug!("upstream {name}: version {version} already current")
        }
        Ok(PublishOutcome::KeptStored { version }) => {
            log::info!("upstream {name}: kept stored version {version} rather than the fallback list")
        }
        Err(e) => {
            log::error!("upstream {name}: cannot publish: {e}; will retry on the next change")
        }
    }
}
