//! Eureka over its REST API: `GET /eureka/apps/<APP>` with
//! `accept: application/json` (Netflix/eureka wiki, "Eureka REST
//! operations"; Spring Cloud's Eureka server serves it under `/eureka`,
//! without the wiki's `/v2`).
//!
//! Plain polling, and every answer is a full [`Poll::Members`] list (the
//! sync machine compares lists).
//!
//! Eureka's JSON comes from more than one encoder over the years, and the
//! adapter reads all of their quirks:
//! - `instance` is an array, or a single object when the application has
//!   one instance (the older XStream/Jettison encoder);
//! - the port number `"$"` is a JSON number or a string;
//! - `"@enabled"` is the string `"true"`/`"false"` (a JSON boolean is read
//!   too).
//!
//! How an instance becomes a member:
//! - only `status: "UP"` instances are members. `DOWN`, `STARTING`,
//!   `OUT_OF_SERVICE` and `UNKNOWN` are left out and *not* reported as
//!   problems: they are normal lifecycle states (an instance starting or
//!   shutting down, an operator taking it out of service), and Eureka's own
//!   clients route only to `UP` instances. Eureka has already applied any
//!   status override to `status`;
//! - the port is `port` when its `@enabled` is true, else `securePort` when
//!   enabled, else the instance is skipped with a problem. A missing
//!   `@enabled` takes Eureka's defaults: `port` enabled, `securePort` not.
//!   (Only `host:port` is published: whether the upstream speaks TLS on
//!   `securePort` is the proxy cluster's configuration);
//! - the address is `ipAddr`, or `hostName` when `ipAddr` is empty or
//!   absent. An `ipAddr` that is present but not an address skips the
//!   instance rather than guessing from `hostName`;
//! - metadata `weight` is read like a Nacos weight
//!   ([`crate::sansio::registry::nacos::weight_attr`]), and `backup`, `max_fails`,
//!   `fail_timeout` like Nacos metadata
//!   ([`crate::sansio::registry::nacos::attrs_from_metadata`]).
//!
//! An unknown application answers 404 (Eureka's `ApplicationResource`
//! finds no payload). Eureka removes an application from its registry when
//! its last instance is cancelled or evicted, so "no such application" is
//! also how Eureka says "no instances left": a 404 is read as an empty
//! list rather than an error. The sync machine refuses empty lists unless
//! `allow_empty` is set, and logs the refusal, so the last good list stays
//! and a misspelt application name (or a wrong path prefix, which also
//! answers 404) is still visible in the logs. With `allow_empty` set, such a
//! mistake empties the upstream: that is what `allow_empty` asks for.

use crate::sansio::model::locality::{MemberMeta, MetaBuilder};
use crate::sansio::model::member::HostPort;
use crate::sansio::model::member::Member;
use crate::sansio::registry::nacos::{attrs_from_metadata, metadata_tags, port_number, weight_attr};
use crate::sansio::registry::{
    error_text, get_json, member_list, short_text, HttpResponse, Instance, MemberList, Poll, RegistryAdapter,
};
use crate::sansio::registry::{AdapterError, HttpRequest};
use crate::sansio::util::url;
use serde_json::{Map, Value};

/// Reads one Eureka application. Stateless: there is no cursor to keep.
#[derive(Debug, Clone)]
pub struct EurekaAdapter {
    path: String,
}

impl EurekaAdapter {
    /// `app` is upper-cased: Eureka stores application names upper-case
    /// and looks them up as given, so `/eureka/apps/web` would miss `WEB`.
    pub fn new(app: &str) -> Self {
        EurekaAdapter { path: format!("/eureka/apps/{}", url::encode(&app.to_ascii_uppercase(), false)) }
    }

    /// Reads an application answer (the body of a 200).
    pub fn parse_application(body: &[u8]) -> Result<MemberList, AdapterError> {
        let root: Value = serde_json::from_slice(body).map_err(|e| {
            if short_text(body).starts_with('<') {
                // Eureka answers XML unless asked for JSON.
                AdapterError::NotJson(
                    "the answer is XML: the accept: application/json header did not reach Eureka".into(),
                )
            } else {
                AdapterError::NotJson(e.to_string())
            }
        })?;
        let root = root.as_object().ok_or_else(|| AdapterError::BadShape("top level is not an object".into()))?;
        let Some(application) = root.get("application") else {
            return Err(match error_text(root) {
                Some(message) => AdapterError::Registry(message),
                None => AdapterError::BadShape("no \"application\": not a Eureka application answer".into()),
            });
        };
        let application =
            application.as_object().ok_or_else(|| AdapterError::BadShape("\"application\" is not an object".into()))?;
        let instances = match application.get("instance") {
            None | Some(Value::Null) => &[],
            Some(Value::Array(list)) => list.as_slice(),
            // The single-instance quirk of the older encoder.
            Some(one @ Value::Object(_)) => std::slice::from_ref(one),
            Some(_) => return Err(AdapterError::BadShape("\"instance\" is neither an array nor an object".into())),
        };
        Ok(member_list(instances.iter().enumerate().map(|(i, v)| (instance_key(v, i), read_instance(v)))))
    }
}

