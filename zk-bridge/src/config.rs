//! The bridge's configuration file (JSON), validated field by field.
//!
//! Every problem is reported with the path of the field and what is
//! allowed, e.g. `mounts[0].layout: must be one of "upsync", "curator",
//! "dubbo2", got "x"`, and every problem of a file is reported at once.
//! docs/zk-bridge.md documents each field.

use serde_json::{Map, Value};
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;

/// A credential: its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub log_level: tracing::Level,
    pub zookeeper: ZkConfig,
    pub http: HttpConfig,
    pub mounts: Vec<MountConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkConfig {
    /// `host:port[,host:port...][/chroot]`
    pub connect: String,
    pub session_timeout_ms: u64,
    pub connection_timeout_ms: u64,
    pub reconnect_backoff_max_ms: u64,
    pub auth: Option<DigestAuth>,
}

/// ZooKeeper `digest` authentication (`addauth digest user:password`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestAuth {
    pub user: String,
    pub password: Secret,
}

impl DigestAuth {
    /// The `user:password` bytes of ZooKeeper's digest scheme.
    pub fn credentials(&self) -> Vec<u8> {
        format!("{}:{}", self.user, self.password.expose()).into_bytes()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub token: Option<Secret>,
    pub max_connections: usize,
    pub default_wait_ms: u64,
    pub max_wait_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `<path>/<host:port>` children holding upsync JSON.
    Upsync,
    /// Curator service discovery / Spring Cloud Zookeeper / Dubbo 3
    /// application level: `<path>/<id>` holding a ServiceInstance JSON.
    Curator { use_ssl_port: bool, metadata: bool },
    /// Dubbo 2 interface level: `<path>/<url-encoded provider URL>`.
    Dubbo2 { protocols: Vec<String>, group: Option<String>, version: Option<String>, metadata: bool },
}

impl Layout {
    pub fn name(&self) -> &'static str {
        match self {
            Layout::Upsync => "upsync",
            Layout::Curator { .. } => "curator",
            Layout::Dubbo2 { .. } => "dubbo2",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountConfig {
    /// ZooKeeper path (below the chroot), e.g. `/services/web`.
    pub path: String,
    /// Consul KV prefix it is served under, e.g. `services/web/`.
    pub prefix: String,
    pub layout: Layout,
    pub max_znodes: usize,
    pub max_value_bytes: usize,
}

pub const LAYOUTS: &str = r#""upsync", "curator", "dubbo2""#;
const LOG_LEVELS: &str = r#""error", "warn", "info", "debug", "trace""#;

/// Parses and validates a configuration file's text. `env` looks up
/// environment variables (for `password_env`), `read_file` reads files
/// (for `password_file`); both are parameters so tests need neither.
pub fn parse(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    read_file: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Config, Vec<String>> {
    let root: Value = serde_json::from_str(text).map_err(|e| vec![format!("not valid JSON: {e}")])?;
    let mut errors = Vec::new();
    let cfg = parse_root(&root, &mut Errors(&mut errors), env, read_file);
    match cfg {
        Some(c) if errors.is_empty() => Ok(c),
        _ => {
            if errors.is_empty() {
                errors.push("invalid configuration".into());
            }
            Err(errors)
        }
    }
}

struct Errors<'e>(&'e mut Vec<String>);

impl Errors<'_> {
    fn add(&mut self, path: &str, msg: impl fmt::Display) {
        self.0.push(format!("{path}: {msg}"));
    }
}

/// A JSON object being read: every field taken is remembered so the ones
/// left over are reported as unknown.
struct Obj<'v> {
    path: String,
    map: &'v Map<String, Value>,
    taken: Vec<&'static str>,
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'v> Obj<'v> {
    fn new(path: String, v: &'v Value, e: &mut Errors<'_>) -> Option<Self> {
        match v {
            Value::Object(map) => Some(Obj { path, map, taken: Vec::new() }),
            other => {
                e.add(
                    if path.is_empty() { "(top level)" } else { &path },
                    format!("must be an object, got {}", type_name(other)),
                );
                None
            }
        }
    }

    fn field_path(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// The field, or None when absent (null counts as absent).
    fn get(&mut self, name: &'static str) -> Option<&'v Value> {
        self.taken.push(name);
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn has(&self, name: &str) -> bool {
        self.map.get(name).is_some_and(|v| !v.is_null())
    }

    fn string(&mut self, name: &'static str, e: &mut Errors<'_>) -> Option<String> {
        match self.get(name)? {
            Value::String(s) => Some(s.clone()),
            other => {
                e.add(&self.field_path(name), format!("must be a string, got {}", type_name(other)));
                None
            }
        }
    }

    fn required_string(&mut self, name: &'static str, e: &mut Errors<'_>) -> Option<String> {
        if !self.has(name) {
            self.taken.push(name);
            e.add(&self.field_path(name), "is required");
            return None;
        }
        self.string(name, e)
    }

    fn int(&mut self, name: &'static str, range: RangeInclusive<u64>, default: u64, e: &mut Errors<'_>) -> u64 {
        let Some(v) = self.get(name) else { return default };
        match v.as_u64().filter(|n| range.contains(n)) {
            Some(n) => n,
            None => {
                let got = if v.is_number() { v.to_string() } else { type_name(v).to_string() };
                e.add(
                    &self.field_path(name),
                    format!("must be an integer in {}..={}, got {got}", range.start(), range.end()),
                );
                default
            }
        }
    }

    fn boolean(&mut self, name: &'static str, default: bool, e: &mut Errors<'_>) -> bool {
        match self.get(name) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                e.add(&self.field_path(name), format!("must be true or false, got {}", type_name(other)));
                default
            }
        }
    }

    /// Reports fields not taken; `forbidden` explains fields that exist
    /// elsewhere (e.g. another layout's).
    fn finish(self, e: &mut Errors<'_>, forbidden: &dyn Fn(&str) -> Option<String>) {
        let mut unknown: Vec<&String> = self.map.keys().filter(|k| !self.taken.contains(&k.as_str())).collect();
        unknown.sort();
        for k in unknown {
            match forbidden(k) {
                Some(why) => e.add(&self.field_path(k), why),
                None => {
                    let mut allowed = self.taken.clone();
                    allowed.sort_unstable();
                    allowed.dedup();
                    e.add(&self.field_path(k), format!("unknown field; allowed here: {}", allowed.join(", ")))
                }
            }
        }
    }
}

fn no_other(_: &str) -> Option<String> {
    None
}

fn parse_root(
    root: &Value,
    e: &mut Errors<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    read_file: &dyn Fn(&str) -> Result<String, String>,
) -> Option<Config> {
    let mut o = Obj::new(String::new(), root, e)?;
    let listen = match o.string("listen", e) {
        None => SocketAddr::from(([127, 0, 0, 1], 8500)),
        Some(s) => match s.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                e.add("listen", format!("must be an address ip:port such as \"127.0.0.1:8500\", got {s:?}"));
                SocketAddr::from(([127, 0, 0, 1], 8500))
            }
        },
    };
    let log_level = match o.string("log_level", e).as_deref() {
        None | Some("info") => tracing::Level::INFO,
        Some("error") => tracing::Level::ERROR,
        Some("warn") => tracing::Level::WARN,
        Some("debug") => tracing::Level::DEBUG,
        Some("trace") => tracing::Level::TRACE,
        Some(other) => {
            e.add("log_level", format!("must be one of {LOG_LEVELS}, got {other:?}"));
            tracing::Level::INFO
        }
    };
    let zookeeper = match o.get("zookeeper") {
        Some(v) => parse_zk(v, e, env, read_file),
        None => {
            e.add("zookeeper", "is required");
            None
        }
    };
    let http = match o.get("http") {
        Some(v) => parse_http(v, e),
        None => parse_http(&Value::Object(Map::new()), e),
    };
    let mounts = match o.get("mounts") {
        None => {
            e.add("mounts", "is required (a list of at least one mount)");
            None
        }
        Some(Value::Array(items)) if items.is_empty() || items.len() > MAX_MOUNTS => {
            e.add("mounts", format!("must list 1..={MAX_MOUNTS} mounts, got {}", items.len()));
            None
        }
        Some(Value::Array(items)) => {
            let mounts: Vec<Option<MountConfig>> =
                items.iter().enumerate().map(|(i, m)| parse_mount(&format!("mounts[{i}]"), m, e)).collect();
            check_prefixes(&mounts, e);
            mounts.into_iter().collect::<Option<Vec<_>>>()
        }
        Some(other) => {
            e.add("mounts", format!("must be an array of mounts, got {}", type_name(other)));
            None
        }
    };
    o.finish(e, &no_other);
    Some(Config { listen, log_level, zookeeper: zookeeper?, http: http?, mounts: mounts? })
}

pub const MAX_MOUNTS: usize = 256;

fn parse_zk(
    v: &Value,
    e: &mut Errors<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    read_file: &dyn Fn(&str) -> Result<String, String>,
) -> Option<ZkConfig> {
    let mut o = Obj::new("zookeeper".into(), v, e)?;
    let connect = o.required_string("connect", e);
    if let Some(c) = &connect {
        if let Err(why) = check_connect(c) {
            e.add("zookeeper.connect", why);
        }
    }
    let session_timeout_ms = o.int("session_timeout_ms", 1000..=600_000, 10_000, e);
    let connection_timeout_ms = o.int("connection_timeout_ms", 100..=60_000, 3000, e);
    let reconnect_backoff_max_ms = o.int("reconnect_backoff_max_ms", 100..=60_000, 5000, e);
    let auth = o.get("auth").and_then(|a| parse_auth(a, e, env, read_file));
    let auth_ok = !o.has("auth") || auth.is_some();
    o.finish(e, &no_other);
    if !auth_ok {
        return None;
    }
    Some(ZkConfig { connect: connect?, session_timeout_ms, connection_timeout_ms, reconnect_backoff_max_ms, auth })
}

/// `host:port[,host:port...][/chroot]`, as ZooKeeper's own clients take it.
fn check_connect(c: &str) -> Result<(), String> {
    let (hosts, chroot) = match c.find('/') {
        Some(i) => (c.get(..i).unwrap_or_default(), c.get(i..)),
        None => (c, None),
    };
    if hosts.is_empty() {
        return Err(format!("must be host:port[,host:port...][/chroot], got {c:?}"));
    }
    for h in hosts.split(',') {
        let ok =
            h.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return Err(format!("{h:?} is not host:port (in {c:?}; expected host:port[,host:port...][/chroot])"));
        }
    }
    if let Some(root) = chroot {
        if root != "/" {
            check_zk_path(root).map_err(|why| format!("chroot {root:?}: {why}"))?;
        }
    }
    Ok(())
}

