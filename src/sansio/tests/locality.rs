//! Locality and tags as every registry adapter reads them, from answers
//! in each registry's own shape.

// On wasm32 the same tests run under wasm-bindgen-test.
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use crate::sansio::config::{Consistency, ConsulQuery};
use crate::sansio::model::locality::{Locality, MemberMeta};
use crate::sansio::registry::consul::ConsulAdapter;
use crate::sansio::registry::etcd_v2::EtcdV2Adapter;
use crate::sansio::registry::etcd_v3::EtcdV3Adapter;
use crate::sansio::registry::eureka::EurekaAdapter;
use crate::sansio::registry::nacos::NacosAdapter;
use crate::sansio::registry::{HttpResponse, MemberList, Poll, RegistryAdapter};
use crate::sansio::util::base64;
use serde_json::{json, Value};

fn loc(region: &str, zone: &str, sub_zone: &str) -> Locality {
    Locality { region: region.into(), zone: zone.into(), sub_zone: sub_zone.into() }
}

fn tags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// `(address, meta)` of every member, in address order.
fn metas(list: &MemberList) -> Vec<(String, MemberMeta)> {
    list.members.iter().map(|m| (m.addr.to_string(), m.meta.clone())).collect()
}

fn members(p: Result<Poll, crate::sansio::registry::AdapterError>) -> MemberList {
    match p {
        Ok(Poll::Members(l)) => l,
        other => panic!("members expected, got {other:?}"),
    }
}

/// The upsync values every key/value registry carries.
const ZONED: &str = r#"{"weight":2,"zone":"zone-a","region":"eu","tags":["canary","version=v2"]}"#;
const PLAIN: &str = r#"{"weight":1}"#;
const BAD: &str = r#"{"zone":7,"tags":"canary"}"#;

fn expect_upsync_values(list: &MemberList) {
    let got = metas(list);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].1.locality, loc("eu", "zone-a", ""));
    assert_eq!(got[0].1.tags, tags(&[("canary", "true"), ("version", "v2")]));
    assert_eq!(list.members.iter().next().map(|m| m.attrs.weight), Some(2));
    assert!(got[1].1.is_empty());
    // Bad locality or tags: the member is kept without them, and reported.
    assert!(got[2].1.is_empty());
    let notes: Vec<&str> = list.problems.iter().filter(|p| !p.skipped).map(|p| p.problem.as_str()).collect();
    assert_eq!(notes.len(), 2, "{:?}", list.problems);
}

#[test]
fn etcd_v3_reads_locality_and_tags_from_the_upsync_value() {
    let kv = |k: &str, v: &str| {
        json!({"key": base64::encode(k.as_bytes()), "value": base64::encode(v.as_bytes()),
               "mod_revision": "5", "create_revision": "2", "version": "1"})
    };
    let body = json!({"header": {"revision": "9"}, "count": "3", "kvs": [
        kv("/u/10.0.0.1:80", ZONED), kv("/u/10.0.0.2:80", PLAIN), kv("/u/10.0.0.3:80", BAD)]})
    .to_string();
    let (list, _) = EtcdV3Adapter::new("/u/").parse_fetch(body.as_bytes()).unwrap();
    expect_upsync_values(&list);
}

#[test]
fn etcd_v2_reads_locality_and_tags_from_the_upsync_value() {
    let node = |k: &str, v: &str| json!({"key": k, "value": v, "modifiedIndex": 4, "createdIndex": 4});
    let body = json!({"action": "get", "node": {"key": "/u", "dir": true, "nodes": [
        node("/u/10.0.0.1:80", ZONED), node("/u/10.0.0.2:80", PLAIN), node("/u/10.0.0.3:80", BAD)]}})
    .to_string();
    let headers = vec![("X-Etcd-Index".to_string(), "9".to_string())];
    let mut a = EtcdV2Adapter::new("/u/", 1000);
    expect_upsync_values(&members(a.parse(&HttpResponse::new(Some(200), &headers, body.as_bytes()))));
}

