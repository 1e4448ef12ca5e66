//! Pick mode: the filter picks a member per request from the worker's view
//! of the published snapshot, and hands it to the proxy. How it hands it
//! over is the only host difference ([`RouteApplier`]):
//! - nginx (ngx_wasm_module): the `$upsync_backend` variable, used by
//!   `proxy_pass http://$upsync_backend;`. Every nginx worker also runs a
//!   poller node; the workers elect one poller per upstream (lease).
//! - Envoy: a request header read by the `override_host` load balancing
//!   policy of the EDS cluster (the filter always overwrites it, so a
//!   client cannot choose), or the `original_dst_address` filter state of
//!   an ORIGINAL_DST cluster (clients cannot touch filter state at all).
//!
//! On nginx only host functions ngx_wasm_module implements are called: no
//! gRPC, no `proxy_get_status`, no resume/continue calls.

use super::now_ms;
use super::poller::Poller;
use super::store::HostStore;
use crate::sansio::config::EnvoyRoute;
use crate::sansio::config::{BalancePolicy, HashKey, PluginConfig};
use crate::sansio::passive;
use crate::sansio::picker::{Picked, UpstreamPicker, ViewSource};
use crate::sansio::status;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use std::cell::RefCell;
use std::rc::Rc;

/// The nginx variable the filter sets; declare it with `set` at server level.
pub const BACKEND_VARIABLE: [&str; 2] = ["ngx", "upsync_backend"];
/// Envoy's filter state key read by ORIGINAL_DST clusters.
pub const ORIGINAL_DST_STATE: &str = "envoy.network.transport_socket.original_dst_address";

/// How the picked member reaches the proxy's router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteApplier {
    NginxVariable,
    EnvoyHeader(String),
    EnvoyOriginalDst,
}

impl RouteApplier {
    fn apply(&self, address: &str) -> Result<(), String> {
        match self {
            RouteApplier::NginxVariable => hostcalls::set_property(BACKEND_VARIABLE.to_vec(), Some(address.as_bytes()))
                .map_err(|e| format!("{e:?}: declare it with `set $upsync_backend \"\";` at server level")),
            RouteApplier::EnvoyHeader(name) => {
                hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(address)).map_err(|e| format!("{e:?}"))
            }
            RouteApplier::EnvoyOriginalDst => {
                hostcalls::call_foreign_function("set_envoy_filter_state", Some(&filter_state_args(address)))
                    .map(|_| ())
                    .map_err(|e| format!("{e:?}"))
            }
        }
    }

    /// The client's address, for hashing: host only, no port.
    fn client_address(&self) -> Option<Vec<u8>> {
        let path = match self {
            RouteApplier::NginxVariable => vec!["ngx", "remote_addr"],
            _ => vec!["source", "address"],
        };
        let raw = hostcalls::get_property(path).ok().flatten()?;
        let text = String::from_utf8(raw).ok()?;
        let host = match text.parse::<crate::sansio::member::HostPort>() {
            Ok(hp) => hp.host.bare(),
            Err(_) => text,
        };
        Some(host.into_bytes())
    }
}

/// `SetEnvoyFilterStateArguments{path: 1, value: 2, span: 3 = DownstreamRequest}`
/// (envoy/source/extensions/common/wasm/ext/set_envoy_filter_state.proto).
fn filter_state_args(address: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(ORIGINAL_DST_STATE.len() + address.len() + 8);
    for (field, value) in [(1u8, ORIGINAL_DST_STATE.as_bytes()), (2u8, address.as_bytes())] {
        out.push((field << 3) | 2);
        // Both strings are far shorter than 128 bytes: a one-byte length.
        out.push(u8::try_from(value.len()).unwrap_or(0x7f) & 0x7f);
        out.extend_from_slice(value);
    }
    out.extend_from_slice(&[3 << 3, 1]);
    out
}

/// What a worker's filter contexts share with its root context.
pub struct PickShared {
    pub picker: UpstreamPicker,
    pub hash_key: Option<HashKey>,
    pub passive_health: bool,
    pub status_path: Option<String>,
    pub route: RouteApplier,
    /// A 503 for "no member" was logged since the last good pick.
    warned_empty: bool,
    /// The view was read at least once (a worker can get a request before
    /// its first tick: nginx respawns workers under load).
    refreshed: bool,
}

/// The root of a pick-mode filter: on nginx it also carries the worker's
/// poller node; on Envoy the bootstrap singleton polls.
pub struct PickRoot {
    pub poller: Option<Poller>,
    pub shared: Rc<RefCell<PickShared>>,
}

impl PickRoot {
    pub fn new(config: &PluginConfig, poller: Option<Poller>, seed: u64) -> Option<PickRoot> {
        let route = match (config.host, &config.route) {
            (crate::sansio::config::HostKind::Nginx, _) => RouteApplier::NginxVariable,
            (_, EnvoyRoute::OverrideHost { header }) => RouteApplier::EnvoyHeader(header.clone()),
            (_, EnvoyRoute::OriginalDst) => RouteApplier::EnvoyOriginalDst,
        };
        let name = config.pick.as_deref()?;
        let upstream = config.upstreams.iter().find(|u| u.name == name)?;
        let hash_key = match &upstream.balance {
            BalancePolicy::Hash(k) => Some(k.clone()),
            _ => None,
        };
        let shared = PickShared {
            picker: UpstreamPicker::new(upstream, seed),
            hash_key,
            passive_health: upstream.passive_health,
            status_path: config.status_path.clone(),
            route,
            warned_empty: false,
            refreshed: false,
        };
        Some(PickRoot { poller, shared: Rc::new(RefCell::new(shared)) })
    }

