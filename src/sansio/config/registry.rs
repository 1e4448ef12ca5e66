//! `upstreams[].registry`: where one upstream's members are registered.
//! One [`RegistrySpec`] variant per registry type, holding only the fields
//! that type reads, so a combination no registry understands (a Consul
//! token on etcd, a gRPC watch on Eureka) cannot be represented.

use super::auth::{parse_auth, Auth, Secret};
use super::fields::{err, join, kind, Fields};
use super::{ConfigError, HostKind};
use crate::sansio::model::member::HostPort;
use serde_json::Value;

pub const DEFAULT_WAIT_MS: u64 = 50_000;

/// Where the members of one upstream are registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Where registry calls go, in failover order: one Envoy cluster name,
    /// or (nginx) `ip:port` / `host:port` / `unix:/path` addresses.
    pub targets: Vec<String>,
    /// The `:authority` of registry requests.
    pub authority: String,
    pub auth: Option<Auth>,
    pub spec: RegistrySpec,
}

/// The registry API and what it needs, per type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrySpec {
    /// etcd v3 through its JSON gateway (`/v3/kv/range`), upsync key layout.
    EtcdV3 {
        prefix: String,
        /// An HTTP/2 cluster to etcd for the gRPC Watch push trigger (Envoy).
        grpc_target: Option<String>,
    },
    /// etcd v2 (`/v2/keys`, watch by long poll), upsync key layout.
    EtcdV2 { prefix: String, wait_ms: u64 },
    /// Consul KV, catalog or health, as blocking queries.
    Consul(ConsulSpec),
    /// Nacos naming (`/nacos/v1/ns/instance/list`).
    Nacos { service: String, group: Option<String>, namespace: Option<String> },
    /// Eureka (`/eureka/apps/<APP>`, JSON), `UP` instances only.
    Eureka { service: String },
}

/// A Consul registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulSpec {
    pub query: ConsulQuery,
    /// How long a blocking query may be held.
    pub wait_ms: u64,
    /// Consul ACL token, sent as `X-Consul-Token`.
    pub token: Option<Secret>,
    /// Consul datacenter (`?dc=`).
    pub dc: Option<String>,
    pub consistency: Consistency,
}

/// What to read from Consul.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsulQuery {
    /// `/v1/kv/<prefix>?recurse`: upsync key layout, base64 values.
    Kv { prefix: String },
    /// `/v1/catalog/service/<name>`: every registered instance.
    Catalog { service: String },
    /// `/v1/health/service/<name>`: instances with their checks. With
    /// `passing_only`, Consul filters (`?passing`); without, every instance
    /// is listed and one with a non-passing check is marked down
    /// (nginx-upsync-module's `consul_health`).
    Health { service: String, passing_only: bool },
}

/// Consul's read consistency modes (api-docs/features/consistency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Default,
    Stale,
    Consistent,
}

/// The names `registry.type` accepts, in the order error messages list them.
pub const TYPE_NAMES: [&str; 7] =
    ["etcd_v3", "etcd_v2", "consul_kv", "consul_catalog", "consul_health", "nacos", "eureka"];

/// Fields every registry type takes.
const COMMON: [&str; 4] = ["type", "target", "authority", "auth"];

impl RegistrySpec {
    /// The `registry.type` this spec was read from.
    pub fn type_name(&self) -> &'static str {
        match self {
            RegistrySpec::EtcdV3 { .. } => "etcd_v3",
            RegistrySpec::EtcdV2 { .. } => "etcd_v2",
            RegistrySpec::Consul(c) => match c.query {
                ConsulQuery::Kv { .. } => "consul_kv",
                ConsulQuery::Catalog { .. } => "consul_catalog",
                ConsulQuery::Health { .. } => "consul_health",
            },
            RegistrySpec::Nacos { .. } => "nacos",
            RegistrySpec::Eureka { .. } => "eureka",
        }
    }

    /// The key prefix of the key/value types.
    pub fn prefix(&self) -> Option<&str> {
        match self {
            RegistrySpec::EtcdV3 { prefix, .. } | RegistrySpec::EtcdV2 { prefix, .. } => Some(prefix),
            RegistrySpec::Consul(ConsulSpec { query: ConsulQuery::Kv { prefix }, .. }) => Some(prefix),
            _ => None,
        }
    }

    /// The service name of the service-registry types.
    pub fn service(&self) -> Option<&str> {
        match self {
            RegistrySpec::Consul(ConsulSpec {
                query: ConsulQuery::Catalog { service } | ConsulQuery::Health { service, .. },
                ..
            })
            | RegistrySpec::Nacos { service, .. }
            | RegistrySpec::Eureka { service } => Some(service),
            _ => None,
        }
    }

    /// The etcd gRPC Watch cluster, if one is configured.
    pub fn grpc_target(&self) -> Option<&str> {
        match self {
            RegistrySpec::EtcdV3 { grpc_target, .. } => grpc_target.as_deref(),
            _ => None,
        }
    }
}

