//! Registry listings for `discover[]`: which upstreams exist under a parent.
//! Like the member adapters, pure: a request built from the cursor, an
//! answer turned into names.
//!
//! | type | request | names |
//! |---|---|---|
//! | etcd_v3 | `POST /v3/kv/range` over the parent prefix, `keys_only` | the first path segment after the parent |
//! | etcd_v2 | `GET /v2/keys<parent>?recursive=true`, then one recursive long poll on the parent | child directories, with every member |
//! | consul_kv | `GET /v1/kv/<parent>?keys&separator=/`, blocking | child prefixes |
//! | consul_catalog, consul_health | `GET /v1/catalog/services`, blocking | services (with `tag`, those carrying it) |
//! | nacos | `GET /nacos/v1/ns/service/list` | `doms` |
//! | eureka | `GET /eureka/apps` | application names, lower-cased |
//!
//! etcd v3 has no "children of" read: the listing carries every key name
//! under the parent (no values), about 100 bytes per member; the parent's
//! `max_body_bytes` bounds it.
//!
//! etcd v2 reads the whole parent, members included, and then watches it
//! with one long poll (`?wait=true&recursive=true&waitIndex=<index+1>`):
//! each answer is the first change under any child after the last, handed
//! to that child's upstream as a delta. So the upstreams an etcd v2 parent
//! found make no calls of their own, and the proxy has one call out for the
//! whole parent: one etcd watcher instead of one per upstream, and on
//! nginx one call in flight per filter (ngx_wasm_module loses a connection
//! for each call that ends while another of the same filter is pending).

use crate::sansio::config::{Consistency, ConsulQuery, ConsulSpec, RegistrySpec};
use crate::sansio::registry::consul::{BlockingQuery, IndexMove};
use crate::sansio::registry::etcd_v2::{etcd_index, leaves, long_poll_ran_out, V2Event};
use crate::sansio::registry::etcd_v3::{header_revision, prefix_range_end, range_keys};
use crate::sansio::registry::{
    check_json_budget, get_json, short_text, AdapterError, ChildKeys, HttpRequest, HttpResponse,
};
use crate::sansio::util::{base64, url};
use serde::Deserialize;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

/// What a listing answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    /// Nothing changed since the last listing (a blocking query's index held,
    /// an etcd v2 long poll ran out).
    Unchanged,
    /// etcd v2: every child with every key under it (absolute key, value),
    /// read at store index `index`.
    Children { index: u64, children: BTreeMap<String, ChildKeys> },
    /// etcd v2: the first change after the last answer, under child `name`.
    Change { name: String, event: V2Event },
    /// etcd v2: the watch cannot go on from here (history cleared, a change
    /// to a directory or outside every child): read everything again now.
    Reread,
    /// Every name found, sorted, each once (not yet checked as upstream names).
    Names(BTreeSet<String>),
    /// etcd v3: every name found with its [`ChildMark`].
    Marked(BTreeMap<String, ChildMark>),
}

/// What an etcd v3 listing says of one child: how many keys it has and the
/// newest `mod_revision` among them. Any put or delete under the child
/// moves one of them, so the listing doubles as the safety probe of every
/// upstream found (the same test the member adapter's own probe makes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChildMark {
    pub keys: u64,
    pub newest: i64,
}

