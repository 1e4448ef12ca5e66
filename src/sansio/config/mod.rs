//! The plugin configuration: one JSON schema for every host, validated field
//! by field. Every error names the field (as a path such as
//! `upstreams[0].registry.type`) and what is allowed.

mod auth;
mod balance;
mod discover;
mod fields;
mod registry;
pub mod roles;
mod routing;

pub use auth::{authorized, Auth, Secret, UNAUTHORIZED};
pub use balance::{BalancePolicy, HashKey, PickPolicy};
pub use discover::{discovered, refusal, DiscoverConfig, NamePattern, DEFAULT_DISCOVER_INTERVAL_MS};
pub use registry::{Consistency, ConsulQuery, ConsulSpec, RegistryConfig, RegistrySpec, DEFAULT_WAIT_MS};
pub use routing::{is_upstream_name, SubsetRule, UpstreamRouting};

use crate::sansio::model::member::{HostPort, Member, MemberAttrs};
use balance::parse_balance;
use fields::{err, kind, Fields};
use serde_json::Value;

/// A configuration error: which field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Path of the field, e.g. `upstreams[0].interval_ms`.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Log verbosity of the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// The poller's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    pub host: HostKind,
    pub upstreams: Vec<UpstreamConfig>,
    /// Upstreams found in the registry, besides `upstreams`.
    pub discover: Vec<DiscoverConfig>,
    pub log_level: LogLevel,
    /// nginx: how long a worker's poller lease lasts without renewal.
    pub lease_ms: u64,
    /// nginx: the upstream this filter picks a member of, per request.
    pub pick: Option<String>,
    /// nginx: a request path the filter answers with the status JSON.
    pub status_path: Option<String>,
    /// nginx: a request path the filter answers with Prometheus metrics.
    pub metrics_path: Option<String>,
    /// A bearer token the status and metrics paths require.
    pub status_token: Option<Secret>,
    /// Envoy pick mode: how the picked member reaches Envoy's router.
    pub route: EnvoyRoute,
    /// Pick mode: the zone this proxy runs in; its members are preferred.
    pub zone: Option<String>,
    /// nginx: the variable naming, per request, the upstream to pick from
    /// (instead of `pick`).
    pub pick_variable: Option<String>,
    /// nginx pick-only filter (no `upstreams`): how the upstreams it picks
    /// from are balanced (top-level `balance`, `passive_health`).
    pub pick_policy: PickPolicy,
}

/// How an Envoy pick-mode filter hands its pick to the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvoyRoute {
    /// A request header read by the EDS cluster's `override_host` LB
    /// policy; the filter always overwrites it.
    OverrideHost { header: String },
    /// The `original_dst_address` filter state, for an ORIGINAL_DST cluster.
    OriginalDst,
    /// The `envoy.upstream.dynamic_host`/`_port` filter state, for the
    /// dynamic forward proxy (routes hostname members too).
    DynamicForwardProxy,
}

pub const DEFAULT_OVERRIDE_HEADER: &str = "x-upsync-host";

/// Which proxy runs the plugin. Host differences are data: dispatch
/// targets, whether gRPC exists, who polls, how routing is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Envoy: targets are cluster names, one poller per process (bootstrap
    /// singleton), routing through REST EDS.
    Envoy,
    /// nginx with ngx_wasm_module: targets are `ip:port` lists, workers
    /// elect one poller through a lease, the filter picks a member per
    /// request and sets `$upsync_backend`. No gRPC.
    Nginx,
}

pub const DEFAULT_LEASE_MS: u64 = 3_000;

/// One upstream kept in sync.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub registry: RegistryConfig,
    pub balance: BalancePolicy,
    /// Take members out after `max_fails` failures within `fail_timeout` (nginx).
    pub passive_health: bool,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub backoff_max_ms: u64,
    pub max_body_bytes: usize,
    pub allow_empty: bool,
    /// An update removing more than this share of the members is held
    /// until a later read confirms it (1 holds nothing).
    pub max_removal_share: f64,
    pub fallback: Vec<Member>,
    /// Pick mode: zone preference and subset selection.
    pub routing: UpstreamRouting,
}

pub const DEFAULT_INTERVAL_MS: u64 = 1_000;
pub const DEFAULT_MAX_REMOVAL_SHARE: f64 = 0.5;
pub const DEFAULT_TIMEOUT_MS: u64 = 3_000;
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 10_000;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 8 * 1024 * 1024;
pub const MAX_UPSTREAMS: usize = 10_000;

impl PluginConfig {
    /// Whether this configuration has anything to poll: upstreams listed or
    /// found by `discover`. A pick-only nginx filter has neither.
    pub fn polls(&self) -> bool {
        !self.upstreams.is_empty() || !self.discover.is_empty()
    }

    /// The configuration `discover[]` gives the upstream `name` when the
    /// registry lists it: the first entry that would take the name.
    pub fn discovered(&self, name: &str) -> Option<UpstreamConfig> {
        discover::discovered(&self.discover, name)
    }

