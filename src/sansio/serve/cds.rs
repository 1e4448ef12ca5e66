//! REST CDS for Envoy: `POST /v3/discovery:clusters` answers one EDS
//! cluster per upstream found by `discover[]`, each reading its members
//! from this plugin's EDS, so a new upstream in the registry needs no
//! Envoy configuration edit. Upstreams listed in `upstreams[]` keep the
//! clusters of the Envoy configuration (CDS never sends a cluster with a
//! static cluster's name, which Envoy would refuse).
//!
//! The version is a hash of the cluster names and the cluster settings,
//! computed from the names alone, so an unchanged request is answered 304
//! without building the clusters.

use crate::sansio::config::CdsConfig;
use crate::sansio::serve::reply::LocalReply;
use crate::sansio::shared::keys::cds_key;
use crate::sansio::shared::names;
use crate::sansio::shared::store::SharedStore;
use serde_json::{json, Map, Value};

pub const CLUSTER_TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// What a CDS request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CdsReply {
    Clusters { version: String, count: usize, body: String },
    NotModified,
    BadRequest(String),
}

impl CdsReply {
    pub fn to_json_reply(&self) -> LocalReply {
        match self {
            CdsReply::Clusters { body, .. } => LocalReply::json(200, body.clone()),
            CdsReply::NotModified => LocalReply::json(304, String::new()),
            CdsReply::BadRequest(e) => LocalReply::error(400, e),
        }
    }
}

/// The `version_info` of a CDS DiscoveryRequest ("" at first). CDS asks
/// for every cluster (a wildcard request); named resources are ignored.
pub fn parse_request(body: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    if !v.is_object() {
        return Err("a DiscoveryRequest is a JSON object".into());
    }
    match v.get("version_info") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err("version_info must be a string".into()),
    }
}

/// FNV-1a over the names and the settings: stable across workers and restarts.
fn version_of(names: &[String], config: &CdsConfig) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    eat(config.fingerprint().as_bytes());
    for n in names {
        eat(n.as_bytes());
    }
    format!("{h:016x}")
}

pub fn answer(store: &dyn SharedStore, config: &CdsConfig, version_info: &str) -> CdsReply {
    let found = match names::read(store, &cds_key()) {
        Ok(found) => found.unwrap_or_default(),
        Err(e) => {
            log::warn!("CDS: the cluster list is unreadable: {e}; answering as unchanged");
            return CdsReply::NotModified;
        }
    };
    let version = version_of(&found, config);
    if version == version_info {
        return CdsReply::NotModified;
    }
    let resources: Vec<Value> = found.iter().map(|name| cluster(name, config)).collect();
    let body = json!({"version_info": version, "type_url": CLUSTER_TYPE_URL, "resources": resources}).to_string();
    CdsReply::Clusters { version, count: found.len(), body }
}

/// One EDS cluster: the configured template, then the name, type and EDS
/// source, which the template cannot override.
pub fn cluster(name: &str, config: &CdsConfig) -> Value {
    let mut c: Map<String, Value> = config.template.clone();
    c.entry("connect_timeout").or_insert_with(|| json!("1s"));
    c.insert("@type".into(), json!(CLUSTER_TYPE_URL));
    c.insert("name".into(), json!(name));
    c.insert("type".into(), json!("EDS"));
    c.insert(
        "eds_cluster_config".into(),
        json!({
            "service_name": name,
            "eds_config": {
                "resource_api_version": "V3",
                "initial_fetch_timeout": "0.5s",
                "api_config_source": {
                    "api_type": "REST",
                    "transport_api_version": "V3",
                    "cluster_names": [config.eds_cluster],
                    "refresh_delay": seconds(config.refresh_delay_ms),
                    "request_timeout": seconds(config.request_timeout_ms),
                }
            }
        }),
    );
    Value::Object(c)
}

/// A protobuf JSON Duration.
fn seconds(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::config::parse_server_config;
    use crate::sansio::shared::store::{MemoryStore, StoreRules};

    fn config(json: &str) -> CdsConfig {
        parse_server_config(json.as_bytes()).unwrap().cds
    }

    #[test]
    fn clusters_for_every_found_upstream_with_the_template_and_a_304_when_unchanged() {
        let mut store = MemoryStore::new(StoreRules::Envoy);
        let cds = config(
            r#"{"eds_hold_ms":25000,"cds":{"eds_cluster":"my_eds","refresh_delay_ms":20,
                "cluster":{"lb_policy":"LEAST_REQUEST","connect_timeout":"0.5s","name":"ignored","type":"STATIC"}}}"#,
        );
        let CdsReply::Clusters { version, count, body } = answer(&store, &cds, "") else { panic!() };
        assert_eq!(count, 0, "no upstream found yet: an empty, valid answer");
        assert!(body.contains(CLUSTER_TYPE_URL));
        assert_eq!(answer(&store, &cds, &version), CdsReply::NotModified);

        names::write(&mut store, &cds_key(), &["api".to_string(), "web".to_string()]).unwrap();
        let CdsReply::Clusters { version: v2, count, body } = answer(&store, &cds, &version) else { panic!() };
        assert_eq!(count, 2);
        assert_ne!(v2, version);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["version_info"], v2.as_str());
        let web = &v["resources"][1];
        assert_eq!(web["@type"], CLUSTER_TYPE_URL);
        assert_eq!((web["name"].as_str(), web["type"].as_str()), (Some("web"), Some("EDS")));
        assert_eq!(web["lb_policy"], "LEAST_REQUEST");
        assert_eq!(web["connect_timeout"], "0.5s");
        let source = &web["eds_cluster_config"]["eds_config"]["api_config_source"];
        assert_eq!(source["cluster_names"][0], "my_eds");
        assert_eq!(source["refresh_delay"], "0.020s");
        assert_eq!(source["request_timeout"], "30.000s", "hold + 5 s by default");
        assert_eq!(web["eds_cluster_config"]["service_name"], "web");
        assert_eq!(answer(&store, &cds, &v2), CdsReply::NotModified);
        // Other settings, another version: Envoy takes the new clusters.
        let other = config(r#"{"eds_hold_ms":25000,"cds":{"eds_cluster":"my_eds"}}"#);
        assert!(matches!(answer(&store, &other, &v2), CdsReply::Clusters { .. }));
    }

    #[test]
    fn bad_requests_and_config_errors() {
        assert_eq!(parse_request(br#"{"version_info":"x","resource_names":[]}"#), Ok("x".into()));
        assert_eq!(parse_request(b"{}"), Ok(String::new()));
        assert!(parse_request(b"[]").is_err());
        assert!(parse_request(br#"{"version_info":3}"#).is_err());
        for (json, field) in [
            (r#"{"cds":{"eds_cluster":""}}"#, "cds.eds_cluster"),
            (r#"{"cds":{"cluster":[]}}"#, "cds.cluster"),
            (r#"{"cds":{"bogus":1}}"#, "cds.bogus"),
            (r#"{"eds_hold_ms":25000,"cds":{"request_timeout_ms":20000}}"#, "cds.request_timeout_ms"),
        ] {
            let e = parse_server_config(json.as_bytes()).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }
}
