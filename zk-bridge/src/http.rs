//! The HTTP side: Consul KV reads and blocking queries, from memory.
//!
//! Answers never touch ZooKeeper: every mount is kept in memory by its
//! reader, so any number of proxies share the bridge's one session.

use crate::mount::{render, KvEntry};
use crate::state::{MountView, Shared};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub const STATUS_PATH: &str = "/upsync-zk-bridge/status";

type Answer = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<String>) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn with_index(mut r: Answer, index: u64) -> Answer {
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&index.to_string()) {
        h.insert("X-Consul-Index", v);
    }
    h.insert("X-Consul-Knownleader", HeaderValue::from_static("true"));
    h.insert("X-Consul-Lastcontact", HeaderValue::from_static("0"));
    h.insert("X-Consul-Effective-Consistency", HeaderValue::from_static("leader"));
    r
}

fn json_answer(status: StatusCode, body: Bytes) -> Answer {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Go's `time.ParseDuration`, as Consul reads `?wait=`: `0`, or numbers
/// with units `ns`, `us`, `µs`, `ms`, `s`, `m`, `h` (`1m30s`, `1.5s`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return None;
        }
        let n: f64 = num.parse().ok()?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * nanos;
        rest = tail;
    }
    if !total.is_finite() || total > 1e18 {
        return None;
    }
    // Truncation to whole nanoseconds, as Go does.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some(Duration::from_nanos(total as u64))
}

fn percent_decode_path(s: &str) -> Option<String> {
    crate::layout::percent_decode(s).ok()
}

/// `?a=1&b&c=x%20y` → pairs, decoded (`+` is a space in queries).
fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| percent_decode_path(&s.replace('+', " ")).unwrap_or_else(|| s.to_string());
            (dec(k), dec(v))
        })
        .collect()
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct KvQuery {
    pub recurse: bool,
    pub keys: bool,
    pub index: Option<u64>,
    pub wait: Option<Duration>,
    pub token: Option<String>,
}

/// The query parameters the bridge reads; Consul's error texts for bad ones.
pub fn parse_kv_query(q: &str) -> Result<KvQuery, String> {
    let mut out = KvQuery::default();
    let mut stale = false;
    let mut consistent = false;
    for (k, v) in query_pairs(q) {
        match k.as_str() {
            "recurse" => out.recurse = true,
            "keys" => out.keys = true,
            "index" => out.index = Some(v.parse().map_err(|_| "Invalid index".to_string())?),
            "wait" => out.wait = Some(parse_go_duration(&v).ok_or_else(|| "Invalid wait time".to_string())?),
            "token" => out.token = Some(v),
            "stale" => stale = true,
            "consistent" => consistent = true,
            "filter" => return Err("upsync-zk-bridge: ?filter is not supported".into()),
            "separator" => return Err("upsync-zk-bridge: ?separator is not supported".into()),
            // dc, cached, pretty, raw, ns, partition: accepted, no effect
            _ => {}
        }
    }
    if stale && consistent {
        return Err("Cannot specify ?stale with ?consistent, conflicting semantics.".into());
    }
    Ok(out)
}

fn request_token(req: &Request<Incoming>, query: &KvQuery) -> Option<String> {
    if let Some(t) = &query.token {
        return Some(t.clone());
    }
    let h = req.headers();
    if let Some(t) = h.get("x-consul-token").and_then(|v| v.to_str().ok()) {
        return Some(t.to_string());
    }
    let auth = h.get("authorization").and_then(|v| v.to_str().ok())?;
    let (scheme, rest) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim().to_string())
}

/// Equal-time comparison, so the token cannot be guessed byte by byte.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A small xorshift for Consul's wait jitter (no crypto needed).
fn jitter(max: Duration) -> Duration {
    let nanos =
        u64::from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()));
    let mut x = nanos ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(0);
    if max_ms == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(x % max_ms)
    }
}

pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Answer, Infallible> {
    Ok(route(&shared, req).await)
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_string();
    if path == STATUS_PATH {
        return status(shared);
    }
    let Some(raw_key) = path.strip_prefix("/v1/kv/") else {
        return text(
            StatusCode::NOT_FOUND,
            format!("upsync-zk-bridge: no such endpoint {path} (it serves GET /v1/kv/<prefix> and {STATUS_PATH})"),
        );
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "upsync-zk-bridge is read-only: write to ZooKeeper");
    }
    let query = match parse_kv_query(req.uri().query().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    if let Some(want) = &shared.config.http.token {
        match request_token(&req, &query) {
            Some(t) if same_secret(&t, want.expose()) => {}
            Some(t) if !t.is_empty() && t != "anonymous" => return text(StatusCode::FORBIDDEN, "ACL not found"),
            _ => return text(StatusCode::FORBIDDEN, "Permission denied"),
        }
    }
    let Some(key) = percent_decode_path(raw_key) else {
        return text(StatusCode::BAD_REQUEST, "upsync-zk-bridge: bad %-escape in the key");
    };
    // The mount whose prefix holds the key; "services/web" names the
    // mount "services/web/" too.
    let Some(i) =
        shared.mounts.iter().position(|m| key.starts_with(&m.config.prefix) || format!("{key}/") == m.config.prefix)
    else {
        let prefixes: Vec<&str> = shared.mounts.iter().map(|m| m.config.prefix.as_str()).collect();
        // Not a 404: Consul's 404 means "no keys", which a client would
        // take for an empty member list.
        return text(
            StatusCode::BAD_REQUEST,
            format!("upsync-zk-bridge: no mount serves {key:?} (mounted prefixes: {})", prefixes.join(", ")),
        );
    };
    kv(shared, i, &key, &query).await
}

