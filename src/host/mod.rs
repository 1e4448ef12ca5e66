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
mod poller;
mod server;
mod store;

use crate::sansio::node::{Leadership, PollerNode};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::time::{Duration, UNIX_EPOCH};

pub const POLLER_ROOT_ID: &str = "upsync_poller";
pub const SERVER_ROOT_ID: &str = "upsync_eds";

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

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _trailers: usize) {
        if let Role::Poller(p) = &mut self.role {
            p.on_http_call_response(token, num_headers, body_size);
        }
    }

    fn on_grpc_stream_message(&mut self, token: u32, message_size: usize) {
        if let Role::Poller(p) = &mut self.role {
            p.on_grpc_stream_message(token, message_size);
        }
    }

    fn on_grpc_stream_close(&mut self, token: u32, status_code: u32) {
        if let Role::Poller(p) = &mut self.role {
            p.on_grpc_stream_close(token, status_code);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let config = plugin_configuration(plugin_configuration_size);
        let root = root_id().unwrap_or_default();
        match root.as_str() {
            POLLER_ROOT_ID => match crate::sansio::config::PluginConfig::parse(&config) {
                Ok(cfg) => {
                    logger::set_level(cfg.log_level);
                    let max_body = cfg.upstreams.iter().map(|u| u.max_body_bytes).collect();
                    let node = PollerNode::new(&cfg, Leadership::Singleton, now_ms());
                    log::info!("poller configured with {} upstream(s)", cfg.upstreams.len());
                    let p = poller::Poller::new(node, max_body);
                    // Only arm the tick here: on_configure also runs in Envoy's
                    // throwaway validation VM, where nothing else may happen.
                    if let Err(e) = hostcalls::set_tick_period(Duration::from_millis(poller::TICK_MS)) {
                        log::error!("cannot set the tick period: {e:?}");
                        return false;
                    }
                    self.role = Role::Poller(Box::new(p));
                    true
                }
                Err(e) => {
                    log::error!("invalid configuration: {e}");
                    false
                }
            },
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
            other => {
                log::error!(
                    "root_id {other:?} is not one of {POLLER_ROOT_ID:?} (registry poller) or {SERVER_ROOT_ID:?} (EDS and status server)"
                );
                false
            }
        }
    }

    fn on_tick(&mut self) {
        match &mut self.role {
            Role::Poller(p) => p.on_tick(),
            Role::Server(_) => server::answer_parked(self.context_id),
            Role::Unconfigured => {}
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Always a context: the SDK panics on None. Outside the server role
        // it lets every request through untouched.
        let (active, hold) = match &self.role {
            Role::Server(c) => (true, c.eds_hold_ms),
            _ => (false, 0),
        };
        Some(Box::new(server::ServerStream::new(context_id, active, hold)))
    }
}
