//! What the registry knows about a member beyond its address and upsync
//! attributes: where it runs (region / zone / sub-zone, Envoy's
//! `Locality`) and its tags (Envoy endpoint metadata under `envoy.lb`,
//! the keys of subset routing).
//!
//! Every value is bounded (lengths, tag count), so a registry full of
//! metadata cannot blow up snapshots or EDS answers; what is cut is
//! reported as a note on the entry.

use serde_json::{Map, Value};

/// Longest region, zone or sub-zone accepted, in bytes.
pub const MAX_LOCALITY_BYTES: usize = 128;
/// Most tags kept per member (the first ones in key order).
pub const MAX_TAGS: usize = 32;
/// Longest tag key, in bytes.
pub const MAX_TAG_KEY_BYTES: usize = 64;
/// Longest tag value, in bytes.
pub const MAX_TAG_VALUE_BYTES: usize = 256;

/// Where a member runs, as Envoy's `config.core.v3.Locality`. An empty
/// string is "not set".
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

impl Locality {
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.sub_zone.is_empty()
    }

    /// `==`, answered from the lengths when both are unset (most members):
    /// the derived comparison calls `memcmp` for each empty string, which
    /// was a fifth of a one-member change at 10,000 members.
    pub fn same(&self, other: &Locality) -> bool {
        self.borrowed().same(&other.borrowed())
    }
}

/// A [`Locality`] borrowed (from a member, or from a snapshot's bytes),
/// ordered as `Locality` is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalityRef<'a> {
    pub region: &'a str,
    pub zone: &'a str,
    pub sub_zone: &'a str,
}

impl LocalityRef<'_> {
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.sub_zone.is_empty()
    }

    /// `==`, quick when both are unset ([`Locality::same`]).
    pub fn same(&self, other: &LocalityRef<'_>) -> bool {
        (self.is_empty() && other.is_empty()) || self == other
    }
}

impl Locality {
    pub fn borrowed(&self) -> LocalityRef<'_> {
        LocalityRef { region: &self.region, zone: &self.zone, sub_zone: &self.sub_zone }
    }
}

/// A member's locality and tags. Tags are sorted by key, one per key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberMeta {
    pub locality: Locality,
    pub tags: Vec<(String, String)>,
}

impl MemberMeta {
    pub fn is_empty(&self) -> bool {
        self.locality.is_empty() && self.tags.is_empty()
    }

    /// `==`, quick when both are empty ([`Locality::same`]).
    pub fn same(&self, other: &MemberMeta) -> bool {
        (self.is_empty() && other.is_empty()) || self == other
    }

    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .and_then(|i| self.tags.get(i))
            .map(|(_, v)| v.as_str())
    }
}

/// The names of the three locality fields, in Envoy's order.
pub const LOCALITY_FIELDS: [&str; 3] = ["region", "zone", "sub_zone"];

/// Collects a member's locality and tags from one or more registry
/// sources, checking bounds and keeping notes on what was refused.
#[derive(Debug, Default)]
pub struct MetaBuilder {
    meta: MemberMeta,
    notes: Vec<String>,
    dropped_tags: usize,
}

impl MetaBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets locality field `field` (one of [`LOCALITY_FIELDS`]) unless it
    /// is set already: sources are offered most specific first. `source`
    /// names the registry field in notes.
    pub fn locality(&mut self, field: &str, value: Option<&Value>, source: &str) {
        let slot = match field {
            "region" => &mut self.meta.locality.region,
            "zone" => &mut self.meta.locality.zone,
            "sub_zone" => &mut self.meta.locality.sub_zone,
            _ => return,
        };
        if !slot.is_empty() {
            return;
        }
        match value {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => match checked_text(s, MAX_LOCALITY_BYTES) {
                Ok(Some(text)) => *slot = text,
                Ok(None) => {}
                Err(why) => self.notes.push(format!("{source} {why}, ignored")),
            },
            Some(_) => self.notes.push(format!("{source} is not a string, ignored")),
        }
    }

    /// Reads `region`, `zone` and `sub_zone` from a JSON object (an upsync
    /// value, or a registry's string-to-string metadata map).
    pub fn locality_from(&mut self, obj: &Map<String, Value>, source: &str) {
        for field in LOCALITY_FIELDS {
            self.locality(field, obj.get(field), &format!("{source}{field}"));
        }
    }

    /// Adds tag `key` = `value` (a string, number or boolean). A key seen
    /// before keeps its first value: sources are offered in precedence
    /// order.
    pub fn tag(&mut self, key: &str, value: &Value, source: &str) {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            _ => {
                self.notes.push(format!("{source} tag {:?} is not a string, number or boolean, ignored", short(key)));
                return;
            }
        };
        let key = match checked_text(key, MAX_TAG_KEY_BYTES) {
            Ok(Some(k)) => k,
            Ok(None) => return,
            Err(why) => {
                self.notes.push(format!("{source} tag key {why}, ignored"));
                return;
            }
        };
        if text.len() > MAX_TAG_VALUE_BYTES || text.chars().any(char::is_control) {
            self.notes.push(format!(
                "{source} tag {key:?}: value longer than {MAX_TAG_VALUE_BYTES} bytes or with control characters, ignored"
            ));
            return;
        }
        match self.meta.tags.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
            Ok(_) => {}
            Err(_) if self.meta.tags.len() >= MAX_TAGS => self.dropped_tags += 1,
            Err(at) => self.meta.tags.insert(at, (key, text)),
        }
    }

    /// A tag written as text: `name=value`, or a bare `name` (a Consul
    /// tag such as `canary`), which means `name=true`.
    pub fn text_tag(&mut self, tag: &str, source: &str) {
        match tag.split_once('=') {
            Some((k, v)) => self.tag(k, &Value::String(v.to_string()), source),
            None => self.tag(tag, &Value::String("true".to_string()), source),
        }
    }

    /// Every entry of a metadata map as a tag, except `skip` (keys already
    /// read as upsync attributes or locality).
    pub fn tags_from_map(&mut self, map: &Map<String, Value>, skip: &[&str], source: &str) {
        for (k, v) in map {
            if !skip.contains(&k.as_str()) {
                self.tag(k, v, source);
            }
        }
    }

    /// The upsync value's own fields: `region`, `zone`, `sub_zone` and
    /// `tags` (an array of `"name"`/`"name=value"` strings, or an object of
    /// name → string, number or boolean).
    pub fn upsync_value(&mut self, obj: &Map<String, Value>) {
        self.locality_from(obj, "");
        match obj.get("tags") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for item in items {
                    match item.as_str() {
                        Some(t) => self.text_tag(t, "tags:"),
                        None => self.notes.push("tags: an array item is not a string, ignored".into()),
                    }
                }
            }
            Some(Value::Object(map)) => self.tags_from_map(map, &[], "tags:"),
            Some(_) => self.notes.push("field \"tags\" must be an array of strings or an object, ignored".into()),
        }
    }

    /// The collected meta and the notes (problems repaired by leaving a
    /// value out).
    pub fn finish(mut self) -> (MemberMeta, Vec<String>) {
        if self.dropped_tags > 0 {
            self.notes.push(format!("{} tags over the limit of {MAX_TAGS} left out", self.dropped_tags));
        }
        (self.meta, self.notes)
    }
}

