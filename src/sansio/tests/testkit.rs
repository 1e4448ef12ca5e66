//! Test support shared by the core's test modules: a scripted etcd v3
//! JSON gateway.

use crate::sansio::registry::HttpRequest;
use crate::sansio::util::base64;
use serde_json::{json, Value};

pub const PREFIX: &str = "/upstreams/web/";

/// A scripted etcd: a map of members with revisions, answering range
/// requests the way the JSON gateway does.
#[derive(Default)]
pub struct EtcdScript {
    kvs: Vec<(String, String, i64)>,
    revision: i64,
}

impl EtcdScript {
    pub fn new() -> Self {
        EtcdScript { kvs: Vec::new(), revision: 1 }
    }

    pub fn put(&mut self, addr: &str, value: &str) {
        self.put_key(&format!("{PREFIX}{addr}"), value);
    }
    pub fn put_key(&mut self, key: &str, value: &str) {
        self.revision += 1;
        let key = key.to_string();
        self.kvs.retain(|(k, _, _)| *k != key);
        self.kvs.push((key, value.to_string(), self.revision));
        self.kvs.sort();
    }
    pub fn delete(&mut self, addr: &str) {
        self.revision += 1;
        let key = format!("{PREFIX}{addr}");
        self.kvs.retain(|(k, _, _)| *k != key);
    }
    pub fn touch_elsewhere(&mut self) {
        self.revision += 1;
    }
    pub fn answer(&self, request: &HttpRequest) -> Vec<u8> {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let prefix = String::from_utf8(base64::decode(body["key"].as_str().unwrap()).unwrap()).unwrap();
        let mut kvs: Vec<&(String, String, i64)> = self.kvs.iter().filter(|kv| kv.0.starts_with(&prefix)).collect();
        let count = kvs.len();
        if body.get("sort_target").is_some() {
            kvs.sort_by_key(|kv| std::cmp::Reverse(kv.2));
            kvs.truncate(1);
        }
        let keys_only = body.get("keys_only").is_some();
        let list: Vec<Value> = kvs
            .iter()
            .map(|(k, v, rev)| {
                let mut kv = json!({"key": base64::encode(k.as_bytes()), "mod_revision": rev.to_string()});
                if !keys_only && !v.is_empty() {
                    kv["value"] = json!(base64::encode(v.as_bytes()));
                }
                kv
            })
            .collect();
        let mut answer = json!({"header": {"revision": self.revision.to_string()}});
        if !list.is_empty() {
            answer["kvs"] = json!(list);
            answer["count"] = json!(count.to_string());
        }
        answer.to_string().into_bytes()
    }
}