async fn kv(shared: &Arc<Shared>, i: usize, key: &str, q: &KvQuery) -> Answer {
    let Some(slot) = shared.mounts.get(i) else { return text(StatusCode::INTERNAL_SERVER_ERROR, "no mount") };
    let mut views = slot.view.subscribe();
    let mut session = shared.session.subscribe();
    let http = &shared.config.http;
    let deadline = match q.index {
        Some(index) if index > 0 => {
            let wait = match q.wait {
                None => Duration::from_millis(http.default_wait_ms),
                Some(w) if w.is_zero() => Duration::from_millis(http.default_wait_ms),
                Some(w) => w.min(Duration::from_millis(http.max_wait_ms)),
            };
            Some((index, Instant::now() + wait + jitter(wait / 16)))
        }
        _ => None,
    };
    loop {
        let view = views.borrow_and_update().clone();
        let fresh = shared.freshness(&view);
        match deadline {
            None => return answer(&view, fresh, &slot.config.prefix, key, q),
            Some((index, at)) => {
                // A different index (higher, or lower after a restart)
                // answers at once; the client resets on a lower one.
                if fresh.is_ok() && view.served.index != index {
                    return answer(&view, fresh, &slot.config.prefix, key, q);
                }
                // No live session: say so now rather than at the end of
                // the wait, so the client knows (it keeps its last list).
                let live = session.borrow_and_update().live;
                if Instant::now() >= at || !live {
                    return answer(&view, fresh, &slot.config.prefix, key, q);
                }
                tokio::select! {
                    r = views.changed() => {
                        if r.is_err() {
                            return text(StatusCode::SERVICE_UNAVAILABLE, "upsync-zk-bridge is shutting down");
                        }
                    }
                    _ = session.changed() => {}
                    () = tokio::time::sleep_until(at) => {}
                }
            }
        }
    }
}

fn answer(view: &MountView, fresh: Result<(), String>, prefix: &str, key: &str, q: &KvQuery) -> Answer {
    if let Err(why) = fresh {
        // Like Consul's errors: no index headers, a plain text body.
        return text(StatusCode::SERVICE_UNAVAILABLE, format!("upsync-zk-bridge: {why}"));
    }
    let served = &view.served;
    let whole = key == prefix || format!("{key}/") == prefix;
    let selected: Vec<&KvEntry> = if whole && (q.recurse || q.keys) {
        served.entries.iter().collect()
    } else if q.recurse || q.keys {
        served.entries.iter().filter(|e| e.key.starts_with(key)).collect()
    } else {
        served.entries.iter().filter(|e| e.key == key).collect()
    };
    if selected.is_empty() {
        return with_index(text(StatusCode::NOT_FOUND, ""), served.index);
    }
    let body = if q.keys {
        Bytes::from(Value::from(selected.iter().map(|e| e.key.clone()).collect::<Vec<_>>()).to_string())
    } else if whole {
        served.body.clone()
    } else {
        let owned: Vec<KvEntry> = selected.into_iter().cloned().collect();
        render(&owned)
    };
    with_index(json_answer(StatusCode::OK, body), served.index)
}

fn status(shared: &Shared) -> Answer {
    let s = shared.session.borrow().clone();
    let mounts: Vec<Value> = shared
        .mounts
        .iter()
        .map(|m| {
            let view = m.view.borrow().clone();
            let fresh = shared.freshness(&view);
            json!({
                "path": m.config.path,
                "prefix": m.config.prefix,
                "layout": m.config.layout.name(),
                "serving": fresh.is_ok(),
                "not_serving_because": fresh.err(),
                "index": view.served.index,
                "entries": view.served.entries.len(),
                "znodes": view.served.znodes,
                "max_znodes": m.config.max_znodes,
                "max_value_bytes": m.config.max_value_bytes,
                "problems": view.served.problems,
            })
        })
        .collect();
    let body = json!({
        "session": {
            "live": s.live,
            "state": s.state,
            "id": s.session_id,
            "generation": s.generation,
            "timeout_ms": s.timeout_ms,
            "lease_left_ms": shared.lease_left_ms(),
            "sessions_opened": s.sessions_opened,
            "sessions_expired": s.sessions_expired,
            "reconnects": s.reconnects,
        },
        "mounts": mounts,
    });
    json_answer(StatusCode::OK, Bytes::from(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("50000ms"), Some(Duration::from_secs(50)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "10", "5x", "ms", "1..2s", "-1s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn kv_query_parameters() {
        let q = parse_kv_query("recurse=true&index=120&wait=30000ms&dc=dc1").unwrap();
        assert_eq!(
            q,
            KvQuery { recurse: true, index: Some(120), wait: Some(Duration::from_secs(30)), ..Default::default() }
        );
        assert!(parse_kv_query("recurse").unwrap().recurse);
        assert_eq!(parse_kv_query("index=x").unwrap_err(), "Invalid index");
        assert_eq!(parse_kv_query("index=1&wait=10").unwrap_err(), "Invalid wait time");
        assert!(parse_kv_query("stale&consistent").is_err());
        assert_eq!(parse_kv_query("token=a%20b").unwrap().token.as_deref(), Some("a b"));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }
}
