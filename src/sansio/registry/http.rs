//! Requests the core asks the host to send, and what the host hands back.

use crate::sansio::registry::AdapterError;

/// An HTTP request to the registry. The host adds `:authority` (and, for
/// Envoy, picks the cluster) from the registry configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A registry answer as the host received it.
#[derive(Debug, Clone, Copy)]
pub struct HttpResponse<'a> {
    /// `:status`, or `None` when the host gave no status (a response cut
    /// after its headers reaches Envoy's callback with no headers at all).
    pub status: Option<u16>,
    pub headers: &'a [(String, String)],
    /// The body, or empty when it was over the limit and not read.
    pub body: &'a [u8],
    /// The body size the host announced, read or not.
    pub body_size: usize,
}

impl<'a> HttpResponse<'a> {
    /// An answer whose body was read whole.
    pub fn new(status: Option<u16>, headers: &'a [(String, String)], body: &'a [u8]) -> Self {
        HttpResponse { status, headers, body, body_size: body.len() }
    }

    /// The first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// `Ok` for 200, the status as an error otherwise.
    pub fn expect_ok(&self) -> Result<(), AdapterError> {
        match self.status {
            Some(200) => Ok(()),
            Some(status) => Err(AdapterError::Status(status)),
            None => Err(AdapterError::NoStatus),
        }
    }
}
