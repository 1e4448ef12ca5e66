//! Carries out a [`Poller`]'s actions with host calls: registry calls
//! through `dispatch_http_call`, etcd watches through gRPC streams, and
//! feeds the answers back.

use super::abi;
use super::metrics::EnvoyStats;
use super::now_ms;
use super::store::HostStore;
use crate::sansio::config::{HostKind, PluginConfig};
use crate::sansio::registry::HttpResponse;
use crate::sansio::sync::poller::{Action, Dispatch, Leadership, OpenWatch, Poller};
use proxy_wasm::types::{BufferType, MapType};
use std::collections::HashMap;
use std::time::Duration;

/// Handling an answer for this long on the host's thread is logged as a warning.
const SLOW_ANSWER_MS: u64 = 100;

pub struct HostPoller {
    poller: Poller,
    /// Envoy only: the counters as Envoy stats too.
    envoy_stats: Option<EnvoyStats>,
    /// Host call token → (upstream index, core request id).
    calls: HashMap<u32, (usize, u64)>,
    /// Open gRPC streams: (host token, upstream index). A few at most.
    streams: Vec<(u32, usize)>,
    /// Calls made from inside a call's response are sent on the next tick
    /// instead (nginx: ngx_wasm_module 0.6 crashed the worker, SIGSEGV, when
    /// a dispatch was made from `on_http_call_response`).
    defer_from_responses: bool,
    deferred: Vec<Action>,
    /// Envoy: wakes the workers holding EDS requests when a list is published.
    waker: Option<super::wake::Waker>,
}

impl HostPoller {
    pub fn new(config: &PluginConfig, leadership: Leadership, seed: u64, defer_from_responses: bool) -> Self {
        HostPoller {
            poller: Poller::new(config, leadership, seed),
            envoy_stats: (config.host == HostKind::Envoy).then(EnvoyStats::default),
            calls: HashMap::new(),
            streams: Vec::new(),
            defer_from_responses,
            deferred: Vec::new(),
            waker: (config.host == HostKind::Envoy).then(super::wake::Waker::default),
        }
    }

    pub fn on_tick(&mut self) {
        let now = now_ms();
        let due = self.poller.poll_timeout().is_some_and(|due| due <= now);
        // Every other input ends in a flush: a tick with no deadline due
        // and nothing deferred has nothing to do (on nginx every filter of
        // every worker ticks every 10 ms, so this is the idle cost).
        if !due && self.deferred.is_empty() {
            return;
        }
        if due {
            self.poller.handle_timeout(&mut HostStore, now);
        }
        let deferred = std::mem::take(&mut self.deferred);
        self.carry_out(deferred, now);
    }

    /// Carries out `first`, then every action the poller has, until none is left.
    fn carry_out(&mut self, first: Vec<Action>, now: u64) {
        let mut queue = first;
        while let Some(action) = self.poller.poll_action().or_else(|| queue.pop()) {
            match action {
                Action::Dispatch(call) => self.dispatch(call, now),
                Action::OpenWatch(open) => self.open_watch(open, now),
                Action::SendWatch { stream, message } => {
                    let sent = self
                        .streams
                        .iter()
                        .find(|(_, s)| *s == stream)
                        .map(|(token, _)| abi::send_grpc_stream_message(*token, Some(&message), false));
                    if let Some(Err(e)) = sent {
                        log::warn!("etcd watch stream {stream}: cannot send on it: {e:?}");
                    }
                }
            }
        }
        self.flush();
    }

    fn flush(&mut self) {
        if let Some(bytes) = super::memory_bytes() {
            self.poller.handle_memory(bytes);
        }
        let publishes = self.poller.publishes();
        let written = self.poller.flush(&mut HostStore);
        if self.poller.publishes() != publishes {
            super::note_local_publish();
            if let Some(waker) = self.waker.as_mut() {
                waker.wake();
            }
        }
        if let Some(envoy) = self.envoy_stats.as_mut() {
            for i in written {
                if let Some(stats) = self.poller.stats(i) {
                    envoy.report(i, self.poller.name(i), &stats);
                }
            }
        }
    }

