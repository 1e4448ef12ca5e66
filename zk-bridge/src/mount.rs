//! One mount's state: what was read from ZooKeeper under its path, the
//! Consul KV entries it maps to, and its `X-Consul-Index`. No I/O here.
//!
//! The index is derived from zxids and only grows: the first read uses
//! the highest zxid seen under the path (the path's own czxid, mzxid and
//! pzxid, every child's czxid and mzxid); afterwards it moves only when
//! the served entries change, to `max(highest zxid seen, previous + 1)`.
//! So a blocking query wakes exactly when its answer differs, and the
//! index never goes back, not even when ZooKeeper's zxids do (an
//! ensemble rebuilt from scratch).

use crate::config::MountConfig;
use crate::layout::{map_znode, Mapped};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How many problems a mount keeps for its status (the newest ones).
pub const MAX_PROBLEMS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub czxid: u64,
    pub mzxid: u64,
}

impl Stamp {
    pub fn new(czxid: i64, mzxid: i64) -> Self {
        Stamp { czxid: u64::try_from(czxid).unwrap_or(0), mzxid: u64::try_from(mzxid).unwrap_or(0) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Member {
        addr: String,
        value: Vec<u8>,
        stamp: Stamp,
    },
    Filtered,
    Problem(String),
    /// Data over `max_value_bytes`: nothing kept but its size.
    Oversize(usize),
}

/// One Consul KV entry as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl KvEntry {
    /// The entry as Consul's JSON: what `render` must write.
    #[cfg(test)]
    pub fn to_json(&self) -> Value {
        let value = if self.value.is_empty() {
            Value::Null
        } else {
            Value::from(base64::engine::general_purpose::STANDARD.encode(&self.value))
        };
        serde_json::json!({
            "LockIndex": 0,
            "Key": self.key,
            "Flags": 0,
            "Value": value,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        })
    }
}

/// Renders entries as Consul's `GET /v1/kv/<prefix>?recurse` body, the
/// same JSON as `KvEntry::to_json` (keys in that order), written straight
/// into one buffer: a JSON tree of 10,000 entries would take ~8 MiB on
/// the way.
pub fn render(entries: &[KvEntry]) -> Bytes {
    use std::fmt::Write as _;
    let b64 = &base64::engine::general_purpose::STANDARD;
    let per_entry: usize = entries.iter().map(|e| e.key.len() + e.value.len() * 4 / 3 + 110).sum();
    let mut out = String::with_capacity(per_entry + 2);
    out.push('[');
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let key = Value::from(e.key.as_str()).to_string();
        let _ = write!(
            out,
            r#"{{"CreateIndex":{},"Flags":0,"Key":{key},"LockIndex":0,"ModifyIndex":{},"Value":"#,
            e.create_index, e.modify_index
        );
        if e.value.is_empty() {
            out.push_str("null");
        } else {
            out.push('"');
            b64.encode_string(&e.value, &mut out);
            out.push('"');
        }
        out.push('}');
    }
    out.push(']');
    Bytes::from(out)
}

/// What a mount serves right now.
#[derive(Debug, Clone)]
pub struct Served {
    pub index: u64,
    pub entries: Arc<Vec<KvEntry>>,
    /// `render(&entries)`, rendered once per change.
    pub body: Bytes,
    /// Why the mount cannot be served (a limit passed, the path is not
    /// readable): the bridge answers 503 with this text.
    pub refused: Option<String>,
    pub znodes: usize,
    pub problems: Vec<String>,
}

/// A child znode as read: its name, and its data and zxids (None: gone).
pub type ChildRead = (String, Option<(Vec<u8>, Stamp)>);

/// The result of reading every child of the mount path.
#[derive(Debug, Default)]
pub struct FullRead {
    /// The mount path's own zxids; None when the path does not exist.
    pub root: Option<(i64, i64, i64)>,
    pub children: Vec<ChildRead>,
}

#[derive(Debug)]
pub struct MountState {
    pub config: MountConfig,
    nodes: BTreeMap<String, Node>,
    root_zxid: u64,
    /// Set while the path has more children than `max_znodes`.
    too_many: Option<usize>,
    /// Set while the path cannot be read.
    unreadable: Option<String>,
    /// Why the mount is not served, as last computed.
    last_refused: Option<String>,
    index: u64,
    entries: Arc<Vec<KvEntry>>,
    body: Bytes,
    problems: Vec<String>,
}

fn zxid(z: i64) -> u64 {
    u64::try_from(z).unwrap_or(0)
}

impl MountState {
    pub fn new(config: MountConfig) -> Self {
        MountState {
            config,
            nodes: BTreeMap::new(),
            root_zxid: 0,
            too_many: None,
            unreadable: None,
            last_refused: None,
            index: 0,
            entries: Arc::new(Vec::new()),
            body: render(&[]),
            problems: Vec::new(),
        }
    }

