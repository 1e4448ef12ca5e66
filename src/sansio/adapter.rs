//! What every registry adapter provides: requests built from the adapter's
//! own cursor, and answers turned into a [`Poll`]. Adapters are pure: no
//! I/O, no clock. The sync machine ([`super::sync`]) drives them.

use super::member::Member;
use super::member_set::MemberSet;
use super::request::{AdapterError, HttpRequest};
use serde_json::{Map, Value};

/// A registry answer as the adapter sees it.
#[derive(Debug, Clone, Copy)]
pub struct RegistryResponse<'a> {
    /// `None` when the host delivered no status: the answer was cut after
    /// its headers, which is also how a long poll whose hold ran out with a
    /// streamed body can end.
    pub status: Option<u16>,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl RegistryResponse<'_> {
    /// The first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// `Ok` for 200, the status as an error otherwise.
    pub fn expect_ok(&self) -> Result<(), AdapterError> {
        match self.status {
            Some(200) => Ok(()),
            Some(status) => Err(AdapterError::Status(status)),
            None => Err(AdapterError::NoStatus),
        }
    }
}

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
}

/// A registry protocol.
pub trait RegistryAdapter {
    /// The next request, built from the adapter's cursor.
    fn request(&self) -> HttpRequest;

    /// Reads the answer to the last [`RegistryAdapter::request`].
    fn parse(&mut self, response: &RegistryResponse<'_>) -> Result<Poll, AdapterError>;

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
}
