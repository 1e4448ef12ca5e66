//! `discover[]`: upstreams found in the registry instead of listed one by
//! one. An entry names a parent (an etcd or Consul KV prefix whose children
//! `<parent><name>/` are upstreams, or a Consul, Nacos or Eureka service
//! listing) and the settings every upstream found there gets, so that ten
//! thousand upstreams take a configuration of a few hundred bytes.

use super::fields::{err, kind, Fields};
use super::registry::{ConsulQuery, ConsulSpec, RegistryConfig, RegistrySpec};
use super::{is_upstream_name, ConfigError, HostKind, UpstreamConfig, UPSTREAM_SETTINGS};
use serde_json::Value;

pub const DEFAULT_DISCOVER_INTERVAL_MS: u64 = 10_000;
pub const DEFAULT_DISCOVER_TIMEOUT_MS: u64 = 5_000;

/// One `discover[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoverConfig {
    /// The parent: `prefix` is the parent prefix; service registries list services.
    pub registry: RegistryConfig,
    /// How often the listing is read (Consul: the longest a blocking query waits).
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub backoff_max_ms: u64,
    pub max_body_bytes: usize,
    /// Only names matching this glob (`*`, `?`) become upstreams.
    pub name_pattern: Option<NamePattern>,
    /// Consul: only services carrying this tag.
    pub tag: Option<String>,
    /// At most this many upstreams from this entry; the rest are skipped and reported.
    pub max_upstreams: usize,
    /// The settings of every upstream found; `name` is empty and `registry`
    /// is the parent until [`DiscoverConfig::upstream`] fills them in.
    pub defaults: UpstreamConfig,
}

impl DiscoverConfig {
    /// The configuration of the upstream `name` found by this entry.
    pub fn upstream(&self, name: &str) -> UpstreamConfig {
        let mut u = self.defaults.clone();
        u.name = name.to_string();
        u.registry = self.registry.child(name);
        u
    }

    /// Why a listed name does not become an upstream, if it does not.
    pub fn refuses(&self, name: &str) -> Option<&'static str> {
        refusal(self.name_pattern.as_ref(), name)
    }

    pub(crate) fn parse(path: &str, v: &Value, host: HostKind) -> Result<DiscoverConfig, ConfigError> {
        let f = Fields::new(
            path,
            v,
            &[
                "registry",
                "interval_ms",
                "timeout_ms",
                "backoff_max_ms",
                "max_body_bytes",
                "name_pattern",
                "tag",
                "max_upstreams",
                "defaults",
            ],
        )?;
        let registry = RegistryConfig::parse_parent(&f.path("registry"), f.required("registry")?, host)?;
        let interval_ms = f.uint("interval_ms", DEFAULT_DISCOVER_INTERVAL_MS, 100, 3_600_000)?;
        let timeout_ms = f.uint("timeout_ms", DEFAULT_DISCOVER_TIMEOUT_MS, 1, 600_000)?;
        let backoff_max_ms = f.uint("backoff_max_ms", interval_ms.max(30_000), interval_ms, 3_600_000)?;
        let max_body_bytes = f.uint("max_body_bytes", super::DEFAULT_MAX_BODY_BYTES, 1024, 256 * 1024 * 1024)?;
        let name_pattern = match f.string("name_pattern")? {
            None => None,
            Some(p) if !p.is_empty() && p.len() <= 256 => Some(NamePattern(p.to_string())),
            Some(p) => {
                return Err(err(&f.path("name_pattern"), format!("must be a glob of 1-256 characters, got {p:?}")))
            }
        };
        let consul_service = matches!(
            registry.spec,
            RegistrySpec::Consul(ConsulSpec { query: ConsulQuery::Catalog { .. } | ConsulQuery::Health { .. }, .. })
        );
        let tag = match f.string("tag")? {
            None => None,
            Some(_) if !consul_service => {
                return Err(err(
                    &f.path("tag"),
                    "is only used with registry types \"consul_catalog\" and \"consul_health\" (Consul lists tags)",
                ))
            }
            Some(t) if !t.is_empty() && !t.chars().any(char::is_control) => Some(t.to_string()),
            Some(t) => return Err(err(&f.path("tag"), format!("must be a non-empty tag, got {t:?}"))),
        };
        let max_upstreams = f.uint("max_upstreams", super::MAX_UPSTREAMS as u64, 1, super::MAX_UPSTREAMS as u64)?;
        let defaults_path = f.path("defaults");
        let no_defaults = Value::Object(serde_json::Map::new());
        let defaults = match f.get("defaults") {
            None => Fields::new(&defaults_path, &no_defaults, &UPSTREAM_SETTINGS)?,
            Some(d @ Value::Object(map)) => {
                for per_upstream in ["name", "registry", "fallback"] {
                    if map.contains_key(per_upstream) {
                        return Err(err(
                            &format!("{defaults_path}.{per_upstream}"),
                            "is set per upstream: found upstreams get their name and registry from the listing; \
                             list an upstream in upstreams[] to give it a fallback",
                        ));
                    }
                }
                Fields::new(&defaults_path, d, &UPSTREAM_SETTINGS)?
            }
            Some(other) => return Err(err(&defaults_path, format!("must be an object, got {}", kind(other)))),
        };
        let defaults = UpstreamConfig::parse_settings(&defaults, "", registry.clone())?;
        Ok(DiscoverConfig {
            registry,
            interval_ms,
            timeout_ms,
            backoff_max_ms,
            // Bounded to 256 MiB above, so this fits in usize on 32-bit wasm.
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            name_pattern,
            tag,
            max_upstreams: usize::try_from(max_upstreams).unwrap_or(super::MAX_UPSTREAMS),
            defaults,
        })
    }
}

