//! Consul: KV (upsync key layout), catalog and health, all as blocking
//! queries.
//!
//! The blocking-query rules follow Consul's documentation
//! (api-docs/features/blocking): the first call carries no index and
//! answers at once; each later call carries `index=<last X-Consul-Index>`
//! and `wait`, and Consul holds it until the data changes or the wait
//! (plus up to wait/16 of jitter) runs out. An unchanged index means
//! nothing changed. An index that goes backwards is reset (the next call
//! is a plain read), and an index below 1 is treated as 1, so a buggy
//! answer can never turn blocking queries into a hot loop; the sync
//! machine also never sends two calls within `interval_ms` after an
//! "unchanged" answer.

use crate::sansio::config::{Consistency, ConsulQuery, ConsulSpec};
use crate::sansio::model::locality::{MemberMeta, MetaBuilder, LOCALITY_FIELDS};
use crate::sansio::model::member::{HostPort, Member, MemberAttrs, MAX_FAILS, MAX_FAIL_TIMEOUT_S, MAX_WEIGHT};
use crate::sansio::registry::kv_layout::members_from_kv;
use crate::sansio::registry::{member_list, short_text, HttpResponse, Instance, MemberList, Poll, RegistryAdapter};
use crate::sansio::registry::{AdapterError, HttpRequest};
use crate::sansio::util::base64;
use crate::sansio::util::url;
use serde_json::Value;

/// The part of every Consul read that makes it a blocking query: the
/// datacenter and consistency parameters, and the `X-Consul-Index` cursor.
#[derive(Debug, Clone)]
pub struct BlockingQuery {
    dc: Option<String>,
    consistency: Consistency,
    wait_ms: u64,
    /// The last `X-Consul-Index`; 0 → the next call is a plain read.
    index: u64,
}

/// What an answer's `X-Consul-Index` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexMove {
    /// The same index as the last answer: nothing changed.
    Unchanged,
    Forward,
    /// Below the last one: the cursor is reset (the next call is a plain read).
    WentBack {
        from: u64,
        to: u64,
    },
}

impl BlockingQuery {
    pub fn new(dc: Option<String>, consistency: Consistency, wait_ms: u64) -> Self {
        BlockingQuery { dc, consistency, wait_ms, index: 0 }
    }