fn parse_auth(
    v: &Value,
    e: &mut Errors<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    read_file: &dyn Fn(&str) -> Result<String, String>,
) -> Option<DigestAuth> {
    let mut o = Obj::new("zookeeper.auth".into(), v, e)?;
    let mut ok = true;
    if let Some(s) = o.string("scheme", e) {
        if s != "digest" {
            e.add("zookeeper.auth.scheme", format!("must be \"digest\" (the only scheme supported), got {s:?}"));
            ok = false;
        }
    }
    let user = o.required_string("user", e);
    if let Some(u) = &user {
        if u.is_empty() || u.contains(':') {
            e.add("zookeeper.auth.user", "must be a non-empty string without ':'");
            ok = false;
        }
    }
    let sources: Vec<&str> = ["password", "password_file", "password_env"].into_iter().filter(|k| o.has(k)).collect();
    let inline = o.string("password", e);
    let file = o.string("password_file", e);
    let var = o.string("password_env", e);
    let password = match sources.as_slice() {
        [_] => {
            if let Some(p) = inline {
                Some(p)
            } else if let Some(f) = file {
                match read_file(&f) {
                    // A trailing newline is how editors and `echo` leave files.
                    Ok(text) => Some(text.trim_end_matches(['\n', '\r']).to_string()),
                    Err(why) => {
                        e.add("zookeeper.auth.password_file", format!("cannot read {f:?}: {why}"));
                        None
                    }
                }
            } else if let Some(name) = var {
                let got = env(&name);
                if got.is_none() {
                    e.add("zookeeper.auth.password_env", format!("environment variable {name:?} is not set"));
                }
                got
            } else {
                None
            }
        }
        [] => {
            e.add("zookeeper.auth", "needs one of password, password_file, password_env");
            None
        }
        many => {
            e.add(
                "zookeeper.auth",
                format!("give only one of password, password_file, password_env (got {})", many.join(", ")),
            );
            None
        }
    };
    o.finish(e, &no_other);
    if !ok {
        return None;
    }
    Some(DigestAuth { user: user?, password: Secret(password?) })
}

