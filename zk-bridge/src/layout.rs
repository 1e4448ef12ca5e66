//! How the znodes under a mount's path become Consul KV entries.
//!
//! Every entry's key is `<prefix><host:port>` and its value the upsync
//! JSON the plugin's `consul_kv` adapter reads (`weight`, `max_fails`,
//! `fail_timeout`, `down`, `backup`), so the plugin works unchanged.
//! docs/zk-bridge.md documents each mapping.

use crate::config::Layout;
use serde_json::{Map, Value};

/// The plugin parses at most this many bytes of a value (its
/// `kv_layout::MAX_VALUE_BYTES`); longer values lose their attributes.
/// Metadata is added to a value only while it stays within this size.
pub const PLUGIN_VALUE_BYTES: usize = 1024;

/// Dubbo's default provider weight (`org.apache.dubbo.common.constants.DEFAULT_WEIGHT`).
pub const DUBBO_DEFAULT_WEIGHT: u64 = 100;

/// One znode, as the layout maps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// A member: its `host:port` and the value to serve.
    Member { addr: String, value: Vec<u8> },
    /// Not a member of this mount (another protocol, group or version).
    Filtered,
}

/// Maps one child znode (`name` under the mount path, holding `data`).
/// An error is a problem the bridge reports; the znode is then left out.
pub fn map_znode(layout: &Layout, name: &str, data: &[u8]) -> Result<Mapped, String> {
    match layout {
        // The upsync layout is served as it is: the plugin validates names
        // and values exactly as it does for Consul KV and etcd.
        Layout::Upsync => Ok(Mapped::Member { addr: name.to_string(), value: data.to_vec() }),
        Layout::Curator { use_ssl_port, metadata } => curator(data, *use_ssl_port, *metadata),
        Layout::Dubbo2 { protocols, group, version, metadata } => {
            dubbo2(name, protocols, group.as_deref(), version.as_deref(), *metadata)
        }
    }
}

fn host_port(host: &str, port: u64) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A metadata value as upsync reads it: digit strings become numbers and
/// "true"/"false" booleans, so `{"weight": "3"}` works; anything else is
/// passed as it is (and the plugin reports it if it is not valid).
fn upsync_value(v: &Value) -> Value {
    match v {
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().map(Value::from).unwrap_or_else(|_| v.clone())
        }
        Value::String(s) if s.eq_ignore_ascii_case("true") => Value::Bool(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Value::Bool(false),
        other => other.clone(),
    }
}

const UPSYNC_ATTRS: [&str; 5] = ["weight", "max_fails", "fail_timeout", "down", "backup"];

/// Serialises `value`, adding the `meta` entries that fit within
/// [`PLUGIN_VALUE_BYTES`] (in key order, skipping those that do not fit;
/// `"meta_truncated": true` says some were left out).
fn with_metadata(mut value: Map<String, Value>, meta: Option<&Map<String, Value>>) -> Vec<u8> {
    let base = Value::Object(value.clone()).to_string();
    let Some(meta) = meta.filter(|m| !m.is_empty()) else { return base.into_bytes() };
    // room for `,"meta":{}` and `,"meta_truncated":true`
    let mut budget = PLUGIN_VALUE_BYTES.saturating_sub(base.len() + 10 + 22);
    let mut kept = Map::new();
    let mut dropped = false;
    for (k, v) in meta {
        // "k":v plus a comma
        let cost = Value::from(k.as_str()).to_string().len() + v.to_string().len() + 2;
        if cost <= budget {
            budget -= cost;
            kept.insert(k.clone(), v.clone());
        } else {
            dropped = true;
        }
    }
    value.insert("meta".into(), Value::Object(kept));
    if dropped {
        value.insert("meta_truncated".into(), Value::Bool(true));
    }
    let text = Value::Object(value).to_string();
    if text.len() <= PLUGIN_VALUE_BYTES {
        text.into_bytes()
    } else {
        base.into_bytes()
    }
}