impl RegistryConfig {
    /// The headers added to every registry call: `auth`, and Consul's token.
    pub fn auth_headers(&self) -> Vec<(String, String)> {
        let mut headers = self.auth.as_ref().map(Auth::headers).unwrap_or_default();
        if let RegistrySpec::Consul(ConsulSpec { token: Some(t), .. }) = &self.spec {
            headers.push(("x-consul-token".to_string(), t.0.clone()));
        }
        headers
    }

    pub(crate) fn parse(path: &str, v: &Value, host: HostKind) -> Result<RegistryConfig, ConfigError> {
        Self::parse_as(path, v, host, Role::Upstream)
    }

    /// `discover[].registry`: the same object, naming the parent of many
    /// upstreams: a key/value type's `prefix` is the parent prefix, and a
    /// service registry takes no `service` (each listed service is one).
    pub(crate) fn parse_parent(path: &str, v: &Value, host: HostKind) -> Result<RegistryConfig, ConfigError> {
        Self::parse_as(path, v, host, Role::Parent)
    }

    /// The registry of the upstream `name` found under this parent.
    pub fn child(&self, name: &str) -> RegistryConfig {
        let mut child = self.clone();
        match &mut child.spec {
            RegistrySpec::EtcdV3 { prefix, .. }
            | RegistrySpec::EtcdV2 { prefix, .. }
            | RegistrySpec::Consul(ConsulSpec { query: ConsulQuery::Kv { prefix }, .. }) => {
                prefix.push_str(name);
                prefix.push('/');
            }
            RegistrySpec::Consul(ConsulSpec {
                query: ConsulQuery::Catalog { service } | ConsulQuery::Health { service, .. },
                ..
            })
            | RegistrySpec::Nacos { service, .. }
            | RegistrySpec::Eureka { service } => *service = name.to_string(),
        }
        child
    }

    fn parse_as(path: &str, v: &Value, host: HostKind, role: Role) -> Result<RegistryConfig, ConfigError> {
        let type_path = join(path, "type");
        let type_name = match v.get("type") {
            None | Some(Value::Null) => return Err(err(&type_path, "is required")),
            Some(Value::String(t)) => TYPE_NAMES.iter().copied().find(|k| k == t).ok_or_else(|| {
                let names: Vec<String> = TYPE_NAMES.iter().map(|k| format!("{k:?}")).collect();
                err(&type_path, format!("must be one of {}, got {t:?}", names.join(", ")))
            })?,
            Some(other) => return Err(err(&type_path, format!("must be a string, got {}", kind(other)))),
        };
        let own: &[&'static str] = match type_name {
            "etcd_v3" => &["prefix", "grpc_target"],
            "etcd_v2" => &["prefix", "wait_ms"],
            "consul_kv" => &["prefix", "wait_ms", "token", "dc", "consistency"],
            "consul_catalog" => &["service", "wait_ms", "token", "dc", "consistency"],
            "consul_health" => &["service", "wait_ms", "token", "dc", "consistency", "passing_only"],
            "nacos" => &["service", "group", "namespace"],
            _ => &["service"],
        };
        let allowed: Vec<&'static str> =
            COMMON.iter().chain(own).copied().filter(|k| role == Role::Upstream || *k != "service").collect();
        let service_of = |f: &Fields<'_>| match role {
            Role::Upstream => service(f),
            Role::Parent => Ok(String::new()),
        };
        let f = Fields::new(path, v, &allowed)?;
        let targets = parse_targets(&f.path("target"), f.required("target")?, host)?;
        let first = targets.first().map(String::as_str).unwrap_or_default();
        let authority = f.string("authority")?.filter(|s| !s.is_empty()).unwrap_or(first).to_string();
        let auth = match f.get("auth") {
            None => None,
            Some(a) => Some(parse_auth(&f.path("auth"), a)?),
        };
        let spec = match type_name {
            "etcd_v3" => {
                if host == HostKind::Nginx && f.get("grpc_target").is_some() {
                    return Err(err(&f.path("grpc_target"), "needs gRPC streams, which ngx_wasm_module does not have"));
                }
                RegistrySpec::EtcdV3 { prefix: prefix(&f, false)?, grpc_target: non_empty(&f, "grpc_target")? }
            }
            "etcd_v2" => RegistrySpec::EtcdV2 { prefix: prefix(&f, true)?, wait_ms: wait_ms(&f)? },
            "consul_kv" => consul(&f, ConsulQuery::Kv { prefix: prefix(&f, false)? })?,
            "consul_catalog" => consul(&f, ConsulQuery::Catalog { service: service_of(&f)? })?,
            "consul_health" => consul(
                &f,
                ConsulQuery::Health { service: service_of(&f)?, passing_only: f.bool("passing_only", true)? },
            )?,
            "nacos" => RegistrySpec::Nacos {
                service: service_of(&f)?,
                group: non_empty(&f, "group")?,
                namespace: non_empty(&f, "namespace")?,
            },
            _ => RegistrySpec::Eureka { service: service_of(&f)? },
        };
        Ok(RegistryConfig { targets, authority, auth, spec })
    }
}

