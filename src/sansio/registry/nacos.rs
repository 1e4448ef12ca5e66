//! Nacos naming over its v1 open API: `GET /nacos/v1/ns/instance/list`
//! (nacos.io, "Open API Guide", "Query instances"; Nacos 2.x and 3.x still
//! serve it).
//!
//! Plain polling, and every answer is a full [`Poll::Members`] list: the
//! sync machine compares lists, so an unchanged registry costs nothing
//! downstream. The answer has no field that says "unchanged": `lastRefTime`
//! is the time the answer was built (Nacos sets it to the current time on
//! every query), and `checksum` is `""` in Nacos 2.x (the documented example
//! shows it empty). Neither can be trusted as a cursor.
//!
//! How an instance becomes a member:
//! - `enabled: false` → left out, not reported: disabling an instance is an
//!   operator action, and Nacos itself hides such instances from clients.
//! - `healthy: false` → kept with `down: true`. Envoy and nginx then give it
//!   no traffic, but it stays in the list, so the status endpoint still shows
//!   it and it returns the moment Nacos sees it healthy. (`healthyOnly=false`
//!   is asked for so that Nacos lists it at all.) When a service hits its
//!   protection threshold (`reachProtectionThreshold: true`), Nacos itself
//!   returns every instance as healthy; that is Nacos's intended behaviour
//!   and is followed as is. Answers of Nacos 0.x/1.0 have `valid` instead of
//!   `healthy`; it is read the same way.
//! - `weight` (a double, default 1.0) → rounded to the upsync integer weight;
//!   see [`weight_attr`].
//! - metadata `backup`, `max_fails`, `fail_timeout` → the upsync attributes;
//!   see [`attrs_from_metadata`].
//!
//! A service that does not exist answers 200 with no hosts (Nacos ≥ 1.1),
//! which is an empty list; the sync machine refuses empty lists unless
//! `allow_empty` is set.
//!
//! The helpers after the adapter are shared with the Eureka adapter
//! ([`crate::sansio::registry::eureka`]): both registries describe instances the same way
//! (an address, a port, a weight, a string-to-string metadata map).

use crate::sansio::model::locality::{MetaBuilder, LOCALITY_FIELDS};
use crate::sansio::model::member::{upsync_attrs, HostPort, Member, MemberAttrs, MAX_WEIGHT};
use crate::sansio::registry::{
    error_text, get_json, member_list, short_text, HttpResponse, Instance, MemberList, Poll, RegistryAdapter,
};
use crate::sansio::registry::{AdapterError, HttpRequest};
use crate::sansio::util::url;
use serde_json::{Map, Value};

/// The instance list endpoint of the Nacos v1 open API.
pub const INSTANCE_LIST_PATH: &str = "/nacos/v1/ns/instance/list";

/// Reads one Nacos service. Stateless: there is no cursor to keep.
#[derive(Debug, Clone)]
pub struct NacosAdapter {
    path: String,
}

impl NacosAdapter {
    /// `group` and `namespace` left out (or empty) mean Nacos's defaults,
    /// `DEFAULT_GROUP` and the `public` namespace.
    pub fn new(service: &str, group: Option<&str>, namespace: Option<&str>) -> Self {
        let mut params = vec![("serviceName", service.to_string())];
        if let Some(group) = group.filter(|g| !g.is_empty()) {
            params.push(("groupName", group.to_string()));
        }
        if let Some(namespace) = namespace.filter(|n| !n.is_empty()) {
            params.push(("namespaceId", namespace.to_string()));
        }
        // Unhealthy instances are wanted: they become `down` members.
        params.push(("healthyOnly", "false".to_string()));
        NacosAdapter { path: format!("{INSTANCE_LIST_PATH}{}", url::query(&params)) }
    }

    /// Reads an instance list answer (the body of a 200).
    pub fn parse_list(body: &[u8]) -> Result<MemberList, AdapterError> {
        let root: Value = serde_json::from_slice(body).map_err(|e| {
            // Nacos reports its own failures as plain text, `caused: ...`.
            let text = short_text(body);
            if text.starts_with("caused:") {
                AdapterError::Registry(text)
            } else {
                AdapterError::NotJson(e.to_string())
            }
        })?;
        let root = root.as_object().ok_or_else(|| AdapterError::BadShape("top level is not an object".into()))?;
        let hosts = match root.get("hosts") {
            Some(Value::Array(hosts)) => hosts.as_slice(),
            Some(Value::Null) => &[],
            Some(_) => return Err(AdapterError::BadShape("\"hosts\" is not an array".into())),
            None => {
                return Err(match error_text(root) {
                    Some(message) => AdapterError::Registry(message),
                    None => AdapterError::BadShape("no \"hosts\": not a Nacos instance list".into()),
                })
            }
        };
        Ok(member_list(hosts.iter().enumerate().map(|(i, host)| (host_key(host, i), read_host(host)))))
    }
}