    /// `GET path` with `params`, then the datacenter, consistency, and
    /// (once an index is known) `index` and `wait`.
    pub fn get(&self, path: &str, mut params: Vec<(&str, String)>) -> HttpRequest {
        if let Some(dc) = &self.dc {
            params.push(("dc", dc.clone()));
        }
        match self.consistency {
            Consistency::Default => {}
            Consistency::Stale => params.push(("stale", "true".into())),
            Consistency::Consistent => params.push(("consistent", "true".into())),
        }
        if self.index > 0 {
            params.push(("index", self.index.to_string()));
            params.push(("wait", format!("{}ms", self.wait_ms)));
        }
        HttpRequest {
            method: "GET",
            path: format!("{path}{}", url::query(&params)),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Moves the cursor to the answer's `X-Consul-Index`.
    pub fn take_index(&mut self, response: &HttpResponse<'_>) -> Result<IndexMove, AdapterError> {
        let raw_index = response
            .header("x-consul-index")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| AdapterError::BadShape("no X-Consul-Index header".into()))?;
        // Below 1 counts as 1 before any comparison, so a registry that
        // answers 0 looks "unchanged" (and is paced), never "went back".
        let new_index = raw_index.max(1);
        let previous = std::mem::replace(&mut self.index, new_index);
        Ok(if new_index < previous {
            self.index = 0;
            IndexMove::WentBack { from: previous, to: new_index }
        } else if previous > 0 && new_index == previous {
            IndexMove::Unchanged
        } else {
            IndexMove::Forward
        })
    }

    pub fn reset(&mut self) {
        self.index = 0;
    }

    /// How long Consul may hold the next call: the wait plus its wait/16
    /// of jitter, once an index is known.
    pub fn hold_ms(&self) -> u64 {
        if self.index > 0 {
            self.wait_ms.saturating_add(self.wait_ms / 16)
        } else {
            0
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConsulAdapter {
    query: ConsulQuery,
    blocking: BlockingQuery,
}

impl ConsulAdapter {
    pub fn new(query: ConsulQuery, dc: Option<String>, consistency: Consistency, wait_ms: u64) -> Self {
        ConsulAdapter { query, blocking: BlockingQuery::new(dc, consistency, wait_ms) }
    }

    pub fn from_spec(spec: &ConsulSpec) -> Self {
        Self::new(spec.query.clone(), spec.dc.clone(), spec.consistency, spec.wait_ms)
    }

    /// What is read, for log lines: the KV prefix or the service.
    fn what(&self) -> &str {
        match &self.query {
            ConsulQuery::Kv { prefix } => prefix,
            ConsulQuery::Catalog { service } | ConsulQuery::Health { service, .. } => service,
        }
    }
}

impl RegistryAdapter for ConsulAdapter {
    fn request(&self) -> HttpRequest {
        let mut params: Vec<(&str, String)> = Vec::new();
        let path = match &self.query {
            ConsulQuery::Kv { prefix } => {
                params.push(("recurse", "true".into()));
                format!("/v1/kv/{}", url::encode(prefix.trim_start_matches('/'), true))
            }
            ConsulQuery::Catalog { service } => format!("/v1/catalog/service/{}", url::encode(service, false)),
            ConsulQuery::Health { service, passing_only } => {
                if *passing_only {
                    params.push(("passing", "true".into()));
                }
                format!("/v1/health/service/{}", url::encode(service, false))
            }
        };
        self.blocking.get(&path, params)
    }

    fn parse(&mut self, response: &HttpResponse<'_>) -> Result<Poll, AdapterError> {
        let kv_missing = matches!(self.query, ConsulQuery::Kv { .. }) && response.status == Some(404);
        if !kv_missing {
            if let Err(e) = response.expect_ok() {
                return Err(match e {
                    AdapterError::Status(s) => {
                        AdapterError::Registry(format!("HTTP {s}: {}", short_text(response.body)))
                    }
                    other => other,
                });
            }
        }
        match self.blocking.take_index(response)? {
            IndexMove::Unchanged => return Ok(Poll::Unchanged),
            IndexMove::WentBack { from, to } => {
                log::info!("consul {}: X-Consul-Index went back from {from} to {to}; index reset", self.what())
            }
            IndexMove::Forward => {}
        }
        if kv_missing {
            return Ok(Poll::NotFound);
        }
        let body: Value = serde_json::from_slice(response.body).map_err(|e| AdapterError::NotJson(e.to_string()))?;
        let entries = body.as_array().ok_or_else(|| AdapterError::BadShape("answer is not a JSON array".into()))?;
        let list = match &self.query {
            ConsulQuery::Kv { prefix } => parse_kv(prefix.trim_start_matches('/'), entries)?,
            ConsulQuery::Catalog { .. } => member_list(entries.iter().map(catalog_instance)),
            ConsulQuery::Health { passing_only, .. } => {
                let passing_only = *passing_only;
                member_list(entries.iter().map(|e| health_instance(e, passing_only)))
            }
        };
        Ok(Poll::Members(list))
    }

    fn reset(&mut self) {
        self.blocking.reset();
    }

    fn hold_ms(&self) -> u64 {
        self.blocking.hold_ms()
    }

    fn long_polls(&self) -> bool {
        true
    }
}

fn parse_kv(prefix: &str, entries: &[Value]) -> Result<MemberList, AdapterError> {
    let mut pairs = Vec::with_capacity(entries.len());
    for e in entries {
        let key = e
            .get("Key")
            .and_then(Value::as_str)
            .ok_or_else(|| AdapterError::BadShape("KV entry without Key".into()))?;
        let value = match e.get("Value") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(v)) => {
                base64::decode(v).map_err(|err| AdapterError::BadShape(format!("KV {key:?} Value: {err}")))?
            }
            Some(_) => return Err(AdapterError::BadShape(format!("KV {key:?} Value is not a string"))),
        };
        pairs.push((key.to_string(), value));
    }
    Ok(members_from_kv(prefix, pairs))
}

fn str_field<'v>(v: &'v Value, name: &str) -> &'v str {
    v.get(name).and_then(Value::as_str).unwrap_or_default()
}

/// `ServiceID@Node`: how an instance is named in problems and logs.
fn instance_key(id: &str, node: &str) -> String {
    format!("{id}@{node}")
}

fn address(host: &str, port: Option<u64>) -> Result<HostPort, String> {
    let port = port.ok_or("no port")?;
    if host.is_empty() {
        return Err("no address".into());
    }
    let port = u16::try_from(port).map_err(|_| format!("port {port} is out of range"))?;
    HostPort::from_parts(host, port)
}

