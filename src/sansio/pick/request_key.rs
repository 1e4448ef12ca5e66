//! The request property a hash balancer hashes, read from what the host
//! hands over: a header, a cookie, or the client's address.

use crate::sansio::config::HashKey;
use crate::sansio::model::member::HostPort;

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The host part of a client address as the host reports it (`ip:port`,
/// `[v6]:port` or a bare address), so that one client hashes the same
/// whatever port it connects from.
pub fn client_host(address: &str) -> String {
    match address.parse::<HostPort>() {
        Ok(hp) => hp.host.bare(),
        Err(_) => address.to_string(),
    }
}

/// What the host can read of a request.
pub trait RequestView {
    fn header(&self, name: &str) -> Option<String>;
    /// The client's address as the host reports it.
    fn client_address(&self) -> Option<String>;
    /// The value of nginx variable `name` (`pick_variable`); `None` where
    /// the host has none.
    fn variable(&self, _name: &str) -> Option<Vec<u8>> {
        None
    }
}

/// The bytes to hash for `key`, if the request has them.
pub fn hash_key_value(key: &HashKey, request: &impl RequestView) -> Option<Vec<u8>> {
    match key {
        HashKey::Header(h) => request.header(h).map(String::into_bytes),
        HashKey::Cookie(c) => request.header("cookie").and_then(|v| cookie(&v, c).map(|s| s.as_bytes().to_vec())),
        HashKey::ClientAddress => request.client_address().map(|a| client_host(&a).into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    struct Request {
        headers: Vec<(&'static str, &'static str)>,
        client: Option<&'static str>,
    }

    impl RequestView for Request {
        fn header(&self, name: &str) -> Option<String> {
            self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        }
        fn client_address(&self) -> Option<String> {
            self.client.map(str::to_string)
        }
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        assert_eq!(cookie("a=1; sid=xyz; b=2", "sid"), Some("xyz"));
        assert_eq!(cookie("sid=", "sid"), Some(""));
        assert_eq!(cookie("xsid=1; sidx=2", "sid"), None);
        assert_eq!(cookie("garbage", "sid"), None);
    }

    #[test]
    fn client_address_hashes_the_host_only() {
        assert_eq!(client_host("10.1.2.3:55012"), "10.1.2.3");
        assert_eq!(client_host("[fd00::7]:443"), "fd00::7");
        assert_eq!(client_host("10.1.2.3"), "10.1.2.3", "nginx's $remote_addr has no port");
    }

    #[test]
    fn every_key_kind_reads_its_part_of_the_request() {
        let r = Request { headers: vec![("x-user", "u1"), ("cookie", "sid=s9")], client: Some("10.0.0.5:4000") };
        assert_eq!(hash_key_value(&HashKey::Header("x-user".into()), &r), Some(b"u1".to_vec()));
        assert_eq!(hash_key_value(&HashKey::Cookie("sid".into()), &r), Some(b"s9".to_vec()));
        assert_eq!(hash_key_value(&HashKey::ClientAddress, &r), Some(b"10.0.0.5".to_vec()));
        let bare = Request { headers: vec![], client: None };
        assert_eq!(hash_key_value(&HashKey::Header("x-user".into()), &bare), None);
        assert_eq!(hash_key_value(&HashKey::Cookie("sid".into()), &bare), None);
        assert_eq!(hash_key_value(&HashKey::ClientAddress, &bare), None);
    }
}
