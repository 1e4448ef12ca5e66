//! What every registry adapter provides: requests built from the adapter's
//! own cursor, and answers turned into a [`Poll`]. Adapters are pure: no
//! I/O, no clock. The sync machine ([`crate::sansio::sync::machine`]) drives them.

pub mod consul;
pub mod etcd_v2;
pub mod etcd_v3;
pub mod etcd_watch;
pub mod eureka;
mod http;
pub mod kv_layout;
pub mod listing;
pub mod nacos;

use crate::sansio::model::member::Member;
use crate::sansio::model::member_set::MemberSet;
pub use http::{HttpRequest, HttpResponse};
use serde_json::{Map, Value};

/// A registry entry that was skipped or repaired, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryProblem {
    /// The registry's name for the entry (a key, a service id, ...).
    pub key: String,
    pub problem: String,
    /// The entry was dropped (not just given default attributes).
    pub skipped: bool,
}

/// A complete member list read from the registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberList {
    pub members: MemberSet,
    pub problems: Vec<EntryProblem>,
}

/// One service instance as an adapter read it: `Ok(Some)` a member (with
/// notes on what was repaired), `Ok(None)` left out on purpose (not a
/// problem, e.g. a disabled instance), `Err` skipped with the reason.
pub type Instance = Result<Option<(Member, Vec<String>)>, String>;

/// Builds the member list of a service registry from `(key, instance)`
/// pairs: repairs and skips become problems, and an address listed twice
/// keeps its first instance.
pub fn member_list(instances: impl IntoIterator<Item = (String, Instance)>) -> MemberList {
    member_list_with(instances, "address registered by more than one instance; the first wins")
}

/// [`member_list`] with the problem reported for each dropped duplicate
/// worded by the caller: a key/value layout says "key" where a service
/// registry says "instance".
pub fn member_list_with(
    instances: impl IntoIterator<Item = (String, Instance)>,
    duplicate_message: &str,
) -> MemberList {
    let mut problems = Vec::new();
    let mut members = Vec::new();
    for (key, instance) in instances {
        match instance {
            Ok(Some((member, notes))) => {
                if let Some(why) = member.addr.not_a_member() {
                    let problem = format!("{} is {why}: not a member", member.addr);
                    problems.push(EntryProblem { key, problem, skipped: true });
                    continue;
                }
                problems.extend(notes.into_iter().map(|problem| EntryProblem {
                    key: key.clone(),
                    problem,
                    skipped: false,
                }));
                members.push(member);
            }
            Ok(None) => {}
            Err(problem) => problems.push(EntryProblem { key, problem, skipped: true }),
        }
    }
    let (members, duplicates) = MemberSet::from_members(members);
    for d in duplicates {
        problems.push(EntryProblem { key: d.to_string(), problem: duplicate_message.to_string(), skipped: true });
    }
    MemberList { members, problems }
}

/// A registry's text answer as shown in an error: trimmed, at most 200 characters.
pub fn short_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).trim().chars().take(200).collect()
}

/// A registry error message in a JSON answer that is not the expected
/// list (Spring's error body, Nacos 2's `{"code","message","data"}`), at
/// most 200 characters.
pub fn error_text(root: &Map<String, Value>) -> Option<String> {
    ["message", "error"]
        .iter()
        .find_map(|k| root.get(*k).and_then(Value::as_str))
        .map(|m| m.chars().take(200).collect())
}

/// `GET path` asking for JSON.
pub fn get_json(path: String) -> HttpRequest {
    HttpRequest {
        method: "GET",
        path,
        headers: vec![("accept".to_string(), "application/json".to_string())],
        body: Vec::new(),
    }
}

/// What an answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Nothing changed since the last list.
    Unchanged,
    /// Something changed; the adapter's next request (sent at once) reads it.
    Changed,
    /// The full member list.
    Members(MemberList),
    /// The prefix or service does not exist (distinct from existing with
    /// no members, though the sync machine treats both as an empty list).
    NotFound,
    /// The full member list after a change the answer described (an etcd
    /// v2 long-poll event), applied to the last list the adapter read; the
    /// same list a full read would give.
    Delta(MemberList),
}

/// What a message of the registry's watch (etcd v3 gRPC Watch) means for
/// an upstream's member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// Nothing to do: the watch is in place and follows on from the last
    /// read, or the changes are already in the list.
    Nothing,
    /// Ask the registry now (the adapter's next request: a probe or a full read).
    Poll,
    /// The adapter's list cannot be trusted any more; its next request is
    /// a full read, to be sent now.
    Resync(String),
    /// The full member list after the changes the message brought.
    Delta(MemberList),
}

/// Every key under one child of a `discover[]` parent: absolute key, value,
/// `mod_revision` (etcd v3; 0 on etcd v2).
pub type ChildKeys = Vec<(String, Vec<u8>, i64)>;

/// What a `discover[]` parent that reads its children for them read for
/// one child (etcd v2: its full read and its one recursive long poll;
/// etcd v3 without a watch: one transaction of range reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParentNews<'a> {
    /// A full read of the parent at store index `index`: every key under
    /// this child, with its value.
    Read { index: u64, entries: ChildKeys },
    /// One change under this child, the first after the parent's last answer.
    Change(&'a etcd_v2::V2Event),
}

/// A registry protocol.
pub trait RegistryAdapter {
    /// The next request, built from the adapter's cursor.
    fn request(&self) -> HttpRequest;

