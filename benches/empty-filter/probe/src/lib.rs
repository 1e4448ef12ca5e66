//! The empty filter plus one host call per request, chosen by the plugin
//! configuration (read once, in on_configure). benches/pick_overhead.py
//! `--probes` runs one listener per mode beside the empty filter:
//!
//! - `none`: nothing (the empty filter, with a root context);
//! - `header`: replace request header `x-upsync-host` (what pick mode's
//!   override_host hand-off does; Envoy also clears the route cache);
//! - `filter-state`: `set_envoy_filter_state` of the ORIGINAL_DST address
//!   (the original_dst hand-off; no route cache clear);
//! - `property`: `set_property` (a wasm filter state value; nothing reads it);
//! - `clear-route-cache`: the `clear_route_cache` foreign function alone;
//! - `no-function`: a foreign function Envoy does not have (the bare crossing);
//! - `missing`: read an absent request header (a read, no buffer returned);
//! - `path`: read `:path` (a read whose buffer Envoy allocates in the VM);
//! - `status`: read `:status` of every response (passive health's read).
//!
//! Results of host calls are ignored on purpose: the cost is the point.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType};
use std::cell::Cell;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    None,
    Header,
    FilterState,
    Property,
    ClearRouteCache,
    NoFunction,
    Missing,
    Path,
    Status,
}

thread_local! {
    static MODE: Cell<Mode> = const { Cell::new(Mode::None) };
}

/// `SetEnvoyFilterStateArguments{path: original_dst_address, value:
/// 127.0.0.1:20001, span: DownstreamRequest}`, as pick mode's original_dst
/// hand-off encodes it.
const ORIGINAL_DST: &[u8] = b"\x0a\x33envoy.network.transport_socket.original_dst_address\x12\x0f127.0.0.1:20001\x18\x01";
const ADDRESS: &str = "127.0.0.1:20001";

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten();
        let mode = match config.as_deref().unwrap_or_default() {
            b"none" | b"" => Mode::None,
            b"header" => Mode::Header,
            b"filter-state" => Mode::FilterState,
            b"property" => Mode::Property,
            b"clear-route-cache" => Mode::ClearRouteCache,
            b"no-function" => Mode::NoFunction,
            b"missing" => Mode::Missing,
            b"path" => Mode::Path,
            b"status" => Mode::Status,
            _ => return false,
        };
        MODE.with(|m| m.set(mode));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Probe;

impl Context for Probe {}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match MODE.with(Cell::get) {
            Mode::Header => drop(hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-upsync-host", Some(ADDRESS))),
            Mode::FilterState => drop(hostcalls::call_foreign_function("set_envoy_filter_state", Some(ORIGINAL_DST))),
            Mode::Property => drop(hostcalls::set_property(vec!["upsync_host"], Some(ADDRESS.as_bytes()))),
            Mode::ClearRouteCache => drop(hostcalls::call_foreign_function("clear_route_cache", None)),
            Mode::NoFunction => drop(hostcalls::call_foreign_function("upsync_no_such_function", None)),
            Mode::Missing => drop(hostcalls::get_map_value(MapType::HttpRequestHeaders, "x-upsync-absent")),
            Mode::Path => drop(hostcalls::get_map_value(MapType::HttpRequestHeaders, ":path")),
            Mode::None | Mode::Status => {}
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if MODE.with(Cell::get) == Mode::Status {
            drop(hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status"));
        }
        Action::Continue
    }
}