impl Listed {
    /// The names listed, marks dropped.
    pub fn into_names(self) -> Option<BTreeSet<String>> {
        match self {
            Listed::Unchanged | Listed::Change { .. } | Listed::Reread => None,
            Listed::Names(names) => Some(names),
            Listed::Children { children, .. } => Some(children.into_keys().collect()),
            Listed::Marked(marks) => Some(marks.into_keys().collect()),
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    /// `feed`: no watch (no `grpc_target`), so the listing reads the
    /// children whose mark moved for them, in transactions.
    EtcdV3 {
        parent: String,
        feed: bool,
    },
    /// `index`: the store index of the last answer; `None` → a full read next.
    EtcdV2 {
        parent: String,
        wait_ms: u64,
        index: Option<u64>,
    },
    ConsulKv {
        parent: String,
    },
    ConsulServices {
        tag: Option<String>,
    },
    Nacos {
        group: Option<String>,
        namespace: Option<String>,
    },
    Eureka,
}

/// Reads the names under one `discover[]` parent.
#[derive(Debug, Clone)]
pub struct ListingAdapter {
    kind: Kind,
    /// Consul's cursor (unused by the other types).
    blocking: BlockingQuery,
    /// Nacos: the page size asked for.
    most: usize,
}

impl ListingAdapter {
    /// `most`: the most names the entry takes (Nacos pages by it).
    pub fn new(spec: &RegistrySpec, tag: Option<&str>, most: usize) -> Self {
        let (mut dc, mut consistency, mut wait_ms) = (None, Consistency::Default, 0);
        let kind = match spec {
            RegistrySpec::EtcdV3 { prefix, grpc_target } => {
                Kind::EtcdV3 { parent: prefix.clone(), feed: grpc_target.is_none() }
            }
            RegistrySpec::EtcdV2 { prefix, wait_ms } => {
                Kind::EtcdV2 { parent: prefix.clone(), wait_ms: *wait_ms, index: None }
            }
            RegistrySpec::Consul(ConsulSpec { query, dc: d, consistency: c, wait_ms: w, .. }) => {
                (dc, consistency, wait_ms) = (d.clone(), *c, *w);
                match query {
                    ConsulQuery::Kv { prefix } => Kind::ConsulKv { parent: prefix.clone() },
                    _ => Kind::ConsulServices { tag: tag.map(str::to_string) },
                }
            }
            RegistrySpec::Nacos { group, namespace, .. } => {
                Kind::Nacos { group: group.clone(), namespace: namespace.clone() }
            }
            RegistrySpec::Eureka { .. } => Kind::Eureka,
        };
        ListingAdapter { kind, blocking: BlockingQuery::new(dc, consistency, wait_ms), most }
    }

    /// How long the registry may hold the next request (Consul's blocking
    /// query, etcd v2's long poll).
    pub fn hold_ms(&self) -> u64 {
        match &self.kind {
            Kind::EtcdV2 { index: Some(_), wait_ms, .. } => *wait_ms,
            Kind::EtcdV2 { .. } => 0,
            _ => self.blocking.hold_ms(),
        }
    }

    /// Blocking queries and long polls are asked again right after an answer.
    pub fn blocks(&self) -> bool {
        matches!(self.kind, Kind::ConsulKv { .. } | Kind::ConsulServices { .. } | Kind::EtcdV2 { .. })
    }

    /// The listing carries every child's members, and its next call
    /// watches them: the upstreams found make no calls of their own.
    pub fn feeds_children(&self) -> bool {
        matches!(self.kind, Kind::EtcdV2 { .. } | Kind::EtcdV3 { feed: true, .. })
    }

    /// etcd v3 without a watch: one transaction reading every key of the
    /// children `names` (at most [`MAX_TXN_READS`]), `<parent><name>/` each.
    pub fn children_request(&self, names: &[String]) -> Option<HttpRequest> {
        let Kind::EtcdV3 { parent, feed: true } = &self.kind else {
            return None;
        };
        let reads: Vec<Value> = names
            .iter()
            .map(|name| {
                let prefix = format!("{parent}{name}/");
                json!({"request_range": {
                    "key": base64::encode(prefix.as_bytes()),
                    "range_end": base64::encode(&prefix_range_end(prefix.as_bytes())),
                }})
            })
            .collect();
        Some(HttpRequest {
            method: "POST",
            path: "/v3/kv/txn".to_string(),
            headers: vec![("content-type".to_string(), "application/json".to_string())],
            body: json!({ "success": reads }).to_string().into_bytes(),
        })
    }

    /// The answer to [`ListingAdapter::children_request`] for `names`: the
    /// store revision and each child's keys.
    pub fn parse_children(
        &self,
        response: &HttpResponse<'_>,
        names: &[String],
    ) -> Result<(u64, BTreeMap<String, ChildKeys>), AdapterError> {
        expect_ok(response)?;
        check_json_budget(response.body)?;
        let root: Value = serde_json::from_slice(response.body).map_err(|e| AdapterError::NotJson(e.to_string()))?;
        if let Some(e) = root.get("error").or_else(|| root.get("message")) {
            return Err(AdapterError::Registry(e.as_str().unwrap_or("(no message)").chars().take(200).collect()));
        }
        let revision = header_revision(&root)?
            .and_then(|r| u64::try_from(r).ok())
            .ok_or_else(|| AdapterError::BadShape("no header.revision in the transaction answer".into()))?;
        let answers = match root.get("responses") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(a)) => a.as_slice(),
            Some(_) => return Err(AdapterError::BadShape("\"responses\" is not an array".into())),
        };
        if answers.len() != names.len() {
            return Err(AdapterError::BadShape(format!(
                "{} answers to a transaction of {} reads",
                answers.len(),
                names.len()
            )));
        }
        let mut children = BTreeMap::new();
        for (name, answer) in names.iter().zip(answers) {
            // An empty range is `{}` (proto3 JSON leaves empty fields out).
            let empty = Value::Object(serde_json::Map::new());
            let range = answer.get("response_range").unwrap_or(&empty);
            children.insert(name.clone(), range_keys(range)?);
        }
        Ok((revision, children))
    }

