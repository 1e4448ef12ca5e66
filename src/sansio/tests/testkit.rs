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
        if request.path == "/v3/kv/txn" {
            // Range reads only, as the gateway answers them.
            let responses: Vec<Value> = body["success"]
                .as_array()
                .unwrap()
                .iter()
                .map(|op| {
                    let range = HttpRequest {
                        method: "POST",
                        path: "/v3/kv/range".into(),
                        headers: Vec::new(),
                        body: op["request_range"].to_string().into_bytes(),
                    };
                    let mut answer: Value = serde_json::from_slice(&self.answer(&range)).unwrap();
                    answer.as_object_mut().unwrap().remove("header");
                    json!({ "response_range": answer })
                })
                .collect();
            let answer = json!({"header": {"revision": self.revision.to_string()}, "succeeded": true,
                "responses": responses});
            return answer.to_string().into_bytes();
        }
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

/// Status, headers, body.
pub type V2Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// A scripted etcd v2 store: keys with their modified index, directories,
/// and the event history long polls (`?wait=true&waitIndex=`) read from.
#[derive(Default)]
pub struct EtcdV2Script {
    /// Key → (value, modified index).
    keys: std::collections::BTreeMap<String, (String, u64)>,
    /// Directories, made by the puts under them (etcd v2 keeps them when emptied).
    dirs: std::collections::BTreeSet<String>,
    index: u64,
    /// (index, action, key, value, dir), oldest first.
    history: Vec<(u64, &'static str, String, Option<String>, bool)>,
    /// Events at or before this index are gone (etcd keeps the last 1000).
    cleared_to: u64,
}

impl EtcdV2Script {
    pub fn new() -> Self {
        EtcdV2Script { index: 1, ..Default::default() }
    }

    pub fn put(&mut self, key: &str, value: &str) {
        self.index += 1;
        let mut dir = key;
        while let Some((parent, _)) = dir.rsplit_once('/') {
            if parent.is_empty() {
                break;
            }
            self.dirs.insert(parent.to_string());
            dir = parent;
        }
        self.keys.insert(key.to_string(), (value.to_string(), self.index));
        self.history.push((self.index, "set", key.to_string(), Some(value.to_string()), false));
    }

    pub fn delete(&mut self, key: &str) {
        self.index += 1;
        self.keys.remove(key);
        self.history.push((self.index, "delete", key.to_string(), None, false));
    }

    /// `rm -r` of a directory: one event, for the directory.
    pub fn delete_dir(&mut self, dir: &str) {
        self.index += 1;
        let under = format!("{dir}/");
        self.keys.retain(|k, _| !k.starts_with(&under));
        self.dirs.retain(|d| d != dir && !d.starts_with(&under));
        self.history.push((self.index, "delete", dir.to_string(), None, true));
    }

    /// Forgets the history up to now (a long poll from before gets 401).
    pub fn clear_history(&mut self) {
        self.cleared_to = self.index;
        self.history.clear();
    }

    pub fn index(&self) -> u64 {
        self.index
    }

    fn node(&self, dir: &str) -> Value {
        let under = format!("{dir}/");
        let mut nodes: Vec<Value> = self
            .dirs
            .iter()
            .filter(|d| d.strip_prefix(&under).is_some_and(|rest| !rest.contains('/')))
            .map(|d| self.node(d))
            .collect();
        for (k, (v, i)) in &self.keys {
            if k.strip_prefix(&under).is_some_and(|rest| !rest.contains('/')) {
                nodes.push(json!({"key": k, "value": v, "modifiedIndex": i, "createdIndex": i}));
            }
        }
        let mut node = json!({"key": dir, "dir": true});
        if !nodes.is_empty() {
            node["nodes"] = json!(nodes);
        }
        node
    }

    /// The answer to `request`: status, `X-Etcd-Index`, body; `None` for a
    /// long poll with no event yet (it stays pending).
    pub fn answer(&self, request: &HttpRequest) -> Option<V2Answer> {
        let (path, query) = request.path.split_once('?').unwrap_or((request.path.as_str(), ""));
        let dir = path.strip_prefix("/v2/keys").unwrap().trim_end_matches('/').to_string();
        let headers = vec![("X-Etcd-Index".to_string(), self.index.to_string())];
        let wait_index = query.split('&').find_map(|p| p.strip_prefix("waitIndex=")).map(|i| i.parse::<u64>().unwrap());
        if let Some(from) = wait_index {
            if from <= self.cleared_to {
                let body = json!({"errorCode": 401, "message": "The event in requested index is outdated and cleared",
                    "index": self.index});
                return Some((400, headers, body.to_string().into_bytes()));
            }
            let under = format!("{dir}/");
            let (i, action, key, value, is_dir) =
                self.history.iter().find(|e| e.0 >= from && (e.2.starts_with(&under) || e.2 == dir))?;
            let mut node = json!({"key": key, "modifiedIndex": i, "createdIndex": i});
            if let Some(v) = value {
                node["value"] = json!(v);
            }
            if *is_dir {
                node["dir"] = json!(true);
            }
            return Some((200, headers, json!({"action": action, "node": node}).to_string().into_bytes()));
        }
        if !self.dirs.contains(&dir) {
            let body = json!({"errorCode": 100, "message": "Key not found", "cause": dir, "index": self.index});
            return Some((404, headers, body.to_string().into_bytes()));
        }
        Some((200, headers, json!({"action": "get", "node": self.node(&dir)}).to_string().into_bytes()))
    }
}
