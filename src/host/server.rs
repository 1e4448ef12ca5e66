//! The request-serving role: REST EDS for Envoy and the status endpoint,
//! both answered locally from shared data. Held EDS requests
//! ([`crate::sansio::serve::eds_hold`]) are answered when the poller's
//! wake-up reaches the worker's shared queue ([`super::wake`]) and from the
//! root context's tick of the same worker; that tick runs only while
//! requests are held.

use super::abi;
use super::contexts::{Context, HttpContext};
use super::store::HostStore;
use super::{now_ms, read_buffer, read_buffer_at, request_header, send, send_metrics, send_status};
use crate::sansio::config::ServerConfig;
use crate::sansio::serve::cds;
use crate::sansio::serve::eds::{self, EdsReply};
use crate::sansio::serve::eds_hold::{EdsHold, Tick};
use crate::sansio::serve::eds_request;
use crate::sansio::serve::local::{body_too_large, endpoint, Endpoint};
use proxy_wasm::types::{Action, BufferType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

thread_local! {
    // One VM per worker thread: the held requests of this worker's streams.
    static HELD: RefCell<EdsHold> = RefCell::new(EdsHold::default());
    // This worker's wake queue: registered on the first tick (not in
    // on_configure, which also runs in Envoy's throwaway validation VM).
    static WAKE_QUEUE: Cell<Option<Option<u32>>> = const { Cell::new(None) };
}

/// The poller published: answer what moved now (at most a tick's worth;
/// the tick drains the rest).
pub fn on_queue_ready(root_id: u32, queue_id: u32) {
    if WAKE_QUEUE.with(Cell::get) != Some(Some(queue_id)) {
        return;
    }
    super::wake::drain(queue_id);
    if HELD.with(|h| h.borrow_mut().woken()) {
        log::info!("EDS: the poller's wake-ups reach this worker: held requests are answered from them");
    }
    answer_held(root_id);
}

pub struct ServerStream {
    context_id: u32,
    config: Rc<ServerConfig>,
    /// The xDS request whose body is awaited.
    awaiting: Option<Endpoint>,
}

impl ServerStream {
    pub fn new(context_id: u32, config: Rc<ServerConfig>) -> Self {
        ServerStream { context_id, config, awaiting: None }
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

/// Arms, re-times or stops this VM's tick as the held requests need it
/// (armed exactly while one is held). `false`: a request is held and no
/// tick runs (the host refused to arm it).
fn steer_tick(held: &mut EdsHold) -> bool {
    let Some(change) = held.tick_change() else {
        return true;
    };
    let period = match change {
        Tick::Every(ms) => Duration::from_millis(ms),
        Tick::Stop => Duration::ZERO,
    };
    match abi::set_tick_period(period) {
        Ok(()) => {
            held.ticked(change);
            true
        }
        Err(e) => {
            log::warn!("EDS: cannot set the tick period to {period:?}: {e:?}");
            change == Tick::Stop || held.is_ticking()
        }
    }
}

/// Answers the held requests that are due. Called from the root context's
/// tick and wake-ups; `root_id` is restored as the effective context
/// afterwards.
pub fn answer_held(root_id: u32) {
    if WAKE_QUEUE.with(Cell::get).is_none() {
        WAKE_QUEUE.with(|q| q.set(Some(super::wake::register(super::worker_identity(root_id)))));
    }
    let due = HELD.with(|h| {
        let mut held = h.borrow_mut();
        let due = if held.is_empty() { Vec::new() } else { held.take_due(&HostStore, now_ms()) };
        if due.is_empty() {
            steer_tick(&mut held);
        }
        due
    });
    if due.is_empty() {
        return;
    }
    for h in due {
        if abi::set_effective_context(h.stream).is_ok() {
            send_eds(&eds::answer(&HostStore, &h.request));
        }
    }
    let _ = abi::set_effective_context(root_id);
    HELD.with(|h| steer_tick(&mut h.borrow_mut()));
}

/// The EDS request of `size` bytes: from its two ends when they have
/// Envoy's shape ([`eds_request`]: the same few bytes whatever the size of
/// Envoy's node), else the whole body, parsed.
fn read_eds_request(size: usize) -> Result<eds::DiscoveryRequest, String> {
    if let Some(tail_at) = size.checked_sub(eds_request::TAIL).filter(|&at| at >= eds_request::HEAD) {
        let head = read_buffer_at(BufferType::HttpRequestBody, 0, eds_request::HEAD);
        let tail = read_buffer_at(BufferType::HttpRequestBody, tail_at, eds_request::TAIL);
        if let Some(request) = eds_request::parse_ends(&head, &tail) {
            return Ok(request);
        }
    }
    eds::parse_request(&read_buffer(BufferType::HttpRequestBody, size))
}

impl Context for ServerStream {
    fn on_done(&mut self) -> bool {
        // The stream is gone (answered, reset or timed out): never answer it later.
        HELD.with(|h| h.borrow_mut().release(self.context_id));
        true
    }
}

impl HttpContext for ServerStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let path = request_header(":path").unwrap_or_default();
        let method = request_header(":method").unwrap_or_default();
        let authorization = request_header("authorization");
        let token = self.config.status_token.as_ref();
        match endpoint(&method, &path, end_of_stream, authorization.as_deref(), token) {
            Endpoint::Status => send_status(&path),
            Endpoint::Metrics => send_metrics(),
            xds @ (Endpoint::Eds | Endpoint::Cds) => self.awaiting = Some(xds),
            Endpoint::Reply(reply) => send(&reply),
            Endpoint::Other => return Action::Continue,
        }
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.awaiting.is_none() {
            return Action::Continue;
        }
        if let Some(reply) = body_too_large(body_size) {
            self.awaiting = None;
            send(&reply);
            return Action::Pause;
        }
        if !end_of_stream {
            // Pausing here makes the host buffer the body until the end.
            return Action::Pause;
        }
        if self.awaiting.take() == Some(Endpoint::Cds) {
            let body = read_buffer(BufferType::HttpRequestBody, body_size);
            let reply = match cds::parse_request(&body) {
                Ok(version) => cds::answer(&HostStore, &self.config.cds, &version),
                Err(e) => cds::CdsReply::BadRequest(e),
            };
            if let cds::CdsReply::Clusters { version, count, .. } = &reply {
                log::info!("CDS: version {version} served ({count} clusters)");
            }
            send(&reply.to_json_reply());
            return Action::Pause;
        }
        let request = match read_eds_request(body_size) {
            Ok(r) => r,
            Err(e) => {
                send_eds(&EdsReply::BadRequest(e));
                return Action::Pause;
            }
        };
        let reply = eds::answer(&HostStore, &request);
        if reply.waits() && self.config.eds_hold_ms > 0 {
            let until = now_ms().saturating_add(self.config.eds_hold_ms);
            let ticking = HELD.with(|h| {
                let mut held = h.borrow_mut();
                held.hold(self.context_id, request, until);
                // From a stream context the host sets its root context's tick.
                let ticking = steer_tick(&mut held);
                if !ticking {
                    held.release(self.context_id);
                }
                ticking
            });
            if !ticking {
                // No tick would ever answer it: answer now instead.
                send_eds(&reply);
            }
        } else {
            send_eds(&reply);
        }
        Action::Pause
    }
}
