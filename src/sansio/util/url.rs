//! Percent-encoding for the parts of registry URLs built from configuration.

/// Encodes everything but RFC 3986 unreserved characters (and `/` when
/// `keep_slash`, for key paths).
pub fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?k=v&k2=v2` from pairs whose values are encoded here; empty for no pairs.
pub fn query(pairs: &[(&str, String)]) -> String {
    let parts: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", encode(v, false))).collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn encodes_reserved_bytes() {
        assert_eq!(encode("a b/c?d&é", false), "a%20b%2Fc%3Fd%26%C3%A9");
        assert_eq!(encode("/upstreams/web 1/", true), "/upstreams/web%201/");
        assert_eq!(query(&[("index", "12".into()), ("dc", "eu west".into())]), "?index=12&dc=eu%20west");
        assert_eq!(query(&[]), "");
    }
}
