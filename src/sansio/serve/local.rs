//! Which local endpoint a request on the serving listener is for, decided
//! from its method and path before the host reads any body.

use crate::sansio::config::{authorized, Secret, UNAUTHORIZED};
use crate::sansio::serve::reply::LocalReply;

pub const EDS_PATH: &str = "/v3/discovery:endpoints";
pub const CDS_PATH: &str = "/v3/discovery:clusters";
pub const STATUS_PATH: &str = "/upsync/status";
pub const METRICS_PATH: &str = "/upsync/metrics";
/// DiscoveryRequests are small; anything larger is refused.
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// What to do with a request's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /upsync/status`.
    Status,
    /// `GET /upsync/metrics`.
    Metrics,
    /// `POST /v3/discovery:endpoints`: read the body, then answer.
    Eds,
    /// `POST /v3/discovery:clusters`: read the body, then answer.
    Cds,
    /// Answer at once with this.
    Reply(LocalReply),
    /// Not ours: let it through.
    Other,
}

/// The endpoint for `method` and `path` (its query included);
/// `end_of_stream` says the request has no body. With a `token`, status
/// and metrics need `authorization: Bearer <token>`.
pub fn endpoint(
    method: &str,
    path: &str,
    end_of_stream: bool,
    authorization: Option<&str>,
    token: Option<&Secret>,
) -> Endpoint {
    let read = |endpoint| match (method, authorized(token, authorization)) {
        ("GET", true) => endpoint,
        ("GET", false) => Endpoint::Reply(unauthorized()),
        _ => Endpoint::Reply(LocalReply::error(405, "use GET")),
    };
    match (path.split('?').next().unwrap_or_default(), method) {
        (STATUS_PATH, _) => read(Endpoint::Status),
        (METRICS_PATH, _) => read(Endpoint::Metrics),
        (EDS_PATH, "POST") if end_of_stream => {
            Endpoint::Reply(LocalReply::error(400, "a DiscoveryRequest body is required"))
        }
        (EDS_PATH, "POST") => Endpoint::Eds,
        (CDS_PATH, "POST") if end_of_stream => {
            Endpoint::Reply(LocalReply::error(400, "a DiscoveryRequest body is required"))
        }
        (CDS_PATH, "POST") => Endpoint::Cds,
        (EDS_PATH | CDS_PATH, _) => Endpoint::Reply(LocalReply::error(405, "use POST with a JSON DiscoveryRequest")),
        _ => Endpoint::Other,
    }
}

/// The answer to a status or metrics request without the right token.
pub fn unauthorized() -> LocalReply {
    LocalReply::error(401, UNAUTHORIZED)
}

/// A body of `size` bytes is too large for a DiscoveryRequest.
pub fn body_too_large(size: usize) -> Option<LocalReply> {
    (size > MAX_REQUEST_BODY).then(|| LocalReply::error(413, "DiscoveryRequest too large"))
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn methods_paths_and_bodies() {
        let endpoint = |m, p, eos| endpoint(m, p, eos, None, None);
        assert_eq!(endpoint("GET", "/upsync/status?upstream=web", true), Endpoint::Status);
        assert_eq!(endpoint("GET", "/upsync/metrics", true), Endpoint::Metrics);
        assert!(matches!(endpoint("POST", "/upsync/status", false), Endpoint::Reply(r) if r.status == 405));
        assert_eq!(endpoint("POST", EDS_PATH, false), Endpoint::Eds);
        assert!(matches!(endpoint("POST", EDS_PATH, true), Endpoint::Reply(r) if r.status == 400));
        assert!(matches!(endpoint("GET", EDS_PATH, true), Endpoint::Reply(r) if r.status == 405));
        assert_eq!(endpoint("POST", CDS_PATH, false), Endpoint::Cds);
        assert!(matches!(endpoint("POST", CDS_PATH, true), Endpoint::Reply(r) if r.status == 400));
        assert!(matches!(endpoint("GET", CDS_PATH, true), Endpoint::Reply(r) if r.status == 405));
        assert_eq!(endpoint("GET", "/", true), Endpoint::Other);
        assert_eq!(body_too_large(MAX_REQUEST_BODY), None);
        assert!(matches!(body_too_large(MAX_REQUEST_BODY + 1), Some(r) if r.status == 413));
    }

    #[test]
    fn a_status_token_guards_status_and_metrics_but_not_eds() {
        let token = Secret("0123456789abcdef".into());
        let with = |auth| endpoint("GET", STATUS_PATH, true, auth, Some(&token));
        assert_eq!(with(Some("Bearer 0123456789abcdef")), Endpoint::Status);
        for wrong in [None, Some("Bearer 0123456789abcdeF"), Some("Bearer 0123456789abcde"), Some("0123456789abcdef")] {
            assert!(matches!(with(wrong), Endpoint::Reply(r) if r.status == 401), "{wrong:?}");
        }
        let metrics = endpoint("GET", METRICS_PATH, true, Some("Bearer x"), Some(&token));
        assert!(matches!(metrics, Endpoint::Reply(r) if r.status == 401));
        assert_eq!(endpoint("POST", EDS_PATH, false, None, Some(&token)), Endpoint::Eds);
        assert!(authorized(None, None));
        assert!(!authorized(Some(&token), Some("Bearer 0123456789abcdef0")), "longer");
    }
}
