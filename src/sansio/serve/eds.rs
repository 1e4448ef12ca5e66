//! REST EDS served from the published snapshots: Envoy `POST`s a JSON
//! `DiscoveryRequest` to `/v3/discovery:endpoints` and gets a
//! `DiscoveryResponse` holding one `ClusterLoadAssignment` per requested
//! cluster (cluster name = upstream name).
//!
//! Mapping: weight → `load_balancing_weight` (left out at 1, Envoy's
//! default); weight 0 → `DRAINING` (Envoy weights must be ≥ 1 and draining
//! hosts get no new requests); `down` → `UNHEALTHY`; a usable member has no
//! `health_status` (UNKNOWN, which Envoy treats as HEALTHY; see
//! [`push_endpoint`]); `backup` → priority 1, used by Envoy only when priority 0
//! is not healthy enough. Envoy's EDS takes IP addresses only, so hostname
//! members are left out (and counted): Envoy refuses a whole assignment
//! holding one ("malformed IP address"). Members are grouped by locality
//! (Envoy's zone-aware and locality-weighted balancing), and their tags
//! are endpoint metadata under `envoy.lb` (Envoy's subset balancer).

use crate::sansio::model::locality::LocalityRef;
use crate::sansio::model::member::{dotted_quad, Host, Member, MemberAttrs};
use crate::sansio::model::member_set::MemberSet;
use crate::sansio::serve::reply::LocalReply;
use crate::sansio::shared::keys::snapshot_key;
use crate::sansio::shared::snapshot::View;
use crate::sansio::shared::snapshot::{self, Snapshot};
use crate::sansio::shared::store::SharedStore;
use crate::sansio::util::json_out::{self, push_str as push_json_str};
use serde::Deserialize;
use serde_json::Value;
use std::fmt::Write;
use std::net::{Ipv4Addr, Ipv6Addr};

pub const CLA_TYPE_URL: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The EDS answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdsReply {
    /// 200 with a DiscoveryResponse.
    Assignment { version: String, body: String, skipped_hostnames: usize },
    /// 304: Envoy already has `version_info`.
    NotModified,
    /// 503: no snapshot for any requested cluster yet; Envoy keeps what it has.
    Unavailable(String),
    /// 400: not a DiscoveryRequest.
    BadRequest(String),
}

impl EdsReply {
    pub fn status(&self) -> u16 {
        match self {
            EdsReply::Assignment { .. } => 200,
            EdsReply::NotModified => 304,
            EdsReply::Unavailable(_) => 503,
            EdsReply::BadRequest(_) => 400,
        }
    }

    /// "Nothing new" and "nothing yet" both wait for a change when the
    /// server holds requests ([`crate::sansio::serve::eds_hold`]).
    pub fn waits(&self) -> bool {
        matches!(self, EdsReply::NotModified | EdsReply::Unavailable(_))
    }

    /// Status and body as sent to Envoy.
    pub fn to_json_reply(&self) -> LocalReply {
        let status = self.status();
        match self {
            EdsReply::Assignment { body, .. } => LocalReply::json(status, body.clone()),
            EdsReply::NotModified => LocalReply::json(status, String::new()),
            EdsReply::Unavailable(e) | EdsReply::BadRequest(e) => LocalReply::error(status, e),
        }
    }
}

/// The parts of a DiscoveryRequest the server uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryRequest {
    /// The version Envoy holds ("" at first).
    pub version_info: String,
    pub resource_names: Vec<String>,
}

/// A DiscoveryRequest names at most as many clusters as a configuration has upstreams.
pub const MAX_RESOURCE_NAMES: usize = crate::sansio::config::MAX_UPSTREAMS;

/// The three fields read of a DiscoveryRequest. Envoy sends its whole
/// `node` (every extension it has: ~76 KiB with Envoy 1.40) in every REST
/// request; deserialising into this skips it without building a tree,
/// which took ~260 µs a request, most of the EDS listener's idle cost.
#[derive(Deserialize)]
struct RequestWire {
    #[serde(default)]
    version_info: Option<Value>,
    #[serde(default)]
    type_url: Option<Value>,
    #[serde(default)]
    resource_names: Option<Value>,
}