    /// Carries over what a previous session served, so the index keeps
    /// growing from there and an unchanged mount keeps its index.
    pub fn resume_from(&mut self, previous: &Served) {
        self.index = previous.index;
        self.entries = previous.entries.clone();
        self.body = previous.body.clone();
    }

    #[cfg(test)]
    pub fn index(&self) -> u64 {
        self.index
    }

    /// True while only a full read can tell the state (a limit passed).
    pub fn needs_full_read(&self) -> bool {
        self.too_many.is_some() || self.unreadable.is_some()
    }

    fn note(&mut self, problem: String) {
        tracing::warn!(mount = %self.config.path, "{problem}");
        if self.problems.len() >= MAX_PROBLEMS {
            self.problems.remove(0);
        }
        self.problems.push(problem);
    }

    fn node_for(&mut self, name: &str, data: Vec<u8>, stamp: Stamp) -> Node {
        if data.len() > self.config.max_value_bytes {
            return Node::Oversize(data.len());
        }
        match map_znode(&self.config.layout, name, &data) {
            Ok(Mapped::Member { addr, value }) => Node::Member { addr, value, stamp },
            Ok(Mapped::Filtered) => Node::Filtered,
            Err(why) => Node::Problem(why),
        }
    }

    fn set_node(&mut self, name: String, node: Node) {
        let changed = self.nodes.get(&name) != Some(&node);
        if changed {
            if let Node::Problem(why) = &node {
                self.note(format!("znode {}: {why}; left out", self.child_path(&name)));
            }
        }
        self.nodes.insert(name, node);
    }

    pub fn child_path(&self, name: &str) -> String {
        if self.config.path == "/" {
            format!("/{name}")
        } else {
            format!("{}/{name}", self.config.path)
        }
    }

    /// The path has `count` children, more than `max_znodes`: nothing is
    /// kept and the mount is refused until a full read finds fewer.
    pub fn set_too_many(&mut self, count: usize) {
        self.too_many = Some(count);
        self.nodes.clear();
        self.refresh();
    }

    /// The path cannot be read (e.g. its ACL refuses the bridge).
    pub fn set_refused(&mut self, why: String) {
        self.unreadable = Some(why);
        self.refresh();
    }

    /// Replaces everything with a full read.
    pub fn apply_full(&mut self, read: FullRead) {
        self.too_many = None;
        self.unreadable = None;
        self.root_zxid = read.root.map_or(0, |(c, m, p)| zxid(c).max(zxid(m)).max(zxid(p)));
        let old = std::mem::take(&mut self.nodes);
        for (name, got) in read.children {
            if let Some((data, stamp)) = got {
                let node = self.node_for(&name, data, stamp);
                // Problems are logged when they are new or changed.
                if let Some(prev) = old.get(&name) {
                    self.nodes.insert(name.clone(), prev.clone());
                }
                self.set_node(name, node);
            }
        }
        if self.nodes.len() > self.config.max_znodes {
            let n = self.nodes.len();
            self.set_too_many(n);
            return;
        }
        self.refresh();
    }

    /// Applies re-reads of single children (None: the znode is gone).
    pub fn apply_children(&mut self, reads: Vec<ChildRead>) {
        for (name, got) in reads {
            match got {
                None => {
                    self.nodes.remove(&name);
                }
                Some((data, stamp)) => {
                    let node = self.node_for(&name, data, stamp);
                    self.set_node(name, node);
                }
            }
        }
        if self.nodes.len() > self.config.max_znodes {
            let n = self.nodes.len();
            self.set_too_many(n);
            return;
        }
        self.refresh();
    }