impl RegistryAdapter for EurekaAdapter {
    fn request(&self) -> HttpRequest {
        get_json(self.path.clone())
    }

    fn parse(&mut self, response: &HttpResponse<'_>) -> Result<Poll, AdapterError> {
        // No such application: no instances (see the module comment).
        if response.status == Some(404) {
            return Ok(Poll::NotFound);
        }
        response.expect_ok()?;
        Ok(Poll::Members(Self::parse_application(response.body)?))
    }

    // No cursor: every request is already a plain full read.
    fn reset(&mut self) {}
}

/// How an instance is named in problems: its `instanceId`, else its
/// `hostName`, else its place in the list.
fn instance_key(v: &Value, index: usize) -> String {
    ["instanceId", "hostName"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str).filter(|s| !s.is_empty()))
        .map_or_else(|| format!("instance[{index}]"), str::to_string)
}

fn read_instance(v: &Value) -> Instance {
    let instance = v.as_object().ok_or("instance is not a JSON object")?;
    let status = instance.get("status").and_then(Value::as_str).ok_or("no \"status\"")?;
    if status != "UP" {
        return Ok(None);
    }
    let port = match port_field(instance.get("port"), true, "port")? {
        Some(port) => port,
        None => port_field(instance.get("securePort"), false, "securePort")?
            .ok_or("neither port nor securePort is enabled")?,
    };
    let host = ["ipAddr", "hostName"]
        .iter()
        .find_map(|k| instance.get(*k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()))
        .ok_or("no ipAddr or hostName")?;
    let addr = HostPort::from_parts(host, port)?;

    let metadata = instance.get("metadata");
    let (mut attrs, mut notes) = attrs_from_metadata(metadata);
    let (weight, weight_note) = weight_attr(metadata.and_then(|m| m.get("weight")));
    attrs.weight = weight;
    notes.extend(weight_note.map(|n| format!("metadata {n}")));
    let (meta, meta_notes) = eureka_meta(instance);
    notes.extend(meta_notes);
    Ok(Some((Member { addr, attrs, meta }, notes)))
}

/// An instance's locality and tags. Locality: metadata `region` / `zone` /
/// `sub_zone` (Spring Cloud's `eureka.instance.metadata-map.zone`), else,
/// for the zone, the AWS `availability-zone` of `dataCenterInfo.metadata`
/// (`"name": "Amazon"`). The region is not derived from the zone. Tags:
/// every metadata entry not read otherwise.
fn eureka_meta(instance: &Map<String, Value>) -> (MemberMeta, Vec<String>) {
    let mut b = MetaBuilder::new();
    let metadata = instance.get("metadata").and_then(Value::as_object);
    if let Some(m) = metadata {
        b.locality_from(m, "metadata ");
    }
    let aws = instance.get("dataCenterInfo").and_then(|d| d.get("metadata"));
    b.locality("zone", aws.and_then(|m| m.get("availability-zone")), "dataCenterInfo availability-zone");
    metadata_tags(&mut b, metadata);
    b.finish()
}