pub fn parse_request(body: &[u8]) -> Result<DiscoveryRequest, String> {
    // A struct also deserialises from a JSON array; a request is an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Err(e) => format!("body is not JSON: {e}"),
            Ok(_) => "a DiscoveryRequest is a JSON object".to_string(),
        });
    }
    let v: RequestWire = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let version_info = match v.version_info {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(_) => return Err("version_info is not a string".into()),
    };
    if let Some(t) = v.type_url.as_ref().and_then(Value::as_str) {
        if !t.is_empty() && t != CLA_TYPE_URL {
            return Err(format!("type_url {t:?} is not {CLA_TYPE_URL}"));
        }
    }
    let listed = v.resource_names.as_ref().and_then(Value::as_array).ok_or("resource_names must list the clusters")?;
    if listed.len() > MAX_RESOURCE_NAMES {
        return Err(format!("more than {MAX_RESOURCE_NAMES} resource_names"));
    }
    // Each name once: a request repeating a name must not make the answer
    // (and its cost) grow with the repeats (found by fuzzing).
    let mut seen = std::collections::HashSet::with_capacity(listed.len());
    let mut names = Vec::with_capacity(listed.len());
    for n in listed {
        let name = n.as_str().ok_or("resource_names must be strings")?;
        if seen.insert(name) {
            names.push(name.to_string());
        }
    }
    if names.is_empty() {
        return Err("resource_names is empty".into());
    }
    Ok(DiscoveryRequest { version_info, resource_names: names })
}

/// The version string of `names` as published now, from the small version
/// entries only; `None` when none of them has a snapshot yet.
pub fn current_version(store: &dyn SharedStore, names: &[String]) -> Option<String> {
    let found: Vec<(&String, u64)> =
        names.iter().filter_map(|n| snapshot::read_version(store, n).map(|v| (n, v))).collect();
    match found.as_slice() {
        [] => None,
        [(_, only)] => Some(only.to_string()),
        many => Some(many.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(",")),
    }
}

/// Answers a parsed DiscoveryRequest. An unchanged version is detected
/// without decoding any snapshot: Envoy asks several times a second.
pub fn answer(store: &dyn SharedStore, request: &DiscoveryRequest) -> EdsReply {
    if current_version(store, &request.resource_names).as_deref() == Some(request.version_info.as_str()) {
        return EdsReply::NotModified;
    }
    let mut stored: Vec<(&String, Vec<u8>)> = Vec::new();
    for name in &request.resource_names {
        match snapshot::read_bytes(store, name) {
            Ok(Some(bytes)) => stored.push((name, bytes)),
            Ok(None) => {}
            Err(e) => log::warn!("EDS: snapshot of {name:?} unreadable: {e}"),
        }
    }
    // Read in place when in the writer's own form (no member built: at
    // 10,000 members that was two thirds of an answer's time in V8), else
    // decoded.
    let mut found: Vec<(&String, u64, Read<'_>)> = Vec::new();
    for (name, bytes) in &stored {
        let key = snapshot_key(name);
        if let Some((version, _, views)) = snapshot::views(&key, bytes) {
            found.push((name, version, Read::Views(views)));
            continue;
        }
        match Snapshot::decode(&key, bytes) {
            Ok(s) => found.push((name, s.version, Read::Decoded(s.members))),
            Err(e) => log::warn!("EDS: snapshot of {name:?} unreadable: {e}"),
        }
    }
    if found.is_empty() {
        return EdsReply::Unavailable(format!("no member list yet for {:?}", request.resource_names));
    }
    // The versions of the snapshots actually read, so that the version
    // Envoy records always matches the content it got.
    let version = match found.as_slice() {
        [(_, only, _)] => only.to_string(),
        many => many.iter().map(|(n, v, _)| format!("{n}={v}")).collect::<Vec<_>>().join(","),
    };
    if version == request.version_info {
        return EdsReply::NotModified;
    }
    let mut skipped_hostnames = 0;
    let mut body = String::with_capacity(found.iter().map(|(_, _, r)| 160 * r.len() + 200).sum());
    body.push_str("{\"version_info\":");
    push_json_str(&mut body, &version);
    body.push_str(",\"type_url\":\"");
    body.push_str(CLA_TYPE_URL);
    body.push_str("\",\"resources\":[");
    for (i, (name, _, read)) in found.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let (cla, skipped) = match read {
            Read::Views(views) => assignment(name, views.iter().map(EndpointRef::of_view)),
            Read::Decoded(members) => cluster_load_assignment(name, members.iter()),
        };
        skipped_hostnames += skipped;
        body.push_str(&cla);
    }
    body.push_str("]}");
    EdsReply::Assignment { version, body, skipped_hostnames }
}

