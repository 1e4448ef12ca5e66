//! The request-serving role: REST EDS for Envoy and the status endpoint,
//! both answered locally from shared data.
//!
//! With `eds_hold_ms` > 0, an EDS request whose version is already current
//! is parked instead of answered 304 at once: the root context of the same
//! worker checks the small version entries on every tick and answers the
//! parked request as soon as a snapshot changes, or with 304 when the hold
//! runs out. Envoy's REST EDS then behaves like a long poll: a short
//! `refresh_delay` costs few requests, and a change reaches Envoy within a
//! tick instead of within `refresh_delay`.

use super::store::HostStore;
use super::{error, now_ms, request_header, route, send, send_status};
use crate::sansio::eds::{self, DiscoveryRequest, EdsReply};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType};
use std::cell::RefCell;

pub const EDS_PATH: &str = "/v3/discovery:endpoints";
pub const STATUS_PATH: &str = "/upsync/status";
/// DiscoveryRequests are small; anything larger is refused.
const MAX_REQUEST_BODY: usize = 1024 * 1024;
/// How often a worker checks its parked EDS requests.
pub const HOLD_TICK_MS: u64 = 10;

/// An EDS request waiting for a change.
struct Parked {
    context_id: u32,
    request: DiscoveryRequest,
    until: u64,
}

thread_local! {
    // One VM per worker thread: the parked requests of this worker's streams.
    static PARKED: RefCell<Vec<Parked>> = const { RefCell::new(Vec::new()) };
}

pub struct ServerStream {
    context_id: u32,
    eds_hold_ms: u64,
    awaiting_eds_body: bool,
}

impl ServerStream {
    pub fn new(context_id: u32, eds_hold_ms: u64) -> Self {
        ServerStream { context_id, eds_hold_ms, awaiting_eds_body: false }
    }
}

fn send_eds(reply: &EdsReply) {
    match reply {
        EdsReply::Assignment { version, skipped_hostnames, .. } => {
            log::debug!("EDS: version {version} served ({skipped_hostnames} hostname members left out)")
        }
        EdsReply::Unavailable(e) | EdsReply::BadRequest(e) => log::debug!("EDS: {e}"),
        EdsReply::NotModified => {}
    }
    send(&reply.to_json_reply());
}

/// Answers the parked requests whose snapshot changed or whose hold ran
/// out. Called from the root context's tick; `root_id` is restored as the
/// effective context afterwards.
pub fn answer_parked(root_id: u32) {
    let now = now_ms();
    let due: Vec<Parked> = PARKED.with(|p| {
        let mut parked = p.borrow_mut();
        let (due, waiting): (Vec<Parked>, Vec<Parked>) = parked.drain(..).partition(|w| {
            // A parked request for names with no snapshot yet has no version:
            // it is due as soon as one appears.
            let current = eds::current_version(&HostStore, &w.request.resource_names);
            now >= w.until || current.is_some_and(|v| v != w.request.version_info)
        });
        *parked = waiting;
        due
    });
    if due.is_empty() {
        return;
    }
    for w in due {
        if hostcalls::set_effective_context(w.context_id).is_ok() {
            send_eds(&eds::answer(&HostStore, &w.request));
        }
    }
    let _ = hostcalls::set_effective_context(root_id);
}

fn unpark(context_id: u32) {
    PARKED.with(|p| p.borrow_mut().retain(|w| w.context_id != context_id));
}

impl Context for ServerStream {
    fn on_done(&mut self) -> bool {
        // The stream is gone (answered, reset or timed out): never answer it later.
        unpark(self.context_id);
        true
    }
}

impl HttpContext for ServerStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let path = request_header(":path").unwrap_or_default();
        let method = request_header(":method").unwrap_or_default();
        let route = route(&path);
        if route == STATUS_PATH {
            if method == "GET" {
                send_status(&path);
            } else {
                send(&error(405, "use GET"));
            }
            return Action::Pause;
        }
        if route == EDS_PATH {
            if method != "POST" {
                send(&error(405, "use POST with a JSON DiscoveryRequest"));
            } else if end_of_stream {
                send(&error(400, "a DiscoveryRequest body is required"));
            } else {
                self.awaiting_eds_body = true;
            }
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.awaiting_eds_body {
            return Action::Continue;
        }
        if body_size > MAX_REQUEST_BODY {
            self.awaiting_eds_body = false;
            send(&error(413, "DiscoveryRequest too large"));
            return Action::Pause;
        }
        if !end_of_stream {
            // Pausing here makes the host buffer the body until the end.
            return Action::Pause;
        }
        self.awaiting_eds_body = false;
        let body = match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
            Ok(Some(b)) => b,
            _ => Vec::new(),
        };
        let request = match eds::parse_request(&body) {
            Ok(r) => r,
            Err(e) => {
                send_eds(&EdsReply::BadRequest(e));
                return Action::Pause;
            }
        };
        let reply = eds::answer(&HostStore, &request);
        // "Nothing new" and "nothing yet" both wait for a change.
        let waits = matches!(reply, EdsReply::NotModified | EdsReply::Unavailable(_));
        if waits && self.eds_hold_ms > 0 {
            let until = now_ms().saturating_add(self.eds_hold_ms);
            PARKED.with(|p| p.borrow_mut().push(Parked { context_id: self.context_id, request, until }));
        } else {
            send_eds(&reply);
        }
        Action::Pause
    }
}
