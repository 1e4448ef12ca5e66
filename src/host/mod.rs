//! The proxy-wasm glue: the only code that touches the host.
//!
//! One module, two roles, chosen by the plugin's `root_id`:
//! - `upsync_poller`: polls the registries and publishes snapshots
//!   (on Envoy: an `envoy.bootstrap.wasm` service with `singleton: true`);
//! - `upsync_eds`: answers REST EDS and the status endpoint from the
//!   snapshots (on Envoy: an HTTP filter on a loopback listener).
//!
//! Only `proxy_wasm::hostcalls` are used, and every `Result` is handled:
//! many of the SDK's trait helpers unwrap and would trap the VM.

mod logger;
mod pick;
mod poller;
mod server;
mod store;

use crate::sansio::config::{HostKind, PluginConfig};
use crate::sansio::node::{Leadership, PollerNode};
use crate::sansio::status::{self, JsonReply};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};
use std::time::{Duration, UNIX_EPOCH};
use store::HostStore;

pub const POLLER_ROOT_ID: &str = "upsync_poller";
pub const SERVER_ROOT_ID: &str = "upsync_eds";
pub const PICK_ROOT_ID: &str = "upsync_pick";

proxy_wasm::main! {{
    logger::install();
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> { Box::new(Root::new(context_id)) });
}}

/// Milliseconds since the Unix epoch, as the host tells it (0 if it cannot).
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn request_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpRequestHeaders, name).ok().flatten()
}

/// A request's `:path` without its query string.
fn route(path: &str) -> &str {
    path.split('?').next().unwrap_or_default()
}

/// Answers the request with `reply` (a 304 has no body, so no content type).
fn send(reply: &JsonReply) {
    let body = (!reply.body.is_empty()).then_some(reply.body.as_bytes());
    let headers = if body.is_some() { vec![("content-type", "application/json")] } else { vec![] };
    if let Err(e) = hostcalls::send_http_response(u32::from(reply.status), headers, body) {
        log::warn!("cannot send a local response: {e:?}");
    }
}

fn error(status: u16, message: &str) -> JsonReply {
    JsonReply { status, body: serde_json::json!({ "error": message }).to_string() }
}

/// Answers the status endpoint; the query of `path` may select one upstream.
fn send_status(path: &str) {
    send(&status::status_reply(&HostStore, status::upstream_filter(path)));
}

fn plugin_configuration(size: usize) -> Vec<u8> {
    match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => Vec::new(),
        Err(e) => {
            log::error!("cannot read the plugin configuration: {e:?}");
            Vec::new()
        }
    }
}

fn root_id() -> Option<String> {
    match hostcalls::get_property(vec!["plugin_root_id"]) {
        Ok(Some(bytes)) => String::from_utf8(bytes).ok(),
        _ => None,
    }
}

enum Role {
    Unconfigured,
    Poller(Box<poller::Poller>),
    Server(crate::sansio::config::ServerConfig),
    /// A picking filter: nginx (with its worker's poller) or Envoy pick mode.
    Pick(Box<pick::PickRoot>),
}

struct Root {
    context_id: u32,
    role: Role,
}

impl Root {
    fn new(context_id: u32) -> Self {
        Root { context_id, role: Role::Unconfigured }
    }
}

impl Root {
    fn poller(&mut self) -> Option<&mut poller::Poller> {
        match &mut self.role {
            Role::Poller(p) => Some(p),
            Role::Pick(n) => n.poller.as_mut(),
            _ => None,
        }
    }

