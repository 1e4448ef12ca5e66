//! How a picked member reaches the proxy's router: the only host
//! difference of pick mode, as data.
//! - nginx (ngx_wasm_module): the `$upsync_backend` variable, used by
//!   `proxy_pass http://$upsync_backend;`.
//! - Envoy: a request header read by the `override_host` load balancing
//!   policy of the EDS cluster (the filter always overwrites it, so a
//!   client cannot choose), or the `original_dst_address` filter state of
//!   an ORIGINAL_DST cluster (clients cannot touch filter state at all), or
//!   the `envoy.upstream.dynamic_host` / `envoy.upstream.dynamic_port`
//!   filter state read by the dynamic forward proxy: the one way that also
//!   routes hostname members (Envoy resolves them; EDS takes IPs only).

use crate::sansio::config::{EnvoyRoute, HostKind, PluginConfig};
use crate::sansio::model::member::HostPort;
use crate::sansio::util::proto::{put_bytes, put_varint};

/// The nginx variable the filter sets; declare it with `set` at server level.
pub const BACKEND_VARIABLE: [&str; 2] = ["ngx", "upsync_backend"];

/// Envoy's filter state key read by ORIGINAL_DST clusters.
pub const ORIGINAL_DST_STATE: &str = "envoy.network.transport_socket.original_dst_address";

/// The filter state keys the dynamic forward proxy filter reads with
/// `allow_dynamic_host_from_filter_state: true`.
pub const DYNAMIC_HOST_STATE: &str = "envoy.upstream.dynamic_host";
pub const DYNAMIC_PORT_STATE: &str = "envoy.upstream.dynamic_port";

/// How the picked member is handed to the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMode {
    NginxVariable,
    EnvoyHeader(String),
    EnvoyOriginalDst,
    EnvoyDynamicHost,
}

impl RouteMode {
    pub fn for_config(config: &PluginConfig) -> RouteMode {
        match (config.host, &config.route) {
            (HostKind::Nginx, _) => RouteMode::NginxVariable,
            (HostKind::Envoy, EnvoyRoute::OverrideHost { header }) => RouteMode::EnvoyHeader(header.clone()),
            (HostKind::Envoy, EnvoyRoute::OriginalDst) => RouteMode::EnvoyOriginalDst,
            (HostKind::Envoy, EnvoyRoute::DynamicForwardProxy) => RouteMode::EnvoyDynamicHost,
        }
    }

    /// The property holding the client's address on this host.
    pub fn client_address_property(&self) -> [&'static str; 2] {
        match self {
            RouteMode::NginxVariable => ["ngx", "remote_addr"],
            _ => ["source", "address"],
        }
    }
}

/// The argument of Envoy's `set_envoy_filter_state` foreign function that
/// routes the request to `address` through an ORIGINAL_DST cluster:
/// `SetEnvoyFilterStateArguments{path: 1, value: 2, span: 3 = DownstreamRequest}`
/// (envoy/source/extensions/common/wasm/ext/set_envoy_filter_state.proto).
pub fn original_dst_state(address: &str) -> Vec<u8> {
    filter_state(ORIGINAL_DST_STATE, address)
}

/// `set_envoy_filter_state` arguments setting `key` to `value` for the
/// downstream request.
pub fn filter_state(key: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + value.len() + 8);
    put_bytes(&mut out, 1, key.as_bytes());
    put_bytes(&mut out, 2, value.as_bytes());
    put_varint(&mut out, 3 << 3);
    put_varint(&mut out, 1);
    out
}

/// The two `set_envoy_filter_state` arguments routing a request to
/// `address` through Envoy's dynamic forward proxy: the host (a name, or
/// an IP address without brackets) and the port.
pub fn dynamic_host_states(address: &str) -> Option<[Vec<u8>; 2]> {
    let hp: HostPort = address.parse().ok()?;
    Some([filter_state(DYNAMIC_HOST_STATE, &hp.host.bare()), filter_state(DYNAMIC_PORT_STATE, &hp.port.to_string())])
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn config(json: &str) -> PluginConfig {
        PluginConfig::parse(json.as_bytes()).unwrap()
    }

    const UP: &str = r#"{"name":"web","registry":{"type":"etcd_v3","target":"127.0.0.1:2379","prefix":"/p/"}}"#;

    #[test]
    fn the_mode_follows_the_host_and_route() {
        let nginx = config(&format!(r#"{{"host":"nginx","upstreams":[{UP}]}}"#));
        assert_eq!(RouteMode::for_config(&nginx), RouteMode::NginxVariable);
        assert_eq!(RouteMode::NginxVariable.client_address_property(), ["ngx", "remote_addr"]);
        let header = config(&format!(r#"{{"pick":"web","override_header":"X-Pick","upstreams":[{UP}]}}"#));
        assert_eq!(RouteMode::for_config(&header), RouteMode::EnvoyHeader("x-pick".into()));
        let dst = config(&format!(r#"{{"pick":"web","route":"original_dst","upstreams":[{UP}]}}"#));
        assert_eq!(RouteMode::for_config(&dst), RouteMode::EnvoyOriginalDst);
        assert_eq!(RouteMode::EnvoyOriginalDst.client_address_property(), ["source", "address"]);
    }

    /// The bytes the host's earlier hand encoding (one-byte lengths) sent,
    /// which Envoy accepted: short values must keep them.
    fn one_byte_lengths(length: u8, address: &str) -> Vec<u8> {
        let mut expected = vec![0x0a, 0x33];
        expected.extend_from_slice(b"envoy.network.transport_socket.original_dst_address");
        expected.extend_from_slice(&[0x12, length]);
        expected.extend_from_slice(address.as_bytes());
        expected.extend_from_slice(&[0x18, 0x01]);
        expected
    }

    #[test]
    fn original_dst_state_encoding() {
        assert_eq!(original_dst_state("127.0.0.1:8080"), one_byte_lengths(0x0e, "127.0.0.1:8080"));
        assert_eq!(original_dst_state("[::1]:8080"), one_byte_lengths(0x0a, "[::1]:8080"));
        // Longer than 127 bytes: a two-byte length (200 = 0xc8 0x01), where
        // one byte used to give a wrong length.
        let long = format!("{}.example:80", "a".repeat(189));
        assert_eq!(long.len(), 200);
        let bytes = original_dst_state(&long);
        let value_at = 2 + ORIGINAL_DST_STATE.len();
        assert_eq!(bytes[value_at..value_at + 3], [0x12, 0xc8, 0x01]);
        assert_eq!(&bytes[value_at + 3..value_at + 203], long.as_bytes());
        assert_eq!(bytes[value_at + 203..], [0x18, 0x01]);
    }

    #[test]
    fn dynamic_forward_proxy_states() {
        let dfp = config(&format!(r#"{{"pick":"web","route":"dynamic_forward_proxy","upstreams":[{UP}]}}"#));
        assert_eq!(RouteMode::for_config(&dfp), RouteMode::EnvoyDynamicHost);
        let [host, port] = dynamic_host_states("api.internal:8443").unwrap();
        assert_eq!(host, filter_state("envoy.upstream.dynamic_host", "api.internal"));
        assert_eq!(port, filter_state("envoy.upstream.dynamic_port", "8443"));
        let [host, _] = dynamic_host_states("[::1]:80").unwrap();
        assert_eq!(host, filter_state("envoy.upstream.dynamic_host", "::1"));
        assert!(dynamic_host_states("nonsense").is_none());
    }
}
