//! Reading a REST EDS `DiscoveryRequest` from its two ends only.
//!
//! Envoy puts its whole `node` (~76 KiB of JSON with Envoy 1.40: every
//! extension it has) in every REST request, and the server uses two other
//! fields. Envoy's JSON printer (protobuf's: compact, proto field names,
//! empty fields left out) writes the fields in the order of the message:
//! `version_info`, `node`, `resource_names`, `type_url`, then
//! `response_nonce` and the rest. So the version is in the first bytes and
//! the cluster names in the last: [`parse_ends`] reads them from the first
//! [`HEAD`] and the last [`TAIL`] bytes, and a request costs the same
//! whatever the node's size, instead of a copy of the whole body into the
//! VM and a JSON parse of it.
//!
//! Only Envoy's exact shape is taken: `{"version_info":"V","node":` at the
//! start, and
//! `,"resource_names":["N",...]` then optionally `,"type_url":"<the
//! ClusterLoadAssignment type>"` and `,"response_nonce":"X"` then `}` at the
//! end, no white space, no escape in a string, each name once. Anything else
//! (another order, pretty-printed JSON, an error_detail, a client other than
//! Envoy) gives `None`, and the caller reads the whole body and parses it
//! with [`crate::sansio::serve::eds::parse_request`], which also writes the
//! errors. Both ends are anchored (the first key of the object and the keys
//! before its closing brace) and their strings have no escapes, so in valid
//! JSON they can only be the request's own fields. The bytes between them
//! are not read: a body with Envoy's two ends and no valid JSON in between
//! is answered as the request its ends name rather than with a 400. What it
//! gets is what the same request with a valid node gets, on a listener
//! meant for the local Envoy only.

use crate::sansio::serve::eds::{DiscoveryRequest, CLA_TYPE_URL, MAX_RESOURCE_NAMES};

/// Bytes read from the start of a body: `version_info` is the first field.
pub const HEAD: usize = 256;
/// Bytes read from the end of a body: the names, `type_url`, a nonce.
pub const TAIL: usize = 2048;

/// The request whose first [`HEAD`] bytes are `head` and last [`TAIL`]
/// bytes `tail` (the same bytes when the body is shorter), when both ends
/// have Envoy's shape; `None`: parse the whole body.
pub fn parse_ends(head: &[u8], tail: &[u8]) -> Option<DiscoveryRequest> {
    let version_info = version_of(head)?;
    let resource_names = names_of(tail)?;
    Some(DiscoveryRequest { version_info, resource_names })
}