/// Whether a registry object names one upstream or the parent of many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Upstream,
    Parent,
}

fn non_empty(f: &Fields<'_>, name: &str) -> Result<Option<String>, ConfigError> {
    Ok(f.string(name)?.filter(|s| !s.is_empty()).map(str::to_string))
}

fn wait_ms(f: &Fields<'_>) -> Result<u64, ConfigError> {
    f.uint("wait_ms", DEFAULT_WAIT_MS, 100, 600_000)
}

/// A key prefix; etcd v2 prefixes are directories and start with '/'.
fn prefix(f: &Fields<'_>, directory: bool) -> Result<String, ConfigError> {
    let prefix = f.required_string("prefix")?;
    if !prefix.ends_with('/') {
        return Err(err(
            &f.path("prefix"),
            format!("must end with '/' so that it cannot match a sibling prefix, got {prefix:?}"),
        ));
    }
    if directory && !prefix.starts_with('/') {
        return Err(err(&f.path("prefix"), format!("must start with '/' (an etcd v2 directory), got {prefix:?}")));
    }
    Ok(prefix.to_string())
}

fn service(f: &Fields<'_>) -> Result<String, ConfigError> {
    let service = f.required_string("service")?;
    if service.contains('/') || service.chars().any(char::is_control) {
        return Err(err(&f.path("service"), format!("must be a service name without '/', got {service:?}")));
    }
    Ok(service.to_string())
}

fn consul(f: &Fields<'_>, query: ConsulQuery) -> Result<RegistrySpec, ConfigError> {
    let consistency = match f.string("consistency")? {
        None | Some("default") => Consistency::Default,
        Some("stale") => Consistency::Stale,
        Some("consistent") => Consistency::Consistent,
        Some(other) => {
            return Err(err(
                &f.path("consistency"),
                format!("must be one of \"default\", \"stale\", \"consistent\", got {other:?}"),
            ))
        }
    };
    Ok(RegistrySpec::Consul(ConsulSpec {
        query,
        wait_ms: wait_ms(f)?,
        token: f.string("token")?.filter(|s| !s.is_empty()).map(|t| Secret(t.to_string())),
        dc: non_empty(f, "dc")?,
        consistency,
    }))
}

/// Envoy: one cluster name. nginx: one address or a list tried in order.
fn parse_targets(path: &str, v: &Value, host: HostKind) -> Result<Vec<String>, ConfigError> {
    let items: Vec<(String, &Value)> = match (host, v) {
        (_, Value::String(_)) => vec![(path.to_string(), v)],
        (HostKind::Nginx, Value::Array(list)) if !list.is_empty() && list.len() <= 16 => {
            list.iter().enumerate().map(|(i, x)| (format!("{path}[{i}]"), x)).collect()
        }
        (HostKind::Nginx, _) => return Err(err(path, "must be an address or a list of 1-16 addresses")),
        (HostKind::Envoy, _) => return Err(err(path, "must be the name of an Envoy cluster (a string)")),
    };
    let mut out = Vec::with_capacity(items.len());
    for (item_path, x) in items {
        let s = x.as_str().filter(|s| !s.is_empty()).ok_or_else(|| err(&item_path, "must be a non-empty string"))?;
        if host == HostKind::Nginx && !s.starts_with("unix:/") {
            s.parse::<HostPort>()
                .map_err(|e| err(&item_path, format!("must be \"ip:port\", \"host:port\" or \"unix:/path\": {e}")))?;
        }
        out.push(s.to_string());
    }
    Ok(out)
}