/// A Eureka port, `{"$": 8080, "@enabled": "true"}`: the port when enabled,
/// `None` when disabled or absent.
fn port_field(v: Option<&Value>, enabled_by_default: bool, name: &str) -> Result<Option<u16>, String> {
    let (number, enabled) = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(port)) => {
            let enabled = match port.get("@enabled") {
                None | Some(Value::Null) => enabled_by_default,
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
                Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
                Some(other) => return Err(format!("{name} \"@enabled\" {other} is not true or false")),
            };
            (port.get("$"), enabled)
        }
        // Some non-Java clients register a bare number.
        Some(bare) => (Some(bare), enabled_by_default),
    };
    if !enabled {
        return Ok(None);
    }
    let number = number.ok_or_else(|| format!("{name} has no \"$\" number"))?;
    port_number(number).map(Some).ok_or_else(|| format!("{name} {number} is not a number in 1..=65535"))
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::model::member::MemberAttrs;
    use serde_json::json;

    const APP: &[u8] = include_bytes!("../../../tests/fixtures/eureka/application.json");
    const SINGLE: &[u8] = include_bytes!("../../../tests/fixtures/eureka/application_single.json");
    const LEGACY: &[u8] = include_bytes!("../../../tests/fixtures/eureka/application_legacy.json");
    const BAD: &[u8] = include_bytes!("../../../tests/fixtures/eureka/application_bad.json");

    fn answer(status: u16, body: &[u8]) -> HttpResponse<'_> {
        HttpResponse::new(Some(status), &[], body)
    }

    fn members(list: &MemberList) -> Vec<(String, MemberAttrs)> {
        list.members.iter().map(|m| (m.addr.to_string(), m.attrs)).collect()
    }

    #[test]
    fn request_upper_cases_and_encodes_the_app_and_asks_for_json() {
        let a = EurekaAdapter::new("myMicroservice2");
        let r = a.request();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/eureka/apps/MYMICROSERVICE2");
        assert_eq!(r.headers, [("accept".to_string(), "application/json".to_string())]);
        assert!(r.body.is_empty());
        assert_eq!(a.hold_ms(), 0);
        assert!(!a.long_polls());
        assert_eq!(EurekaAdapter::new("testeng.lsm").request().path, "/eureka/apps/TESTENG.LSM");
        assert_eq!(EurekaAdapter::new("a b/c?d").request().path, "/eureka/apps/A%20B%2FC%3FD");
    }

    #[test]
    fn captured_answer_maps_every_field() {
        let list = EurekaAdapter::parse_application(APP).unwrap();
        let d = MemberAttrs::default();
        assert_eq!(
            members(&list),
            [
                // The captured instance: port and securePort both enabled → port.
                ("10.8.30.55:8080".to_string(), d),
                // port disabled → securePort; metadata attributes.
                (
                    "10.8.30.56:8443".to_string(),
                    MemberAttrs { weight: 5, max_fails: 3, fail_timeout: 15, backup: true, ..d }
                ),
                // 57..60 are DOWN, STARTING, OUT_OF_SERVICE, UNKNOWN: not members.
                // metadata weight 0 drains.
                ("[fd00::61]:8081".to_string(), MemberAttrs { weight: 0, ..d }),
                // ipAddr empty → hostName; weight 2.5 rounds to 3.
                (
                    "svc-62.example.internal:8082".to_string(),
                    MemberAttrs { weight: 3, max_fails: 0, fail_timeout: 0, backup: true, ..d }
                ),
            ]
        );
        // Statuses other than UP are normal states, not problems.
        assert!(list.problems.is_empty(), "{:#?}", list.problems);
    }

    #[test]
    fn a_single_instance_may_be_an_object_with_string_ports() {
        let list = EurekaAdapter::parse_application(SINGLE).unwrap();
        assert_eq!(members(&list), [("192.168.40.94:7101".to_string(), MemberAttrs::default())]);
        assert!(list.problems.is_empty());
    }

    #[test]
    fn legacy_array_with_string_ports_uses_ip_addr_not_host_name() {
        // hostName carries ":7100" in this registry; ipAddr is what counts.
        let list = EurekaAdapter::parse_application(LEGACY).unwrap();
        let d = MemberAttrs::default();
        assert_eq!(members(&list), [("192.168.191.150:7100".to_string(), d), ("192.168.191.235:7100".to_string(), d)]);
        assert!(list.problems.is_empty());
    }

    #[test]
    fn bad_entries_are_skipped_or_repaired_and_reported() {
        let list = EurekaAdapter::parse_application(BAD).unwrap();
        let d = MemberAttrs::default();
        assert_eq!(
            members(&list),
            [
                ("10.8.30.75:8080".to_string(), d),
                ("10.8.30.76:8080".to_string(), MemberAttrs { weight: 65535, ..d }),
                ("10.8.30.78:8080".to_string(), d),
                ("10.8.30.79:8080".to_string(), d),
            ]
        );
        let mut got: Vec<_> = list.problems.iter().map(|p| (p.key.as_str(), p.skipped, p.problem.as_str())).collect();
        got.sort();
        let expected = [
            ("10.8.30.300:myMicroservice2:300", true, "neither an IPv4 address nor a DNS name"),
            ("10.8.30.70:myMicroservice2:70", true, "port 70000 is not a number in 1..=65535"),
            ("10.8.30.71:myMicroservice2:71", true, "port \"80x\" is not a number"),
            ("10.8.30.72:myMicroservice2:72", true, "neither port nor securePort is enabled"),
            ("10.8.30.73:myMicroservice2:73", true, "no \"status\""),
            ("10.8.30.75:myMicroservice2:75", false, "\"backup\""),
            ("10.8.30.75:myMicroservice2:75", false, "\"fail_timeout\""),
            ("10.8.30.75:myMicroservice2:75", false, "\"max_fails\""),
            ("10.8.30.75:myMicroservice2:75", false, "metadata weight \"heavy\" is not a number"),
            ("10.8.30.76:myMicroservice2:76", false, r#"metadata weight "70000" is over 65535"#),
            ("10.8.30.77:myMicroservice2:77", true, "port \"@enabled\" \"maybe\""),
            ("10.8.30.78:myMicroservice2:78", false, "metadata is not a JSON object"),
            ("10.8.30.79:8080", true, "more than one instance"),
            ("instance[9]", true, "not a JSON object"),
            ("no-address:myMicroservice2:74", true, "no ipAddr or hostName"),
        ];
        assert_eq!(got.len(), expected.len(), "{got:#?}");
        for ((key, skipped, text), (want_key, want_skipped, want_text)) in got.iter().zip(expected) {
            assert_eq!((*key, *skipped), (want_key, want_skipped));
            assert!(text.contains(want_text), "{key}: {text:?} should contain {want_text:?}");
        }
    }

    #[test]
    fn ports_follow_enabled_flags_and_defaults() {
        let p = |v: Value, default: bool| port_field(Some(&v), default, "port");
        assert_eq!(p(json!({"$": 8080, "@enabled": "true"}), false), Ok(Some(8080)));
        assert_eq!(p(json!({"$": "8080", "@enabled": "TRUE"}), false), Ok(Some(8080)));
        assert_eq!(p(json!({"$": 8080, "@enabled": true}), false), Ok(Some(8080)));
        assert_eq!(p(json!({"$": 8080, "@enabled": "false"}), true), Ok(None));
        assert_eq!(p(json!({"$": 8080}), true), Ok(Some(8080)), "port is enabled by default");
        assert_eq!(p(json!({"$": 443}), false), Ok(None), "securePort is not");
        assert_eq!(p(json!(8080), true), Ok(Some(8080)), "a bare number");
        assert_eq!(port_field(None, true, "port"), Ok(None));
        assert!(p(json!({"@enabled": "true"}), false).is_err());
        assert!(p(json!({"$": 0, "@enabled": "true"}), false).is_err());
        assert!(p(json!({"$": 8080, "@enabled": 1}), false).is_err());
        // An enabled port that is bad is not replaced by securePort.
        let instance = json!({"status": "UP", "ipAddr": "10.0.0.1", "port": {"$": -1, "@enabled": "true"},
            "securePort": {"$": 443, "@enabled": "true"}});
        assert!(read_instance(&instance).is_err());
        let secure_only = json!({"status": "UP", "ipAddr": "10.0.0.1", "securePort": {"$": 443, "@enabled": "true"}});
        assert_eq!(read_instance(&secure_only).unwrap().unwrap().0.addr.to_string(), "10.0.0.1:443");
    }

    #[test]
    fn unknown_application_is_an_empty_list() {
        let mut a = EurekaAdapter::new("nope");
        assert_eq!(a.parse(&answer(404, b"")), Ok(Poll::NotFound));
        // An application with no instance left, as an encoder may write it.
        for body in [&br#"{"application":{"name":"NOPE","instance":[]}}"#[..], br#"{"application":{"name":"NOPE"}}"#] {
            assert!(EurekaAdapter::parse_application(body).unwrap().members.is_empty());
        }
    }

    #[test]
    fn every_answer_is_a_full_list() {
        let mut a = EurekaAdapter::new("myMicroservice2");
        let first = a.parse(&answer(200, APP)).unwrap();
        a.reset();
        assert!(matches!(&first, Poll::Members(l) if l.members.len() == 4));
        assert_eq!(a.parse(&answer(200, APP)).unwrap(), first);
    }

    #[test]
    fn other_statuses_and_garbage_are_errors() {
        let mut a = EurekaAdapter::new("web");
        for status in [204, 400, 401, 403, 500, 503] {
            assert_eq!(a.parse(&answer(status, APP)), Err(AdapterError::Status(status)));
        }
        let none = HttpResponse::new(None, &[], APP);
        assert_eq!(a.parse(&none), Err(AdapterError::NoStatus));

        let e = |body: &[u8]| EurekaAdapter::parse_application(body).unwrap_err();
        match e(b"<application><name>WEB</name></application>") {
            AdapterError::NotJson(m) => assert!(m.contains("XML"), "{m}"),
            other => panic!("NotJson expected, got {other:?}"),
        }
        assert!(matches!(e(b""), AdapterError::NotJson(_)));
        assert!(matches!(e(&APP[..APP.len() / 2]), AdapterError::NotJson(_)), "a body cut short");
        assert!(matches!(e(b"[]"), AdapterError::BadShape(_)));
        assert!(matches!(e(b"{}"), AdapterError::BadShape(_)));
        assert!(matches!(e(br#"{"application":[]}"#), AdapterError::BadShape(_)));
        assert!(matches!(e(br#"{"application":{"instance":"x"}}"#), AdapterError::BadShape(_)));
        assert_eq!(
            e(br#"{"timestamp":"2024-01-01T00:00:00.000+00:00","status":500,"error":"Internal Server Error","path":"/eureka/apps/WEB"}"#),
            AdapterError::Registry("Internal Server Error".into())
        );
    }
}