impl RegistryAdapter for NacosAdapter {
    fn request(&self) -> HttpRequest {
        get_json(self.path.clone())
    }

    fn parse(&mut self, response: &HttpResponse<'_>) -> Result<Poll, AdapterError> {
        response.expect_ok()?;
        Ok(Poll::Members(Self::parse_list(response.body)?))
    }

    // No cursor: every request is already a plain full read.
    fn reset(&mut self) {}
}

/// How a host is named in problems: its `instanceId`, else `ip:port`, else
/// its place in the list.
fn host_key(host: &Value, index: usize) -> String {
    if let Some(id) = host.get("instanceId").and_then(Value::as_str).filter(|id| !id.is_empty()) {
        return id.to_string();
    }
    match (host.get("ip").and_then(Value::as_str), host.get("port")) {
        (Some(ip), Some(port)) => format!("{ip}:{port}"),
        _ => format!("hosts[{index}]"),
    }
}

fn read_host(host: &Value) -> Instance {
    let host = host.as_object().ok_or("entry is not a JSON object")?;
    match host.get("enabled") {
        None | Some(Value::Null) | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Ok(None),
        // Whether the operator disabled it cannot be told: not served, reported.
        Some(other) => return Err(format!("\"enabled\" {} is not true or false", short_json(other))),
    }
    let ip = host.get("ip").and_then(Value::as_str).map(str::trim).filter(|ip| !ip.is_empty()).ok_or("no \"ip\"")?;
    let port = host.get("port").ok_or("no \"port\"")?;
    let port = port_number(port).ok_or_else(|| format!("port {} is not a number in 1..=65535", short_json(port)))?;
    let addr = HostPort::from_parts(ip, port)?;

    let mut notes = Vec::new();
    let (mut attrs, metadata_notes) = attrs_from_metadata(host.get("metadata"));
    notes.extend(metadata_notes);
    let (weight, weight_note) = weight_attr(host.get("weight"));
    attrs.weight = weight;
    notes.extend(weight_note);
    // Nacos 0.x/1.0 answers say `valid` where later ones say `healthy`.
    let health = host.get("healthy").filter(|v| !v.is_null()).or_else(|| host.get("valid"));
    attrs.down = match health {
        None | Some(Value::Null) => false,
        Some(Value::Bool(healthy)) => !healthy,
        Some(other) => {
            // Unknown health is not a reason to send traffic.
            notes.push(format!("\"healthy\" {} is not true or false; member marked down", short_json(other)));
            true
        }
    };
    // Locality: metadata `region` / `zone` / `sub_zone`, else the Nacos
    // cluster as the zone (Nacos's own unit of "where"), except its
    // default cluster name, which says nothing.
    let mut b = MetaBuilder::new();
    let metadata = host.get("metadata").and_then(Value::as_object);
    if let Some(m) = metadata {
        b.locality_from(m, "metadata ");
    }
    if host.get("clusterName").and_then(Value::as_str).is_some_and(|c| c != NACOS_DEFAULT_CLUSTER) {
        b.locality("zone", host.get("clusterName"), "clusterName");
    }
    metadata_tags(&mut b, metadata);
    let (meta, meta_notes) = b.finish();
    notes.extend(meta_notes);
    Ok(Some((Member { addr, attrs, meta }, notes)))
}

/// The cluster Nacos puts instances in when none is named.
pub const NACOS_DEFAULT_CLUSTER: &str = "DEFAULT";

/// Every metadata entry as a tag, except those read as upsync attributes
/// (and `weight`) or as the locality.
pub fn metadata_tags(b: &mut MetaBuilder, metadata: Option<&Map<String, Value>>) {
    if let Some(m) = metadata {
        let skip = [METADATA_KEYS.as_slice(), &["weight"], LOCALITY_FIELDS.as_slice()].concat();
        b.tags_from_map(m, &skip, "metadata");
    }
}

// ---------------------------------------------------------------------------
// Shared with the Eureka adapter.
// ---------------------------------------------------------------------------