fn parse_http(v: &Value, e: &mut Errors<'_>) -> Option<HttpConfig> {
    let mut o = Obj::new("http".into(), v, e)?;
    let token = o.string("token", e).map(Secret);
    if token.as_ref().is_some_and(|t| t.0.is_empty()) {
        e.add("http.token", "must not be empty (leave it out for no token)");
    }
    let max_connections = o.int("max_connections", 1..=100_000, 4096, e);
    let max_wait_ms = o.int("max_wait_ms", 1000..=600_000, 600_000, e);
    let default_wait_ms = o.int("default_wait_ms", 1000..=600_000, 300_000, e);
    if default_wait_ms > max_wait_ms {
        e.add(
            "http.default_wait_ms",
            format!("must not exceed http.max_wait_ms ({max_wait_ms}), got {default_wait_ms}"),
        );
    }
    o.finish(e, &no_other);
    Some(HttpConfig {
        token,
        max_connections: usize::try_from(max_connections).unwrap_or(4096),
        default_wait_ms,
        max_wait_ms,
    })
}

/// A ZooKeeper path: absolute, no empty, `.` or `..` segment, no trailing
/// slash, no control characters.
fn check_zk_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if p == "/" {
        return Ok(());
    }
    if p.ends_with('/') {
        return Err("must not end with '/'".into());
    }
    for seg in p.split('/').skip(1) {
        if seg.is_empty() {
            return Err("has an empty segment ('//')".into());
        }
        if seg == "." || seg == ".." {
            return Err("has a '.' or '..' segment".into());
        }
    }
    if p.chars().any(|c| c.is_control()) {
        return Err("has a control character".into());
    }
    Ok(())
}

