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

use super::poller::Poller;
use super::store::HostStore;
use super::{error, now_ms, request_header, route, send, send_status};
use crate::sansio::config::EnvoyRoute;
use crate::sansio::config::{HashKey, PluginConfig};
use crate::sansio::picker::{original_dst_state, Picked, Report, UpstreamPicker, ViewSource};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use std::cell::RefCell;
use std::rc::Rc;

/// The nginx variable the filter sets; declare it with `set` at server level.
pub const BACKEND_VARIABLE: [&str; 2] = ["ngx", "upsync_backend"];

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
                hostcalls::call_foreign_function("set_envoy_filter_state", Some(&original_dst_state(address)))
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

/// What a worker's filter contexts share with its root context.
pub struct PickShared {
    pub picker: UpstreamPicker,
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
        let shared = PickShared {
            picker: UpstreamPicker::new(upstream, seed),
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

impl Context for PickStream {
    fn on_done(&mut self) -> bool {
        self.finish();
        true
    }
}

impl HttpContext for PickStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut shared = self.shared.borrow_mut();
        if let Some(status_path) = shared.status_path.as_deref() {
            let path = request_header(":path").unwrap_or_default();
            if route(&path) == status_path {
                send_status(&path);
                return Action::Pause;
            }
        }
        if !shared.refreshed {
            shared.refreshed = true;
            shared.picker.refresh(&HostStore, now_ms());
        }
        let key = shared.picker.hash_key().and_then(|k| hash_key_value(k, &shared.route));
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
            send(&error(503, "no upstream member available"));
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
            send(&error(500, "upsync: the picked member could not be handed to the proxy"));
            return Action::Pause;
        }
        drop(shared);
        self.picked = Some(picked);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(picked) = self.picked.take() else {
            return Action::Continue;
        };
        let status = hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse().ok());
        let mut shared = self.shared.borrow_mut();
        match shared.picker.report(&mut HostStore, &picked, status, now_ms()) {
            Ok(Report::TookOut { max_fails, fail_timeout }) => log::warn!(
                "upstream {}: {} out for {fail_timeout} s after {max_fails} failures",
                shared.picker.name(),
                picked.address
            ),
            Ok(Report::Ignored | Report::Counted) => {}
            Err(e) => log::warn!("upstream {}: cannot record a failure: {e}", shared.picker.name()),
        }
        shared.picker.done(&picked);
        Action::Continue
    }
}