/// A cluster's members as read for an answer.
enum Read<'a> {
    Views(Vec<View<'a>>),
    Decoded(MemberSet),
}

impl Read<'_> {
    fn len(&self) -> usize {
        match self {
            Read::Views(v) => v.len(),
            Read::Decoded(m) => m.len(),
        }
    }
}

/// What an `LbEndpoint` is written from: a member, or a member's
/// [`View`] in a snapshot's bytes.
#[derive(Clone, Copy)]
struct EndpointRef<'a> {
    host: HostRef<'a>,
    port: u16,
    attrs: MemberAttrs,
    locality: LocalityRef<'a>,
    tags: &'a [(String, String)],
}

#[derive(Clone, Copy)]
enum HostRef<'a> {
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    /// An IP address in its canonical text (as the snapshot writer wrote it).
    IpText(&'a str),
    Hostname,
}

impl<'a> EndpointRef<'a> {
    fn of_member(m: &'a Member) -> Self {
        let host = match &m.addr.host {
            Host::Ipv4(ip) => HostRef::Ipv4(*ip),
            Host::Ipv6(ip) => HostRef::Ipv6(*ip),
            Host::Hostname(_) => HostRef::Hostname,
        };
        EndpointRef {
            host,
            port: m.addr.port,
            attrs: m.attrs,
            locality: m.meta.locality.borrowed(),
            tags: &m.meta.tags,
        }
    }

    /// A stored address is `HostPort`'s text: `[v6]:port`, `v4:port` (a
    /// host of digits and dots is always IPv4: names cannot be) or
    /// `name:port`. Anything else (not written by the writer) counts as a
    /// hostname: left out, as an unusable member would be.
    fn of_view(v: &View<'a>) -> Self {
        let (host_text, port) = v
            .address
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok().filter(|&p| p > 0)?)))
            .unwrap_or(("", 0));
        let host = match host_text.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) if v6.parse::<Ipv6Addr>().is_ok() => HostRef::IpText(v6),
            None if dotted_quad(host_text).is_some() => HostRef::IpText(host_text),
            _ => HostRef::Hostname,
        };
        let host = if port == 0 { HostRef::Hostname } else { host };
        let locality = LocalityRef { region: v.region, zone: v.zone, sub_zone: v.sub_zone };
        EndpointRef { host, port, attrs: v.attrs, locality, tags: &[] }
    }
}

/// One ClusterLoadAssignment; returns it and how many hostname members
/// were left out.
///
/// Members are grouped into one `LocalityLbEndpoints` per (priority,
/// locality): primaries at priority 0, backups at 1, each group with its
/// `locality` (when the registry gave one) and a `load_balancing_weight`
/// equal to the sum of its members' weights, which Envoy's
/// locality-weighted balancing uses (and ignores otherwise). Priority 0 is
/// always present, empty when every member is a backup. A member's tags go
/// into its endpoint's `metadata.filter_metadata["envoy.lb"]`, the
/// namespace of Envoy's subset load balancer.
///
/// The JSON text is written directly, not built as a `serde_json::Value`
/// tree first: for 10,000 members that tree took ~70 ms to build and drop
/// on the thread answering Envoy, the text ~2 ms.
pub fn cluster_load_assignment<'a>(name: &str, members: impl Iterator<Item = &'a Member>) -> (String, usize) {
    assignment(name, members.map(EndpointRef::of_member))
}