const UPSYNC_FIELDS: &[&str] = &[];
const CURATOR_FIELDS: &[&str] = &["use_ssl_port", "metadata"];
const DUBBO2_FIELDS: &[&str] = &["protocols", "group", "version", "metadata"];

fn parse_mount(path: &str, v: &Value, e: &mut Errors<'_>) -> Option<MountConfig> {
    let mut o = Obj::new(path.to_string(), v, e)?;
    let zk_path = o.required_string("path", e);
    if let Some(p) = &zk_path {
        if let Err(why) = check_zk_path(p) {
            e.add(&o.field_path("path"), format!("{why}, got {p:?} (e.g. \"/services/web\")"));
        }
    }
    let prefix = o.string("prefix", e);
    if let Some(p) = &prefix {
        if p.starts_with('/') || !p.ends_with('/') || p.len() < 2 || p.contains("//") {
            e.add(
                &o.field_path("prefix"),
                format!("must be a Consul KV prefix without a leading '/' and ending with '/', got {p:?}"),
            );
        }
    }
    let layout_name = o.required_string("layout", e);
    let max_znodes = o.int("max_znodes", 1..=1_000_000, 10_000, e);
    let max_value_bytes = o.int("max_value_bytes", 64..=1_048_576, 16_384, e);
    let layout = match layout_name.as_deref() {
        Some("upsync") => Some(Layout::Upsync),
        Some("curator") => {
            let use_ssl_port = o.boolean("use_ssl_port", false, e);
            let metadata = o.boolean("metadata", true, e);
            Some(Layout::Curator { use_ssl_port, metadata })
        }
        Some("dubbo2") => {
            let protocols = match o.get("protocols") {
                None => Vec::new(),
                Some(Value::Array(items)) => {
                    let mut out = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        match item.as_str() {
                            Some(s) if !s.is_empty() => out.push(s.to_string()),
                            _ => {
                                e.add(&format!("{path}.protocols[{i}]"), "must be a non-empty string such as \"dubbo\"")
                            }
                        }
                    }
                    out
                }
                Some(other) => {
                    e.add(&o.field_path("protocols"), format!("must be an array of strings, got {}", type_name(other)));
                    Vec::new()
                }
            };
            let group = o.string("group", e);
            let version = o.string("version", e);
            let metadata = o.boolean("metadata", true, e);
            Some(Layout::Dubbo2 { protocols, group, version, metadata })
        }
        Some(other) => {
            e.add(&o.field_path("layout"), format!("must be one of {LAYOUTS}, got {other:?}"));
            None
        }
        None => None,
    };
    let chosen = layout_name.clone().unwrap_or_default();
    let forbidden = move |k: &str| -> Option<String> {
        let owners: Vec<&str> = [("upsync", UPSYNC_FIELDS), ("curator", CURATOR_FIELDS), ("dubbo2", DUBBO2_FIELDS)]
            .iter()
            .filter(|(_, fields)| fields.contains(&k))
            .map(|(name, _)| *name)
            .collect();
        if owners.is_empty() {
            return None;
        }
        let quoted: Vec<String> = owners.iter().map(|n| format!("{n:?}")).collect();
        Some(format!("only for layout {}, not {chosen:?}", quoted.join(" or ")))
    };
    o.finish(e, &forbidden);
    let zk_path = zk_path?;
    let prefix = prefix.unwrap_or_else(|| default_prefix(&zk_path));
    Some(MountConfig {
        path: zk_path,
        prefix,
        layout: layout?,
        max_znodes: usize::try_from(max_znodes).unwrap_or(10_000),
        max_value_bytes: usize::try_from(max_value_bytes).unwrap_or(16_384),
    })
}