/// A port given as a JSON number or a numeric string, in 1..=65535.
pub fn port_number(v: &Value) -> Option<u16> {
    let n = match v {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok()?,
        _ => return None,
    };
    u16::try_from(n).ok().filter(|p| *p > 0)
}

/// The upsync weight from a registry weight: a JSON number or numeric
/// string, possibly fractional (Nacos weights are doubles).
///
/// - absent or `null` → the default, 1;
/// - rounded to the nearest integer, except that a weight above 0 never
///   rounds down to 0: the registry means to serve that instance, and 0
///   would drain it;
/// - exactly 0 → 0, the member is drained;
/// - below 0 → 0, above [`MAX_WEIGHT`] → [`MAX_WEIGHT`], with a problem;
/// - not a number → the default, with a problem.
pub fn weight_attr(v: Option<&Value>) -> (u32, Option<String>) {
    let default = MemberAttrs::default().weight;
    let number = match v {
        None | Some(Value::Null) => return (default, None),
        Some(Value::Number(n)) => n.as_f64(),
        // serde_json's float parser: core's `str::parse::<f64>` would add its own tables to the module.
        Some(Value::String(s)) => serde_json::from_str::<f64>(s.trim()).ok(),
        Some(_) => None,
    };
    let Some(w) = number.filter(|w| w.is_finite()) else {
        let shown = v.map(short_json).unwrap_or_default();
        return (default, Some(format!("weight {shown} is not a number, default {default} used")));
    };
    let max = u32::try_from(MAX_WEIGHT).unwrap_or(u32::MAX);
    // Shown as the registry wrote it: formatting an f64 would pull core's
    // float printer into the module.
    let shown = || v.map(short_json).unwrap_or_default();
    if w < 0.0 {
        return (0, Some(format!("weight {} is below 0, 0 used (member drained)", shown())));
    }
    if w.round() > f64::from(max) {
        return (max, Some(format!("weight {} is over {max}, {max} used", shown())));
    }
    let rounded = if w > 0.0 { w.round().max(1.0) } else { 0.0 };
    // In 0..=max after the checks above, so the cast neither truncates nor saturates.
    (rounded as u32, None)
}

/// The metadata keys read as upsync attributes.
pub const METADATA_KEYS: [&str; 3] = ["backup", "max_fails", "fail_timeout"];

/// The upsync attributes in an instance's metadata (a string-to-string map
/// in both Nacos and Eureka): `backup` ("true"/"false" or "1"/"0"),
/// `max_fails` and `fail_timeout` (seconds, `"10s"` accepted), read with
/// the same rules and bounds as an upsync KV value. A bad value gives that
/// attribute its default and a problem. `weight` and `down` are not read
/// here: the registries have their own (weight, health, status).
pub fn attrs_from_metadata(metadata: Option<&Value>) -> (MemberAttrs, Vec<String>) {
    let metadata = match metadata {
        None | Some(Value::Null) => return (MemberAttrs::default(), Vec::new()),
        Some(Value::Object(m)) => m,
        Some(_) => return (MemberAttrs::default(), vec!["metadata is not a JSON object, defaults used".into()]),
    };
    let mut picked = Map::new();
    for key in METADATA_KEYS {
        if let Some(v) = metadata.get(key) {
            // Metadata values are strings; the upsync reader takes booleans
            // as JSON booleans or numbers.
            let v = match v.as_str().map(str::trim) {
                Some(s) if s.eq_ignore_ascii_case("true") => Value::Bool(true),
                Some(s) if s.eq_ignore_ascii_case("false") => Value::Bool(false),
                _ => v.clone(),
            };
            picked.insert(key.to_string(), v);
        }
    }
    let (attrs, problems) = upsync_attrs(&picked);
    (attrs, problems.into_iter().map(|p| format!("metadata {p}")).collect())
}