/// Curator's `ServiceInstance` JSON (Curator service discovery, Spring
/// Cloud Zookeeper, Dubbo 3 application-level registration):
/// `{"name", "id", "address", "port", "sslPort", "payload": {"metadata": {...}}, "enabled", ...}`.
fn curator(data: &[u8], use_ssl_port: bool, metadata: bool) -> Result<Mapped, String> {
    let v: Value = serde_json::from_slice(data).map_err(|e| format!("not a ServiceInstance JSON object: {e}"))?;
    let obj = v.as_object().ok_or("not a ServiceInstance JSON object")?;
    let address = obj
        .get("address")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
        .ok_or("ServiceInstance has no \"address\"")?;
    let port_field = if use_ssl_port { "sslPort" } else { "port" };
    let port = obj
        .get(port_field)
        .and_then(Value::as_u64)
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| format!("ServiceInstance has no \"{port_field}\" in 1..=65535"))?;
    let enabled = match obj.get("enabled") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(format!("ServiceInstance \"enabled\" is not a boolean: {other}")),
    };
    let meta = obj.get("payload").and_then(|p| p.get("metadata")).and_then(Value::as_object);
    let mut value = Map::new();
    if let Some(meta) = meta {
        for attr in UPSYNC_ATTRS {
            if let Some(v) = meta.get(attr) {
                value.insert(attr.into(), upsync_value(v));
            }
        }
    }
    if !enabled {
        value.insert("down".into(), Value::from(1));
    }
    for field in ["id", "name"] {
        if let Some(s) = obj.get(field).and_then(Value::as_str) {
            value.insert(field.into(), Value::from(s));
        }
    }
    let value = with_metadata(value, meta.filter(|_| metadata));
    Ok(Mapped::Member { addr: host_port(address, port), value })
}

/// Percent-decoding (`%2F` → `/`; `+` is kept: Dubbo encodes with
/// URLEncoder, whose `+` for a space never occurs in a provider URL).
pub fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("bad %-escape")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 after %-decoding".to_string())
}

/// A Dubbo provider URL: `protocol://host:port/path?k=v&...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DubboUrl {
    pub protocol: String,
    pub host: String,
    pub port: u64,
    pub path: String,
    pub params: Vec<(String, String)>,
}

impl DubboUrl {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

pub fn parse_dubbo_url(text: &str) -> Result<DubboUrl, String> {
    let (protocol, rest) = text.split_once("://").ok_or("not protocol://host:port/...")?;
    let (authority, rest) = match rest.find(['/', '?']) {
        Some(i) => (rest.get(..i).unwrap_or_default(), rest.get(i..).unwrap_or_default()),
        None => (rest, ""),
    };
    // user:password@ may precede the host in Dubbo URLs; never kept.
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = authority.rsplit_once(':').ok_or("no :port after the host")?;
    let port: u64 = port.parse().ok().filter(|p| (1..=65535).contains(p)).ok_or("port is not in 1..=65535")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("no host".into());
    }
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut params = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(DubboUrl {
        protocol: protocol.to_string(),
        host: host.to_string(),
        port,
        path: path.trim_start_matches('/').to_string(),
        params,
    })
}

