//! The proxy-wasm glue: the only code that touches the host. It turns host
//! callbacks into core inputs and core outputs into host calls; every
//! decision is the core's (the role: [`crate::sansio::config::roles`]).
//!
//! Host calls go through [`abi`] only, and every `Result` is handled: the
//! SDK's `hostcalls` panic on a status they do not expect, and its trait
//! helpers unwrap; either would trap the VM (docs/sdk-panics.md). The
//! contexts implement [`contexts`]' traits, which have no helpers to call.

mod abi;
mod contexts;
mod logger;
mod metrics;
mod pick;
mod poller;
mod server;
mod store;
mod wake;

use crate::sansio::config::roles::{role_config, RoleConfig};
use crate::sansio::config::ServerConfig;
use crate::sansio::serve::metrics::metrics_reply;
use crate::sansio::serve::reply::LocalReply;
use crate::sansio::serve::status::{status_reply, upstream_filter};
use crate::sansio::sync::poller::Leadership;
use contexts::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, MapType};
use std::cell::Cell;
use std::time::{Duration, UNIX_EPOCH};

thread_local! {
    /// Member lists published by any poller of this wasm instance: on nginx
    /// the filters of a worker share one instance, so a worker's picks
    /// refresh the moment its own poller publishes, not at the next tick.
    static LOCAL_PUBLISHES: Cell<u64> = const { Cell::new(0) };
}

fn local_publishes() -> u64 {
    LOCAL_PUBLISHES.with(Cell::get)
}

fn note_local_publish() {
    LOCAL_PUBLISHES.with(|c| c.set(c.get().wrapping_add(1)));
}
use store::HostStore;

proxy_wasm::main! {{
    logger::install();
    contexts::set_root_context(|context_id| -> Box<dyn RootContext> { Box::new(Root { context_id, role: Role::Unconfigured }) });
}}

/// Time since the Unix epoch, as the host tells it (zero if it cannot).
fn now() -> Duration {
    abi::get_current_time().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default()
}

pub fn now_ms() -> u64 {
    u64::try_from(now().as_millis()).unwrap_or(u64::MAX)
}

fn request_header(name: &str) -> Option<String> {
    abi::get_map_value(MapType::HttpRequestHeaders, name).ok().flatten()
}

/// A request's `:path` without its query string.
fn route(path: &str) -> &str {
    path.split('?').next().unwrap_or_default()
}

/// Answers the request with `reply` (a 304 has no body, so no content type).
fn send(reply: &LocalReply) {
    let body = (!reply.body.is_empty()).then_some(reply.body.as_bytes());
    let headers = if body.is_some() { vec![("content-type", reply.content_type)] } else { vec![] };
    if let Err(e) = abi::send_http_response(u32::from(reply.status), headers, body) {
        log::warn!("cannot send a local response: {e:?}");
    }
}

/// Answers the status endpoint; the query of `path` may select one upstream.
fn send_status(path: &str) {
    send(&status_reply(&HostStore, upstream_filter(path), memory_bytes()));
}

/// This VM's linear memory in bytes.
pub fn memory_bytes() -> Option<u64> {
    #[cfg(target_arch = "wasm32")]
    {
        u64::try_from(core::arch::wasm32::memory_size(0)).ok().map(|pages| pages * 65536)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        None
    }
}

fn send_metrics() {
    send(&metrics_reply(&HostStore, now_ms()));
}

fn read_buffer(kind: BufferType, size: usize) -> Vec<u8> {
    read_buffer_at(kind, 0, size)
}

/// `size` bytes of the buffer from `start` (fewer at its end).
fn read_buffer_at(kind: BufferType, start: usize, size: usize) -> Vec<u8> {
    match abi::get_buffer(kind, start, size) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => Vec::new(),
        Err(e) => {
            log::warn!("cannot read the {kind:?} buffer: {e:?}");
            Vec::new()
        }
    }
}

fn root_id() -> Option<String> {
    match abi::get_property(vec!["plugin_root_id"]) {
        Ok(Some(bytes)) => String::from_utf8(bytes).ok(),
        _ => None,
    }
}