fn catalog_instance(e: &Value) -> (String, Instance) {
    let key = instance_key(str_field(e, "ServiceID"), str_field(e, "Node"));
    let host = Some(str_field(e, "ServiceAddress")).filter(|a| !a.is_empty()).unwrap_or(str_field(e, "Address"));
    let instance = address(host, e.get("ServicePort").and_then(Value::as_u64)).map(|addr| {
        let tags = e.get("ServiceTags");
        let weights = e.get("ServiceWeights");
        let (attrs, mut notes) = attrs_from_tags(tags, weights);
        let (meta, meta_notes) = consul_meta(e.get("ServiceLocality"), e.get("ServiceMeta"), e.get("NodeMeta"), tags);
        notes.extend(meta_notes);
        Some((Member { addr, attrs, meta }, notes))
    });
    (key, instance)
}

fn health_instance(e: &Value, passing_only: bool) -> (String, Instance) {
    let service = e.get("Service").unwrap_or(&Value::Null);
    let node = e.get("Node").unwrap_or(&Value::Null);
    let key = instance_key(str_field(service, "ID"), str_field(node, "Node"));
    let host = Some(str_field(service, "Address")).filter(|a| !a.is_empty()).unwrap_or(str_field(node, "Address"));
    let instance = address(host, service.get("Port").and_then(Value::as_u64)).map(|addr| {
        let (mut attrs, mut notes) = attrs_from_tags(service.get("Tags"), service.get("Weights"));
        let (meta, meta_notes) =
            consul_meta(service.get("Locality"), service.get("Meta"), node.get("Meta"), service.get("Tags"));
        notes.extend(meta_notes);
        match e.get("Checks").and_then(Value::as_array) {
            // nginx-upsync-module crashed on this; here the instance is kept
            // as Consul would judge it with no checks: passing.
            None => notes.push("entry has no Checks list; treated as passing".into()),
            Some(checks) => {
                if !passing_only && checks.iter().any(|c| str_field(c, "Status") != "passing") {
                    attrs.down = true;
                }
            }
        }
        Some((Member { addr, attrs, meta }, notes))
    });
    (key, instance)
}

/// The tags read as upsync attributes ([`attrs_from_tags`]): not published
/// as tags.
const ATTRIBUTE_TAGS: [&str; 5] = ["weight", "max_fails", "fail_timeout", "down", "backup"];

/// A Consul instance's locality and tags.
///
/// Locality, per field, from the first source that has it: the service's
/// `Locality` `{"Region", "Zone"}` (Consul 1.17+; `ServiceLocality` in
/// catalog answers), then service meta `region` / `zone` / `sub_zone`,
/// then node meta with the same keys. Tags: every service tag that is not
/// an upsync attribute (`canary` → `canary=true`, `version=v2` →
/// `version=v2`), then every service meta entry except the locality keys
/// (a key already set by a tag keeps the tag's value).
fn consul_meta(
    locality: Option<&Value>,
    service_meta: Option<&Value>,
    node_meta: Option<&Value>,
    tags: Option<&Value>,
) -> (MemberMeta, Vec<String>) {
    let mut b = MetaBuilder::new();
    if let Some(l) = locality.and_then(Value::as_object) {
        b.locality("region", l.get("Region"), "Locality.Region");
        b.locality("zone", l.get("Zone"), "Locality.Zone");
    }
    let service_meta = service_meta.and_then(Value::as_object);
    if let Some(m) = service_meta {
        b.locality_from(m, "service meta ");
    }
    if let Some(m) = node_meta.and_then(Value::as_object) {
        b.locality_from(m, "node meta ");
    }
    for tag in tags.and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default().iter().filter_map(Value::as_str) {
        let name = tag.split_once('=').map_or(tag, |(n, _)| n);
        if !ATTRIBUTE_TAGS.contains(&name) {
            b.text_tag(tag, "service");
        }
    }
    if let Some(m) = service_meta {
        b.tags_from_map(m, &LOCALITY_FIELDS, "service meta");
    }
    b.finish()
}

