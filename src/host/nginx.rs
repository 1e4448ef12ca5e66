//! nginx with ngx_wasm_module: every worker runs this root context. The
//! workers elect one registry poller per upstream through a lease in
//! shared data; every worker's filter picks a member per request from its
//! own view of the published snapshot and hands it to nginx through the
//! `$upsync_backend` variable (`proxy_pass http://$upsync_backend;`).
//!
//! Only host functions ngx_wasm_module implements are called here: no gRPC,
//! no `proxy_get_status`, no resume/continue calls.

use super::now_ms;
use super::poller::Poller;
use super::store::HostStore;
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

/// What a worker's filter contexts share with its root context.
pub struct NginxShared {
    pub picker: UpstreamPicker,
    pub hash_key: Option<HashKey>,
    pub passive_health: bool,
    pub status_path: Option<String>,
    /// A 503 for "no member" was logged since the last good pick.
    warned_empty: bool,
}

pub struct NginxRoot {
    pub poller: Poller,
    pub shared: Rc<RefCell<NginxShared>>,
}

impl NginxRoot {
    pub fn new(config: &PluginConfig, poller: Poller, seed: u64) -> Option<NginxRoot> {
        let name = config.pick.as_deref()?;
        let upstream = config.upstreams.iter().find(|u| u.name == name)?;
        let hash_key = match &upstream.balance {
            BalancePolicy::Hash(k) => Some(k.clone()),
            _ => None,
        };
        let shared = NginxShared {
            picker: UpstreamPicker::new(upstream, seed),
            hash_key,
            passive_health: upstream.passive_health,
            status_path: config.status_path.clone(),
            warned_empty: false,
        };
        Some(NginxRoot { poller, shared: Rc::new(RefCell::new(shared)) })
    }

    pub fn on_tick(&mut self) {
        self.poller.on_tick();
        let now = now_ms();
        let mut shared = self.shared.borrow_mut();
        if shared.picker.refresh(&HostStore, now) {
            log::debug!("upstream {}: view now {:?}", shared.picker.name(), shared.picker.source());
        }
    }
}

pub struct NginxStream {
    shared: Rc<RefCell<NginxShared>>,
    picked: Option<Picked>,
}

impl NginxStream {
    pub fn new(shared: Rc<RefCell<NginxShared>>) -> Self {
        NginxStream { shared, picked: None }
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

fn hash_key_value(key: &HashKey) -> Option<Vec<u8>> {
    match key {
        HashKey::Header(h) => request_header(h).map(String::into_bytes),
        HashKey::Cookie(c) => request_header("cookie").and_then(|v| cookie(&v, c)).map(String::into_bytes),
        HashKey::ClientAddress => hostcalls::get_property(vec!["ngx", "remote_addr"]).ok().flatten(),
    }
}

fn local_reply(status: u32, message: &str) {
    let body = serde_json::json!({ "error": message }).to_string();
    let headers = vec![("content-type", "application/json")];
    if let Err(e) = hostcalls::send_http_response(status, headers, Some(body.as_bytes())) {
        log::warn!("cannot send a local response: {e:?}");
    }
}

impl Context for NginxStream {
    fn on_done(&mut self) -> bool {
        self.finish();
        true
    }
}

impl HttpContext for NginxStream {
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
        let key = shared.hash_key.as_ref().and_then(hash_key_value);
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
        if let Err(e) = hostcalls::set_property(BACKEND_VARIABLE.to_vec(), Some(picked.address.as_bytes())) {
            log::error!(
                "cannot set $upsync_backend ({e:?}): declare it with `set $upsync_backend \"\";` at server level"
            );
            drop(shared);
            local_reply(500, "upsync: $upsync_backend is not a writable nginx variable");
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
        // The member's thresholds, read before the shared state is let go.
        let report = {
            let shared = self.shared.borrow();
            let member = shared.picker.member(&picked.address);
            (shared.passive_health && passive::is_failure(status))
                .then_some(member)
                .flatten()
                .map(|m| (shared.picker.name().to_string(), m.attrs.max_fails, m.attrs.fail_timeout))
        };
        if let Some((name, max_fails, fail_timeout)) = report {
            match passive::report_failure(&mut HostStore, &name, &picked.address, max_fails, fail_timeout, now_ms()) {
                Ok(true) => {
                    log::warn!(
                        "upstream {name}: {} out for {fail_timeout} s after {max_fails} failures",
                        picked.address
                    )
                }
                Ok(false) => {}
                Err(e) => log::warn!("upstream {name}: cannot record a failure: {e}"),
            }
        }
        self.finish();
        Action::Continue
    }
}
