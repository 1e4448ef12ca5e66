//! The one shape of every local answer: a status code and a JSON body.

use serde_json::json;

/// An HTTP answer: status code and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonReply {
    pub status: u16,
    pub body: String,
}

impl JsonReply {
    /// `{"error": message}`: one body shape for every failed request, so a
    /// client finds the reason in the same place whichever endpoint failed.
    pub fn error(status: u16, message: &str) -> JsonReply {
        JsonReply { status, body: json!({ "error": message }).to_string() }
    }
}