    /// The next call is a long poll (not a full read).
    pub fn watching(&self) -> bool {
        matches!(self.kind, Kind::EtcdV2 { index: Some(_), .. })
    }

    /// The next listing is a plain read.
    pub fn reset(&mut self) {
        self.blocking.reset();
        if let Kind::EtcdV2 { index, .. } = &mut self.kind {
            *index = None;
        }
    }

    pub fn request(&self) -> HttpRequest {
        match &self.kind {
            Kind::EtcdV3 { parent, .. } => {
                let body = json!({
                    "key": base64::encode(parent.as_bytes()),
                    "range_end": base64::encode(&prefix_range_end(parent.as_bytes())),
                    "keys_only": true,
                });
                HttpRequest {
                    method: "POST",
                    path: "/v3/kv/range".to_string(),
                    headers: vec![("content-type".to_string(), "application/json".to_string())],
                    body: body.to_string().into_bytes(),
                }
            }
            Kind::EtcdV2 { parent, index, .. } => {
                let dir = url::encode(parent.trim_end_matches('/'), true);
                match index {
                    None => get_json(format!("/v2/keys{dir}?recursive=true")),
                    Some(i) => {
                        get_json(format!("/v2/keys{dir}?wait=true&recursive=true&waitIndex={}", i.saturating_add(1)))
                    }
                }
            }
            Kind::ConsulKv { parent } => {
                let path = format!("/v1/kv/{}", url::encode(parent.trim_start_matches('/'), true));
                self.blocking.get(&path, vec![("keys", "true".into()), ("separator", "/".into())])
            }
            Kind::ConsulServices { .. } => self.blocking.get("/v1/catalog/services", Vec::new()),
            Kind::Nacos { group, namespace } => {
                let mut params: Vec<(&str, String)> = vec![("pageNo", "1".into()), ("pageSize", self.most.to_string())];
                if let Some(g) = group {
                    params.push(("groupName", g.clone()));
                }
                if let Some(n) = namespace {
                    params.push(("namespaceId", n.clone()));
                }
                get_json(format!("/nacos/v1/ns/service/list{}", url::query(&params)))
            }
            Kind::Eureka => get_json("/eureka/apps".to_string()),
        }
    }