    /// The poller roles: Envoy's singleton, or an nginx worker.
    fn configure_poller(&mut self, config: &[u8], root: &str) -> bool {
        let cfg = match PluginConfig::parse(config) {
            Ok(cfg) => cfg,
            Err(e) => {
                log::error!("invalid configuration: {e}");
                return false;
            }
        };
        let envoy_pick = cfg.host == HostKind::Envoy && root == PICK_ROOT_ID;
        if cfg.host == HostKind::Envoy && root != POLLER_ROOT_ID && !envoy_pick {
            log::error!(
                "root_id {root:?} is not one of {POLLER_ROOT_ID:?} (registry poller), {SERVER_ROOT_ID:?} (EDS and status server) or {PICK_ROOT_ID:?} (pick mode); for nginx set \"host\": \"nginx\""
            );
            return false;
        }
        if envoy_pick && cfg.pick.is_none() {
            log::error!(
                "invalid configuration: pick: required with root_id {PICK_ROOT_ID:?} (the upstream to pick from)"
            );
            return false;
        }
        logger::set_level(cfg.log_level);
        let now = now_ms();
        // Envoy's pick filter only reads snapshots: the bootstrap singleton
        // polls. Every other role carries a poller node.
        let poller = (!envoy_pick).then(|| {
            let leadership = match cfg.host {
                HostKind::Envoy => Leadership::Singleton,
                // Unique per worker. Context ids repeat across workers, and
                // nginx's cached clock can give two workers the same time,
                // so mix in randomness from the host (WASI random_get,
                // through std's RandomState).
                HostKind::Nginx => {
                    Leadership::Lease { me: worker_identity(now_ns(), self.context_id), ttl_ms: cfg.lease_ms }
                }
            };
            poller::Poller::new(PollerNode::new(&cfg, leadership, now), cfg.host == HostKind::Nginx)
        });
        // Only arm the tick here: on_configure also runs in Envoy's
        // throwaway validation VM, where nothing else may happen.
        if let Err(e) = hostcalls::set_tick_period(Duration::from_millis(poller::TICK_MS)) {
            log::error!("cannot set the tick period: {e:?}");
            return false;
        }
        self.role = match (cfg.host, poller) {
            (HostKind::Envoy, Some(p)) => Role::Poller(Box::new(p)),
            (_, poller) => match pick::PickRoot::new(&cfg, poller, now) {
                Some(n) => Role::Pick(Box::new(n)),
                None => {
                    log::error!("invalid configuration: pick: no such upstream");
                    return false;
                }
            },
        };
        log::info!("configured for {:?} with {} upstream(s)", cfg.host, cfg.upstreams.len());
        true
    }
}

/// A worker's identity for leases: random per process.
fn worker_identity(now_ns: u64, context_id: u32) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ns);
    h.write_u32(context_id);
    h.finish()
}

/// Nanoseconds since the Unix epoch, as the host tells it (0 if it cannot).
fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _trailers: usize) {
        if let Some(p) = self.poller() {
            p.on_http_call_response(token, num_headers, body_size);
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
        let config = plugin_configuration(plugin_configuration_size);
        let root = root_id().unwrap_or_default();
        match root.as_str() {
            SERVER_ROOT_ID => match crate::sansio::config::parse_server_config(&config) {
                Ok(server) => {
                    if server.eds_hold_ms > 0 {
                        let period = Duration::from_millis(server::HOLD_TICK_MS);
                        if let Err(e) = hostcalls::set_tick_period(period) {
                            log::error!("cannot set the tick period: {e:?}");
                            return false;
                        }
                    }
                    self.role = Role::Server(server);
                    true
                }
                Err(e) => {
                    log::error!("invalid configuration for root_id {SERVER_ROOT_ID:?}: {e}");
                    false
                }
            },
            other => self.configure_poller(&config, other),
        }
    }

    fn on_tick(&mut self) {
        match &mut self.role {
            Role::Poller(p) => p.on_tick(),
            Role::Server(_) => server::answer_parked(self.context_id),
            Role::Pick(n) => n.on_tick(),
            Role::Unconfigured => {}
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Always a context: the SDK panics on None.
        match &self.role {
            Role::Pick(n) => Some(Box::new(pick::PickStream::new(n.shared.clone()))),
            Role::Server(c) => Some(Box::new(server::ServerStream::new(context_id, c.eds_hold_ms))),
            Role::Poller(_) | Role::Unconfigured => Some(Box::new(PassThrough)),
        }
    }
}

/// The stream of a role that serves nothing: the SDK's defaults let every
/// request and response through untouched.
struct PassThrough;

impl Context for PassThrough {}

impl HttpContext for PassThrough {}
