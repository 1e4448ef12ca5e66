//! Pick mode: the filter picks a member per request from the worker's view
//! of the published snapshot ([`UpstreamPicker`]) and hands it to the
//! proxy's router as [`RouteMode`] says. On nginx every worker's root also
//! carries a poller; the workers elect one poller per upstream (lease).
//!
//! On nginx only host functions ngx_wasm_module implements are called: no
//! gRPC, no `proxy_get_status`, no resume/continue calls.

use super::abi;
use super::contexts::{Context, HttpContext};
use super::poller::HostPoller;
use super::store::HostStore;
use super::{now_ms, request_header, route, send, send_metrics, send_status};
use crate::sansio::config::PluginConfig;
use crate::sansio::pick::filter::{Decision, PickFilter, Routed};
use crate::sansio::pick::request_key::RequestView;
use crate::sansio::pick::route::{dynamic_host_states, original_dst_state, RouteMode, BACKEND_VARIABLE};
use crate::sansio::serve::reply::LocalReply;
use proxy_wasm::types::{Action, MapType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Hands the picked member to the router.
fn apply(mode: &RouteMode, address: &str) -> Result<(), String> {
    match mode {
        RouteMode::NginxVariable => abi::set_property(BACKEND_VARIABLE.to_vec(), Some(address.as_bytes()))
            .map_err(|e| format!("{e:?}: declare it with `set $upsync_backend \"\";` at server level")),
        RouteMode::EnvoyHeader(name) => {
            abi::set_map_value(MapType::HttpRequestHeaders, name, Some(address)).map_err(|e| format!("{e:?}"))
        }
        RouteMode::EnvoyOriginalDst => {
            abi::call_foreign_function("set_envoy_filter_state", Some(&original_dst_state(address)))
                .map(|_| ())
                .map_err(|e| format!("{e:?}"))
        }
        RouteMode::EnvoyDynamicHost => {
            let states = dynamic_host_states(address).ok_or("not a host:port address")?;
            for state in states {
                abi::call_foreign_function("set_envoy_filter_state", Some(&state)).map_err(|e| format!("{e:?}"))?;
            }
            Ok(())
        }
    }
}

/// The request being picked for, read only as far as the core asks (hash
/// key, subset header, `pick_variable`); holds the property path of the
/// client's address on this host.
struct HostRequest([&'static str; 2]);

impl RequestView for HostRequest {
    fn header(&self, name: &str) -> Option<String> {
        request_header(name)
    }

    fn client_address(&self) -> Option<String> {
        let raw = abi::get_property(self.0.to_vec()).ok().flatten()?;
        String::from_utf8(raw).ok()
    }

    fn variable(&self, name: &str) -> Option<Vec<u8>> {
        abi::get_property(vec!["ngx", name]).ok().flatten()
    }
}

/// The root of a pick-mode filter: on nginx it also carries the worker's
/// poller; on Envoy the bootstrap singleton polls.
pub struct PickRoot {
    pub poller: Option<HostPoller>,
    pub filter: Rc<RefCell<PickFilter>>,
    pub seen: Rc<Cell<u64>>,
}

impl PickRoot {
    pub fn new(config: &PluginConfig, poller: Option<HostPoller>, seed: u64) -> Option<PickRoot> {
        let filter = PickFilter::new(config, seed)?;
        // A pick-only filter (no upstreams, no discover) polls nothing: no poller.
        let poller = poller.filter(|_| config.polls());
        if !config.polls() {
            let what = config
                .pick_variable
                .as_ref()
                .map_or_else(|| config.pick.clone().unwrap_or_default(), |v| format!("${v}"));
            log::info!("pick-only filter ({what}): routes by the member lists other filters publish");
        }
        Some(PickRoot { poller, filter: Rc::new(RefCell::new(filter)), seen: Rc::new(Cell::new(0)) })
    }

    pub fn on_tick(&mut self) {
        if let Some(p) = self.poller.as_mut() {
            p.on_tick();
        }
        self.filter.borrow_mut().on_tick(&HostStore, now_ms());
    }
}

pub struct PickStream {
    filter: Rc<RefCell<PickFilter>>,
    /// The instance's publish count this filter last refreshed at.
    seen: Rc<Cell<u64>>,
    picked: Option<Routed>,
}

impl PickStream {
    pub fn new(filter: Rc<RefCell<PickFilter>>, seen: Rc<Cell<u64>>) -> Self {
        PickStream { filter, seen, picked: None }
    }
}

impl Context for PickStream {
    fn on_done(&mut self) -> bool {
        if let Some(p) = self.picked.take() {
            self.filter.borrow_mut().on_done(&p);
        }
        true
    }
}

impl HttpContext for PickStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut filter = self.filter.borrow_mut();
        let published = super::local_publishes();
        if published != self.seen.get() {
            self.seen.set(published);
            filter.on_tick(&HostStore, now_ms());
        }
        // Every host call here costs: only what the decision needs is read.
        let path = if filter.answers_paths() { request_header(":path") } else { None };
        let request = HostRequest(filter.route_mode().client_address_property());
        let decision = filter.on_request(path.as_deref().map(route), &request, &HostStore, &now_ms);
        let reply = match decision {
            Decision::Status => {
                drop(filter);
                send_status(path.as_deref().unwrap_or_default());
                return Action::Pause;
            }
            Decision::Metrics => {
                drop(filter);
                send_metrics();
                return Action::Pause;
            }
            Decision::Refuse { status, message } => LocalReply::error(status, message),
            Decision::Route(picked) => match apply(filter.route_mode(), picked.address()) {
                Ok(()) => {
                    self.picked = Some(picked);
                    return Action::Continue;
                }
                Err(e) => {
                    let (status, message) = filter.on_route_failed(&picked, &e);
                    LocalReply::error(status, message)
                }
            },
        };
        drop(filter);
        send(&reply);
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(picked) = self.picked.take() {
            // The status is read only with passive health on.
            self.filter.borrow_mut().on_response(&mut HostStore, &picked, response_status, &now_ms);
        }
        Action::Continue
    }
}

fn response_status() -> Option<u16> {
    abi::get_map_value(MapType::HttpResponseHeaders, ":status").ok().flatten().and_then(|s| s.parse().ok())
}