fn assignment<'a>(name: &str, members: impl Iterator<Item = EndpointRef<'a>>) -> (String, usize) {
    let mut groups: Vec<Group<'a>> = Vec::new();
    let mut skipped = 0;
    // The group of the member before: most members share it, and an
    // equality test is far cheaper than ordering localities (for 10,000
    // members natively: this function took 16-24 ms with the ordered
    // search for every member, 9-12 ms with it only on a change of group).
    let mut last: Option<usize> = None;
    for m in members {
        if let HostRef::Hostname = m.host {
            skipped += 1;
            continue;
        }
        let priority = u32::from(m.attrs.backup);
        let same = |g: &Group<'_>| g.priority == priority && g.locality.same(&m.locality);
        let at = match last {
            Some(at) if groups.get(at).is_some_and(same) => at,
            _ => {
                // Groups kept in (priority, locality) order as they are made;
                // few localities, so a linear search.
                let order = |g: &Group<'_>| (g.priority, g.locality).cmp(&(priority, m.locality));
                let at = groups.iter().position(|g| order(g).is_ge()).unwrap_or(groups.len());
                if !groups.get(at).is_some_and(same) {
                    let group = Group { priority, locality: m.locality, endpoints: String::new(), count: 0, weight: 0 };
                    groups.insert(at, group);
                }
                at
            }
        };
        last = Some(at);
        if let Some(g) = groups.get_mut(at) {
            g.weight = g.weight.saturating_add(u64::from(m.attrs.weight));
            if g.count > 0 {
                g.endpoints.push(',');
            }
            g.count += 1;
            push_endpoint(&mut g.endpoints, &m);
        }
    }
    if !groups.iter().any(|g| g.priority == 0) {
        let empty =
            Group { priority: 0, locality: LocalityRef::default(), endpoints: String::new(), count: 0, weight: 0 };
        groups.insert(0, empty);
    }
    let mut out = String::with_capacity(groups.iter().map(|g| g.endpoints.len() + 120).sum::<usize>() + 120);
    out.push_str("{\"@type\":\"");
    out.push_str(CLA_TYPE_URL);
    out.push_str("\",\"cluster_name\":");
    push_json_str(&mut out, name);
    out.push_str(",\"endpoints\":[");
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        g.write(&mut out);
    }
    out.push_str("]}");
    (out, skipped)
}

/// The members of one priority in one locality.
struct Group<'a> {
    priority: u32,
    locality: LocalityRef<'a>,
    /// Their `lb_endpoints`, as JSON text without the brackets.
    endpoints: String,
    count: usize,
    weight: u64,
}

impl Group<'_> {
    fn write(&self, out: &mut String) {
        out.push('{');
        if !self.locality.is_empty() {
            out.push_str("\"locality\":{");
            let mut first = true;
            for (k, v) in
                [("region", self.locality.region), ("zone", self.locality.zone), ("sub_zone", self.locality.sub_zone)]
            {
                if !v.is_empty() {
                    if !std::mem::take(&mut first) {
                        out.push(',');
                    }
                    push_json_str(out, k);
                    out.push(':');
                    push_json_str(out, v);
                }
            }
            out.push_str("},");
        }
        let _ = write!(out, "\"priority\":{}", self.priority);
        if self.count > 0 {
            // Envoy wants 1..=u32::MAX; a group of drained members still gets 1.
            let weight = u32::try_from(self.weight.max(1)).unwrap_or(u32::MAX);
            let _ = write!(out, ",\"load_balancing_weight\":{weight}");
        }
        out.push_str(",\"lb_endpoints\":[");
        out.push_str(&self.endpoints);
        out.push_str("]}");
    }
}

