//! Pick-mode routing by what the registry knows: the proxy's own zone
//! (top level `zone`), how many of that zone's members must be healthy
//! before traffic spills to other zones (`upstreams[].zone_min_healthy_share`)
//! and selection of a tagged subset by request header (`upstreams[].subset`).

use super::fields::{err, Fields};
use super::{ConfigError, HostKind};
use crate::sansio::model::locality::{MAX_LOCALITY_BYTES, MAX_TAG_KEY_BYTES};
use serde_json::Value;

/// Default `zone_min_healthy_share`: Envoy starts moving traffic off a
/// priority level once fewer than 1/1.4 ≈ 71 % of its hosts are healthy
/// (overprovisioning factor 1.4); the same point, rounded.
pub const DEFAULT_MIN_HEALTHY_PERMILLE: u32 = 700;

/// How an upstream's members are chosen beyond the balancing policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRouting {
    /// The share (in thousandths) of the proxy zone's primary members that
    /// must be usable for traffic to stay in that zone.
    pub min_healthy_permille: u32,
    pub subset: Option<SubsetRule>,
}

impl Default for UpstreamRouting {
    fn default() -> Self {
        UpstreamRouting { min_healthy_permille: DEFAULT_MIN_HEALTHY_PERMILLE, subset: None }
    }
}

/// `{"header": "x-canary", "key": "canary"}`: a request whose header has
/// value V goes to the members tagged `key=V`; other requests (and
/// requests whose subset has no usable member) go to the members without
/// the tag `key`; when none of those is usable, to every member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsetRule {
    /// Lower case.
    pub header: String,
    pub key: String,
}

/// Reads `zone_min_healthy_share` and `subset` of an upstream.
pub(crate) fn parse_upstream_routing(f: &Fields<'_>) -> Result<UpstreamRouting, ConfigError> {
    let min_healthy_permille = match f.get("zone_min_healthy_share") {
        None => DEFAULT_MIN_HEALTHY_PERMILLE,
        Some(v) => match v.as_f64().filter(|x| (0.0..=1.0).contains(x)) {
            // In 0..=1000 after the check, so the cast neither truncates nor saturates.
            Some(x) => (x * 1000.0).round() as u32,
            None => {
                return Err(err(
                    &f.path("zone_min_healthy_share"),
                    format!("must be a number from 0 to 1 (a share of the zone's members), got {v}"),
                ))
            }
        },
    };
    let subset = match f.get("subset") {
        None => None,
        Some(v) => Some(parse_subset(&f.path("subset"), v)?),
    };
    Ok(UpstreamRouting { min_healthy_permille, subset })
}

fn parse_subset(path: &str, v: &Value) -> Result<SubsetRule, ConfigError> {
    let f = Fields::new(path, v, &["header", "key"])?;
    let header = f.required_string("header")?.to_ascii_lowercase();
    if header.starts_with(':') || !header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(err(&f.path("header"), format!("must be an HTTP header name, got {header:?}")));
    }
    let key = f.required_string("key")?;
    if key.len() > MAX_TAG_KEY_BYTES || key.trim() != key || key.chars().any(char::is_control) {
        return Err(err(
            &f.path("key"),
            format!("must be a tag name of at most {MAX_TAG_KEY_BYTES} bytes, no surrounding spaces, got {key:?}"),
        ));
    }
    Ok(SubsetRule { header, key: key.to_string() })
}

