//! Which local endpoint a request on the serving listener is for, decided
//! from its method and path before the host reads any body.

use crate::sansio::serve::reply::JsonReply;

pub const EDS_PATH: &str = "/v3/discovery:endpoints";
pub const STATUS_PATH: &str = "/upsync/status";
/// DiscoveryRequests are small; anything larger is refused.
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// What to do with a request's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /upsync/status`.
    Status,
    /// `POST /v3/discovery:endpoints`: read the body, then answer.
    Eds,
    /// Answer at once with this.
    Reply(JsonReply),
    /// Not ours: let it through.
    Other,
}

/// The endpoint for `method` and `path` (its query included);
/// `end_of_stream` says the request has no body.
pub fn endpoint(method: &str, path: &str, end_of_stream: bool) -> Endpoint {
    match (path.split('?').next().unwrap_or_default(), method) {
        (STATUS_PATH, "GET") => Endpoint::Status,
        (STATUS_PATH, _) => Endpoint::Reply(JsonReply::error(405, "use GET")),
        (EDS_PATH, "POST") if end_of_stream => {
            Endpoint::Reply(JsonReply::error(400, "a DiscoveryRequest body is required"))
        }
        (EDS_PATH, "POST") => Endpoint::Eds,
        (EDS_PATH, _) => Endpoint::Reply(JsonReply::error(405, "use POST with a JSON DiscoveryRequest")),
        _ => Endpoint::Other,
    }
}

/// A body of `size` bytes is too large for a DiscoveryRequest.
pub fn body_too_large(size: usize) -> Option<JsonReply> {
    (size > MAX_REQUEST_BODY).then(|| JsonReply::error(413, "DiscoveryRequest too large"))
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn methods_paths_and_bodies() {
        assert_eq!(endpoint("GET", "/upsync/status?upstream=web", true), Endpoint::Status);
        assert!(matches!(endpoint("POST", "/upsync/status", false), Endpoint::Reply(r) if r.status == 405));
        assert_eq!(endpoint("POST", EDS_PATH, false), Endpoint::Eds);
        assert!(matches!(endpoint("POST", EDS_PATH, true), Endpoint::Reply(r) if r.status == 400));
        assert!(matches!(endpoint("GET", EDS_PATH, true), Endpoint::Reply(r) if r.status == 405));
        assert_eq!(endpoint("GET", "/", true), Endpoint::Other);
        assert_eq!(body_too_large(MAX_REQUEST_BODY), None);
        assert!(matches!(body_too_large(MAX_REQUEST_BODY + 1), Some(r) if r.status == 413));
    }
}