fn consul(query: ConsulQuery) -> ConsulAdapter {
    ConsulAdapter::new(query, None, Consistency::Default, 1000)
}

fn consul_index() -> Vec<(String, String)> {
    vec![("X-Consul-Index".to_string(), "7".to_string())]
}

#[test]
fn consul_kv_reads_locality_and_tags_from_the_upsync_value() {
    let entry = |k: &str, v: &str| json!({"Key": k, "Value": base64::encode(v.as_bytes()), "Flags": 0});
    let body =
        json!([entry("u/10.0.0.1:80", ZONED), entry("u/10.0.0.2:80", PLAIN), entry("u/10.0.0.3:80", BAD)]).to_string();
    let mut a = consul(ConsulQuery::Kv { prefix: "u/".into() });
    let headers = consul_index();
    expect_upsync_values(&members(a.parse(&HttpResponse::new(Some(200), &headers, body.as_bytes()))));
}

#[test]
fn consul_catalog_reads_service_locality_then_service_meta_then_node_meta() {
    let body = json!([
        // Consul 1.17+: the service's own Locality; tags and meta become tags.
        {"Node": "n1", "Address": "10.0.0.1", "NodeMeta": {"zone": "node-zone", "sub_zone": "rack-1"},
         "ServiceID": "web-1", "ServicePort": 80, "ServiceAddress": "",
         "ServiceLocality": {"Region": "us-east-1", "Zone": "us-east-1a"},
         "ServiceTags": ["canary", "weight=3", "down", "version=v2"],
         "ServiceMeta": {"zone": "meta-zone", "team": "payments"}},
        // No Locality: service meta, then node meta per field.
        {"Node": "n2", "Address": "10.0.0.2", "NodeMeta": {"zone": "node-zone", "region": "us-east-1"},
         "ServiceID": "web-2", "ServicePort": 80, "ServiceMeta": {"zone": "us-east-1b"}, "ServiceTags": []},
        // Nothing at all.
        {"Node": "n3", "Address": "10.0.0.3", "ServiceID": "web-3", "ServicePort": 80}
    ])
    .to_string();
    let mut a = consul(ConsulQuery::Catalog { service: "web".into() });
    let headers = consul_index();
    let list = members(a.parse(&HttpResponse::new(Some(200), &headers, body.as_bytes())));
    let got = metas(&list);
    assert_eq!(got[0].1.locality, loc("us-east-1", "us-east-1a", "rack-1"));
    // weight= and down are upsync attributes, not tags; meta's locality keys neither.
    assert_eq!(got[0].1.tags, tags(&[("canary", "true"), ("team", "payments"), ("version", "v2")]));
    assert_eq!(list.members.iter().next().map(|m| (m.attrs.weight, m.attrs.down)), Some((3, true)));
    assert_eq!(got[1].1.locality, loc("us-east-1", "us-east-1b", ""));
    assert!(got[1].1.tags.is_empty());
    assert!(got[2].1.is_empty());
    assert!(list.problems.is_empty(), "{:?}", list.problems);
}

#[test]
fn consul_health_reads_service_and_node_meta() {
    let body = json!([
        {"Node": {"Node": "n1", "Address": "10.0.0.1", "Meta": {"region": "eu", "zone": "eu-1"}},
         "Service": {"ID": "web-1", "Port": 80, "Address": "", "Tags": ["backup", "stage=blue"],
                     "Meta": {"sub_zone": "r2"}, "Locality": {"Zone": "eu-1c"}},
         "Checks": [{"Status": "passing"}]},
        {"Node": {"Node": "n2", "Address": "10.0.0.2", "Meta": {"zone": "x".repeat(200)}},
         "Service": {"ID": "web-2", "Port": 80, "Tags": null, "Meta": null},
         "Checks": []}
    ])
    .to_string();
    let mut a = consul(ConsulQuery::Health { service: "web".into(), passing_only: true });
    let headers = consul_index();
    let list = members(a.parse(&HttpResponse::new(Some(200), &headers, body.as_bytes())));
    let got = metas(&list);
    assert_eq!(got[0].1.locality, loc("eu", "eu-1c", "r2"));
    assert_eq!(got[0].1.tags, tags(&[("stage", "blue")]));
    assert!(list.members.iter().next().is_some_and(|m| m.attrs.backup));
    // An over-long node zone is left out and reported; the member stays.
    assert!(got[1].1.is_empty());
    assert_eq!(list.problems.len(), 1, "{:?}", list.problems);
    assert!(list.problems[0].problem.contains("node meta zone is longer than 128 bytes"), "{:?}", list.problems);
}