/// nginx-upsync-module's tag attributes (`weight=N`, `max_fails=N`,
/// `fail_timeout=10s`, `down`, `backup`); without a `weight=` tag the
/// weight is Consul's `Weights.Passing`.
fn attrs_from_tags(tags: Option<&Value>, weights: Option<&Value>) -> (MemberAttrs, Vec<String>) {
    let mut attrs = MemberAttrs::default();
    let mut notes = Vec::new();
    if let Some(w) = weights.and_then(|w| w.get("Passing")).and_then(Value::as_u64) {
        if w <= MAX_WEIGHT {
            attrs.weight = u32::try_from(w).unwrap_or(attrs.weight);
        } else {
            notes.push(format!("Weights.Passing {w} is over {MAX_WEIGHT}, default used"));
        }
    }
    let tags = tags.and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for tag in tags.iter().filter_map(Value::as_str) {
        let (name, value) = tag.split_once('=').unwrap_or((tag, ""));
        let number = |max: u64| {
            let digits = value.strip_suffix('s').unwrap_or(value);
            digits.parse::<u64>().ok().filter(|n| *n <= max).and_then(|n| u32::try_from(n).ok())
        };
        let slot = match name {
            "weight" => Some((&mut attrs.weight, number(MAX_WEIGHT))),
            "max_fails" => Some((&mut attrs.max_fails, number(MAX_FAILS))),
            "fail_timeout" => Some((&mut attrs.fail_timeout, number(MAX_FAIL_TIMEOUT_S))),
            "down" => {
                attrs.down = true;
                None
            }
            "backup" => {
                attrs.backup = true;
                None
            }
            // Other tags are the user's own business.
            _ => None,
        };
        if let Some((field, parsed)) = slot {
            match parsed {
                Some(n) => *field = n,
                None => notes.push(format!("tag {tag:?} has a bad value, default used")),
            }
        }
    }
    (attrs, notes)
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const KV: &[u8] = include_bytes!("../../../tests/fixtures/consul/kv_recurse.json");
    const CATALOG: &[u8] = include_bytes!("../../../tests/fixtures/consul/catalog_service.json");
    const HEALTH: &[u8] = include_bytes!("../../../tests/fixtures/consul/health_service.json");

    fn idx(n: u64) -> Vec<(String, String)> {
        vec![("X-Consul-Index".to_string(), n.to_string())]
    }

    fn answer<'a>(status: u16, headers: &'a [(String, String)], body: &'a [u8]) -> HttpResponse<'a> {
        HttpResponse::new(Some(status), headers, body)
    }

    fn kv_adapter() -> ConsulAdapter {
        ConsulAdapter::new(ConsulQuery::Kv { prefix: "/upstreams/web/".into() }, None, Consistency::Default, 30_000)
    }

    fn members(p: Result<Poll, AdapterError>) -> MemberList {
        match p {
            Ok(Poll::Members(l)) => l,
            other => panic!("members expected, got {other:?}"),
        }
    }

    #[test]
    fn kv_reads_then_blocks_on_the_index() {
        let mut a = kv_adapter();
        assert_eq!(a.request().path, "/v1/kv/upstreams/web/?recurse=true");
        assert_eq!(a.hold_ms(), 0);
        let list = members(a.parse(&answer(200, &idx(120), KV)));
        let got: Vec<_> = list.members.iter().map(|m| (m.addr.to_string(), m.attrs.weight, m.attrs.down)).collect();
        assert_eq!(got, [("10.1.10.12:8080".to_string(), 2, false), ("10.1.10.13:8080".to_string(), 1, true)]);
        assert_eq!(list.problems.len(), 1, "{:?}", list.problems);
        assert_eq!(a.request().path, "/v1/kv/upstreams/web/?recurse=true&index=120&wait=30000ms");
        assert_eq!(a.hold_ms(), 30_000 + 1875);
        // Wait ran out, same index: unchanged.
        assert_eq!(a.parse(&answer(200, &idx(120), KV)), Ok(Poll::Unchanged));
        // A change.
        assert!(matches!(a.parse(&answer(200, &idx(125), KV)), Ok(Poll::Members(_))));
        assert!(a.request().path.contains("index=125"));
        // The prefix emptied: 404, an empty list.
        assert_eq!(a.parse(&answer(404, &idx(130), b"")), Ok(Poll::NotFound));
    }

    #[test]
    fn index_rules_follow_the_documentation() {
        let mut a = kv_adapter();
        members(a.parse(&answer(200, &idx(120), KV)));
        // Backwards: reset, the next call is a plain read (but this answer counts).
        assert!(matches!(a.parse(&answer(200, &idx(7), KV)), Ok(Poll::Members(_))));
        assert!(!a.request().path.contains("index="));
        // Zero: treated as 1 so the next call still blocks...
        members(a.parse(&answer(200, &idx(0), KV)));
        assert!(a.request().path.contains("index=1&"));
        // ...and another 0 is "unchanged" (paced by the machine), not a reset.
        assert_eq!(a.parse(&answer(200, &idx(0), KV)), Ok(Poll::Unchanged));
        assert!(a.request().path.contains("index=1&"));
        // No index header at all: refused.
        assert!(matches!(a.parse(&answer(200, &[], KV)), Err(AdapterError::BadShape(_))));
        a.reset();
        assert!(!a.request().path.contains("index="));
    }

    #[test]
    fn query_options_and_errors() {
        let a = ConsulAdapter::new(
            ConsulQuery::Health { service: "web api".into(), passing_only: true },
            Some("eu-1".into()),
            Consistency::Stale,
            5000,
        );
        assert_eq!(a.request().path, "/v1/health/service/web%20api?passing=true&dc=eu-1&stale=true");
        let c = ConsulAdapter::new(ConsulQuery::Catalog { service: "web".into() }, None, Consistency::Consistent, 5000);
        assert_eq!(c.request().path, "/v1/catalog/service/web?consistent=true");
        let mut k = kv_adapter();
        let denied = k.parse(&answer(403, &idx(1), b"Permission denied"));
        assert_eq!(denied, Err(AdapterError::Registry("HTTP 403: Permission denied".into())));
        assert!(matches!(k.parse(&answer(200, &idx(3), b"{}")), Err(AdapterError::BadShape(_))));
        assert!(matches!(k.parse(&answer(200, &idx(4), b"[{\"Key\":")), Err(AdapterError::NotJson(_))));
        let bad_value = br#"[{"Key":"upstreams/web/10.0.0.1:80","Value":"***"}]"#;
        assert!(matches!(k.parse(&answer(200, &idx(5), bad_value)), Err(AdapterError::BadShape(_))));
        let none = HttpResponse::new(None, &[], b"");
        assert_eq!(k.parse(&none), Err(AdapterError::NoStatus));
    }

    #[test]
    fn catalog_uses_service_address_then_node_address_and_tags() {
        let mut a =
            ConsulAdapter::new(ConsulQuery::Catalog { service: "web".into() }, None, Consistency::Default, 1000);
        let list = members(a.parse(&answer(200, &idx(50), CATALOG)));
        let got: Vec<_> = list.members.iter().map(|m| (m.addr.to_string(), m.attrs)).collect();
        let d = MemberAttrs::default();
        assert_eq!(
            got,
            [
                ("10.1.10.12:8000".to_string(), MemberAttrs { weight: 3, max_fails: 5, fail_timeout: 30, ..d }),
                ("10.1.10.15:8000".to_string(), d),
                ("172.17.0.3:8000".to_string(), MemberAttrs { weight: 10, backup: true, ..d }),
                ("[2001:db8::1]:8000".to_string(), MemberAttrs { down: true, ..d }),
            ]
        );
        let mut problems: Vec<_> = list.problems.iter().map(|p| (p.key.as_str(), p.skipped)).collect();
        problems.sort();
        assert_eq!(problems, [("web-bad-tag@foobar4", false), ("web-no-port@foobar5", true)], "{:#?}", list.problems);
    }

    #[test]
    fn health_filters_or_marks_down_and_survives_missing_checks() {
        let mut passing = ConsulAdapter::new(
            ConsulQuery::Health { service: "web".into(), passing_only: true },
            None,
            Consistency::Default,
            1000,
        );
        // Consul filtered already (?passing); an entry without Checks is kept and reported.
        let list = members(passing.parse(&answer(200, &idx(9), HEALTH)));
        assert_eq!(list.members.len(), 3);
        assert!(list.members.iter().all(|m| !m.attrs.down));
        assert_eq!(list.problems.len(), 1);
        assert!(list.problems[0].problem.contains("no Checks"));

        let mut all = ConsulAdapter::new(
            ConsulQuery::Health { service: "web".into(), passing_only: false },
            None,
            Consistency::Default,
            1000,
        );
        assert!(!all.request().path.contains("passing"));
        let list = members(all.parse(&answer(200, &idx(9), HEALTH)));
        let down: Vec<_> = list.members.iter().filter(|m| m.attrs.down).map(|m| m.addr.to_string()).collect();
        assert_eq!(down, ["10.1.10.13:8000"], "the node-level critical check marks it down");
        // ServiceAddress empty → Node.Address.
        assert!(list.members.get(&"10.1.10.14:8000".parse().unwrap()).is_some());
    }
}