/// `/services/web` → `services/web/`.
pub fn default_prefix(zk_path: &str) -> String {
    format!("{}/", zk_path.trim_matches('/'))
}

/// Two mounts may not serve the same prefix, nor one inside the other:
/// a key would then belong to two mounts.
fn check_prefixes(mounts: &[Option<MountConfig>], e: &mut Errors<'_>) {
    for (i, a) in mounts.iter().enumerate() {
        let Some(a) = a else { continue };
        for (j, b) in mounts.iter().enumerate().skip(i + 1) {
            let Some(b) = b else { continue };
            if a.prefix.starts_with(&b.prefix) || b.prefix.starts_with(&a.prefix) {
                e.add(
                    &format!("mounts[{j}].prefix"),
                    format!(
                        "{:?} overlaps mounts[{i}].prefix {:?}; each mount needs its own prefix",
                        b.prefix, a.prefix
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }
    fn no_file(p: &str) -> Result<String, String> {
        Err(format!("no file {p}"))
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text, &no_env, &no_file).unwrap_err()
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = parse(
            r#"{"zookeeper": {"connect": "127.0.0.1:2181"}, "mounts": [{"path": "/services/web", "layout": "curator"}]}"#,
            &no_env,
            &no_file,
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8500");
        assert_eq!(c.zookeeper.session_timeout_ms, 10_000);
        assert_eq!(c.http.default_wait_ms, 300_000);
        assert_eq!(c.http.max_wait_ms, 600_000);
        let m = &c.mounts[0];
        assert_eq!(m.prefix, "services/web/");
        assert_eq!(m.layout, Layout::Curator { use_ssl_port: false, metadata: true });
        assert_eq!((m.max_znodes, m.max_value_bytes), (10_000, 16_384));
    }

    #[test]
    fn errors_name_the_field_and_what_is_allowed() {
        let errs = errors(
            r#"{"zookeeper": {"connect": "zk1", "session_timeout_ms": 5},
                "listen": "nowhere", "color": 1,
                "mounts": [{"path": "services/web", "layout": "x"},
                           {"path": "/a", "layout": "upsync", "group": "g"},
                           {"path": "/b", "layout": "dubbo2", "protocols": [""], "use_ssl_port": true}]}"#,
        );
        let want = [
            r#"zookeeper.connect: "zk1" is not host:port"#,
            "zookeeper.session_timeout_ms: must be an integer in 1000..=600000, got 5",
            "listen: must be an address ip:port",
            r#"mounts[0].path: must start with '/', got "services/web""#,
            r#"mounts[0].layout: must be one of "upsync", "curator", "dubbo2", got "x""#,
            r#"mounts[1].group: only for layout "dubbo2", not "upsync""#,
            "mounts[2].protocols[0]: must be a non-empty string",
            r#"mounts[2].use_ssl_port: only for layout "curator", not "dubbo2""#,
            "color: unknown field; allowed here: http, listen, log_level, mounts, zookeeper",
        ];
        for w in want {
            assert!(errs.iter().any(|e| e.starts_with(w)), "missing {w:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
    }

    #[test]
    fn required_fields_and_overlapping_prefixes() {
        let errs = errors(r#"{"mounts": []}"#);
        assert!(errs.contains(&"zookeeper: is required".to_string()), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("mounts: must list 1..=256 mounts, got 0")), "{errs:?}");
        let errs = errors(
            r#"{"zookeeper": {"connect": "h:1"}, "mounts": [
                {"path": "/a", "layout": "upsync", "prefix": "x/"},
                {"path": "/b", "layout": "upsync", "prefix": "x/y/"},
                {"path": "/c", "layout": "upsync", "prefix": "/c"},
                {"layout": "upsync"}]}"#,
        );
        assert!(errs.iter().any(|e| e.starts_with(r#"mounts[1].prefix: "x/y/" overlaps mounts[0].prefix "x/""#)));
        assert!(errs.iter().any(|e| e.starts_with("mounts[2].prefix: must be a Consul KV prefix")));
        assert!(errs.contains(&"mounts[3].path: is required".to_string()), "{errs:?}");
    }

    #[test]
    fn digest_auth_sources_and_the_secret_is_never_printed() {
        let env = |k: &str| (k == "ZK_PW").then(|| "s3cret".to_string());
        let file = |p: &str| if p == "/pw" { Ok("fromfile\n".to_string()) } else { Err("missing".into()) };
        let base = |auth: &str| {
            format!(
                r#"{{"zookeeper": {{"connect": "h:1/app", "auth": {auth}}}, "mounts": [{{"path": "/a", "layout": "upsync"}}]}}"#
            )
        };
        let c = parse(&base(r#"{"user": "bridge", "password_env": "ZK_PW"}"#), &env, &file).unwrap();
        let auth = c.zookeeper.auth.clone().unwrap();
        assert_eq!(auth.credentials(), b"bridge:s3cret");
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        let c = parse(&base(r#"{"user": "bridge", "password_file": "/pw"}"#), &env, &file).unwrap();
        assert_eq!(c.zookeeper.auth.unwrap().password.expose(), "fromfile");
        let errs =
            parse(&base(r#"{"user": "a:b", "password": "x", "password_env": "ZK_PW", "scheme": "sasl"}"#), &env, &file)
                .unwrap_err();
        assert!(errs.iter().any(|e| e.starts_with(r#"zookeeper.auth.scheme: must be "digest""#)), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("zookeeper.auth.user: must be a non-empty string without ':'")));
        assert!(errs.iter().any(|e| e.starts_with("zookeeper.auth: give only one of")), "{errs:?}");
        let errs = parse(&base(r#"{"user": "u", "password_env": "NOPE"}"#), &env, &file).unwrap_err();
        assert_eq!(errs, [r#"zookeeper.auth.password_env: environment variable "NOPE" is not set"#]);
        assert!(errs.iter().all(|e| !e.contains("s3cret")));
    }

    #[test]
    fn not_json_and_wrong_types() {
        assert!(errors("{")[0].starts_with("not valid JSON"));
        assert_eq!(errors("[]"), ["(top level): must be an object, got an array"]);
        let errs = errors(
            r#"{"zookeeper": {"connect": 5}, "mounts": [{"path": "/a", "layout": "curator", "use_ssl_port": "yes"}]}"#,
        );
        assert!(errs.contains(&"zookeeper.connect: must be a string, got a number".to_string()), "{errs:?}");
        assert!(errs.contains(&"mounts[0].use_ssl_port: must be true or false, got a string".to_string()), "{errs:?}");
    }
}
