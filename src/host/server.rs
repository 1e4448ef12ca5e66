//! The request-serving role: REST EDS for Envoy and the status endpoint,
//! both answered locally from shared data.

use super::store::HostStore;
use crate::sansio::eds::{self, EdsReply};
use crate::sansio::status::{self, JsonReply};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

pub const EDS_PATH: &str = "/v3/discovery:endpoints";
pub const STATUS_PATH: &str = "/upsync/status";
/// DiscoveryRequests are small; anything larger is refused.
const MAX_REQUEST_BODY: usize = 1024 * 1024;

pub struct ServerStream {
    active: bool,
    awaiting_eds_body: bool,
}

impl ServerStream {
    pub fn new(active: bool) -> Self {
        ServerStream { active, awaiting_eds_body: false }
    }
}

fn header(name: &str) -> String {
    hostcalls::get_map_value(MapType::HttpRequestHeaders, name).ok().flatten().unwrap_or_default()
}

fn send(reply: &JsonReply) {
    let body = (!reply.body.is_empty()).then_some(reply.body.as_bytes());
    let headers = if body.is_some() { vec![("content-type", "application/json")] } else { vec![] };
    if let Err(e) = hostcalls::send_http_response(u32::from(reply.status), headers, body) {
        log::warn!("cannot send a local response: {e:?}");
    }
}

fn error(status: u16, message: &str) -> JsonReply {
    JsonReply { status, body: serde_json::json!({ "error": message }).to_string() }
}

impl Context for ServerStream {}

impl HttpContext for ServerStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if !self.active {
            return Action::Continue;
        }
        let path = header(":path");
        let method = header(":method");
        let route = path.split('?').next().unwrap_or_default();
        if route == STATUS_PATH {
            let reply = if method == "GET" {
                status::status_reply(&HostStore, status::upstream_filter(&path))
            } else {
                error(405, "use GET")
            };
            send(&reply);
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
        let reply = eds::handle_discovery(&HostStore, &body);
        match &reply {
            EdsReply::Assignment { version, skipped_hostnames, .. } => {
                log::debug!("EDS: version {version} served ({skipped_hostnames} hostname members left out)")
            }
            EdsReply::Unavailable(e) | EdsReply::BadRequest(e) => log::info!("EDS: {e}"),
            EdsReply::NotModified => {}
        }
        send(&reply.to_json_reply());
        Action::Pause
    }
}