/// `s` trimmed; `Ok(None)` when empty; an error when too long or holding
/// control characters.
fn checked_text(s: &str, max: usize) -> Result<Option<String>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t.len() > max {
        return Err(format!("is longer than {max} bytes"));
    }
    if t.chars().any(char::is_control) {
        return Err("holds control characters".to_string());
    }
    Ok(Some(t.to_string()))
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn upsync_value_fields() {
        let mut b = MetaBuilder::new();
        b.upsync_value(&obj(
            json!({"weight": 2, "zone": " eu-1a ", "region": "eu-1", "tags": ["canary", "version=v2"]}),
        ));
        let (meta, notes) = b.finish();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(meta.locality, Locality { region: "eu-1".into(), zone: "eu-1a".into(), sub_zone: String::new() });
        assert_eq!(meta.tags, [("canary".to_string(), "true".to_string()), ("version".into(), "v2".into())]);
        assert_eq!(meta.tag("canary"), Some("true"));
        assert_eq!(meta.tag("nope"), None);

        let mut b = MetaBuilder::new();
        b.upsync_value(&obj(json!({"tags": {"canary": true, "shard": 3, "team": "x"}, "sub_zone": "rack1"})));
        let (meta, _) = b.finish();
        assert_eq!(meta.tag("canary"), Some("true"));
        assert_eq!(meta.tag("shard"), Some("3"));
        assert_eq!(meta.locality.sub_zone, "rack1");
    }

    #[test]
    fn bad_values_are_left_out_with_a_note() {
        let mut b = MetaBuilder::new();
        let long = "z".repeat(MAX_LOCALITY_BYTES + 1);
        b.upsync_value(&obj(json!({"zone": long, "region": 5, "sub_zone": "", "tags": "canary"})));
        let (meta, notes) = b.finish();
        assert!(meta.is_empty());
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes.iter().any(|n| n == "zone is longer than 128 bytes, ignored"), "{notes:?}");

        let mut b = MetaBuilder::new();
        b.upsync_value(&obj(json!({"tags": [1, "a\u{1}b", "", "=x", "ok"], "zone": "a\nb"})));
        let (meta, notes) = b.finish();
        assert_eq!(meta.tags, [("ok".to_string(), "true".to_string())]);
        assert!(meta.locality.zone.is_empty());
        assert_eq!(notes.len(), 3, "{notes:?}");
    }

    #[test]
    fn tags_are_bounded_and_the_first_source_wins() {
        let mut b = MetaBuilder::new();
        for i in 0..(MAX_TAGS + 5) {
            b.text_tag(&format!("k{i:02}=v"), "");
        }
        b.text_tag("k00=other", "");
        let (meta, notes) = b.finish();
        assert_eq!(meta.tags.len(), MAX_TAGS);
        assert_eq!(meta.tag("k00"), Some("v"));
        assert_eq!(notes, ["5 tags over the limit of 32 left out"]);

        // Locality: the first source that has a field wins, per field.
        let mut b = MetaBuilder::new();
        b.locality("zone", Some(&json!("from-service")), "service zone");
        b.locality_from(&obj(json!({"zone": "from-node", "region": "r"})), "node meta ");
        let (meta, _) = b.finish();
        assert_eq!((meta.locality.zone.as_str(), meta.locality.region.as_str()), ("from-service", "r"));
    }
}