/// One `LbEndpoint`, with no field at Envoy's default: Envoy parses every
/// byte of the answer as JSON on its main thread. For 10,000 members, Envoy
/// 1.40 alone (benches/big_service.py --envoy-floor) spent ~100 ms of that
/// thread's CPU per update with a weight and a health status on every
/// endpoint (1.39 MB), ~78 ms without either (0.87 MB).
/// - `load_balancing_weight` only above 1: Envoy takes a missing weight as 1.
/// - `health_status` only for a member Envoy must not use: `down` →
///   UNHEALTHY, weight 0 → DRAINING (Envoy refuses weight 0). A usable
///   member gets none, which is UNKNOWN, "interpreted by Envoy as HEALTHY"
///   (the HealthStatus enum's own words): no health flag is set, so the
///   balancers, panic threshold and membership_healthy treat it as HEALTHY,
///   and the admin API shows it as HEALTHY. The one place Envoy tells them
///   apart is `common_lb_config.override_host_status` (override_host, pick
///   mode's route); its default set has both UNKNOWN and HEALTHY.
fn push_endpoint(out: &mut String, m: &EndpointRef<'_>) {
    let health = if m.attrs.down {
        Some("UNHEALTHY")
    } else if m.attrs.weight == 0 {
        Some("DRAINING")
    } else {
        None
    };
    out.push_str("{\"endpoint\":{\"address\":{\"socket_address\":{\"address\":");
    // An IP address's text needs no escaping: written in place, not copied.
    match m.host {
        HostRef::Ipv4(ip) => {
            out.push('"');
            json_out::push_ipv4(out, ip);
            out.push('"');
        }
        HostRef::Ipv6(ip) => {
            let _ = write!(out, "\"{ip}\"");
        }
        HostRef::IpText(text) => push_json_str(out, text),
        // Never written: hostname members are left out before.
        HostRef::Hostname => push_json_str(out, ""),
    }
    out.push_str(",\"port_value\":");
    json_out::push_uint(out, u64::from(m.port));
    out.push_str("}}}");
    if m.attrs.weight > 1 {
        out.push_str(",\"load_balancing_weight\":");
        json_out::push_uint(out, u64::from(m.attrs.weight));
    }
    if let Some(health) = health {
        out.push_str(",\"health_status\":\"");
        out.push_str(health);
        out.push('"');
    }
    if !m.tags.is_empty() {
        out.push_str(",\"metadata\":{\"filter_metadata\":{\"envoy.lb\":{");
        // Tags are kept one per key, in key order (as a JSON object has them).
        for (i, (k, v)) in m.tags.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(out, k);
            out.push(':');
            push_json_str(out, v);
        }
        out.push_str("}}}");
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::model::locality::{Locality, MemberMeta};
    use crate::sansio::model::update::{Published, Source};
    use serde_json::json;

    /// What the host does with an EDS body: parse, then answer.
    fn handle_discovery(store: &dyn SharedStore, body: &[u8]) -> EdsReply {
        match parse_request(body) {
            Ok(request) => answer(store, &request),
            Err(e) => EdsReply::BadRequest(e),
        }
    }
    use crate::sansio::model::member::MemberAttrs;
    use crate::sansio::model::member_set::MemberSet;
    use crate::sansio::shared::store::{MemoryStore, StoreRules};

    fn store_with(name: &str, members: &[(&str, MemberAttrs)]) -> MemoryStore {
        let mut store = MemoryStore::new(StoreRules::Envoy);
        publish(&mut store, name, members);
        store
    }

    fn publish(store: &mut MemoryStore, name: &str, members: &[(&str, MemberAttrs)]) {
        let set = MemberSet::from_members(members.iter().map(|(a, attrs)| Member::new(a.parse().unwrap(), *attrs))).0;
        snapshot::publish(store, name, &Published { members: set, source: Source::Registry }).unwrap();
    }

    fn request(names: &[&str], version: &str) -> Vec<u8> {
        json!({"version_info": version, "node": {"id": "n", "cluster": "c"}, "resource_names": names, "type_url": CLA_TYPE_URL})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn maps_attributes_to_envoy_fields() {
        let d = MemberAttrs::default();
        let store = store_with(
            "web",
            &[
                ("10.0.0.1:80", MemberAttrs { weight: 3, ..d }),
                ("10.0.0.2:80", MemberAttrs { down: true, ..d }),
                ("10.0.0.3:80", MemberAttrs { weight: 0, ..d }),
                ("10.0.0.4:80", MemberAttrs { backup: true, ..d }),
                ("[::1]:80", d),
                ("db.internal:80", d),
            ],
        );
        let EdsReply::Assignment { version, body, skipped_hostnames } =
            handle_discovery(&store, &request(&["web"], ""))
        else {
            panic!("expected an assignment")
        };
        assert_eq!(version, "1");
        assert_eq!(skipped_hostnames, 1);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["version_info"], "1");
        let cla = &v["resources"][0];
        assert_eq!(cla["@type"], CLA_TYPE_URL);
        assert_eq!(cla["cluster_name"], "web");
        let p0 = cla["endpoints"][0]["lb_endpoints"].as_array().unwrap();
        let summary: Vec<(String, u64, String)> = p0
            .iter()
            .map(|e| {
                (
                    e["endpoint"]["address"]["socket_address"]["address"].as_str().unwrap().to_string(),
                    // Left out at Envoy's default, 1.
                    e.get("load_balancing_weight").map_or(1, |w| w.as_u64().unwrap()),
                    // Left out for a usable member: UNKNOWN, which Envoy takes as HEALTHY.
                    e.get("health_status").map_or("UNKNOWN", |h| h.as_str().unwrap()).to_string(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("10.0.0.1".to_string(), 3, "UNKNOWN".to_string()),
                ("10.0.0.2".to_string(), 1, "UNHEALTHY".to_string()),
                ("10.0.0.3".to_string(), 1, "DRAINING".to_string()),
                ("::1".to_string(), 1, "UNKNOWN".to_string()),
            ]
        );
        assert_eq!(cla["endpoints"][1]["priority"], 1);
        assert_eq!(cla["endpoints"][1]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"], 80);
        // Only a weight other than Envoy's default (1) is written; 0 is
        // DRAINING, and Envoy refuses an explicit 0.
        let written: Vec<bool> = p0.iter().map(|e| e.get("load_balancing_weight").is_some()).collect();
        assert_eq!(written, [true, false, false, false]);
    }

    #[test]
    fn an_answer_of_default_members_carries_no_default_fields() {
        let members: Vec<(String, MemberAttrs)> =
            (1..=100).map(|i| (format!("10.0.{}.{}:8080", i / 250, i % 250 + 1), MemberAttrs::default())).collect();
        let refs: Vec<(&str, MemberAttrs)> = members.iter().map(|(a, m)| (a.as_str(), *m)).collect();
        let store = store_with("big", &refs);
        let EdsReply::Assignment { body, .. } = handle_discovery(&store, &request(&["big"], "")) else { panic!() };
        let v: Value = serde_json::from_str(&body).unwrap();
        let eps = v["resources"][0]["endpoints"][0]["lb_endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 100);
        for e in eps {
            let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, ["endpoint"], "{e}");
        }
        // About 87 bytes a member, not the 139 with "load_balancing_weight":1
        // and "health_status":"HEALTHY" on each.
        assert!(body.len() < 100 * 90 + 300, "{} bytes", body.len());
    }

    #[test]
    fn current_version_gets_304_and_a_change_gets_a_new_version() {
        let mut store = store_with("web", &[("10.0.0.1:80", MemberAttrs::default())]);
        assert_eq!(handle_discovery(&store, &request(&["web"], "1")), EdsReply::NotModified);
        publish(&mut store, "web", &[("10.0.0.2:80", MemberAttrs::default())]);
        let reply = handle_discovery(&store, &request(&["web"], "1"));
        assert!(matches!(reply, EdsReply::Assignment { ref version, .. } if version == "2"));
        assert_eq!(reply.status(), 200);
    }

    #[test]
    fn current_version_reads_only_the_version_entries() {
        let mut store = store_with("web", &[("10.0.0.1:80", MemberAttrs::default())]);
        publish(&mut store, "api", &[("10.0.0.9:80", MemberAttrs::default())]);
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(current_version(&store, &names(&["web"])).as_deref(), Some("1"));
        assert_eq!(current_version(&store, &names(&["web", "api", "nope"])).as_deref(), Some("web=1,api=1"));
        assert_eq!(current_version(&store, &names(&["nope"])), None);
        // A corrupt snapshot behind a current version entry still answers 304
        // (nothing changed), and a fresh client gets "unavailable", not junk.
        crate::sansio::shared::store::put(&mut store, &crate::sansio::shared::keys::snapshot_key("web"), b"garbage")
            .unwrap();
        assert_eq!(handle_discovery(&store, &request(&["web"], "1")), EdsReply::NotModified);
        assert!(matches!(handle_discovery(&store, &request(&["web"], "")), EdsReply::Unavailable(_)));
    }

    #[test]
    fn several_clusters_share_one_combined_version() {
        let mut store = store_with("web", &[("10.0.0.1:80", MemberAttrs::default())]);
        publish(&mut store, "api", &[("10.0.0.9:80", MemberAttrs::default())]);
        publish(&mut store, "api", &[("10.0.0.8:80", MemberAttrs::default())]);
        let reply = handle_discovery(&store, &request(&["web", "api", "missing"], ""));
        let EdsReply::Assignment { version, body, .. } = reply else { panic!() };
        assert_eq!(version, "web=1,api=2");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["resources"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn unknown_clusters_and_bad_requests() {
        let store = store_with("web", &[("10.0.0.1:80", MemberAttrs::default())]);
        let reply = handle_discovery(&store, &request(&["nope"], ""));
        assert!(matches!(reply, EdsReply::Unavailable(_)));
        assert_eq!(reply.to_json_reply().status, 503);
        for bad in [
            &b"nope"[..],
            br#"{"resource_names":[]}"#,
            br#"{"resource_names":[1]}"#,
            br#"{"version_info":1,"resource_names":["web"]}"#,
            br#"{"resource_names":["web"],"type_url":"type.googleapis.com/envoy.config.cluster.v3.Cluster"}"#,
        ] {
            assert!(
                matches!(handle_discovery(&store, bad), EdsReply::BadRequest(_)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn only_backups_leave_priority_zero_empty() {
        let store = store_with("web", &[("10.0.0.1:80", MemberAttrs { backup: true, ..Default::default() })]);
        let EdsReply::Assignment { body, .. } = handle_discovery(&store, &request(&["web"], "")) else { panic!() };
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["resources"][0]["endpoints"][0]["lb_endpoints"], json!([]));
        assert_eq!(v["resources"][0]["endpoints"][1]["lb_endpoints"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn localities_group_members_and_tags_become_envoy_lb_metadata() {
        use crate::sansio::model::locality::{Locality, MemberMeta};
        let d = MemberAttrs::default();
        let zone = |z: &str| Locality { region: "eu".into(), zone: z.into(), sub_zone: String::new() };
        let member = |a: &str, attrs: MemberAttrs, locality: Locality, tags: &[(&str, &str)]| Member {
            addr: a.parse().unwrap(),
            attrs,
            meta: MemberMeta { locality, tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() },
        };
        let members = [
            member("10.0.0.1:80", MemberAttrs { weight: 3, ..d }, zone("b"), &[]),
            member("10.0.0.2:80", d, zone("a"), &[("canary", "true")]),
            member("10.0.0.3:80", MemberAttrs { weight: 0, ..d }, zone("a"), &[]),
            member("10.0.0.4:80", d, Locality::default(), &[]),
            member("10.0.0.5:80", MemberAttrs { backup: true, ..d }, zone("a"), &[]),
            member("10.0.0.6:80", MemberAttrs { backup: true, ..d }, zone("b"), &[]),
        ];
        let (cla, _) = cluster_load_assignment("web", members.iter());
        let cla: Value = serde_json::from_str(&cla).unwrap();
        let groups = cla["endpoints"].as_array().unwrap();
        let summary: Vec<(u64, Value, u64, usize)> = groups
            .iter()
            .map(|g| {
                (
                    g["priority"].as_u64().unwrap(),
                    g.get("locality").cloned().unwrap_or(Value::Null),
                    g["load_balancing_weight"].as_u64().unwrap(),
                    g["lb_endpoints"].as_array().unwrap().len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (0, Value::Null, 1, 1),
                (0, json!({"region": "eu", "zone": "a"}), 1, 2),
                (0, json!({"region": "eu", "zone": "b"}), 3, 1),
                (1, json!({"region": "eu", "zone": "a"}), 1, 1),
                (1, json!({"region": "eu", "zone": "b"}), 1, 1),
            ]
        );
        let canary = &groups[1]["lb_endpoints"][0];
        assert_eq!(canary["metadata"], json!({"filter_metadata": {"envoy.lb": {"canary": "true"}}}));
        assert!(groups[1]["lb_endpoints"][1].get("metadata").is_none(), "no tags, no metadata");
    }

    #[test]
    fn repeated_names_are_answered_once() {
        let store = store_with("web", &[("10.0.0.1:80", MemberAttrs::default())]);
        let names: Vec<&str> = std::iter::repeat_n("web", 1000).collect();
        let EdsReply::Assignment { body, .. } = handle_discovery(&store, &request(&names, "")) else { panic!() };
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["resources"].as_array().unwrap().len(), 1);
        let too_many: Vec<String> = (0..=MAX_RESOURCE_NAMES).map(|i| format!("u{i}")).collect();
        let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
        assert!(matches!(handle_discovery(&store, &request(&refs, "")), EdsReply::BadRequest(_)));
    }

    #[test]
    fn the_written_json_carries_any_text_exactly() {
        use crate::sansio::model::locality::MemberMeta;
        let tricky = ["plain", "quo\"te", "back\\slash", "new\nline\u{1}", "ünï😀", "</script>"];
        let members: Vec<Member> = tricky
            .iter()
            .enumerate()
            .map(|(i, t)| Member {
                addr: format!("10.0.0.{}:80", i + 1).parse().unwrap(),
                attrs: MemberAttrs::default(),
                meta: MemberMeta {
                    locality: Locality { region: t.to_string(), zone: String::new(), sub_zone: String::new() },
                    tags: vec![(t.to_string(), t.to_string())],
                },
            })
            .collect();
        let (text, _) = cluster_load_assignment(tricky[1], members.iter());
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["cluster_name"], tricky[1]);
        let groups = v["endpoints"].as_array().unwrap();
        let mut seen = Vec::new();
        for g in groups {
            let region = g["locality"]["region"].as_str().unwrap();
            let tags = &g["lb_endpoints"][0]["metadata"]["filter_metadata"]["envoy.lb"];
            assert_eq!(tags[region], region);
            seen.push(region.to_string());
        }
        seen.sort();
        let mut want: Vec<String> = tricky.iter().map(|t| t.to_string()).collect();
        want.sort();
        assert_eq!(seen, want);
    }

    #[test]
    fn the_node_is_skipped_and_only_an_object_is_a_request() {
        let node: Vec<String> = (0..500).map(|i| format!(r#"{{"name":"envoy.ext.{i}","category":"c"}}"#)).collect();
        let body = format!(
            r#"{{"node":{{"id":"n","extensions":[{}]}},"version_info":"7","resource_names":["web","web","api"]}}"#,
            node.join(",")
        );
        let r = parse_request(body.as_bytes()).unwrap();
        assert_eq!((r.version_info.as_str(), r.resource_names), ("7", vec!["web".to_string(), "api".to_string()]));
        assert_eq!(parse_request(br#"["7",null,["web"]]"#), Err("a DiscoveryRequest is a JSON object".to_string()));
        assert!(parse_request(b"{nope").unwrap_err().starts_with("body is not JSON"));
        assert!(parse_request(b"").unwrap_err().starts_with("body is not JSON"));
    }

    #[test]
    fn an_answer_read_in_place_is_the_answer_from_decoded_members() {
        let loc = |r: &str, z: &str| MemberMeta {
            locality: Locality { region: r.into(), zone: z.into(), sub_zone: String::new() },
            tags: Vec::new(),
        };
        let attrs = |weight, down, backup| MemberAttrs { weight, down, backup, ..MemberAttrs::default() };
        let members = [
            ("10.0.0.1:80", attrs(1, false, false), loc("", "")),
            ("10.0.0.2:8080", attrs(5, false, false), loc("eu", "a")),
            ("10.0.0.3:80", attrs(0, false, false), loc("eu", "a")),
            ("10.0.0.4:80", attrs(1, true, true), loc("us", "")),
            ("[2001:db8::1]:443", attrs(3, false, true), loc("", "")),
            ("[::1]:81", attrs(1, false, false), loc("eu", "b")),
            ("db.internal:5432", attrs(1, false, false), loc("", "")),
            ("255.255.255.254:65535", attrs(4_000_000_000, false, false), loc("", "")),
        ];
        let set = MemberSet::from_members(members.iter().map(|(a, attrs, meta)| Member {
            addr: a.parse().unwrap(),
            attrs: *attrs,
            meta: meta.clone(),
        }))
        .0;
        for set in [set.clone(), MemberSet::new(), MemberSet::from_members(set.iter().skip(6).cloned()).0] {
            let key = snapshot_key("web");
            let bytes = Snapshot { version: 3, source: Source::Registry, members: set.clone() }.encode(&key);
            let (_, _, views) = snapshot::views(&key, &bytes).expect("the writer's own bytes");
            let in_place = assignment("web", views.iter().map(EndpointRef::of_view));
            assert_eq!(in_place, cluster_load_assignment("web", set.iter()));
        }
        // Whole answers, through the store: read in place, and decoded (an
        // escaped string is not the in-place reader's).
        let escaped =
            Member { meta: loc("e\"u", ""), ..Member::new("10.9.9.9:80".parse().unwrap(), MemberAttrs::default()) };
        let with_escape = MemberSet::from_members(set.iter().cloned().chain([escaped])).0;
        let key = snapshot_key("web");
        let bytes = Snapshot { version: 1, source: Source::Registry, members: with_escape.clone() }.encode(&key);
        assert!(snapshot::views(&key, &bytes).is_none());
        for set in [set, with_escape] {
            let mut store = MemoryStore::new(StoreRules::Envoy);
            snapshot::publish(&mut store, "web", &Published { members: set.clone(), source: Source::Registry })
                .unwrap();
            let reply = handle_discovery(&store, &request(&["web"], ""));
            let EdsReply::Assignment { body, skipped_hostnames, .. } = reply else { panic!("an assignment") };
            assert_eq!(skipped_hostnames, 1);
            assert_eq!(
                body,
                format!(
                    "{{\"version_info\":\"1\",\"type_url\":\"{CLA_TYPE_URL}\",\"resources\":[{}]}}",
                    cluster_load_assignment("web", set.iter()).0
                )
            );
        }
    }
}