    /// Reads the answer to the last [`RegistryAdapter::request`].
    fn parse(&mut self, response: &HttpResponse<'_>) -> Result<Poll, AdapterError>;

    /// Forgets the cursor: the next request is a plain full read.
    fn reset(&mut self);

    /// How long the registry may hold the next request before answering
    /// (a blocking query or long poll); 0 for plain polling. The call's
    /// timeout is `timeout_ms` plus this.
    fn hold_ms(&self) -> u64 {
        0
    }

    /// Long-polling adapters are asked again right after an answer that
    /// brought news (the registry paces them by holding the next call);
    /// the others wait `interval_ms` after every answer.
    fn long_polls(&self) -> bool {
        false
    }

    /// A message of the watch on this upstream's prefix (etcd v3 gRPC
    /// Watch). By default only a trigger: poll now.
    fn watch(&mut self, _message: &etcd_watch::WatchResponse) -> Pushed {
        Pushed::Poll
    }

    /// The watch stopped: its stream closed (`garbled: false`), or a
    /// message on it could not be decoded (`garbled: true`: changes may
    /// have been missed, though the watch goes on).
    /// What the upstream's `discover[]` parent read for it, applied as if
    /// it were the answer to this adapter's own read: the member list
    /// after it, or `None` when it cannot be applied (the adapter's cursor
    /// is reset; the parent must read everything again). Only the adapters
    /// of registries whose listing carries the members (etcd v2) take it.
    fn fed(&mut self, _news: ParentNews<'_>) -> Option<Poll> {
        None
    }

    fn watch_ended(&mut self, garbled: bool) -> Pushed {
        if garbled {
            Pushed::Poll
        } else {
            Pushed::Nothing
        }
    }
}

/// Why a registry answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterError {
    /// The body is not JSON at all.
    NotJson(String),
    /// JSON, but not the shape the registry documents.
    BadShape(String),
    /// The registry answered with an error of its own.
    Registry(String),
    /// An HTTP status the adapter cannot use.
    Status(u16),
    /// The host gave no status (an answer cut after its headers).
    NoStatus,
    /// JSON too deep or with too many objects to parse in bounded time.
    TooComplex(String),
}

impl std::fmt::Display for AdapterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdapterError::NotJson(e) => write!(f, "body is not JSON: {e}"),
            AdapterError::BadShape(e) => write!(f, "unexpected response shape: {e}"),
            AdapterError::Registry(e) => write!(f, "registry error: {e}"),
            AdapterError::Status(s) => write!(f, "registry answered HTTP {s}"),
            AdapterError::NoStatus => write!(f, "registry answer had no status (cut short?)"),
            AdapterError::TooComplex(e) => write!(f, "answer refused unparsed: {e}"),
        }
    }
}

use crate::sansio::config::RegistrySpec;
use consul::ConsulAdapter;
use etcd_v2::EtcdV2Adapter;
use etcd_v3::EtcdV3Adapter;
use eureka::EurekaAdapter;
use nacos::NacosAdapter;

/// The deepest JSON nesting a registry answer may have (the documented
/// answers nest less than 10 levels deep).
pub const MAX_JSON_DEPTH: usize = 64;
/// The most JSON objects and arrays an answer may hold: about 60 per KiB
/// at the default 8 MiB `max_body_bytes`, several times what a registry's
/// list of its largest services holds (a Consul health entry has ~8, a
/// Eureka instance ~10).
pub const MAX_JSON_CONTAINERS: usize = 500_000;

/// Refuses, before any parsing, an answer whose JSON would take long to
/// build: the poller runs on Envoy's main thread, and a Value tree of a
/// million tiny objects takes about a second to build natively, more in a
/// wasm runtime. One pass over the bytes, no allocation.
pub fn check_json_budget(body: &[u8]) -> Result<(), AdapterError> {
    let (mut depth, mut containers, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                containers += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(AdapterError::TooComplex(format!("JSON nests deeper than {MAX_JSON_DEPTH} levels")));
                }
                if containers > MAX_JSON_CONTAINERS {
                    return Err(AdapterError::TooComplex(format!(
                        "more than {MAX_JSON_CONTAINERS} JSON objects and arrays"
                    )));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The adapter for a registry configuration.
pub fn adapter_for(spec: &RegistrySpec) -> Box<dyn RegistryAdapter> {
    match spec {
        RegistrySpec::EtcdV3 { prefix, .. } => Box::new(EtcdV3Adapter::new(prefix)),
        RegistrySpec::EtcdV2 { prefix, wait_ms } => Box::new(EtcdV2Adapter::new(prefix, *wait_ms)),
        RegistrySpec::Consul(consul) => Box::new(ConsulAdapter::from_spec(consul)),
        RegistrySpec::Nacos { service, group, namespace } => {
            Box::new(NacosAdapter::new(service, group.as_deref(), namespace.as_deref()))
        }
        RegistrySpec::Eureka { service } => Box::new(EurekaAdapter::new(service)),
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn json_too_deep_or_too_many_containers_is_refused_unparsed() {
        let deep = format!("{}{}", "[".repeat(MAX_JSON_DEPTH + 1), "]".repeat(MAX_JSON_DEPTH + 1));
        assert!(matches!(check_json_budget(deep.as_bytes()), Err(AdapterError::TooComplex(_))));
        let ok_depth = format!("{}{}", "[".repeat(MAX_JSON_DEPTH), "]".repeat(MAX_JSON_DEPTH));
        assert_eq!(check_json_budget(ok_depth.as_bytes()), Ok(()));
        let many = "{}".repeat(MAX_JSON_CONTAINERS + 1);
        assert!(matches!(check_json_budget(many.as_bytes()), Err(AdapterError::TooComplex(_))));
        // Brackets inside strings (with escaped quotes) do not count.
        let strings = format!(r#"{{"k":"{}\"{}"}}"#, "[".repeat(100), "{".repeat(100));
        assert_eq!(check_json_budget(strings.as_bytes()), Ok(()));
        assert_eq!(check_json_budget(include_bytes!("../../../tests/fixtures/eureka/application.json")), Ok(()));
    }
}