    /// Recomputes the entries, and the index when they changed.
    fn refresh(&mut self) {
        let refused = if let Some(why) = &self.unreadable {
            Some(why.clone())
        } else if let Some(n) = self.too_many {
            Some(format!(
                "{n} znodes under {}, over max_znodes = {}; not served",
                self.config.path, self.config.max_znodes
            ))
        } else {
            let oversize: Vec<(&String, usize)> = self
                .nodes
                .iter()
                .filter_map(|(name, n)| if let Node::Oversize(len) = n { Some((name, *len)) } else { None })
                .collect();
            oversize.first().map(|(name, len)| {
                format!(
                    "znode {} holds {len} bytes, over max_value_bytes = {}{}; not served",
                    self.child_path(name),
                    self.config.max_value_bytes,
                    if oversize.len() > 1 { format!(" (and {} more)", oversize.len() - 1) } else { String::new() }
                )
            })
        };
        if let Some(why) = &refused {
            if self.refused_reason_logged() != Some(why) {
                tracing::error!(mount = %self.config.path, "{why} (answering 503)");
            }
        }
        // One entry per address: the newest registration wins (an
        // instance that re-registered before its old ephemeral znode
        // expired).
        let mut by_addr: BTreeMap<&str, (&Vec<u8>, &Stamp, &String)> = BTreeMap::new();
        let mut duplicates = Vec::new();
        for (name, node) in &self.nodes {
            if let Node::Member { addr, value, stamp } = node {
                match by_addr.get(addr.as_str()) {
                    Some((_, s, other)) if s.czxid >= stamp.czxid => duplicates.push((name.clone(), (*other).clone())),
                    Some((_, _, other)) => {
                        duplicates.push(((*other).clone(), name.clone()));
                        by_addr.insert(addr, (value, stamp, name));
                    }
                    None => {
                        by_addr.insert(addr, (value, stamp, name));
                    }
                }
            }
        }
        let entries: Vec<KvEntry> = by_addr
            .into_iter()
            .map(|(addr, (value, stamp, _))| KvEntry {
                key: format!("{}{addr}", self.config.prefix),
                value: value.clone(),
                create_index: stamp.czxid,
                modify_index: stamp.mzxid,
            })
            .collect();
        for (dropped, kept) in duplicates {
            let msg = format!(
                "znodes {} and {} name the same address; the newer ({}) is served",
                self.child_path(&dropped),
                self.child_path(&kept),
                self.child_path(&kept)
            );
            if !self.problems.contains(&msg) {
                self.note(msg);
            }
        }
        let seen = self
            .nodes
            .values()
            .filter_map(|n| if let Node::Member { stamp, .. } = n { Some(stamp.czxid.max(stamp.mzxid)) } else { None })
            .fold(self.root_zxid, u64::max);
        let entries_changed = entries != *self.entries;
        let changed = entries_changed || refused.is_some() != self.refused_now();
        self.index = next_index(self.index, seen, changed);
        if entries_changed {
            self.body = render(&entries);
            self.entries = Arc::new(entries);
        }
        self.last_refused = refused;
    }

    fn refused_reason_logged(&self) -> Option<&String> {
        self.last_refused.as_ref()
    }

    fn refused_now(&self) -> bool {
        self.last_refused.is_some()
    }

    pub fn served(&self) -> Served {
        Served {
            index: self.index,
            entries: self.entries.clone(),
            body: self.body.clone(),
            refused: self.last_refused.clone(),
            znodes: self.nodes.len(),
            problems: self.problems.clone(),
        }
    }
}