    pub fn parse(&mut self, response: &HttpResponse<'_>) -> Result<Listed, AdapterError> {
        if let Kind::EtcdV2 { parent, index, .. } = &mut self.kind {
            let parsed = etcd_v2_parse(parent, index, response);
            if parsed.is_err() {
                *index = None;
            }
            return parsed;
        }
        let missing = response.status == Some(404);
        match &self.kind {
            // A parent that does not exist (yet) lists nothing.
            Kind::ConsulKv { .. } | Kind::Eureka if missing => {}
            _ => expect_ok(response)?,
        }
        if self.blocks() && self.blocking.take_index(response)? == IndexMove::Unchanged {
            return Ok(Listed::Unchanged);
        }
        if missing {
            return Ok(Listed::Names(BTreeSet::new()));
        }
        if let Kind::EtcdV3 { parent, .. } = &self.kind {
            check_json_budget(response.body)?;
            return Ok(Listed::Marked(etcd_v3_children(parent, response.body)?));
        }
        check_json_budget(response.body)?;
        let root: Value = serde_json::from_slice(response.body).map_err(|e| AdapterError::NotJson(e.to_string()))?;
        let names = match &self.kind {
            Kind::EtcdV3 { parent, .. } => etcd_v3_children(parent, response.body)?.into_keys().collect(),
            Kind::EtcdV2 { .. } => return Err(AdapterError::BadShape("etcd v2 is read above".into())),
            Kind::ConsulKv { parent } => consul_kv_children(parent.trim_start_matches('/'), &root)?,
            Kind::ConsulServices { tag } => consul_services(tag.as_deref(), &root)?,
            Kind::Nacos { .. } => nacos_services(&root)?,
            Kind::Eureka => eureka_apps(&root)?,
        };
        Ok(Listed::Names(names))
    }
}

/// The most reads one transaction carries: etcd's default `--max-txn-ops`.
pub const MAX_TXN_READS: usize = 128;

/// A 2xx answer, or the registry's error with the start of its body.
fn expect_ok(response: &HttpResponse<'_>) -> Result<(), AdapterError> {
    response.expect_ok().map_err(|e| match e {
        AdapterError::Status(s) => AdapterError::Registry(format!("HTTP {s}: {}", short_text(response.body))),
        other => other,
    })
}

/// The name of the child a key lies under: `<parent><name>/...`. Keys
/// directly under the parent (no second '/') belong to no child.
fn child_of<'a>(parent: &str, key: &'a str) -> Option<&'a str> {
    let rest = key.strip_prefix(parent)?;
    let (name, _) = rest.split_once('/')?;
    (!name.is_empty()).then_some(name)
}

/// The parts of a keys-only range answer the listing reads, borrowed from
/// the body: a listing of 1,000 upstreams × 20 members is 20,000 keys
/// (~2 MB), read every `interval_ms` on the proxy's main thread, so it is
/// not built as a `Value` tree.
#[derive(Deserialize)]
struct RangeKeysWire<'a> {
    #[serde(default, borrow)]
    kvs: Vec<KeyWire<'a>>,
    #[serde(default, borrow)]
    error: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct KeyWire<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    /// The gateway writes int64 as a string.
    #[serde(default, borrow)]
    mod_revision: Option<Cow<'a, str>>,
}

fn etcd_v3_children(parent: &str, body: &[u8]) -> Result<BTreeMap<String, ChildMark>, AdapterError> {
    let wire: RangeKeysWire<'_> = serde_json::from_slice(body).map_err(|e| AdapterError::NotJson(e.to_string()))?;
    if let Some(e) = wire.error.or(wire.message) {
        return Err(AdapterError::Registry(e.chars().take(200).collect()));
    }
    let mut names: BTreeMap<String, ChildMark> = BTreeMap::new();
    for kv in &wire.kvs {
        let key = base64::decode(&kv.key).map_err(|_| AdapterError::BadShape("kvs[].key is not base64".into()))?;
        let revision = match kv.mod_revision.as_deref() {
            None => 0,
            Some(r) => {
                r.parse::<i64>().map_err(|_| AdapterError::BadShape("kvs[].mod_revision is not an integer".into()))?
            }
        };
        let Some(name) = std::str::from_utf8(&key).ok().and_then(|k| child_of(parent, k)) else {
            continue;
        };
        let mark = match names.get_mut(name) {
            Some(mark) => mark,
            None => names.entry(name.to_string()).or_default(),
        };
        mark.keys += 1;
        mark.newest = mark.newest.max(revision);
    }
    Ok(names)
}

