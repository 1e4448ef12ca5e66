//! Requests the core asks the host to send, and what the host hands back.

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

/// Why a registry answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterError {
    /// The body is not JSON at all.
    NotJson(String),
    /// JSON, but not the shape the registry documents.
    BadShape(String),
    /// The registry answered with an error of its own.
    Registry(String),
    /// An HTTP status the adapter cannot use.
    Status(u16),
    /// The host gave no status (an answer cut after its headers).
    NoStatus,
}

impl std::fmt::Display for AdapterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdapterError::NotJson(e) => write!(f, "body is not JSON: {e}"),
            AdapterError::BadShape(e) => write!(f, "unexpected response shape: {e}"),
            AdapterError::Registry(e) => write!(f, "registry error: {e}"),
            AdapterError::Status(s) => write!(f, "registry answered HTTP {s}"),
            AdapterError::NoStatus => write!(f, "registry answer had no status (cut short?)"),
        }
    }
}