/// The index rule of this module's documentation.
pub fn next_index(previous: u64, highest_zxid: u64, changed: bool) -> u64 {
    if previous == 0 {
        highest_zxid.max(1)
    } else if changed {
        highest_zxid.max(previous.saturating_add(1))
    } else {
        previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Layout;

    fn cfg(layout: Layout) -> MountConfig {
        MountConfig {
            path: "/upstreams/web".into(),
            prefix: "upstreams/web/".into(),
            layout,
            max_znodes: 3,
            max_value_bytes: 100,
        }
    }

    fn child(name: &str, data: &str, c: i64, m: i64) -> ChildRead {
        (name.to_string(), Some((data.as_bytes().to_vec(), Stamp::new(c, m))))
    }

    fn keys(s: &MountState) -> Vec<String> {
        s.served().entries.iter().map(|e| e.key.clone()).collect()
    }

    #[test]
    fn render_is_the_json_of_the_entries() {
        let entries = vec![
            KvEntry { key: "p/a\"b:1".into(), value: b"{}".to_vec(), create_index: 1, modify_index: 2 },
            KvEntry { key: "p/c:1".into(), value: Vec::new(), create_index: 3, modify_index: 4 },
        ];
        let want = Value::Array(entries.iter().map(KvEntry::to_json).collect()).to_string();
        assert_eq!(String::from_utf8(render(&entries).to_vec()).unwrap(), want);
        assert_eq!(&render(&[])[..], b"[]");
    }

    #[test]
    fn index_grows_only_when_entries_change() {
        assert_eq!(next_index(0, 0, true), 1);
        assert_eq!(next_index(0, 90, false), 90);
        assert_eq!(next_index(90, 95, false), 90);
        assert_eq!(next_index(90, 95, true), 95);
        // zxids went back (a rebuilt ensemble): still grows
        assert_eq!(next_index(90, 3, true), 91);
    }

    #[test]
    fn full_then_incremental_reads() {
        let mut s = MountState::new(cfg(Layout::Upsync));
        s.apply_full(FullRead {
            root: Some((2, 2, 7)),
            children: vec![child("10.0.0.1:80", r#"{"weight":2}"#, 5, 5), child("10.0.0.2:80", "{}", 7, 7)],
        });
        assert_eq!(s.index(), 7);
        assert_eq!(keys(&s), ["upstreams/web/10.0.0.1:80", "upstreams/web/10.0.0.2:80"]);
        let body: Value = serde_json::from_slice(&s.served().body).unwrap();
        assert_eq!(body[0]["Value"], "eyJ3ZWlnaHQiOjJ9");
        assert_eq!(body[1]["Value"], "e30=");
        assert_eq!((body[0]["CreateIndex"].as_u64(), body[0]["ModifyIndex"].as_u64()), (Some(5), Some(5)));
        // A data change moves the index to its mzxid.
        s.apply_children(vec![child("10.0.0.1:80", r#"{"weight":3}"#, 5, 9)]);
        assert_eq!(s.index(), 9);
        // The same data read again (an event for a write of equal bytes): unchanged.
        s.apply_children(vec![child("10.0.0.1:80", r#"{"weight":3}"#, 5, 9)]);
        assert_eq!(s.index(), 9);
        // A deletion carries no zxid of its own: previous + 1.
        s.apply_children(vec![("10.0.0.2:80".into(), None)]);
        assert_eq!((s.index(), keys(&s).len()), (10, 1));
        // An empty value is Consul's null.
        s.apply_children(vec![child("10.0.0.3:80", "", 11, 11)]);
        let body: Value = serde_json::from_slice(&s.served().body).unwrap();
        assert_eq!(body[1]["Value"], Value::Null);
    }

    #[test]
    fn limits_refuse_the_mount_and_recover() {
        let mut s = MountState::new(cfg(Layout::Upsync));
        s.apply_full(FullRead { root: Some((1, 1, 1)), children: vec![child("a:1", "{}", 2, 2)] });
        let i0 = s.index();
        s.apply_children(vec![child("b:1", "{}", 3, 3), child("c:1", "{}", 4, 4), child("d:1", "{}", 5, 5)]);
        let refused = s.served().refused.unwrap();
        assert!(refused.contains("4 znodes under /upstreams/web, over max_znodes = 3"), "{refused}");
        assert!(s.needs_full_read());
        assert_eq!(s.served().znodes, 0, "nothing kept beyond the limit");
        assert!(s.index() > i0);
        s.apply_full(FullRead { root: Some((1, 1, 6)), children: vec![child("a:1", "{}", 2, 2)] });
        assert_eq!(s.served().refused, None);
        // One value over max_value_bytes refuses the whole mount (no
        // member is served with half its attributes).
        s.apply_children(vec![child("b:1", &"x".repeat(101), 7, 7)]);
        let refused = s.served().refused.unwrap();
        assert!(refused.contains("znode /upstreams/web/b:1 holds 101 bytes, over max_value_bytes = 100"), "{refused}");
        s.apply_children(vec![("b:1".into(), None)]);
        assert_eq!(s.served().refused, None);
        assert_eq!(keys(&s), ["upstreams/web/a:1"]);
    }

    #[test]
    fn duplicates_keep_the_newest_registration_and_problems_are_reported() {
        let mut s = MountState::new(MountConfig {
            max_znodes: 10,
            max_value_bytes: 1000,
            ..cfg(Layout::Curator { use_ssl_port: false, metadata: false })
        });
        let inst = |port: u16, w: u32| {
            format!(r#"{{"address":"10.0.0.1","port":{port},"payload":{{"metadata":{{"weight":"{w}"}}}}}}"#)
        };
        s.apply_full(FullRead {
            root: Some((1, 1, 9)),
            children: vec![
                child("old", &inst(80, 1), 3, 3),
                child("new", &inst(80, 5), 8, 8),
                child("bad", "{}", 9, 9),
            ],
        });
        let served = s.served();
        assert_eq!(served.entries.len(), 1);
        assert_eq!(served.entries[0].key, "upstreams/web/10.0.0.1:80");
        assert_eq!(served.entries[0].create_index, 8);
        let v: Value = serde_json::from_slice(&served.entries[0].value).unwrap();
        assert_eq!(v["weight"], 5);
        assert_eq!(served.problems.len(), 2, "{:?}", served.problems);
        assert!(served.problems.iter().any(|p| p.contains("/upstreams/web/bad") && p.contains("no \"address\"")));
        assert!(served.problems.iter().any(|p| p.contains("the newer (/upstreams/web/new) is served")));
        // A missing path is an empty mount, not an error.
        s.apply_full(FullRead { root: None, children: vec![] });
        assert!(s.served().entries.is_empty());
        assert_eq!(s.served().refused, None);
    }
}