#[test]
fn nacos_reads_metadata_then_the_cluster_name() {
    let host = |ip: &str, cluster: &str, metadata: Value| {
        json!({"instanceId": ip, "ip": ip, "port": 80, "weight": 1.0, "healthy": true, "enabled": true,
               "clusterName": cluster, "serviceName": "DEFAULT_GROUP@@web", "metadata": metadata})
    };
    let body = json!({"name": "DEFAULT_GROUP@@web", "hosts": [
        host("10.0.0.1", "zone-b", json!({"canary": "true", "backup": "false", "region": "cn-east"})),
        host("10.0.0.2", "zone-b", json!({"zone": "zone-c", "sub_zone": "rack9", "max_fails": "3"})),
        host("10.0.0.3", "DEFAULT", json!({"version": "1.2"})),
    ]})
    .to_string();
    let list = NacosAdapter::parse_list(body.as_bytes()).unwrap();
    let got = metas(&list);
    assert_eq!(got[0].1.locality, loc("cn-east", "zone-b", ""));
    assert_eq!(got[0].1.tags, tags(&[("canary", "true")]), "backup is an attribute, region the locality");
    assert_eq!(got[1].1.locality, loc("", "zone-c", "rack9"), "metadata zone wins over clusterName");
    assert!(got[1].1.tags.is_empty());
    assert_eq!(got[2].1.locality, Locality::default(), "Nacos's DEFAULT cluster says nothing about where");
    assert_eq!(got[2].1.tags, tags(&[("version", "1.2")]));
    assert!(list.problems.is_empty(), "{:?}", list.problems);
}

#[test]
fn eureka_reads_metadata_then_the_aws_availability_zone() {
    let instance = |ip: &str, dc: Value, metadata: Value| {
        json!({"instanceId": ip, "hostName": ip, "app": "WEB", "ipAddr": ip, "status": "UP",
               "port": {"$": 80, "@enabled": "true"}, "securePort": {"$": 443, "@enabled": "false"},
               "dataCenterInfo": dc, "metadata": metadata})
    };
    let amazon = |az: &str| {
        json!({"@class": "com.netflix.appinfo.AmazonInfo", "name": "Amazon",
               "metadata": {"availability-zone": az, "instance-id": "i-1"}})
    };
    let own = json!({"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"});
    let body = json!({"application": {"name": "WEB", "instance": [
        instance("10.0.0.1", amazon("us-east-1a"), json!({"weight": "2", "canary": "true"})),
        instance("10.0.0.2", amazon("us-east-1b"), json!({"zone": "spring-zone", "region": "us-east-1"})),
        instance("10.0.0.3", own, json!({"management.port": "8081"})),
    ]}})
    .to_string();
    let list = EurekaAdapter::parse_application(body.as_bytes()).unwrap();
    let got = metas(&list);
    assert_eq!(got[0].1.locality, loc("", "us-east-1a", ""));
    assert_eq!(got[0].1.tags, tags(&[("canary", "true")]), "weight is an attribute");
    assert_eq!(list.members.iter().next().map(|m| m.attrs.weight), Some(2));
    assert_eq!(got[1].1.locality, loc("us-east-1", "spring-zone", ""), "metadata zone wins");
    assert_eq!(got[2].1.locality, Locality::default());
    assert_eq!(got[2].1.tags, tags(&[("management.port", "8081")]));
    assert!(list.problems.is_empty(), "{:?}", list.problems);
}