/// The configuration the first of `entries` that would take `name` gives it.
pub fn discovered(entries: &[DiscoverConfig], name: &str) -> Option<UpstreamConfig> {
    entries.iter().find(|d| d.refuses(name).is_none()).map(|d| d.upstream(name))
}

/// Why a listed name does not become an upstream under `pattern`, if it does not.
pub fn refusal(pattern: Option<&NamePattern>, name: &str) -> Option<&'static str> {
    if !is_upstream_name(name) {
        return Some("is not an upstream name (1-64 characters of A-Z a-z 0-9 _ . -)");
    }
    if pattern.is_some_and(|p| !p.matches(name)) {
        return Some("does not match name_pattern");
    }
    None
}

/// A glob over upstream names: `*` any run of characters, `?` one character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern(pub String);

impl NamePattern {
    /// Matches without recursion: the classic two-pointer glob with one
    /// backtrack point, linear in practice and never more than
    /// `pattern × name` steps.
    pub fn matches(&self, name: &str) -> bool {
        let p: Vec<char> = self.0.chars().collect();
        let n: Vec<char> = name.chars().collect();
        let (mut pi, mut ni) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ni < n.len() {
            match (p.get(pi), n.get(ni)) {
                (Some('*'), _) => {
                    star = Some((pi, ni));
                    pi += 1;
                }
                (Some(pc), Some(nc)) if *pc == '?' || pc == nc => {
                    pi += 1;
                    ni += 1;
                }
                _ => match star {
                    Some((sp, sn)) => {
                        pi = sp + 1;
                        ni = sn + 1;
                        star = Some((sp, sn + 1));
                    }
                    None => return false,
                },
            }
        }
        p.get(pi..).is_some_and(|rest| rest.iter().all(|c| *c == '*'))
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::config::PluginConfig;

    fn parse(json: &str) -> Result<PluginConfig, ConfigError> {
        PluginConfig::parse(json.as_bytes())
    }

    #[test]
    fn globs_match_like_a_shell() {
        let cases = [
            ("web-*", "web-1", true),
            ("web-*", "web-", true),
            ("web-*", "api-1", false),
            ("*-prod", "a-b-prod", true),
            ("*-prod", "a-prod-x", false),
            ("w?b", "web", true),
            ("w?b", "wb", false),
            ("*", "", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("**x", "abx", true),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(NamePattern(pattern.into()).matches(name), want, "{pattern} ~ {name}");
        }
    }

    #[test]
    fn a_kv_parent_gives_each_child_its_own_prefix_and_the_defaults() {
        let c = parse(
            r#"{"discover":[{"registry":{"type":"etcd_v3","target":"etcd","prefix":"/upstreams/","grpc_target":"etcd_grpc"},
                "defaults":{"interval_ms":30000,"balance":{"policy":"least_request"}}}]}"#,
        )
        .unwrap();
        assert!(c.upstreams.is_empty());
        let d = &c.discover[0];
        assert_eq!(d.interval_ms, DEFAULT_DISCOVER_INTERVAL_MS);
        let u = d.upstream("web");
        assert_eq!(u.name, "web");
        assert_eq!(u.interval_ms, 30000);
        assert_eq!(u.registry.spec.prefix(), Some("/upstreams/web/"));
        assert_eq!(u.registry.spec.grpc_target(), Some("etcd_grpc"));
        assert_eq!(u.balance, crate::sansio::config::BalancePolicy::LeastRequest);
    }

    #[test]
    fn a_service_listing_names_no_service_and_each_found_service_is_one() {
        let c = parse(
            r#"{"discover":[{"registry":{"type":"consul_health","target":"consul","token":"t"},"tag":"http","name_pattern":"web-*"}]}"#,
        )
        .unwrap();
        let d = &c.discover[0];
        assert_eq!(d.upstream("web-a").registry.spec.service(), Some("web-a"));
        assert_eq!(d.tag.as_deref(), Some("http"));
        assert_eq!(d.refuses("web-a"), None);
        assert_eq!(d.refuses("api"), Some("does not match name_pattern"));
        assert!(d.refuses("bad name").is_some());
        assert!(d.refuses(&"x".repeat(65)).is_some());
    }

    #[test]
    fn discover_errors_name_the_field_and_what_is_allowed() {
        let cases = [
            (
                r#"{"discover":[{"registry":{"type":"consul_kv","target":"c","prefix":"/u/"},"tag":"x"}]}"#,
                "discover[0].tag",
                "consul_catalog",
            ),
            (
                r#"{"discover":[{"registry":{"type":"nacos","target":"n","service":"web"}}]}"#,
                "discover[0].registry.service",
                "unknown field",
            ),
            (
                r#"{"discover":[{"registry":{"type":"etcd_v3","target":"e","prefix":"/u"}}]}"#,
                "discover[0].registry.prefix",
                "end with '/'",
            ),
            (
                r#"{"discover":[{"registry":{"type":"etcd_v3","target":"e","prefix":"/u/"},"defaults":{"name":"x"}}]}"#,
                "discover[0].defaults.name",
                "per upstream",
            ),
            (
                r#"{"discover":[{"registry":{"type":"etcd_v3","target":"e","prefix":"/u/"},"defaults":{"fallback":[]}}]}"#,
                "discover[0].defaults.fallback",
                "fallback",
            ),
            (
                r#"{"discover":[{"registry":{"type":"etcd_v3","target":"e","prefix":"/u/"},"defaults":{"interval_ms":1}}]}"#,
                "discover[0].defaults.interval_ms",
                "10..=",
            ),
            (
                r#"{"discover":[{"registry":{"type":"etcd_v3","target":"e","prefix":"/u/"},"defaults":{"bogus":1}}]}"#,
                "discover[0].defaults.bogus",
                "allowed fields here: interval_ms",
            ),
            (
                r#"{"discover":[{"registry":{"type":"etcd_v3","target":"e","prefix":"/u/"},"interval_ms":50}]}"#,
                "discover[0].interval_ms",
                "100..=",
            ),
            (
                r#"{"discover":[{"registry":{"type":"etcd_v3","target":"e","prefix":"/u/"},"name_pattern":""}]}"#,
                "discover[0].name_pattern",
                "glob",
            ),
            (r#"{"discover":{}}"#, "discover", "array"),
            (r#"{"discover":[]}"#, "discover", "1..="),
            (r#"{}"#, "upstreams", "discover"),
        ];
        for (json, field, says) in cases {
            let e = parse(json).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
            assert!(e.message.contains(says), "{json}: {e}");
        }
    }
}
