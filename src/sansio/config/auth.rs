//! `registry.auth`: credentials sent with every registry call, kept out of
//! `Debug` output and logs.

use super::fields::{err, Fields};
use super::ConfigError;
use crate::sansio::util::base64;
use serde_json::Value;

/// A secret from the configuration: kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Credentials sent with every registry call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `Authorization: Basic base64(user:password)`.
    Basic { username: String, password: Secret },
    /// Any one header, e.g. a registry-specific token header.
    Header { name: String, value: Secret },
}

/// Why a status or metrics request without the token is refused.
pub const UNAUTHORIZED: &str = "status and metrics need the status_token as an Authorization: Bearer header";

/// `authorization` carries `token` (or no token is set), compared in
/// constant time so that timing tells nothing about a guess.
pub fn authorized(token: Option<&Secret>, authorization: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let given = authorization.and_then(|a| a.strip_prefix("Bearer ")).unwrap_or_default().as_bytes();
    let want = token.0.as_bytes();
    let mut diff = u8::from(given.len() != want.len());
    for (i, w) in want.iter().enumerate() {
        diff |= w ^ given.get(i).copied().unwrap_or(!w);
    }
    diff == 0
}

impl Auth {
    /// The headers that carry these credentials.
    pub fn headers(&self) -> Vec<(String, String)> {
        match self {
            Auth::Bearer(token) => vec![("authorization".into(), format!("Bearer {}", token.0))],
            Auth::Basic { username, password } => {
                let pair = format!("{username}:{}", password.0);
                vec![("authorization".into(), format!("Basic {}", base64::encode(pair.as_bytes())))]
            }
            Auth::Header { name, value } => vec![(name.to_ascii_lowercase(), value.0.clone())],
        }
    }
}

pub(crate) fn parse_auth(path: &str, v: &Value) -> Result<Auth, ConfigError> {
    let f = Fields::new(path, v, &["bearer", "basic", "header"])?;
    let given: Vec<&str> = ["bearer", "basic", "header"].into_iter().filter(|k| f.get(k).is_some()).collect();
    if given.len() != 1 {
        return Err(err(path, "must hold exactly one of \"bearer\", \"basic\", \"header\""));
    }
    if let Some(token) = f.string("bearer")? {
        return Ok(Auth::Bearer(Secret(token.to_string())));
    }
    if let Some(basic) = f.get("basic") {
        let b = Fields::new(&f.path("basic"), basic, &["username", "password"])?;
        let username = b.required_string("username")?;
        if username.contains(':') {
            return Err(err(&b.path("username"), "must not contain ':'"));
        }
        let password = b.string("password")?.unwrap_or_default();
        return Ok(Auth::Basic { username: username.to_string(), password: Secret(password.to_string()) });
    }
    let h = Fields::new(&f.path("header"), f.required("header")?, &["name", "value"])?;
    let name = h.required_string("name")?;
    let token_ok = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.bytes().all(token_ok) || name.starts_with(':') {
        return Err(err(&h.path("name"), format!("must be an HTTP header name, got {name:?}")));
    }
    let value = h.required_string("value")?;
    Ok(Auth::Header { name: name.to_string(), value: Secret(value.to_string()) })
}