/// A JSON value as shown in a problem, cut short.
fn short_json(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 40 {
        format!("{}...", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    const DOC: &[u8] = include_bytes!("../../../tests/fixtures/nacos/instance_list_doc.json");
    const LIST: &[u8] = include_bytes!("../../../tests/fixtures/nacos/instance_list.json");
    const EMPTY: &[u8] = include_bytes!("../../../tests/fixtures/nacos/instance_list_empty.json");
    const LEGACY: &[u8] = include_bytes!("../../../tests/fixtures/nacos/instance_list_legacy.json");
    const BAD: &[u8] = include_bytes!("../../../tests/fixtures/nacos/instance_list_bad.json");

    fn ok(body: &[u8]) -> HttpResponse<'_> {
        HttpResponse::new(Some(200), &[], body)
    }

    fn members(list: &MemberList) -> Vec<(String, MemberAttrs)> {
        list.members.iter().map(|m| (m.addr.to_string(), m.attrs)).collect()
    }

    fn problems(list: &MemberList) -> Vec<(&str, bool)> {
        let mut p: Vec<_> = list.problems.iter().map(|p| (p.key.as_str(), p.skipped)).collect();
        p.sort();
        p
    }

    #[test]
    fn request_asks_for_every_instance_of_the_service() {
        let a = NacosAdapter::new("nacos.test.1", Some("DEFAULT_GROUP"), Some("n1"));
        let r = a.request();
        assert_eq!(r.method, "GET");
        assert_eq!(
            r.path,
            "/nacos/v1/ns/instance/list?serviceName=nacos.test.1&groupName=DEFAULT_GROUP&namespaceId=n1&healthyOnly=false"
        );
        assert_eq!(r.headers, [("accept".to_string(), "application/json".to_string())]);
        assert!(r.body.is_empty());
        assert_eq!(a.hold_ms(), 0);
        assert!(!a.long_polls());
    }

    #[test]
    fn request_encodes_values_and_leaves_out_absent_params() {
        let a = NacosAdapter::new("providers:com.example.Api:1.0 x", None, None);
        assert_eq!(
            a.request().path,
            "/nacos/v1/ns/instance/list?serviceName=providers%3Acom.example.Api%3A1.0%20x&healthyOnly=false"
        );
        let b = NacosAdapter::new("web", Some(""), Some("a&b=c"));
        assert_eq!(
            b.request().path,
            "/nacos/v1/ns/instance/list?serviceName=web&namespaceId=a%26b%3Dc&healthyOnly=false"
        );
    }

    #[test]
    fn documented_example_is_one_unhealthy_member() {
        let list = NacosAdapter::parse_list(DOC).unwrap();
        let down = MemberAttrs { down: true, ..MemberAttrs::default() };
        assert_eq!(members(&list), [("10.10.10.10:8888".to_string(), down)]);
        assert!(list.problems.is_empty());
    }

    #[test]
    fn every_field_maps_as_documented() {
        let list = NacosAdapter::parse_list(LIST).unwrap();
        let d = MemberAttrs::default();
        assert_eq!(
            members(&list),
            [
                // healthy: false → kept, down.
                ("10.10.10.10:8888".to_string(), MemberAttrs { down: true, ..d }),
                // weight 2.5 rounds to 3; metadata backup/max_fails/fail_timeout.
                (
                    "10.10.10.11:8888".to_string(),
                    MemberAttrs { weight: 3, max_fails: 5, fail_timeout: 30, backup: true, ..d }
                ),
                // weight 0 drains.
                ("10.10.10.12:8888".to_string(), MemberAttrs { weight: 0, ..d }),
                // weight 0.3 is above 0: at least 1, never drained.
                ("10.10.10.13:8888".to_string(), d),
                // 10.10.10.14 is enabled: false → not a member.
                ("10.10.10.15:8080".to_string(), MemberAttrs { weight: 100, max_fails: 0, fail_timeout: 0, ..d }),
                ("[fd00::14]:9090".to_string(), MemberAttrs { backup: true, ..d }),
            ]
        );
        // Disabled is an operator state, not a problem.
        assert!(list.problems.is_empty(), "{:#?}", list.problems);
    }

    #[test]
    fn legacy_answers_use_valid_for_health() {
        let list = NacosAdapter::parse_list(LEGACY).unwrap();
        let d = MemberAttrs::default();
        assert_eq!(
            members(&list),
            [("10.10.10.10:8888".to_string(), d), ("10.10.10.11:8888".to_string(), MemberAttrs { down: true, ..d })]
        );
        assert!(list.problems.is_empty());
    }

    #[test]
    fn unknown_service_is_an_empty_list_every_time() {
        let mut a = NacosAdapter::new("nacos.test.1", None, None);
        for _ in 0..2 {
            match a.parse(&ok(EMPTY)) {
                Ok(Poll::Members(list)) => assert!(list.members.is_empty() && list.problems.is_empty()),
                other => panic!("members expected, got {other:?}"),
            }
        }
    }

    #[test]
    fn every_answer_is_a_full_list() {
        // lastRefTime and checksum are not trusted: the same answer twice is
        // two full lists, and the sync machine sees they are equal.
        let mut a = NacosAdapter::new("nacos.test.1", None, None);
        let first = a.parse(&ok(LIST)).unwrap();
        a.reset();
        let second = a.parse(&ok(LIST)).unwrap();
        assert!(matches!(&first, Poll::Members(l) if l.members.len() == 6));
        assert_eq!(first, second);
    }

    #[test]
    fn bad_entries_are_skipped_or_repaired_and_reported() {
        let list = NacosAdapter::parse_list(BAD).unwrap();
        let d = MemberAttrs::default();
        assert_eq!(
            members(&list),
            [
                ("10.10.10.22:8888".to_string(), d),
                ("10.10.10.23:8888".to_string(), MemberAttrs { weight: 65535, ..d }),
                ("10.10.10.24:8888".to_string(), MemberAttrs { weight: 0, ..d }),
                ("10.10.10.25:8888".to_string(), MemberAttrs { fail_timeout: 20, ..d }),
                ("10.10.10.27:8888".to_string(), MemberAttrs { down: true, ..d }),
                ("10.10.10.29:8888".to_string(), d),
            ]
        );
        let key = |ip: &str, port: u32| format!("{ip}#{port}#DEFAULT#DEFAULT_GROUP@@nacos.test.1");
        let mut expected = vec![
            (key("10.10.10.300", 8888), true),
            (key("10.10.10.20", 70000), true),
            (key("10.10.10.21", 0), true),
            (key("10.10.10.22", 8888), false),
            (key("10.10.10.23", 8888), false),
            (key("10.10.10.24", 8888), false),
            (key("10.10.10.25", 8888), false),
            (key("10.10.10.25", 8888), false),
            ("10.10.10.22:8888".to_string(), true),
            ("hosts[8]".to_string(), true),
            ("no-ip#8888#DEFAULT#DEFAULT_GROUP@@nacos.test.1".to_string(), true),
            (key("10.10.10.26", 8888), true),
            (key("10.10.10.27", 8888), false),
            (key("10.10.10.29", 8888), false),
        ];
        expected.sort();
        let expected: Vec<_> = expected.iter().map(|(k, s)| (k.as_str(), *s)).collect();
        assert_eq!(problems(&list), expected, "{:#?}", list.problems);
        let text = |k: &str| -> Vec<&str> {
            list.problems.iter().filter(|p| p.key == k).map(|p| p.problem.as_str()).collect()
        };
        assert!(text(&key("10.10.10.300", 8888))[0].contains("neither an IPv4 address nor a DNS name"));
        assert!(text(&key("10.10.10.20", 70000))[0].contains("not a number in 1..=65535"));
        assert!(text(&key("10.10.10.22", 8888))[0].contains("weight \"heavy\" is not a number"));
        assert!(text(&key("10.10.10.23", 8888))[0].contains("over 65535"));
        assert!(text(&key("10.10.10.24", 8888))[0].contains("below 0"));
        let meta = text(&key("10.10.10.25", 8888));
        assert!(meta.iter().any(|p| p.contains("\"max_fails\"")) && meta.iter().any(|p| p.contains("\"backup\"")));
        assert!(text("10.10.10.22:8888")[0].contains("more than one instance"));
        assert!(text(&key("10.10.10.26", 8888))[0].contains("\"enabled\""));
        assert!(text(&key("10.10.10.29", 8888))[0].contains("metadata is not a JSON object"));
    }

    #[test]
    fn weights_round_clamp_and_default() {
        let w = |v: Value| weight_attr(Some(&v));
        assert_eq!(weight_attr(None), (1, None));
        assert_eq!(w(Value::Null), (1, None));
        assert_eq!(w(json!(1.0)), (1, None));
        assert_eq!(w(json!(0)), (0, None));
        assert_eq!(w(json!(0.0)), (0, None));
        assert_eq!(w(json!(0.01)), (1, None));
        assert_eq!(w(json!(0.5)), (1, None));
        assert_eq!(w(json!(1.49)), (1, None));
        assert_eq!(w(json!(1.5)), (2, None));
        assert_eq!(w(json!(10000)), (10000, None));
        assert_eq!(w(json!(65535.4)), (65535, None));
        assert_eq!(w(json!("3")), (3, None));
        assert_eq!(w(json!(" 2.5 ")), (3, None));
        assert!(matches!(w(json!(65535.5)), (65535, Some(_))));
        assert!(matches!(w(json!(1e300)), (65535, Some(_))));
        assert!(matches!(w(json!(-0.5)), (0, Some(_))));
        for bad in [json!("heavy"), json!("NaN"), json!("inf"), json!(true), json!([1]), json!({"v": 1}), json!("")] {
            assert!(matches!(w(bad.clone()), (1, Some(_))), "{bad}");
        }
    }

    #[test]
    fn metadata_attributes_take_strings_and_report_bad_values() {
        let m = |v: Value| attrs_from_metadata(Some(&v));
        let d = MemberAttrs::default();
        assert_eq!(attrs_from_metadata(None), (d, vec![]));
        assert_eq!(m(json!({})), (d, vec![]));
        assert_eq!(m(json!({"version": "1.2", "weight": "9", "down": "true"})), (d, vec![]), "other keys are ignored");
        assert_eq!(m(json!({"backup": "TRUE"})).0, MemberAttrs { backup: true, ..d });
        assert_eq!(m(json!({"backup": "1"})).0, MemberAttrs { backup: true, ..d });
        assert_eq!(m(json!({"backup": "0"})).0, d);
        assert_eq!(m(json!({"backup": "false"})).0, d);
        assert_eq!(
            m(json!({"max_fails": "7", "fail_timeout": "45s"})).0,
            MemberAttrs { max_fails: 7, fail_timeout: 45, ..d }
        );
        let (attrs, notes) = m(json!({"backup": "yes", "max_fails": "-1", "fail_timeout": "86401"}));
        assert_eq!(attrs, d);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes.iter().all(|n| n.starts_with("metadata field")));
        assert_eq!(m(json!("backup=true")).1.len(), 1);
    }

    #[test]
    fn addresses_and_ports() {
        assert_eq!(HostPort::from_parts("10.0.0.1", 80).unwrap().to_string(), "10.0.0.1:80");
        assert_eq!(HostPort::from_parts("fd00::1", 80).unwrap().to_string(), "[fd00::1]:80");
        assert_eq!(HostPort::from_parts("[fd00::1]", 80).unwrap().to_string(), "[fd00::1]:80");
        assert_eq!(HostPort::from_parts("Api.Example.com", 80).unwrap().to_string(), "api.example.com:80");
        for bad in ["", "10.0.0.256", "host:80", "fd00::g", "a b"] {
            assert!(HostPort::from_parts(bad, 80).is_err(), "{bad}");
        }
        assert_eq!(port_number(&json!(8080)), Some(8080));
        assert_eq!(port_number(&json!("8080")), Some(8080));
        for bad in [json!(0), json!(65536), json!(-1), json!(80.5), json!("+80"), json!(""), json!(null)] {
            assert_eq!(port_number(&bad), None, "{bad}");
        }
    }

    #[test]
    fn garbage_bodies_are_refused() {
        let e = |body: &[u8]| NacosAdapter::parse_list(body).unwrap_err();
        assert!(matches!(e(b"<html>502</html>"), AdapterError::NotJson(_)));
        assert!(matches!(e(b""), AdapterError::NotJson(_)));
        assert!(matches!(e(&LIST[..LIST.len() / 2]), AdapterError::NotJson(_)), "a body cut short");
        assert!(matches!(e(b"[]"), AdapterError::BadShape(_)));
        assert!(matches!(e(b"{}"), AdapterError::BadShape(_)));
        assert!(matches!(e(br#"{"name":"x","hosts":{}}"#), AdapterError::BadShape(_)));
        assert_eq!(
            e(b"caused: service not found, namespace: public, service: nacos.test.9;"),
            AdapterError::Registry("caused: service not found, namespace: public, service: nacos.test.9;".into())
        );
        assert_eq!(
            e(br#"{"code":10000,"message":"parameter missing","data":"serviceName"}"#),
            AdapterError::Registry("parameter missing".into())
        );
        // `hosts: null` is an empty list, not an error.
        assert!(NacosAdapter::parse_list(br#"{"hosts":null}"#).unwrap().members.is_empty());
    }

    #[test]
    fn non_200_answers_are_status_errors() {
        let mut a = NacosAdapter::new("nacos.test.1", None, None);
        for status in [400, 403, 404, 500, 503] {
            let r = HttpResponse::new(Some(status), &[], b"caused: no permission;");
            assert_eq!(a.parse(&r), Err(AdapterError::Status(status)));
        }
        let none = HttpResponse::new(None, &[], LIST);
        assert_eq!(a.parse(&none), Err(AdapterError::NoStatus));
    }
}