    /// Parses and validates the poller configuration.
    pub fn parse(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
        let root: Value =
            serde_json::from_slice(bytes).map_err(|e| err("(configuration)", format!("is not valid JSON: {e}")))?;
        let f = Fields::new(
            "",
            &root,
            &[
                "host",
                "upstreams",
                "discover",
                "log_level",
                "lease_ms",
                "pick",
                "status_path",
                "metrics_path",
                "status_token",
                "route",
                "override_header",
                "zone",
                "pick_variable",
                "balance",
                "passive_health",
            ],
        )?;
        let host = match f.string("host")? {
            None | Some("envoy") => HostKind::Envoy,
            Some("nginx") => HostKind::Nginx,
            Some(other) => return Err(err("host", format!("must be \"envoy\" or \"nginx\", got {other:?}"))),
        };
        for nginx_only in ["lease_ms", "status_path", "metrics_path", "status_token"] {
            if host != HostKind::Nginx && f.get(nginx_only).is_some() {
                return Err(err(nginx_only, "is only used with \"host\": \"nginx\""));
            }
        }
        for envoy_only in ["route", "override_header"] {
            if host != HostKind::Envoy && f.get(envoy_only).is_some() {
                return Err(err(envoy_only, "is only used with \"host\": \"envoy\" (pick mode)"));
            }
        }
        let header = f.string("override_header")?.unwrap_or(DEFAULT_OVERRIDE_HEADER).to_ascii_lowercase();
        if header.is_empty()
            || header.starts_with(':')
            || !header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(err("override_header", format!("must be an HTTP header name, got {header:?}")));
        }
        let route = match f.string("route")? {
            None | Some("override_host") => EnvoyRoute::OverrideHost { header },
            Some("original_dst") => EnvoyRoute::OriginalDst,
            Some("dynamic_forward_proxy") => EnvoyRoute::DynamicForwardProxy,
            Some(other) => {
                return Err(err(
                    "route",
                    format!("must be \"override_host\", \"original_dst\" or \"dynamic_forward_proxy\", got {other:?}"),
                ))
            }
        };
        let lease_ms = f.uint("lease_ms", DEFAULT_LEASE_MS, 500, 60_000)?;
        let log_level = match f.string("log_level")? {
            None | Some("info") => LogLevel::Info,
            Some("trace") => LogLevel::Trace,
            Some("debug") => LogLevel::Debug,
            Some("warn") => LogLevel::Warn,
            Some("error") => LogLevel::Error,
            Some(other) => {
                return Err(err(
                    "log_level",
                    format!("must be one of \"trace\", \"debug\", \"info\", \"warn\", \"error\", got {other:?}"),
                ))
            }
        };
        let discover = match f.get("discover") {
            None => Vec::new(),
            Some(Value::Array(entries)) if (1..=16).contains(&entries.len()) => entries
                .iter()
                .enumerate()
                .map(|(i, d)| DiscoverConfig::parse(&format!("discover[{i}]"), d, host))
                .collect::<Result<Vec<_>, _>>()?,
            Some(Value::Array(entries)) => {
                return Err(err("discover", format!("must hold 1..=16 entries, got {}", entries.len())))
            }
            Some(other) => return Err(err("discover", format!("must be an array of entries, got {}", kind(other)))),
        };
        let pick_variable = routing::parse_pick_variable(&f, host)?;
        // A pick-only filter (nginx): no upstreams of its own, no poller; it
        // picks from the snapshots another filter's poller publishes.
        let pick_only = host == HostKind::Nginx
            && f.get("upstreams").is_none()
            && discover.is_empty()
            && (f.get("pick").is_some() || pick_variable.is_some());
        let list: &[Value] = match f.get("upstreams") {
            _ if pick_only => &[],
            None if !discover.is_empty() => &[],
            None => return Err(err(
                "upstreams",
                "is required (or discover, to find upstreams in the registry; only an nginx filter with \"pick\" or \"pick_variable\" may leave both out: it then picks from the snapshots another filter polls)",
            )),
            Some(v) => {
                let list = v.as_array().ok_or_else(|| err("upstreams", "must be an array of upstream objects"))?;
                if (list.is_empty() && discover.is_empty()) || list.len() > MAX_UPSTREAMS {
                    return Err(err("upstreams", format!("must hold 1..={MAX_UPSTREAMS} upstreams, got {}", list.len())));
                }
                list
            }
        };
        let pick_policy = balance::parse_pick_policy(&f, pick_only)?;
        let mut upstreams: Vec<UpstreamConfig> = Vec::with_capacity(list.len());
        for (i, v) in list.iter().enumerate() {
            let path = format!("upstreams[{i}]");
            let up = UpstreamConfig::parse(&path, v, host)?;
            if upstreams.iter().any(|u| u.name == up.name) {
                return Err(err(&format!("{path}.name"), format!("{:?} is used by an earlier upstream", up.name)));
            }
            upstreams.push(up);
        }
        let pick = match f.string("pick")? {
            Some(name) if pick_only => Some(routing::parse_pick_only_name(name)?),
            Some(name) if upstreams.iter().any(|u| u.name == name) => Some(name.to_string()),
            // An upstream the registry lists later.
            Some(name) if discover.iter().any(|d| d.refuses(name).is_none()) => Some(name.to_string()),
            Some(name) => {
                let hint = if discover.is_empty() { "" } else { " (nor a name a discover[] entry would find)" };
                return Err(err("pick", format!("{name:?} is not the name of an upstream{hint}")));
            }
            None if pick_variable.is_some() => None,
            // A poller that finds upstreams for other filters to pick from.
            None if !discover.is_empty() => None,
            None if host == HostKind::Nginx && upstreams.len() == 1 => upstreams.first().map(|u| u.name.clone()),
            None if host == HostKind::Nginx => {
                return Err(err(
                    "pick",
                    "is required with several upstreams: which one this filter routes to (or pick_variable: the nginx variable naming it per request)",
                ))
            }
            None => None,
        };
        let status_path = local_path(&f, "status_path")?;
        let metrics_path = local_path(&f, "metrics_path")?;
        let status_token = status_token(&f)?;
        if status_token.is_some() && status_path.is_none() && metrics_path.is_none() {
            return Err(err("status_token", "guards status_path and metrics_path: set one of them"));
        }
        let zone = routing::parse_zone(&f)?;
        Ok(PluginConfig {
            host,
            upstreams,
            discover,
            log_level,
            lease_ms,
            pick,
            status_path,
            metrics_path,
            status_token,
            route,
            zone,
            pick_variable,
            pick_policy,
        })
    }
}