/// `{"version_info":"V","node":` → V. A head of `{"node":` is left to the
/// full parse: only the whole body tells that no `version_info` follows.
/// Envoy leaves the field out until it has a version, so that is a
/// cluster's first requests only.
fn version_of(head: &[u8]) -> Option<String> {
    let rest = head.strip_prefix(br#"{"version_info":""#)?;
    let (version, rest) = plain_string(rest)?;
    rest.starts_with(br#","node":"#).then(|| version.to_string())
}

/// The names of the tail `,"resource_names":[...]` (+ `type_url`, nonce) `}`.
fn names_of(tail: &[u8]) -> Option<Vec<String>> {
    const KEY: &[u8] = br#","resource_names":["#;
    let at = tail.windows(KEY.len()).rposition(|w| w == KEY)?;
    let mut rest = tail.get(at + KEY.len()..)?;
    let mut names: Vec<String> = Vec::new();
    loop {
        let (name, after) = plain_string(rest.strip_prefix(b"\"")?)?;
        if names.iter().any(|n| n == name) || names.len() >= MAX_RESOURCE_NAMES {
            return None;
        }
        names.push(name.to_string());
        match after.split_first()? {
            (b',', more) => rest = more,
            (b']', more) => {
                rest = more;
                break;
            }
            _ => return None,
        }
    }
    if let Some(more) = rest.strip_prefix(br#","type_url":""#) {
        let (type_url, more) = plain_string(more)?;
        if type_url != CLA_TYPE_URL {
            return None;
        }
        rest = more;
    }
    if let Some(more) = rest.strip_prefix(br#","response_nonce":""#) {
        rest = plain_string(more)?.1;
    }
    (rest == b"}").then_some(names)
}

/// A JSON string's text up to its closing quote, when it has no escape and
/// no control character (then the text is the value), and what follows the
/// quote.
fn plain_string(s: &[u8]) -> Option<(&str, &[u8])> {
    let end = s.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    let (text, rest) = s.split_at(end);
    let rest = rest.strip_prefix(b"\"")?;
    Some((std::str::from_utf8(text).ok()?, rest))
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::serve::eds::parse_request;

    /// A body as Envoy 1.40 writes it (the node shortened).
    fn envoy_body(version: &str, names: &[&str], nonce: Option<&str>) -> String {
        let mut b = String::from("{");
        if !version.is_empty() {
            b.push_str(&format!(r#""version_info":"{version}","#));
        }
        b.push_str(
            r#""node":{"id":"n","cluster":"c","user_agent_name":"envoy","extensions":[{"name":"x","category":"y"}]}"#,
        );
        let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        b.push_str(&format!(r#","resource_names":[{}],"type_url":"{CLA_TYPE_URL}""#, quoted.join(",")));
        if let Some(n) = nonce {
            b.push_str(&format!(r#","response_nonce":"{n}""#));
        }
        b.push('}');
        b
    }

    /// `parse_ends` as the server calls it: the first HEAD, the last TAIL bytes.
    fn ends(body: &str) -> Option<DiscoveryRequest> {
        let b = body.as_bytes();
        let head = b.get(..HEAD.min(b.len())).unwrap();
        let tail = b.get(b.len().saturating_sub(TAIL)..).unwrap();
        parse_ends(head, tail)
    }

    #[test]
    fn envoys_requests_are_read_from_their_ends_as_the_full_parse_reads_them() {
        for (version, names, nonce) in [
            ("17", vec!["u0001"], None),
            ("18446744073709551615", vec!["a.b-c_d"], Some("3")),
            ("a=1,b=2", vec!["a", "b"], None),
        ] {
            let body = envoy_body(version, &names, nonce);
            let fast = ends(&body);
            assert!(fast.is_some(), "{body}");
            assert_eq!(fast, parse_request(body.as_bytes()).ok(), "{body}");
        }
    }

    #[test]
    fn a_large_node_is_not_read() {
        // Only the ends are given: the middle (a 76 KiB node) never reaches it.
        let body = envoy_body("5", &["web"], None);
        let node = format!(r#"{{"id":"n","metadata":{{"pad":"{}"}}}}"#, "x".repeat(80_000));
        let big = body.replacen(
            r#"{"id":"n","cluster":"c","user_agent_name":"envoy","extensions":[{"name":"x","category":"y"}]}"#,
            &node,
            1,
        );
        assert!(big.len() > 80_000);
        let want = DiscoveryRequest { version_info: "5".into(), resource_names: vec!["web".into()] };
        assert_eq!(ends(&big), Some(want.clone()));
        assert_eq!(parse_request(big.as_bytes()), Ok(want));
    }

    #[test]
    fn other_shapes_are_left_to_the_full_parse() {
        let envoy = envoy_body("5", &["web"], None);
        let others = [
            // Pretty-printed, another field order, no node, other fields after the names.
            envoy.replace(",\"", ", \""),
            r#"{"node":{},"version_info":"5","resource_names":["web"]}"#.to_string(),
            // No version yet: only the whole body can tell that none follows.
            envoy_body("", &["web"], None),
            format!(r#"{{"version_info":"5","resource_names":["web"],"type_url":"{CLA_TYPE_URL}"}}"#),
            envoy.strip_suffix('}').unwrap().to_string() + r#","error_detail":{"code":3,"message":"bad"}}"#,
            // Escapes (the value is not the text), another type, repeated or no names.
            envoy.replace(r#""5""#, r#""\u0035""#),
            envoy.replace(r#"["web"]"#, r#"["w\u0065b"]"#),
            envoy.replace(CLA_TYPE_URL, "type.googleapis.com/envoy.config.cluster.v3.Cluster"),
            envoy.replace(r#"["web"]"#, r#"["web","web"]"#),
            envoy.replace(r#"["web"]"#, "[]"),
            envoy.replace(r#"["web"]"#, r#"["web",1]"#),
            // Not an object's end, trailing bytes, a truncated head.
            envoy.clone() + "\n",
            envoy.strip_suffix('}').unwrap().to_string(),
            r#"{"version_info":"5"#.to_string(),
            String::new(),
        ];
        for body in &others {
            assert_eq!(ends(body), None, "{body}");
        }
    }

    #[test]
    fn whatever_the_ends_take_the_full_parse_reads_the_same() {
        // Cut and spliced variants of Envoy's body: when the fast path
        // takes one that is valid JSON, the full parse agrees.
        let body = envoy_body("42", &["u0001", "u0002"], Some("n1"));
        let b = body.as_bytes();
        for cut in 0..b.len() {
            for variant in [b.get(..cut).unwrap().to_vec(), b.get(cut..).unwrap().to_vec(), {
                let mut v = b.to_vec();
                v.remove(cut);
                v
            }] {
                let text = String::from_utf8_lossy(&variant);
                let (Some(fast), Ok(full)) = (ends(&text), parse_request(&variant)) else { continue };
                assert_eq!(fast, full, "{text}");
            }
        }
    }

    #[test]
    fn a_string_stops_at_its_quote_and_refuses_escapes() {
        assert_eq!(plain_string(br#"abc","#), Some(("abc", &b","[..])));
        assert_eq!(plain_string(br#"a\"b""#), None);
        assert_eq!(plain_string(b"a\nb\""), None);
        assert_eq!(plain_string(b"abc"), None);
        assert_eq!(plain_string(b"\xff\""), None);
    }
}
