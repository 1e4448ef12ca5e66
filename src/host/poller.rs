//! Carries out a [`PollerNode`]'s actions with host calls: registry calls
//! through `dispatch_http_call`, etcd watches through gRPC streams, and
//! feeds the answers back.

use super::now_ms;
use super::store::HostStore;
use crate::sansio::node::{Dispatch, PollerNode};
use crate::sansio::request::HttpResponse;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use std::collections::HashMap;
use std::time::Duration;

/// Tick period. The core decides what is due; the tick only bounds how
/// late a due poll can start.
pub const TICK_MS: u64 = 50;

pub struct Poller {
    node: PollerNode,
    /// Host call token → (upstream index, core request id).
    calls: HashMap<u32, (usize, u64)>,
    /// Host gRPC stream token → upstream index.
    streams: HashMap<u32, usize>,
    /// Calls made from inside a call's response are sent on the next tick
    /// instead (nginx: ngx_wasm_module 0.6 crashed the worker, SIGSEGV, when
    /// a dispatch was made from `on_http_call_response`).
    defer_from_responses: bool,
    deferred: Vec<Dispatch>,
}

impl Poller {
    pub fn new(node: PollerNode, defer_from_responses: bool) -> Self {
        Poller { node, calls: HashMap::new(), streams: HashMap::new(), defer_from_responses, deferred: Vec::new() }
    }

    pub fn on_tick(&mut self) {
        let now = now_ms();
        let mut calls = std::mem::take(&mut self.deferred);
        calls.extend(self.node.on_tick(&mut HostStore, now));
        self.dispatch(calls, now);
        for open in self.node.poll_watch_opens(now) {
            let sent = hostcalls::open_grpc_stream(&open.target, open.service, open.method, vec![]).and_then(|token| {
                hostcalls::send_grpc_stream_message(token, Some(&open.message), false).map(|()| token)
            });
            match sent {
                Ok(token) => {
                    self.streams.insert(token, open.upstream);
                }
                Err(e) => {
                    log::warn!(
                        "upstream {}: cannot open the etcd watch on {:?}: {e:?}",
                        self.node.name(open.upstream),
                        open.target
                    );
                    self.node.on_watch_closed(now, open.upstream);
                }
            }
        }
    }

    fn dispatch(&mut self, calls: Vec<Dispatch>, now: u64) {
        let mut queue = calls;
        while let Some(call) = queue.pop() {
            let mut headers: Vec<(&str, &str)> = vec![
                (":method", call.request.method),
                (":path", call.request.path.as_str()),
                (":authority", call.authority.as_str()),
            ];
            headers.extend(call.request.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let body = (!call.request.body.is_empty()).then_some(call.request.body.as_slice());
            let timeout = Duration::from_millis(call.timeout_ms);
            match hostcalls::dispatch_http_call(&call.target, headers, body, vec![], timeout) {
                Ok(token) => {
                    self.calls.insert(token, (call.upstream, call.id));
                }
                Err(e) => {
                    let reason = format!("{e:?} (is {:?} a target this proxy can reach?)", call.target);
                    queue.extend(self.node.on_dispatch_failed(&mut HostStore, now, call.upstream, call.id, &reason));
                }
            }
        }
    }

    pub fn on_http_call_response(&mut self, token: u32, _num_headers: usize, body_size: usize) {
        let Some((i, id)) = self.calls.remove(&token) else {
            log::debug!("answer for unknown call {token} ignored");
            return;
        };
        let now = now_ms();
        // The whole-map getter: a response cut after its headers arrives
        // with no headers, where single-header getters misbehave.
        let headers = hostcalls::get_map(MapType::HttpCallResponseHeaders).unwrap_or_default();
        let status = headers.iter().find(|(k, _)| k == ":status").and_then(|(_, v)| v.parse::<u16>().ok());
        // Larger bodies are refused unread.
        let limit = self.node.max_body_bytes(i);
        let body = if body_size > 0 && body_size <= limit {
            match hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size) {
                Ok(Some(b)) => b,
                Ok(None) => Vec::new(),
                Err(e) => {
                    log::warn!("upstream {}: cannot read the registry answer: {e:?}", self.node.name(i));
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let response = HttpResponse { status, headers: &headers, body: &body, body_size };
        let calls = self.node.on_response(&mut HostStore, now, i, id, response);
        if self.defer_from_responses {
            self.deferred.extend(calls);
        } else {
            self.dispatch(calls, now);
        }
    }

    pub fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        let Some(&i) = self.streams.get(&token) else {
            return;
        };
        let now = now_ms();
        let message = match hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size) {
            Ok(Some(b)) => b,
            _ => Vec::new(),
        };
        let (calls, closed) = self.node.on_watch_message(&mut HostStore, now, i, &message);
        if closed {
            // etcd canceled the watch: let go of the stream, reopen later.
            self.streams.remove(&token);
            let _ = hostcalls::cancel_grpc_stream(token);
        }
        self.dispatch(calls, now);
    }

    pub fn on_grpc_stream_close(&mut self, token: u32, status_code: u32) {
        let Some(i) = self.streams.remove(&token) else {
            return;
        };
        log::info!("upstream {}: etcd watch closed (grpc-status {status_code}); reopening later", self.node.name(i));
        self.node.on_watch_closed(now_ms(), i);
    }
}