/// The fields of an upstream besides `name` and `registry`: what
/// `discover[].defaults` may set for every upstream it finds.
pub(crate) const UPSTREAM_SETTINGS: [&str; 11] = [
    "interval_ms",
    "timeout_ms",
    "backoff_max_ms",
    "max_body_bytes",
    "allow_empty",
    "max_removal_share",
    "fallback",
    "balance",
    "passive_health",
    "zone_min_healthy_share",
    "subset",
];

impl UpstreamConfig {
    fn parse(path: &str, v: &Value, host: HostKind) -> Result<UpstreamConfig, ConfigError> {
        let known: Vec<&str> = ["name", "registry"].into_iter().chain(UPSTREAM_SETTINGS).collect();
        let f = Fields::new(path, v, &known)?;
        let name = f.required_string("name")?;
        if !is_upstream_name(name) {
            return Err(err(&f.path("name"), format!("must be 1-64 characters of A-Z a-z 0-9 _ . -, got {name:?}")));
        }
        let registry = RegistryConfig::parse(&f.path("registry"), f.required("registry")?, host)?;
        Self::parse_settings(&f, name, registry)
    }

    /// Reads [`UPSTREAM_SETTINGS`] from `f` for an upstream `name` on `registry`.
    pub(crate) fn parse_settings(
        f: &Fields<'_>,
        name: &str,
        registry: RegistryConfig,
    ) -> Result<UpstreamConfig, ConfigError> {
        let balance = match f.get("balance") {
            None => BalancePolicy::RoundRobin,
            Some(b) => parse_balance(&f.path("balance"), b)?,
        };
        let passive_health = f.bool("passive_health", true)?;
        let interval_ms = f.uint("interval_ms", DEFAULT_INTERVAL_MS, 10, 3_600_000)?;
        let timeout_ms = f.uint("timeout_ms", DEFAULT_TIMEOUT_MS, 1, 600_000)?;
        let backoff_max_ms = f.uint("backoff_max_ms", DEFAULT_BACKOFF_MAX_MS.max(interval_ms), 10, 3_600_000)?;
        if backoff_max_ms < interval_ms {
            return Err(err(
                &f.path("backoff_max_ms"),
                format!("must be at least interval_ms ({interval_ms}), got {backoff_max_ms}"),
            ));
        }
        let max_body_bytes = f.uint("max_body_bytes", DEFAULT_MAX_BODY_BYTES, 1024, 256 * 1024 * 1024)?;
        let allow_empty = f.bool("allow_empty", false)?;
        let max_removal_share = f.fraction("max_removal_share", DEFAULT_MAX_REMOVAL_SHARE, 0.0, 1.0)?;
        let fallback = match f.get("fallback") {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{}[{i}]", f.path("fallback"));
                    let s = item.as_str().ok_or_else(|| err(&item_path, "must be a \"host:port\" string"))?;
                    let addr: HostPort = s.parse().map_err(|e| err(&item_path, format!("{s:?}: {e}")))?;
                    if let Some(why) = addr.not_a_member() {
                        return Err(err(&item_path, format!("{s:?} is {why}, not a member address")));
                    }
                    out.push(Member::new(addr, MemberAttrs::default()));
                }
                out
            }
            Some(other) => {
                return Err(err(
                    &f.path("fallback"),
                    format!("must be an array of \"host:port\" strings, got {}", kind(other)),
                ))
            }
        };
        Ok(UpstreamConfig {
            name: name.to_string(),
            registry,
            balance,
            passive_health,
            interval_ms,
            timeout_ms,
            backoff_max_ms,
            // Bounded to 256 MiB above, so this fits in usize on 32-bit wasm.
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            allow_empty,
            max_removal_share,
            fallback,
            routing: routing::parse_upstream_routing(f)?,
        })
    }
}