/// A worker's identity for leases: random per process. Context ids repeat
/// across workers, and nginx's cached clock can give two workers the same
/// time, so randomness from the host (WASI random_get, through std's
/// RandomState) is mixed in.
fn worker_identity(context_id: u32) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(now().as_nanos());
    h.write_u32(context_id);
    h.finish()
}

enum Role {
    Unconfigured,
    Poller(Box<poller::HostPoller>),
    Server(std::rc::Rc<ServerConfig>),
    /// A picking filter: nginx (with its worker's poller) or Envoy pick mode.
    Pick(Box<pick::PickRoot>),
}

struct Root {
    context_id: u32,
    role: Role,
}

impl Root {
    fn poller(&mut self) -> Option<&mut poller::HostPoller> {
        match &mut self.role {
            Role::Poller(p) => Some(p),
            Role::Pick(n) => n.poller.as_mut(),
            _ => None,
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _num_headers: usize, body_size: usize, _trailers: usize) {
        if let Some(p) = self.poller() {
            p.on_http_call_response(token, body_size);
        }
    }

    fn on_grpc_stream_message(&mut self, token: u32, message_size: usize) {
        if let Some(p) = self.poller() {
            p.on_grpc_stream_message(token, message_size);
        }
    }

    fn on_grpc_stream_close(&mut self, token: u32, status_code: u32) {
        if let Some(p) = self.poller() {
            p.on_grpc_stream_close(token, status_code);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let config = read_buffer(BufferType::PluginConfiguration, plugin_configuration_size);
        let role = match role_config(&root_id().unwrap_or_default(), &config) {
            Ok(role) => role,
            Err(e) => {
                log::error!("{e}");
                return false;
            }
        };
        // Only arm the tick here: on_configure also runs in Envoy's
        // throwaway validation VM, where nothing else may happen.
        if let Some(ms) = role.tick_ms() {
            if let Err(e) = abi::set_tick_period(Duration::from_millis(ms)) {
                log::error!("cannot set the tick period: {e:?}");
                return false;
            }
        }
        let now = now_ms();
        self.role = match role {
            RoleConfig::Server(server) => Role::Server(std::rc::Rc::new(server)),
            RoleConfig::Poller(cfg) => {
                logger::set_level(cfg.log_level);
                log::info!(
                    "configured for {:?} with {} upstream(s) and {} discover entries",
                    cfg.host,
                    cfg.upstreams.len(),
                    cfg.discover.len()
                );
                Role::Poller(Box::new(poller::HostPoller::new(&cfg, Leadership::Singleton, now, false)))
            }
            RoleConfig::EnvoyPick(cfg) | RoleConfig::NginxWorker(cfg) => {
                logger::set_level(cfg.log_level);
                // Envoy's pick filter only reads snapshots: the bootstrap
                // singleton polls. An nginx worker also polls, under a lease.
                let lease = Leadership::Lease { me: worker_identity(self.context_id), ttl_ms: cfg.lease_ms };
                let poller = (cfg.host == crate::sansio::config::HostKind::Nginx)
                    .then(|| poller::HostPoller::new(&cfg, lease, now, true));
                let Some(root) = pick::PickRoot::new(&cfg, poller, now) else {
                    log::error!("invalid configuration: pick: no such upstream");
                    return false;
                };
                log::info!("configured for {:?} with {} upstream(s)", cfg.host, cfg.upstreams.len());
                Role::Pick(Box::new(root))
            }
        };
        true
    }

    fn on_tick(&mut self) {
        match &mut self.role {
            Role::Poller(p) => p.on_tick(),
            Role::Server(_) => server::answer_held(self.context_id),
            Role::Pick(n) => n.on_tick(),
            Role::Unconfigured => {}
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Role::Server(_) = self.role {
            server::on_queue_ready(self.context_id, queue_id);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Always a context: the SDK panics on None.
        match &self.role {
            Role::Pick(n) => Some(Box::new(pick::PickStream::new(n.filter.clone(), n.seen.clone()))),
            Role::Server(c) => Some(Box::new(server::ServerStream::new(context_id, c.clone()))),
            Role::Poller(_) | Role::Unconfigured => Some(Box::new(PassThrough)),
        }
    }
}

/// The stream of a role that serves nothing: the SDK's defaults let every
/// request and response through untouched.
struct PassThrough;

impl Context for PassThrough {}

impl HttpContext for PassThrough {}
