//! The one shape of every local answer: a status code, a content type and
//! a body.

use serde_json::json;

pub const JSON: &str = "application/json";
/// Prometheus' text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl LocalReply {
    pub fn json(status: u16, body: String) -> LocalReply {
        LocalReply { status, content_type: JSON, body }
    }

    /// `{"error": message}`: one body shape for every failed request, so a
    /// client finds the reason in the same place whichever endpoint failed.
    pub fn error(status: u16, message: &str) -> LocalReply {
        LocalReply::json(status, json!({ "error": message }).to_string())
    }
}