/// The configuration of the request-serving role (EDS and status).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerConfig {
    /// How long an EDS request whose version is current is held before the
    /// 304, waiting for a change (a long poll); 0 answers at once.
    pub eds_hold_ms: u64,
    /// A bearer token the status and metrics endpoints require.
    pub status_token: Option<Secret>,
    /// How the clusters served by CDS look.
    pub cds: CdsConfig,
}

/// `cds` of the request-serving role: the clusters `POST
/// /v3/discovery:clusters` makes of the upstreams `discover[]` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdsConfig {
    /// The Envoy cluster that reaches this plugin's EDS listener.
    pub eds_cluster: String,
    pub refresh_delay_ms: u64,
    /// Must exceed `eds_hold_ms`.
    pub request_timeout_ms: u64,
    /// Cluster fields (envoy.config.cluster.v3.Cluster in JSON) every
    /// served cluster gets; `name`, `type` and `eds_cluster_config` are the plugin's.
    pub template: serde_json::Map<String, Value>,
}

pub const DEFAULT_EDS_CLUSTER: &str = "upsync_eds";
pub const DEFAULT_CDS_REFRESH_DELAY_MS: u64 = 20;

impl Default for CdsConfig {
    fn default() -> Self {
        CdsConfig {
            eds_cluster: DEFAULT_EDS_CLUSTER.to_string(),
            refresh_delay_ms: DEFAULT_CDS_REFRESH_DELAY_MS,
            request_timeout_ms: 5_000,
            template: serde_json::Map::new(),
        }
    }
}

impl CdsConfig {
    /// Everything that shapes a served cluster, as one string.
    pub fn fingerprint(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.eds_cluster,
            self.refresh_delay_ms,
            self.request_timeout_ms,
            Value::Object(self.template.clone())
        )
    }

    fn parse(v: Option<&Value>, eds_hold_ms: u64) -> Result<CdsConfig, ConfigError> {
        let no_cds = Value::Object(serde_json::Map::new());
        let f = Fields::new(
            "cds",
            v.unwrap_or(&no_cds),
            &["eds_cluster", "refresh_delay_ms", "request_timeout_ms", "cluster"],
        )?;
        let eds_cluster = match f.string("eds_cluster")? {
            None => DEFAULT_EDS_CLUSTER.to_string(),
            Some(c) if !c.is_empty() && !c.chars().any(char::is_control) => c.to_string(),
            Some(c) => return Err(err("cds.eds_cluster", format!("must be an Envoy cluster name, got {c:?}"))),
        };
        let refresh_delay_ms = f.uint("refresh_delay_ms", DEFAULT_CDS_REFRESH_DELAY_MS, 1, 600_000)?;
        let request_timeout_ms = f.uint("request_timeout_ms", eds_hold_ms + 5_000, 1, 3_600_000)?;
        if request_timeout_ms <= eds_hold_ms {
            return Err(err(
                "cds.request_timeout_ms",
                format!("must exceed eds_hold_ms ({eds_hold_ms}): Envoy would give up on held requests"),
            ));
        }
        let template = match f.get("cluster") {
            None => serde_json::Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(err("cds.cluster", format!("must be an object of Cluster fields, got {}", kind(other))))
            }
        };
        Ok(CdsConfig { eds_cluster, refresh_delay_ms, request_timeout_ms, template })
    }
}

/// Parses the request-serving role's configuration: empty, `{}`, or
/// `{"eds_hold_ms": N}`. A poller configuration given to this role is
/// refused, so the mix-up does not pass silently.
/// A local request path (`status_path`, `metrics_path`).
fn local_path(f: &Fields<'_>, name: &str) -> Result<Option<String>, ConfigError> {
    let path = f.string(name)?.map(str::to_string);
    if let Some(p) = &path {
        if !p.starts_with('/') || p.contains('?') {
            return Err(err(name, format!("must be a path starting with '/', got {p:?}")));
        }
    }
    Ok(path)
}

/// `status_token`: at least 16 visible ASCII characters, so that a guess
/// is not practical and it fits an `Authorization: Bearer` header.
fn status_token(f: &Fields<'_>) -> Result<Option<Secret>, ConfigError> {
    match f.string("status_token")? {
        None => Ok(None),
        Some(t) if t.len() >= 16 && t.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(Secret(t.to_string()))),
        Some(_) => Err(err("status_token", "must be at least 16 visible ASCII characters (no spaces)")),
    }
}

/// The longest `eds_hold_ms`: below the 5 minutes of Envoy's default
/// `stream_idle_timeout` on the EDS listener's HTTP connection manager,
/// which resets a request held longer (Envoy counts it as an EDS update
/// failure and asks again).
pub const MAX_EDS_HOLD_MS: u64 = 290_000;