    pub fn on_tick(&mut self) {
        if let Some(p) = self.poller.as_mut() {
            p.on_tick();
        }
        let now = now_ms();
        let mut shared = self.shared.borrow_mut();
        shared.refreshed = true;
        if shared.picker.refresh(&HostStore, now) {
            log::debug!("upstream {}: view now {:?}", shared.picker.name(), shared.picker.source());
        }
    }
}

pub struct PickStream {
    shared: Rc<RefCell<PickShared>>,
    picked: Option<Picked>,
}

impl PickStream {
    pub fn new(shared: Rc<RefCell<PickShared>>) -> Self {
        PickStream { shared, picked: None }
    }

    fn finish(&mut self) {
        if let Some(p) = self.picked.take() {
            self.shared.borrow_mut().picker.done(&p);
        }
    }
}

fn request_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpRequestHeaders, name).ok().flatten()
}

fn cookie(header: &str, name: &str) -> Option<String> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

fn hash_key_value(key: &HashKey, route: &RouteApplier) -> Option<Vec<u8>> {
    match key {
        HashKey::Header(h) => request_header(h).map(String::into_bytes),
        HashKey::Cookie(c) => request_header("cookie").and_then(|v| cookie(&v, c)).map(String::into_bytes),
        HashKey::ClientAddress => route.client_address(),
    }
}

fn local_reply(status: u32, message: &str) {
    let body = serde_json::json!({ "error": message }).to_string();
    let headers = vec![("content-type", "application/json")];
    if let Err(e) = hostcalls::send_http_response(status, headers, Some(body.as_bytes())) {
        log::warn!("cannot send a local response: {e:?}");
    }
}

impl Context for PickStream {
    fn on_done(&mut self) -> bool {
        self.finish();
        true
    }
}

impl HttpContext for PickStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut shared = self.shared.borrow_mut();
        if let Some(path) = shared.status_path.as_deref() {
            let request_path = request_header(":path").unwrap_or_default();
            if request_path.split('?').next() == Some(path) {
                let reply = status::status_reply(&HostStore, status::upstream_filter(&request_path));
                let headers = vec![("content-type", "application/json")];
                if let Err(e) =
                    hostcalls::send_http_response(u32::from(reply.status), headers, Some(reply.body.as_bytes()))
                {
                    log::warn!("cannot send the status: {e:?}");
                }
                return Action::Pause;
            }
        }
        if !shared.refreshed {
            shared.refreshed = true;
            shared.picker.refresh(&HostStore, now_ms());
        }
        let key = shared.hash_key.as_ref().and_then(|k| hash_key_value(k, &shared.route));
        let Some(picked) = shared.picker.pick(key.as_deref()) else {
            if !shared.warned_empty {
                shared.warned_empty = true;
                let why = match shared.picker.source() {
                    ViewSource::Nothing => "no member list yet and no fallback configured",
                    _ => "every member is down, drained or out after failures",
                };
                log::warn!("upstream {}: answering 503: {why}", shared.picker.name());
            }
            drop(shared);
            local_reply(503, "no upstream member available");
            return Action::Pause;
        };
        shared.warned_empty = false;
        if let Err(e) = shared.route.apply(&picked.address) {
            log::error!(
                "upstream {}: cannot route to the picked member ({:?}): {e}",
                shared.picker.name(),
                shared.route
            );
            drop(shared);
            local_reply(500, "upsync: the picked member could not be handed to the proxy");
            return Action::Pause;
        }
        drop(shared);
        self.picked = Some(picked);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(picked) = self.picked.clone() else {
            return Action::Continue;
        };
        let status = hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse().ok());
        // The member's thresholds, read before the shared state is let go;
        // looked up only for a failure (by index: no search per request).
        let report = {
            let shared = self.shared.borrow();
            if shared.passive_health && passive::is_failure(status) {
                shared
                    .picker
                    .member_at(&picked)
                    .map(|m| (shared.picker.name().to_string(), m.attrs.max_fails, m.attrs.fail_timeout))
            } else {
                None
            }
        };
        if let Some((name, max_fails, fail_timeout)) = report {
            match passive::report_failure(&mut HostStore, &name, &picked.address, max_fails, fail_timeout, now_ms()) {
                Ok(true) => {
                    log::warn!(
                        "upstream {name}: {} out for {fail_timeout} s after {max_fails} failures",
                        picked.address
                    );
                    // This worker stops at once; the others on their next tick.
                    self.shared.borrow_mut().picker.refresh(&HostStore, now_ms());
                }
                Ok(false) => {}
                Err(e) => log::warn!("upstream {name}: cannot record a failure: {e}"),
            }
        }
        self.finish();
        Action::Continue
    }
}