/// An upstream name: 1-64 characters of A-Z a-z 0-9 _ . - (the rule of
/// `upstreams[].name`; also what a pick-only filter accepts as `pick` and
/// from `pick_variable`).
pub fn is_upstream_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The variable the filter writes the picked member to (route.rs's
/// `BACKEND_VARIABLE`): `pick_variable` cannot be it.
const BACKEND_VARIABLE_NAME: &str = "upsync_backend";

/// Reads the top-level `pick_variable`: the nginx variable that names, per
/// request, the upstream to pick from (`"upsync_upstream"` for
/// `$upsync_upstream`).
pub(crate) fn parse_pick_variable(f: &Fields<'_>, host: HostKind) -> Result<Option<String>, ConfigError> {
    let Some(name) = f.string("pick_variable")? else { return Ok(None) };
    if host != HostKind::Nginx {
        return Err(err("pick_variable", "is only used with \"host\": \"nginx\" (it names an nginx variable)"));
    }
    if f.get("pick").is_some() {
        return Err(err(
            "pick_variable",
            "cannot be used with \"pick\": set \"pick\" (the one upstream this filter routes to) or \"pick_variable\" (the nginx variable naming the upstream per request), not both",
        ));
    }
    let ok = (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(err(
            "pick_variable",
            format!("must be an nginx variable name without the $ (1-64 characters of A-Z a-z 0-9 _), got {name:?}"),
        ));
    }
    if name == BACKEND_VARIABLE_NAME {
        return Err(err("pick_variable", "must not be upsync_backend: the filter writes the picked member there"));
    }
    Ok(Some(name.to_string()))
}

/// `pick` of a pick-only filter (no `upstreams` to check it against).
pub(crate) fn parse_pick_only_name(name: &str) -> Result<String, ConfigError> {
    if !is_upstream_name(name) {
        return Err(err(
            "pick",
            format!("must be an upstream name (1-64 characters of A-Z a-z 0-9 _ . -), got {name:?}"),
        ));
    }
    Ok(name.to_string())
}

/// Reads the top-level `zone`: the zone this proxy runs in.
pub(crate) fn parse_zone(f: &Fields<'_>) -> Result<Option<String>, ConfigError> {
    let Some(zone) = f.string("zone")? else { return Ok(None) };
    if zone.is_empty() || zone.len() > MAX_LOCALITY_BYTES || zone.trim() != zone || zone.chars().any(char::is_control) {
        return Err(err(
            "zone",
            format!("must be a zone name of 1..={MAX_LOCALITY_BYTES} bytes, no surrounding spaces, got {zone:?}"),
        ));
    }
    Ok(Some(zone.to_string()))
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use crate::sansio::config::{PluginConfig, SubsetRule, UpstreamRouting};

    fn parse(top: &str, upstream: &str) -> Result<PluginConfig, crate::sansio::config::ConfigError> {
        let json = format!(
            r#"{{"host":"nginx"{top},"upstreams":[{{"name":"web","registry":{{"type":"etcd_v3","target":"127.0.0.1:2379","prefix":"/p/"}}{upstream}}}]}}"#
        );
        PluginConfig::parse(json.as_bytes())
    }

    #[test]
    fn zone_share_and_subset_are_read() {
        let c = parse("", "").unwrap();
        assert_eq!(c.zone, None);
        assert_eq!(c.upstreams[0].routing, UpstreamRouting::default());
        assert_eq!(c.upstreams[0].routing.min_healthy_permille, 700);
        let c = parse(
            r#","zone":"zone-a""#,
            r#","zone_min_healthy_share":0.5,"subset":{"header":"X-Canary","key":"canary"}"#,
        )
        .unwrap();
        assert_eq!(c.zone.as_deref(), Some("zone-a"));
        assert_eq!(c.upstreams[0].routing.min_healthy_permille, 500);
        assert_eq!(c.upstreams[0].routing.subset, Some(SubsetRule { header: "x-canary".into(), key: "canary".into() }));
        assert_eq!(
            parse("", r#","zone_min_healthy_share":1"#).unwrap().upstreams[0].routing.min_healthy_permille,
            1000
        );
        assert_eq!(parse("", r#","zone_min_healthy_share":0"#).unwrap().upstreams[0].routing.min_healthy_permille, 0);
    }

    #[test]
    fn errors_name_the_field() {
        let field = |top: &str, up: &str| parse(top, up).unwrap_err().field;
        assert_eq!(field(r#","zone":"""#, ""), "zone");
        assert_eq!(field(r#","zone":" a""#, ""), "zone");
        assert_eq!(field(r#","zone":7"#, ""), "zone");
        assert_eq!(field(&format!(r#","zone":"{}""#, "z".repeat(129)), ""), "zone");
        assert_eq!(field("", r#","zone_min_healthy_share":1.5"#), "upstreams[0].zone_min_healthy_share");
        assert_eq!(field("", r#","zone_min_healthy_share":"0.5""#), "upstreams[0].zone_min_healthy_share");
        assert_eq!(field("", r#","zone_min_healthy_share":-0.1"#), "upstreams[0].zone_min_healthy_share");
        assert_eq!(field("", r#","subset":"x-canary""#), "upstreams[0].subset");
        assert_eq!(field("", r#","subset":{"key":"canary"}"#), "upstreams[0].subset.header");
        assert_eq!(field("", r#","subset":{"header":"x c","key":"canary"}"#), "upstreams[0].subset.header");
        assert_eq!(field("", r#","subset":{"header":":path","key":"canary"}"#), "upstreams[0].subset.header");
        assert_eq!(field("", r#","subset":{"header":"x-canary"}"#), "upstreams[0].subset.key");
        assert_eq!(field("", r#","subset":{"header":"x-canary","key":" c"}"#), "upstreams[0].subset.key");
        assert_eq!(field("", r#","subset":{"header":"x-canary","key":"c","value":"1"}"#), "upstreams[0].subset.value");
    }

    #[test]
    fn the_shipped_nginx_routing_config_is_accepted() {
        let conf = include_str!("../../../nginx-wasm/routing.conf");
        let json = conf.split("proxy_wasm upsync '").nth(1).and_then(|rest| rest.split("';").next()).unwrap();
        let c = PluginConfig::parse(json.as_bytes()).unwrap();
        assert_eq!(c.zone.as_deref(), Some("zone-a"));
        assert_eq!(c.upstreams[0].routing.min_healthy_permille, 700);
        assert!(c.upstreams[0].routing.subset.is_some());
    }

    fn nginx(json: &str) -> Result<PluginConfig, crate::sansio::config::ConfigError> {
        PluginConfig::parse(json.as_bytes())
    }

    #[test]
    fn pick_only_and_pick_variable_configs_need_no_upstreams() {
        use crate::sansio::config::roles::{role_config, RoleConfig};
        use crate::sansio::config::{BalancePolicy, HashKey, PickPolicy};
        let c = nginx(r#"{"host":"nginx","pick":"web"}"#).unwrap();
        assert!(c.upstreams.is_empty());
        assert_eq!((c.pick.as_deref(), c.pick_variable.as_deref()), (Some("web"), None));
        assert_eq!(c.pick_policy, PickPolicy { balance: BalancePolicy::RoundRobin, passive_health: true });
        assert!(matches!(role_config("", br#"{"host":"nginx","pick":"web"}"#), Ok(RoleConfig::NginxWorker(_))));
        let c = nginx(
            r#"{"host":"nginx","pick":"web","zone":"zone-a","passive_health":false,
                "balance":{"policy":"hash","hash_key":"cookie:sid"},"status_path":"/s"}"#,
        )
        .unwrap();
        assert_eq!(c.pick_policy.balance, BalancePolicy::Hash(HashKey::Cookie("sid".into())));
        assert!(!c.pick_policy.passive_health);
        assert_eq!(c.zone.as_deref(), Some("zone-a"));
        let v = br#"{"host":"nginx","pick_variable":"upsync_upstream"}"#;
        let Ok(RoleConfig::NginxWorker(c)) = role_config("", v) else { panic!() };
        assert_eq!((c.pick.as_deref(), c.pick_variable.as_deref()), (None, Some("upsync_upstream")));
        // With upstreams listed, pick_variable picks among them: no default `pick`.
        let listed = r#"{"host":"nginx","pick_variable":"up","upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"127.0.0.1:2379","prefix":"/p/"}}]}"#;
        let c = nginx(listed).unwrap();
        assert_eq!((c.pick.as_deref(), c.pick_variable.as_deref(), c.upstreams.len()), (None, Some("up"), 1));
    }

    #[test]
    fn pick_only_errors_name_the_field_and_what_is_allowed() {
        let error = |json: &str| nginx(json).unwrap_err();
        let e = error(r#"{"host":"nginx","pick":"web","pick_variable":"upsync_upstream"}"#);
        assert_eq!(e.field, "pick_variable");
        assert!(e.message.contains("\"pick\"") && e.message.contains("not both"), "{e}");
        let e = error(r#"{"pick_variable":"upsync_upstream","upstreams":[]}"#);
        assert_eq!(e.field, "pick_variable");
        assert!(e.message.contains("nginx"), "{e}");
        for bad in [r#""$upsync_upstream""#, r#""a-b""#, r#""""#, r#"7"#, &format!(r#""{}""#, "v".repeat(65))] {
            let e = error(&format!(r#"{{"host":"nginx","pick_variable":{bad}}}"#));
            assert_eq!(e.field, "pick_variable", "{bad}: {e}");
        }
        let e = error(r#"{"host":"nginx","pick_variable":"upsync_backend"}"#);
        assert_eq!(e.field, "pick_variable");
        assert!(e.message.contains("writes the picked member"), "{e}");
        // No upstreams and nothing to pick, or not nginx: upstreams are required.
        for json in [r#"{"host":"nginx"}"#, r#"{"pick":"web"}"#, r#"{"host":"nginx","balance":{}}"#] {
            let e = error(json);
            assert_eq!(e.field, "upstreams", "{json}: {e}");
            assert!(e.message.contains("pick_variable"), "{e}");
        }
        let e = error(r#"{"host":"nginx","pick":"a b"}"#);
        assert_eq!(e.field, "pick");
        assert!(e.message.contains("A-Z a-z 0-9 _ . -"), "{e}");
        assert_eq!(error(r#"{"host":"nginx","pick":"web","balance":{"policy":"fast"}}"#).field, "balance.policy");
        assert_eq!(error(r#"{"host":"nginx","pick":"web","balance":{"policy":"hash"}}"#).field, "balance.hash_key");
        assert_eq!(error(r#"{"host":"nginx","pick":"web","passive_health":"yes"}"#).field, "passive_health");
        // With upstreams, balance and passive health are set per upstream.
        let up =
            r#""upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"127.0.0.1:2379","prefix":"/p/"}}]"#;
        for (field, value) in [("balance", r#"{"policy":"least_request"}"#), ("passive_health", "false")] {
            let e = error(&format!(r#"{{"host":"nginx","{field}":{value},{up}}}"#));
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(&format!("upstreams[].{field}")), "{e}");
        }
        let e = error(&format!(r#"{{"host":"nginx",{up},"upstreams2":1}}"#));
        assert!(e.message.contains("pick_variable"), "the allowed fields list it: {e}");
    }

    #[test]
    fn the_shipped_nginx_routing_config_shows_the_pick_variable_form() {
        let conf = include_str!("../../../nginx-wasm/routing.conf");
        let configs: Vec<PluginConfig> = conf
            .split("proxy_wasm upsync '")
            .skip(1)
            .map(|rest| PluginConfig::parse(rest.split("';").next().unwrap().as_bytes()).unwrap())
            .collect();
        assert!(configs.iter().any(|c| !c.upstreams.is_empty()), "a polling filter");
        let by_variable = configs.iter().find(|c| c.pick_variable.is_some()).expect("a pick_variable filter");
        assert!(by_variable.upstreams.is_empty(), "pick-only: a few hundred bytes whatever the upstream count");
        let variable = by_variable.pick_variable.as_deref().unwrap();
        assert!(conf.contains(&format!("${variable}")), "the nginx config sets ${variable}");
        assert!(conf.contains("set $upsync_backend"));
    }
}