/// An etcd v2 answer: to the full read (`index` is `None`) or to the long
/// poll from `index + 1`. `index` moves to what the answer says.
fn etcd_v2_parse(parent: &str, index: &mut Option<u64>, response: &HttpResponse<'_>) -> Result<Listed, AdapterError> {
    let watching = index.is_some();
    if watching && long_poll_ran_out(response) {
        return Ok(Listed::Unchanged);
    }
    check_json_budget(response.body)?;
    let root: Value = serde_json::from_slice(response.body).map_err(|e| match response.status {
        Some(s) if s != 200 => AdapterError::Registry(format!("HTTP {s}: {}", short_text(response.body))),
        _ => AdapterError::NotJson(e.to_string()),
    })?;
    if let Some(code) = root.get("errorCode").and_then(Value::as_i64) {
        return match code {
            // No parent yet: nothing listed, watched from here.
            100 if !watching => {
                *index = etcd_index(response, &root);
                Ok(Listed::Children { index: index.unwrap_or_default(), children: BTreeMap::new() })
            }
            // The history no longer reaches back to the index waited from.
            401 => {
                *index = None;
                Ok(Listed::Reread)
            }
            _ => {
                let message = root.get("message").and_then(Value::as_str).unwrap_or("");
                Err(AdapterError::Registry(format!(
                    "etcd error {code}: {}",
                    message.chars().take(200).collect::<String>()
                )))
            }
        };
    }
    expect_ok(response)?;
    if let Some(waited) = *index {
        let event = V2Event::from_body(&root);
        let follows = |e: &V2Event| e.modified_index.is_some_and(|i| i > waited);
        let name = event.as_ref().filter(|e| !e.dir && follows(e)).and_then(|e| child_of(parent, &e.key));
        return Ok(match (name.map(str::to_string), event) {
            (Some(name), Some(event)) => {
                *index = event.modified_index;
                Listed::Change { name, event }
            }
            _ => {
                *index = None;
                Listed::Reread
            }
        });
    }
    let node = root.get("node").ok_or_else(|| AdapterError::BadShape("no node".into()))?;
    let at = etcd_index(response, &root)
        .ok_or_else(|| AdapterError::BadShape("no X-Etcd-Index header: cannot watch from here".into()))?;
    let nodes = match node.get("nodes") {
        None => &[][..],
        Some(Value::Array(nodes)) => nodes.as_slice(),
        Some(_) => return Err(AdapterError::BadShape("node.nodes is not an array".into())),
    };
    let mut children = BTreeMap::new();
    for child in nodes {
        if child.get("dir").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let key = child.get("key").and_then(Value::as_str).unwrap_or("");
        let Some(name) = key.strip_prefix(parent).filter(|n| !n.is_empty() && !n.contains('/')) else {
            continue;
        };
        let mut entries = Vec::new();
        leaves(child, &mut entries)?;
        children.insert(name.to_string(), entries.into_iter().map(|(k, v)| (k, v, 0)).collect());
    }
    *index = Some(at);
    Ok(Listed::Children { index: at, children })
}

fn consul_kv_children(parent: &str, root: &Value) -> Result<BTreeSet<String>, AdapterError> {
    let keys = root.as_array().ok_or_else(|| AdapterError::BadShape("answer is not a JSON array of keys".into()))?;
    Ok(keys.iter().filter_map(Value::as_str).filter_map(|k| child_of(parent, k)).map(str::to_string).collect())
}

fn consul_services(tag: Option<&str>, root: &Value) -> Result<BTreeSet<String>, AdapterError> {
    let services = root.as_object().ok_or_else(|| AdapterError::BadShape("answer is not a JSON object".into()))?;
    Ok(services
        .iter()
        .filter(|(_, tags)| match tag {
            None => true,
            Some(t) => tags.as_array().is_some_and(|tags| tags.iter().any(|x| x.as_str() == Some(t))),
        })
        .map(|(name, _)| name.clone())
        .collect())
}

