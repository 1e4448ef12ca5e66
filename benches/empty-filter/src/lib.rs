//! An empty proxy-wasm HTTP filter: every request's headers go on
//! untouched (`Action::Continue`). benches/pick_overhead.py runs it beside
//! the pick filter to show the part of the per-request cost that any wasm
//! filter pays in Envoy (VM entry per callback, context creation).

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_context_id, _root_context_id| -> Box<dyn HttpContext> { Box::new(Empty) });
}}

struct Empty;

impl Context for Empty {}

impl HttpContext for Empty {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
}
