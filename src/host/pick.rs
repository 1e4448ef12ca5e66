//! Pick mode: the filter picks a member per request from the worker's view
//! of the published snapshot ([`UpstreamPicker`]) and hands it to the
//! proxy's router as [`RouteMode`] says. On nginx every worker's root also
//! carries a poller; the workers elect one poller per upstream (lease).
//!
//! On nginx only host functions ngx_wasm_module implements are called: no
//! gRPC, no `proxy_get_status`, no resume/continue calls.

use super::poller::HostPoller;
use super::store::HostStore;
use super::{now_ms, request_header, route, send, send_status};
use crate::sansio::config::PluginConfig;
use crate::sansio::pick::picker::{Picked, Report, UpstreamPicker};
use crate::sansio::pick::request_key::{hash_key_value, RequestView};
use crate::sansio::pick::route::{original_dst_state, RouteMode, BACKEND_VARIABLE};
use crate::sansio::serve::reply::JsonReply;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use std::cell::RefCell;
use std::rc::Rc;

/// Hands the picked member to the router.
fn apply(mode: &RouteMode, address: &str) -> Result<(), String> {
    match mode {
        RouteMode::NginxVariable => hostcalls::set_property(BACKEND_VARIABLE.to_vec(), Some(address.as_bytes()))
            .map_err(|e| format!("{e:?}: declare it with `set $upsync_backend \"\";` at server level")),
        RouteMode::EnvoyHeader(name) => {
            hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(address)).map_err(|e| format!("{e:?}"))
        }
        RouteMode::EnvoyOriginalDst => {
            hostcalls::call_foreign_function("set_envoy_filter_state", Some(&original_dst_state(address)))
                .map(|_| ())
                .map_err(|e| format!("{e:?}"))
        }
    }
}

/// The request being picked for, as the core's hash keys read it.
struct HostRequest<'a>(&'a RouteMode);

impl RequestView for HostRequest<'_> {
    fn header(&self, name: &str) -> Option<String> {
        request_header(name)
    }

    fn client_address(&self) -> Option<String> {
        let raw = hostcalls::get_property(self.0.client_address_property().to_vec()).ok().flatten()?;
        String::from_utf8(raw).ok()
    }
}

/// What a worker's filter contexts share with its root context.
pub struct PickShared {
    pub picker: UpstreamPicker,
    pub status_path: Option<String>,
    pub route: RouteMode,
    /// A 503 for "no member" was logged since the last good pick.
    warned_empty: bool,
    /// The view was read at least once (a worker can get a request before
    /// its first tick: nginx respawns workers under load).
    refreshed: bool,
}

/// The root of a pick-mode filter: on nginx it also carries the worker's
/// poller node; on Envoy the bootstrap singleton polls.
pub struct PickRoot {
    pub poller: Option<HostPoller>,
    pub shared: Rc<RefCell<PickShared>>,
}

impl PickRoot {
    pub fn new(config: &PluginConfig, poller: Option<HostPoller>, seed: u64) -> Option<PickRoot> {
        let route = RouteMode::for_config(config);
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
        let key = shared.picker.hash_key().and_then(|k| hash_key_value(k, &HostRequest(&shared.route)));
        let Some(picked) = shared.picker.pick(key.as_deref()) else {
            if !shared.warned_empty {
                shared.warned_empty = true;
                log::warn!("upstream {}: answering 503: {}", shared.picker.name(), shared.picker.unavailable_reason());
            }
            drop(shared);
            send(&JsonReply::error(503, "no upstream member available"));
            return Action::Pause;
        };
        shared.warned_empty = false;
        if let Err(e) = apply(&shared.route, &picked.address) {
            log::error!(
                "upstream {}: cannot route to the picked member ({:?}): {e}",
                shared.picker.name(),
                shared.route
            );
            drop(shared);
            send(&JsonReply::error(500, "upsync: the picked member could not be handed to the proxy"));
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