fn nacos_services(root: &Value) -> Result<BTreeSet<String>, AdapterError> {
    let doms = root.get("doms").and_then(Value::as_array).ok_or_else(|| {
        let said = root.get("message").and_then(Value::as_str).unwrap_or("no doms list");
        AdapterError::BadShape(said.chars().take(200).collect())
    })?;
    Ok(doms.iter().filter_map(Value::as_str).map(str::to_string).collect())
}

fn eureka_apps(root: &Value) -> Result<BTreeSet<String>, AdapterError> {
    let apps = root.get("applications").ok_or_else(|| AdapterError::BadShape("no applications".into()))?;
    // Eureka's JSON gives one application as an object, several as an array.
    let list: Vec<&Value> = match apps.get("application") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(one @ Value::Object(_)) => vec![one],
        Some(_) => return Err(AdapterError::BadShape("applications.application is not a list".into())),
    };
    Ok(list.iter().filter_map(|a| a.get("name").and_then(Value::as_str)).map(str::to_ascii_lowercase).collect())
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::config::{ConsulSpec, RegistrySpec};

    fn consul(query: ConsulQuery) -> RegistrySpec {
        RegistrySpec::Consul(ConsulSpec {
            query,
            wait_ms: 50_000,
            token: None,
            dc: None,
            consistency: Consistency::Default,
        })
    }

    fn names(list: &[&str]) -> Listed {
        Listed::Names(list.iter().map(|s| s.to_string()).collect())
    }

    fn answer<'a>(status: u16, headers: &'a [(String, String)], body: &'a str) -> HttpResponse<'a> {
        HttpResponse::new(Some(status), headers, body.as_bytes())
    }

    #[test]
    fn etcd_v3_lists_the_first_segment_under_the_parent_from_key_names_only() {
        let mut a =
            ListingAdapter::new(&RegistrySpec::EtcdV3 { prefix: "/upstreams/".into(), grpc_target: None }, None, 10);
        let r = a.request();
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["keys_only"], true);
        assert_eq!(base64::decode(body["key"].as_str().unwrap()).unwrap(), b"/upstreams/");
        assert_eq!(base64::decode(body["range_end"].as_str().unwrap()).unwrap(), b"/upstreams0");
        let keys: Vec<Value> = [
            ("/upstreams/web/10.0.0.1:80", 5),
            ("/upstreams/web/10.0.0.2:80", 8),
            ("/upstreams/api/1.1.1.1:1", 3),
            ("/upstreams/stray", 9),
        ]
        .iter()
        .map(|(k, rev)| json!({"key": base64::encode(k.as_bytes()), "mod_revision": rev.to_string()}))
        .collect();
        let body = json!({"header": {"revision": "9"}, "kvs": keys, "count": "4"}).to_string();
        let listed = a.parse(&answer(200, &[], &body)).unwrap();
        let Listed::Marked(marks) = &listed else { panic!("{listed:?}") };
        assert_eq!(marks["web"], ChildMark { keys: 2, newest: 8 });
        assert_eq!(marks["api"], ChildMark { keys: 1, newest: 3 });
        assert_eq!(listed.into_names().unwrap(), ["api".to_string(), "web".to_string()].into_iter().collect());
        assert_eq!(a.parse(&answer(200, &[], r#"{"header":{}}"#)).unwrap(), Listed::Marked(BTreeMap::new()));
        assert!(matches!(a.parse(&answer(200, &[], r#"{"kvs":[{"key":"%%"}]}"#)), Err(AdapterError::BadShape(_))));
        assert!(matches!(a.parse(&answer(503, &[], "down")), Err(AdapterError::Registry(_))));
    }

    #[test]
    fn etcd_v2_reads_every_child_with_its_keys_then_watches_the_parent() {
        let mut a =
            ListingAdapter::new(&RegistrySpec::EtcdV2 { prefix: "/upstreams/".into(), wait_ms: 20_000 }, None, 10);
        assert!(a.feeds_children() && a.blocks() && !a.watching());
        assert_eq!(a.request().path, "/v2/keys/upstreams?recursive=true");
        assert_eq!(a.hold_ms(), 0);
        let body = r#"{"action":"get","node":{"key":"/upstreams","dir":true,"nodes":[
            {"key":"/upstreams/web","dir":true,"nodes":[{"key":"/upstreams/web/10.0.0.1:80","value":"{}"},
              {"key":"/upstreams/web/deeper","dir":true,"nodes":[{"key":"/upstreams/web/deeper/x","value":"y"}]}]},
            {"key":"/upstreams/api","dir":true},{"key":"/upstreams/file","value":"x"}]}}"#;
        let h = vec![("X-Etcd-Index".to_string(), "41".to_string())];
        let Ok(Listed::Children { index: 41, children }) = a.parse(&answer(200, &h, body)) else { panic!() };
        assert_eq!(children.keys().collect::<Vec<_>>(), ["api", "web"]);
        assert_eq!(children["api"], []);
        assert_eq!(
            children["web"],
            [
                ("/upstreams/web/10.0.0.1:80".to_string(), b"{}".to_vec(), 0),
                ("/upstreams/web/deeper/x".to_string(), b"y".to_vec(), 0)
            ]
        );
        assert!(a.watching());
        assert_eq!(a.request().path, "/v2/keys/upstreams?wait=true&recursive=true&waitIndex=42");
        assert_eq!(a.hold_ms(), 20_000);

        // The hold ran out (Envoy: 504 or no status; nginx: 200, no body).
        assert_eq!(a.parse(&answer(504, &[], "")).unwrap(), Listed::Unchanged);
        assert_eq!(a.parse(&HttpResponse::new(None, &[], b"")).unwrap(), Listed::Unchanged);
        assert_eq!(a.parse(&answer(200, &[], "")).unwrap(), Listed::Unchanged);
        assert!(a.request().path.ends_with("waitIndex=42"));

        // A change under a child: handed on; the watch goes on after it.
        let set = r#"{"action":"set","node":{"key":"/upstreams/web/10.0.0.2:80","value":"{}","modifiedIndex":45}}"#;
        let Ok(Listed::Change { name, event }) = a.parse(&answer(200, &h, set)) else { panic!() };
        assert_eq!(
            (name.as_str(), event.key.as_str(), event.modified_index),
            ("web", "/upstreams/web/10.0.0.2:80", Some(45))
        );
        assert!(a.request().path.ends_with("waitIndex=46"));

        // What the watch cannot follow: read everything again.
        let rereads = [
            r#"{"action":"delete","node":{"key":"/upstreams/web","dir":true,"modifiedIndex":47}}"#,
            r#"{"action":"set","node":{"key":"/upstreams/loose","value":"{}","modifiedIndex":47}}"#,
            r#"{"action":"set","node":{"key":"/upstreams/web/1.2.3.4:80","value":"{}","modifiedIndex":45}}"#,
            r#"{"action":"set","node":{"key":"/upstreams/web/1.2.3.4:80","value":"{}"}}"#,
            r#"{"errorCode":401,"message":"The event in requested index is outdated and cleared","index":3000}"#,
        ];
        for body in rereads {
            let mut b = a.clone();
            assert_eq!(b.parse(&answer(200, &h, body)).unwrap(), Listed::Reread, "{body}");
            assert_eq!(b.request().path, "/v2/keys/upstreams?recursive=true", "{body}");
        }

        // A missing parent lists nothing and is watched from etcd's index.
        let mut a = ListingAdapter::new(&RegistrySpec::EtcdV2 { prefix: "/upstreams/".into(), wait_ms: 1 }, None, 10);
        let missing = r#"{"errorCode":100,"message":"Key not found","cause":"/upstreams","index":5}"#;
        assert_eq!(
            a.parse(&answer(404, &[], missing)).unwrap(),
            Listed::Children { index: 5, children: BTreeMap::new() }
        );
        assert!(a.request().path.ends_with("waitIndex=6"));
        // Errors reset the cursor.
        assert!(matches!(
            a.parse(&answer(200, &[], r#"{"errorCode":300,"message":"raft"}"#)),
            Err(AdapterError::Registry(_))
        ));
        assert!(!a.watching());
        assert!(matches!(a.parse(&answer(200, &[], "{\"node\":{}}")), Err(AdapterError::BadShape(_))), "no index");
        assert!(matches!(a.parse(&answer(502, &[], "<html>")), Err(AdapterError::Registry(_))));
    }

    #[test]
    fn consul_kv_lists_child_prefixes_as_a_blocking_query() {
        let mut a = ListingAdapter::new(&consul(ConsulQuery::Kv { prefix: "upstreams/".into() }), None, 10);
        assert_eq!(a.request().path, "/v1/kv/upstreams/?keys=true&separator=%2F");
        let h = vec![("x-consul-index".to_string(), "7".to_string())];
        let body = r#"["upstreams/api/","upstreams/web/","upstreams/loose-key"]"#;
        assert_eq!(a.parse(&answer(200, &h, body)).unwrap(), names(&["api", "web"]));
        assert!(a.request().path.contains("index=7&wait=50000ms"));
        assert_eq!(a.hold_ms(), 50_000 + 50_000 / 16);
        assert_eq!(a.parse(&answer(200, &h, body)).unwrap(), Listed::Unchanged);
        let h9 = vec![("x-consul-index".to_string(), "9".to_string())];
        assert_eq!(a.parse(&answer(404, &h9, "")).unwrap(), names(&[]));
        assert!(matches!(a.parse(&answer(200, &[], body)), Err(AdapterError::BadShape(_))), "no index header");
    }

    #[test]
    fn consul_services_are_filtered_by_tag() {
        let spec = consul(ConsulQuery::Health { service: String::new(), passing_only: true });
        let mut a = ListingAdapter::new(&spec, Some("http"), 10);
        assert_eq!(a.request().path, "/v1/catalog/services");
        let h = vec![("x-consul-index".to_string(), "3".to_string())];
        let body = r#"{"consul":[],"web":["http","v2"],"db":["tcp"],"api":["http"]}"#;
        assert_eq!(a.parse(&answer(200, &h, body)).unwrap(), names(&["api", "web"]));
        let mut untagged = ListingAdapter::new(&spec, None, 10);
        assert_eq!(untagged.parse(&answer(200, &h, body)).unwrap(), names(&["api", "consul", "db", "web"]));
    }

    #[test]
    fn nacos_and_eureka_list_their_services() {
        let spec = RegistrySpec::Nacos { service: String::new(), group: Some("G".into()), namespace: None };
        let mut n = ListingAdapter::new(&spec, None, 500);
        assert_eq!(n.request().path, "/nacos/v1/ns/service/list?pageNo=1&pageSize=500&groupName=G");
        assert_eq!(n.parse(&answer(200, &[], r#"{"count":2,"doms":["a","b"]}"#)).unwrap(), names(&["a", "b"]));
        assert!(
            matches!(n.parse(&answer(200, &[], r#"{"code":500,"message":"boom"}"#)), Err(AdapterError::BadShape(m)) if m == "boom")
        );
        let mut e = ListingAdapter::new(&RegistrySpec::Eureka { service: String::new() }, None, 10);
        assert_eq!(e.request().path, "/eureka/apps");
        let one = r#"{"applications":{"application":{"name":"WEB","instance":[]}}}"#;
        assert_eq!(e.parse(&answer(200, &[], one)).unwrap(), names(&["web"]));
        let two = r#"{"applications":{"application":[{"name":"WEB"},{"name":"API"}]}}"#;
        assert_eq!(e.parse(&answer(200, &[], two)).unwrap(), names(&["api", "web"]));
        assert_eq!(e.parse(&answer(200, &[], r#"{"applications":{}}"#)).unwrap(), names(&[]));
    }
}