pub fn parse_server_config(bytes: &[u8]) -> Result<ServerConfig, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(ServerConfig::default());
    }
    let root: Value =
        serde_json::from_slice(bytes).map_err(|e| err("(configuration)", format!("is not valid JSON: {e}")))?;
    let f = Fields::new("", &root, &["eds_hold_ms", "status_token", "cds"])?;
    let eds_hold_ms = f.uint("eds_hold_ms", 0, 0, MAX_EDS_HOLD_MS)?;
    Ok(ServerConfig { eds_hold_ms, status_token: status_token(&f)?, cds: CdsConfig::parse(f.get("cds"), eds_hold_ms)? })
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const MINIMAL: &str =
        r#"{"upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"etcd","prefix":"/upstreams/web/"}}]}"#;

    fn error_of(json: &str) -> ConfigError {
        PluginConfig::parse(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = PluginConfig::parse(MINIMAL.as_bytes()).unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.name, "web");
        assert!(matches!(u.registry.spec, RegistrySpec::EtcdV3 { grpc_target: None, .. }));
        assert_eq!(u.registry.authority, "etcd");
        assert_eq!(u.interval_ms, 1000);
        assert_eq!(u.timeout_ms, 3000);
        assert_eq!(u.backoff_max_ms, 10000);
        assert_eq!(u.max_body_bytes, 8 * 1024 * 1024);
        assert!(!u.allow_empty);
        assert!(u.fallback.is_empty());
        assert_eq!(c.log_level, LogLevel::Info);
    }

    #[test]
    fn full_config_is_read() {
        let c = PluginConfig::parse(
            br#"{"log_level":"debug","upstreams":[{"name":"api-1","registry":{"type":"etcd_v3","target":"etcd_cluster","authority":"etcd.internal:2379","prefix":"/u/api/"},
            "interval_ms":200,"timeout_ms":500,"backoff_max_ms":2000,"max_body_bytes":4096,"allow_empty":true,"fallback":["127.0.0.1:9001","[::1]:9002"]}]}"#,
        )
        .unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.registry.authority, "etcd.internal:2379");
        assert_eq!((u.interval_ms, u.timeout_ms, u.backoff_max_ms, u.max_body_bytes), (200, 500, 2000, 4096));
        assert!(u.allow_empty);
        assert_eq!(u.fallback.len(), 2);
        assert_eq!(c.log_level, LogLevel::Debug);
    }

    #[test]
    fn errors_name_the_field_and_what_is_allowed() {
        let cases = [
            ("not json", "(configuration)"),
            ("[]", ""),
            (r#"{}"#, "upstreams"),
            (r#"{"upstreams":[]}"#, "upstreams"),
            (r#"{"upstreams":[],"extra":1}"#, "extra"),
            (r#"{"upstreams":[{"registry":{}}]}"#, "upstreams[0].name"),
            (r#"{"upstreams":[{"name":"a b","registry":{}}]}"#, "upstreams[0].name"),
            (r#"{"upstreams":[{"name":"web"}]}"#, "upstreams[0].registry"),
            (
                r#"{"upstreams":[{"name":"web","registry":{"type":"consul","target":"x","prefix":"/p/"}}]}"#,
                "upstreams[0].registry.type",
            ),
            (
                r#"{"upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"","prefix":"/p/"}}]}"#,
                "upstreams[0].registry.target",
            ),
            (
                r#"{"upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"e","prefix":"/p"}}]}"#,
                "upstreams[0].registry.prefix",
            ),
            (
                r#"{"upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"e","prefix":"/p/","tls":true}}]}"#,
                "upstreams[0].registry.tls",
            ),
            (
                r#"{"upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"e","prefix":"/p/"},"interval_ms":0}]}"#,
                "upstreams[0].interval_ms",
            ),
            (
                r#"{"upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"e","prefix":"/p/"},"timeout_ms":0}]}"#,
                "upstreams[0].timeout_ms",
            ),
            (
                r#"{"upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"e","prefix":"/p/"},"timeout_ms":"5"}]}"#,
                "upstreams[0].timeout_ms",
            ),
            (
                r#"{"upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"e","prefix":"/p/"},"interval_ms":5000,"backoff_max_ms":1000}]}"#,
                "upstreams[0].backoff_max_ms",
            ),
            (
                r#"{"upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"e","prefix":"/p/"},"allow_empty":1}]}"#,
                "upstreams[0].allow_empty",
            ),
            (
                r#"{"upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"e","prefix":"/p/"},"fallback":["1.2.3.4"]}]}"#,
                "upstreams[0].fallback[0]",
            ),
            (
                r#"{"upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"e","prefix":"/p/"},"fallback":"1.2.3.4:80"}]}"#,
                "upstreams[0].fallback",
            ),
            (r#"{"log_level":"loud","upstreams":[]}"#, "log_level"),
        ];
        for (json, field) in cases {
            let e = error_of(json);
            assert_eq!(e.field, field, "for {json}: {e}");
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn auth_becomes_headers_and_stays_out_of_debug_output() {
        let with = |auth: &str| {
            let json = format!(
                r#"{{"upstreams":[{{"name":"web","registry":{{"type":"etcd_v3","target":"e","prefix":"/p/","auth":{auth}}}}}]}}"#
            );
            PluginConfig::parse(json.as_bytes()).map(|c| c.upstreams[0].registry.clone())
        };
        let bearer = with(r#"{"bearer":"s3cret"}"#).unwrap();
        assert_eq!(bearer.auth_headers(), [("authorization".to_string(), "Bearer s3cret".to_string())]);
        assert!(!format!("{bearer:?}").contains("s3cret"));
        let basic = with(r#"{"basic":{"username":"root","password":"pw"}}"#).unwrap();
        assert_eq!(basic.auth_headers()[0].1, "Basic cm9vdDpwdw==");
        assert!(!format!("{basic:?}").contains("pw\""));
        let header = with(r#"{"header":{"name":"X-Consul-Token","value":"abc"}}"#).unwrap();
        assert_eq!(header.auth_headers(), [("x-consul-token".to_string(), "abc".to_string())]);
        assert_eq!(with(r#"{}"#).unwrap_err().field, "upstreams[0].registry.auth");
        assert_eq!(with(r#"{"bearer":"a","basic":{}}"#).unwrap_err().field, "upstreams[0].registry.auth");
        assert_eq!(
            with(r#"{"header":{"name":"bad name","value":"x"}}"#).unwrap_err().field,
            "upstreams[0].registry.auth.header.name"
        );
        assert_eq!(
            with(r#"{"basic":{"username":"a:b"}}"#).unwrap_err().field,
            "upstreams[0].registry.auth.basic.username"
        );
        assert_eq!(with(r#"{"token":"x"}"#).unwrap_err().field, "upstreams[0].registry.auth.token");
    }

    fn registry(json: &str) -> Result<RegistryConfig, ConfigError> {
        let doc = format!(r#"{{"upstreams":[{{"name":"web","registry":{json}}}]}}"#);
        PluginConfig::parse(doc.as_bytes()).map(|c| c.upstreams[0].registry.clone())
    }

    #[test]
    fn every_registry_type_takes_its_own_fields() {
        let v3 =
            registry(r#"{"type":"etcd_v3","target":"etcd","prefix":"/u/web/","grpc_target":"etcd_grpc"}"#).unwrap();
        assert_eq!(v3.spec.grpc_target(), Some("etcd_grpc"));
        let v2 = registry(r#"{"type":"etcd_v2","target":"etcd","prefix":"/u/web/","wait_ms":20000}"#).unwrap();
        assert!(matches!(v2.spec, RegistrySpec::EtcdV2 { wait_ms: 20000, .. }));
        let kv = registry(r#"{"type":"consul_kv","target":"consul","prefix":"upstreams/web/","token":"t0k","dc":"dc2","consistency":"stale"}"#)
            .unwrap();
        let RegistrySpec::Consul(c) = &kv.spec else { panic!("{kv:?}") };
        assert_eq!((c.dc.as_deref(), c.consistency, c.wait_ms), (Some("dc2"), Consistency::Stale, DEFAULT_WAIT_MS));
        assert_eq!(kv.auth_headers(), [("x-consul-token".to_string(), "t0k".to_string())]);
        assert!(!format!("{kv:?}").contains("t0k"));
        let health =
            registry(r#"{"type":"consul_health","target":"consul","service":"web","passing_only":false}"#).unwrap();
        let RegistrySpec::Consul(ConsulSpec { query: ConsulQuery::Health { service, passing_only }, .. }) =
            &health.spec
        else {
            panic!("{health:?}")
        };
        assert_eq!((service.as_str(), *passing_only), ("web", false));
        let nacos =
            registry(r#"{"type":"nacos","target":"nacos","service":"web","group":"G","namespace":"prod"}"#).unwrap();
        let RegistrySpec::Nacos { group, namespace, .. } = &nacos.spec else { panic!("{nacos:?}") };
        assert_eq!((group.as_deref(), namespace.as_deref()), (Some("G"), Some("prod")));
        let eureka = registry(
            r#"{"type":"eureka","target":"eureka","service":"WEB","auth":{"basic":{"username":"u","password":"p"}}}"#,
        )
        .unwrap();
        assert_eq!(eureka.spec.service(), Some("WEB"));
        assert_eq!(
            registry(r#"{"type":"eureka","target":"e","service":"W","group":"G"}"#).unwrap_err().field,
            "upstreams[0].registry.group"
        );
        let catalog = registry(r#"{"type":"consul_catalog","target":"consul","service":"web"}"#).unwrap();
        assert_eq!(
            catalog.spec,
            RegistrySpec::Consul(ConsulSpec {
                query: ConsulQuery::Catalog { service: "web".into() },
                wait_ms: DEFAULT_WAIT_MS,
                token: None,
                dc: None,
                consistency: Consistency::Default
            })
        );
        assert!(catalog.spec.prefix().is_none());

        let field_of = |json: &str| registry(json).unwrap_err().field;
        assert_eq!(
            field_of(r#"{"type":"etcd_v3","target":"e","prefix":"/p/","wait_ms":5}"#),
            "upstreams[0].registry.wait_ms"
        );
        assert_eq!(field_of(r#"{"type":"etcd_v2","target":"e","prefix":"p/"}"#), "upstreams[0].registry.prefix");
        assert_eq!(
            field_of(r#"{"type":"etcd_v2","target":"e","prefix":"/p/","grpc_target":"g"}"#),
            "upstreams[0].registry.grpc_target"
        );
        assert_eq!(field_of(r#"{"type":"consul_kv","target":"c","service":"web"}"#), "upstreams[0].registry.service");
        assert_eq!(field_of(r#"{"type":"consul_health","target":"c"}"#), "upstreams[0].registry.service");
        assert_eq!(
            field_of(r#"{"type":"consul_health","target":"c","service":"a/b"}"#),
            "upstreams[0].registry.service"
        );
        assert_eq!(
            field_of(r#"{"type":"consul_catalog","target":"c","service":"w","passing_only":true}"#),
            "upstreams[0].registry.passing_only"
        );
        assert_eq!(
            field_of(r#"{"type":"consul_kv","target":"c","prefix":"p/","consistency":"strong"}"#),
            "upstreams[0].registry.consistency"
        );
        assert_eq!(
            field_of(r#"{"type":"consul_kv","target":"c","prefix":"p/","wait_ms":600001}"#),
            "upstreams[0].registry.wait_ms"
        );
        assert_eq!(field_of(r#"{"type":7}"#), "upstreams[0].registry.type");
        let e = registry(r#"{"type":"zookeeper","target":"z"}"#).unwrap_err();
        assert!(e.message.contains("\"consul_health\""), "{e}");
    }

    #[test]
    fn nginx_host_takes_address_lists_balance_and_lease() {
        let c = PluginConfig::parse(
            br#"{"host":"nginx","lease_ms":2000,"upstreams":[{"name":"web",
              "registry":{"type":"etcd_v3","target":["127.0.0.1:2379","etcd.internal:2379","unix:/run/etcd.sock"],"prefix":"/u/web/"},
              "balance":{"policy":"hash","hash_key":"header:X-User"},"passive_health":false}]}"#,
        )
        .unwrap();
        assert_eq!(c.host, HostKind::Nginx);
        assert_eq!(c.lease_ms, 2000);
        assert_eq!(c.pick.as_deref(), Some("web"), "the only upstream is picked by default");
        let u = &c.upstreams[0];
        assert_eq!(u.registry.targets.len(), 3);
        assert_eq!(u.registry.authority, "127.0.0.1:2379");
        assert_eq!(u.balance, BalancePolicy::Hash(HashKey::Header("x-user".into())));
        assert!(!u.passive_health);

        let fail = |json: &str| PluginConfig::parse(json.as_bytes()).unwrap_err().field;
        let up = |extra: &str, target: &str| {
            format!(r#"{{"name":"web","registry":{{"type":"etcd_v3","target":{target},"prefix":"/p/"{extra}}}}}"#)
        };
        assert_eq!(fail(&format!(r#"{{"upstreams":[{}]}}"#, up("", r#"["a:1"]"#))), "upstreams[0].registry.target");
        assert_eq!(
            fail(&format!(r#"{{"host":"nginx","upstreams":[{}]}}"#, up("", r#"["a:1","nope"]"#))),
            "upstreams[0].registry.target[1]"
        );
        assert_eq!(
            fail(&format!(r#"{{"host":"nginx","upstreams":[{}]}}"#, up(r#","grpc_target":"g""#, r#""a:1""#))),
            "upstreams[0].registry.grpc_target"
        );
        assert_eq!(fail(&format!(r#"{{"lease_ms":900,"upstreams":[{}]}}"#, up("", r#""etcd""#))), "lease_ms");
        assert_eq!(
            fail(&format!(r#"{{"host":"nginx","route":"original_dst","upstreams":[{}]}}"#, up("", r#""a:1""#))),
            "route"
        );
        assert_eq!(fail(&format!(r#"{{"route":"magic","upstreams":[{}]}}"#, up("", r#""e""#))), "route");
        assert_eq!(
            fail(&format!(r#"{{"override_header":":authority","upstreams":[{}]}}"#, up("", r#""e""#))),
            "override_header"
        );
        let envoy_pick = PluginConfig::parse(
            format!(r#"{{"pick":"web","route":"original_dst","upstreams":[{}]}}"#, up("", r#""e""#)).as_bytes(),
        )
        .unwrap();
        assert_eq!((envoy_pick.pick.as_deref(), envoy_pick.route), (Some("web"), EnvoyRoute::OriginalDst));
        assert_eq!(fail(&format!(r#"{{"host":"iis","upstreams":[{}]}}"#, up("", r#""etcd""#))), "host");
        let two = format!(r#"{},{}"#, up("", r#""a:1""#), up("", r#""a:1""#).replace("\"web\"", "\"api\""));
        assert_eq!(fail(&format!(r#"{{"host":"nginx","upstreams":[{two}]}}"#)), "pick");
        assert_eq!(fail(&format!(r#"{{"host":"nginx","pick":"db","upstreams":[{two}]}}"#)), "pick");
        let ok =
            PluginConfig::parse(format!(r#"{{"host":"nginx","pick":"api","upstreams":[{two}]}}"#).as_bytes()).unwrap();
        assert_eq!(ok.pick.as_deref(), Some("api"));
    }

    #[test]
    fn balance_policies() {
        let with = |b: &str| {
            let json = format!(
                r#"{{"upstreams":[{{"name":"w","registry":{{"type":"etcd_v3","target":"e","prefix":"/p/"}},"balance":{b}}}]}}"#
            );
            PluginConfig::parse(json.as_bytes()).map(|c| c.upstreams[0].balance.clone())
        };
        assert_eq!(with(r#"{}"#), Ok(BalancePolicy::RoundRobin));
        assert_eq!(with(r#"{"policy":"least_request"}"#), Ok(BalancePolicy::LeastRequest));
        assert_eq!(
            with(r#"{"policy":"hash","hash_key":"cookie:sid"}"#),
            Ok(BalancePolicy::Hash(HashKey::Cookie("sid".into())))
        );
        assert_eq!(
            with(r#"{"policy":"hash","hash_key":"client_address"}"#),
            Ok(BalancePolicy::Hash(HashKey::ClientAddress))
        );
        assert_eq!(with(r#"{"policy":"hash"}"#).unwrap_err().field, "upstreams[0].balance.hash_key");
        assert_eq!(with(r#"{"policy":"hash","hash_key":"ip"}"#).unwrap_err().field, "upstreams[0].balance.hash_key");
        assert_eq!(with(r#"{"policy":"random"}"#).unwrap_err().field, "upstreams[0].balance.policy");
        assert_eq!(
            with(r#"{"policy":"round_robin","hash_key":"client_address"}"#).unwrap_err().field,
            "upstreams[0].balance.hash_key"
        );
    }

    #[test]
    fn duplicate_names_are_refused() {
        let e = error_of(
            r#"{"upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"e","prefix":"/a/"}},{"name":"web","registry":{"type":"etcd_v3","target":"e","prefix":"/b/"}}]}"#,
        );
        assert_eq!(e.field, "upstreams[1].name");
        assert!(e.to_string().contains("earlier upstream"), "{e}");
    }

    #[test]
    fn unknown_field_error_lists_the_allowed_ones() {
        let e = error_of(
            r#"{"upstreams":[{"name":"web","interval":5,"registry":{"type":"etcd_v3","target":"e","prefix":"/p/"}}]}"#,
        );
        assert_eq!(e.field, "upstreams[0].interval");
        assert!(e.message.contains("interval_ms"), "{e}");
    }

    #[test]
    fn server_config_is_empty_or_an_empty_object() {
        assert_eq!(parse_server_config(b""), Ok(ServerConfig::default()));
        assert_eq!(parse_server_config(b" {} "), Ok(ServerConfig::default()));
        let held = parse_server_config(br#"{"eds_hold_ms":400}"#).unwrap();
        assert_eq!((held.eds_hold_ms, held.status_token, held.cds.request_timeout_ms), (400, None, 5400));
        assert_eq!(parse_server_config(br#"{"eds_hold_ms":-1}"#).unwrap_err().field, "eds_hold_ms");
        assert_eq!(parse_server_config(br#"{"eds_hold_ms":290000}"#).map(|c| c.eds_hold_ms), Ok(290_000));
        assert_eq!(parse_server_config(br#"{"eds_hold_ms":290001}"#).unwrap_err().field, "eds_hold_ms");
        assert_eq!(parse_server_config(MINIMAL.as_bytes()).unwrap_err().field, "upstreams");
        assert!(parse_server_config(b"nope").is_err());
        let guarded = parse_server_config(br#"{"status_token":"0123456789abcdef"}"#).unwrap();
        assert_eq!(guarded.status_token, Some(Secret("0123456789abcdef".into())));
        assert_eq!(parse_server_config(br#"{"status_token":"short"}"#).unwrap_err().field, "status_token");
    }

    #[test]
    fn nginx_status_and_metrics_paths_and_their_token() {
        let up = r#"{"name":"web","registry":{"type":"etcd_v3","target":"127.0.0.1:2379","prefix":"/p/"}}"#;
        let parse =
            |extra: &str| PluginConfig::parse(format!(r#"{{"host":"nginx",{extra}"upstreams":[{up}]}}"#).as_bytes());
        let c = parse(r#""status_path":"/s","metrics_path":"/m","status_token":"0123456789abcdef","#).unwrap();
        assert_eq!((c.status_path.as_deref(), c.metrics_path.as_deref()), (Some("/s"), Some("/m")));
        assert!(!format!("{c:?}").contains("0123456789abcdef"), "the token stays out of Debug output");
        assert_eq!(parse(r#""status_token":"0123456789abcdef","#).unwrap_err().field, "status_token");
        assert_eq!(parse(r#""metrics_path":"m","#).unwrap_err().field, "metrics_path");
        let envoy = format!(r#"{{"metrics_path":"/m","upstreams":[{up}]}}"#).replace("127.0.0.1:2379", "etcd");
        assert_eq!(PluginConfig::parse(envoy.as_bytes()).unwrap_err().field, "metrics_path");
    }
}