fn dubbo2(
    name: &str,
    protocols: &[String],
    group: Option<&str>,
    version: Option<&str>,
    metadata: bool,
) -> Result<Mapped, String> {
    let decoded = percent_decode(name).map_err(|e| format!("provider znode name: {e}"))?;
    let url = parse_dubbo_url(&decoded).map_err(|e| format!("provider URL {decoded:?}: {e}"))?;
    if !protocols.is_empty() && !protocols.contains(&url.protocol) {
        return Ok(Mapped::Filtered);
    }
    // Dubbo matches group and version exactly; an absent one is "".
    if group.is_some_and(|g| url.param("group").unwrap_or("") != g)
        || version.is_some_and(|v| url.param("version").unwrap_or("") != v)
    {
        return Ok(Mapped::Filtered);
    }
    let mut value = Map::new();
    let weight = match url.param("weight") {
        None | Some("") => Value::from(DUBBO_DEFAULT_WEIGHT),
        Some(w) => upsync_value(&Value::from(w)),
    };
    value.insert("weight".into(), weight);
    let flag = |k: &str| url.param(k).map(|v| v.eq_ignore_ascii_case("true"));
    let down = flag("disabled") == Some(true) || flag("enabled") == Some(false);
    value.insert("down".into(), Value::from(u8::from(down)));
    let meta: Map<String, Value> = if metadata {
        let mut m: Map<String, Value> = url.params.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        m.insert("protocol".into(), Value::from(url.protocol.as_str()));
        m.insert("path".into(), Value::from(url.path.as_str()));
        m
    } else {
        Map::new()
    };
    let value = with_metadata(value, Some(&meta));
    Ok(Mapped::Member { addr: host_port(&url.host, url.port), value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curator_layout() -> Layout {
        Layout::Curator { use_ssl_port: false, metadata: true }
    }

    fn member(m: Result<Mapped, String>) -> (String, Value) {
        match m {
            Ok(Mapped::Member { addr, value }) => (addr, serde_json::from_slice(&value).unwrap()),
            other => panic!("member expected, got {other:?}"),
        }
    }

    #[test]
    fn upsync_layout_is_served_verbatim() {
        let got = map_znode(&Layout::Upsync, "10.0.0.1:8080", br#"{"weight":2}"#).unwrap();
        assert_eq!(got, Mapped::Member { addr: "10.0.0.1:8080".into(), value: br#"{"weight":2}"#.to_vec() });
    }

    #[test]
    fn curator_service_instance() {
        // As Spring Cloud Zookeeper writes it.
        let data = br#"{"name":"web","id":"7f2c","address":"10.0.0.7","port":8080,"sslPort":8443,
            "payload":{"@class":"org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
                       "id":"web-1","name":"web","metadata":{"weight":"3","zone":"a","instance_status":"UP"}},
            "registrationTimeUTC":1700000000000,"serviceType":"DYNAMIC","uriSpec":{"parts":[]}}"#;
        let (addr, v) = member(map_znode(&curator_layout(), "7f2c", data));
        assert_eq!(addr, "10.0.0.7:8080");
        assert_eq!(v["weight"], 3);
        assert_eq!(v.get("down"), None);
        assert_eq!(v["id"], "7f2c");
        assert_eq!(v["meta"]["zone"], "a");
        let ssl = Layout::Curator { use_ssl_port: true, metadata: false };
        let (addr, v) = member(map_znode(&ssl, "7f2c", data));
        assert_eq!(addr, "10.0.0.7:8443");
        assert_eq!(v.get("meta"), None);
        // enabled=false (Curator 5) is down; IPv6 gets brackets.
        let off = br#"{"address":"::1","port":80,"enabled":false,"payload":null}"#;
        let (addr, v) = member(map_znode(&curator_layout(), "x", off));
        assert_eq!((addr.as_str(), &v["down"]), ("[::1]:80", &Value::from(1)));
    }

    #[test]
    fn curator_problems() {
        let l = curator_layout();
        assert!(map_znode(&l, "x", b"garbage").unwrap_err().contains("not a ServiceInstance"));
        assert!(map_znode(&l, "x", br#"{"port":80}"#).unwrap_err().contains("no \"address\""));
        assert!(map_znode(&l, "x", br#"{"address":"h","port":0}"#).unwrap_err().contains("\"port\" in 1..=65535"));
        let ssl = Layout::Curator { use_ssl_port: true, metadata: true };
        assert!(map_znode(&ssl, "x", br#"{"address":"h","port":80,"sslPort":null}"#).unwrap_err().contains("sslPort"));
        assert!(map_znode(&l, "x", br#"{"address":"h","port":80,"enabled":"no"}"#).is_err());
    }

    #[test]
    fn metadata_never_pushes_a_value_past_the_plugins_limit() {
        let big = "v".repeat(600);
        let data = format!(
            r#"{{"address":"10.0.0.1","port":80,"payload":{{"metadata":{{"a":"1","b":"{big}","c":"{big}","weight":"2"}}}}}}"#
        );
        let Ok(Mapped::Member { value, .. }) = map_znode(&curator_layout(), "x", data.as_bytes()) else { panic!() };
        assert!(value.len() <= PLUGIN_VALUE_BYTES, "{}", value.len());
        let v: Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(v["weight"], 2);
        assert_eq!(v["meta_truncated"], true);
        assert_eq!(v["meta"]["a"], "1");
        assert!(v["meta"].get("b").is_some() != v["meta"].get("c").is_some(), "exactly one of the two fits: {v}");
    }

    const DUBBO: &str = "dubbo%3A%2F%2F10.0.0.9%3A20880%2Forg.example.DemoService%3Fanyhost%3Dtrue%26application%3Ddemo%26group%3Dg1%26interface%3Dorg.example.DemoService%26methods%3DsayHello%252CsayBye%26version%3D1.0.0%26weight%3D200";

    fn dubbo(protocols: &[&str], group: Option<&str>, version: Option<&str>) -> Layout {
        Layout::Dubbo2 {
            protocols: protocols.iter().map(|s| s.to_string()).collect(),
            group: group.map(Into::into),
            version: version.map(Into::into),
            metadata: true,
        }
    }

    #[test]
    fn dubbo2_provider_url() {
        let (addr, v) = member(map_znode(&dubbo(&[], None, None), DUBBO, b""));
        assert_eq!(addr, "10.0.0.9:20880");
        assert_eq!((&v["weight"], &v["down"]), (&Value::from(200), &Value::from(0)));
        assert_eq!(v["meta"]["methods"], "sayHello,sayBye");
        assert_eq!(v["meta"]["path"], "org.example.DemoService");
        assert_eq!(v["meta"]["protocol"], "dubbo");
        // filters
        let f = |l: Layout| map_znode(&l, DUBBO, b"").unwrap();
        assert_eq!(f(dubbo(&["tri"], None, None)), Mapped::Filtered);
        assert_eq!(f(dubbo(&[], Some("g2"), None)), Mapped::Filtered);
        assert_eq!(f(dubbo(&[], None, Some("2.0.0"))), Mapped::Filtered);
        assert!(matches!(f(dubbo(&["dubbo", "tri"], Some("g1"), Some("1.0.0"))), Mapped::Member { .. }));
        // "" matches a provider without the parameter
        let plain = "tri%3A%2F%2F%5B%3A%3A1%5D%3A50051%2Fsvc%3Fdisabled%3Dtrue";
        let (addr, v) = member(map_znode(&dubbo(&[], Some(""), None), plain, b""));
        assert_eq!(addr, "[::1]:50051");
        assert_eq!((&v["weight"], &v["down"]), (&Value::from(DUBBO_DEFAULT_WEIGHT), &Value::from(1)));
        let (_, v) = member(map_znode(&dubbo(&[], None, None), "rest%3A%2F%2Fh%3A1%2Fs%3Fenabled%3Dfalse", b""));
        assert_eq!(v["down"], 1);
    }

    #[test]
    fn dubbo2_problems() {
        let l = dubbo(&[], None, None);
        assert!(map_znode(&l, "not-a-url", b"").unwrap_err().contains("not protocol://"));
        assert!(map_znode(&l, "dubbo%3A%2F%2Fh%2Fs", b"").unwrap_err().contains("no :port"));
        assert!(map_znode(&l, "dubbo%3A%2F%2Fh%3A0%2Fs", b"").unwrap_err().contains("port"));
        assert!(map_znode(&l, "bad%zz", b"").unwrap_err().contains("%-escape"));
    }
}