    fn dispatch(&mut self, call: Dispatch, now: u64) {
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", call.request.method),
            (":path", call.request.path.as_str()),
            (":authority", call.authority.as_str()),
        ];
        headers.extend(call.request.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let body = (!call.request.body.is_empty()).then_some(call.request.body.as_slice());
        let timeout = Duration::from_millis(call.timeout_ms);
        match abi::dispatch_http_call(&call.target, headers, body, vec![], timeout) {
            Ok(token) => {
                self.calls.insert(token, (call.upstream, call.id));
            }
            Err(e) => {
                let reason = format!("{e:?} (is {:?} a target this proxy can reach?)", call.target);
                self.poller.handle_dispatch_failed(now, call.upstream, call.id, &reason);
            }
        }
    }

    fn open_watch(&mut self, open: OpenWatch, now: u64) {
        let sent = abi::open_grpc_stream(&open.target, open.service, open.method, vec![]).and_then(|token| {
            for message in &open.messages {
                abi::send_grpc_stream_message(token, Some(message), false)?;
            }
            Ok(token)
        });
        match sent {
            Ok(token) => self.streams.push((token, open.stream)),
            Err(e) => {
                log::warn!("cannot open the etcd watch stream on {:?}: {e:?}", open.target);
                self.poller.handle_watch_closed(now, open.stream);
            }
        }
    }

    pub fn on_http_call_response(&mut self, token: u32, body_size: usize) {
        let Some((i, id)) = self.calls.remove(&token) else {
            log::debug!("answer for unknown call {token} ignored");
            return;
        };
        let now = now_ms();
        // The whole-map getter: a response cut after its headers arrives
        // with no headers, where single-header getters misbehave.
        let headers = abi::get_map(MapType::HttpCallResponseHeaders).unwrap_or_default();
        let status = headers.iter().find(|(k, _)| k == ":status").and_then(|(_, v)| v.parse::<u16>().ok());
        // Larger bodies are refused unread.
        let body = if body_size > 0 && body_size <= self.poller.max_body_bytes(i) {
            super::read_buffer(BufferType::HttpCallResponseBody, body_size)
        } else {
            Vec::new()
        };
        self.poller.handle_response(now, i, id, HttpResponse { status, headers: &headers, body: &body, body_size });
        // The answer was parsed, checked and diffed on this (Envoy: the main)
        // thread: say so when that took long (benches/parse_v8.py reads it).
        let took = now_ms().saturating_sub(now);
        if took >= SLOW_ANSWER_MS {
            log::warn!("upstream {}: an answer of {body_size} bytes took {took} ms to handle", self.poller.name(i));
        } else {
            log::debug!("upstream {}: an answer of {body_size} bytes took {took} ms to handle", self.poller.name(i));
        }
        if self.defer_from_responses {
            while let Some(action) = self.poller.poll_action() {
                self.deferred.push(action);
            }
            self.flush();
        } else {
            self.carry_out(Vec::new(), now);
        }
    }

    pub fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        let Some(&(_, i)) = self.streams.iter().find(|(t, _)| *t == token) else {
            return;
        };
        let now = now_ms();
        let message = super::read_buffer(BufferType::GrpcReceiveBuffer, size);
        self.poller.handle_watch_message(now, i, &message);
        self.carry_out(Vec::new(), now);
    }

    pub fn on_grpc_stream_close(&mut self, token: u32, status_code: u32) {
        let Some(at) = self.streams.iter().position(|(t, _)| *t == token) else {
            return;
        };
        let (_, i) = self.streams.swap_remove(at);
        log::info!("etcd watch stream {i} closed (grpc-status {status_code}); reopening");
        let now = now_ms();
        self.poller.handle_watch_closed(now, i);
        self.carry_out(Vec::new(), now);
    }
}
