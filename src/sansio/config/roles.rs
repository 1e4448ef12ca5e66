//! Which role a root context plays, from its `root_id` and configuration.
//! One module serves every role:
//! - `upsync_poller`: polls the registries and publishes snapshots (on
//!   Envoy: an `envoy.bootstrap.wasm` service with `singleton: true`);
//! - `upsync_eds`: answers REST EDS and the status endpoint from the
//!   snapshots (on Envoy: an HTTP filter on a loopback listener);
//! - `upsync_pick`: Envoy's pick mode, a filter that picks a member per
//!   request from the snapshots;
//! - on nginx every `proxy_wasm` filter is a worker: it polls (when it
//!   holds the lease) and picks.

use super::{parse_server_config, HostKind, PluginConfig, ServerConfig};

pub const POLLER_ROOT_ID: &str = "upsync_poller";
pub const SERVER_ROOT_ID: &str = "upsync_eds";
pub const PICK_ROOT_ID: &str = "upsync_pick";

/// A root context's role with its validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum RoleConfig {
    /// Envoy's registry poller.
    Poller(PluginConfig),
    /// Envoy's EDS and status server.
    Server(ServerConfig),
    /// Envoy's pick filter: reads snapshots, never polls; `pick` is set.
    EnvoyPick(PluginConfig),
    /// An nginx worker's filter: polls under a lease and picks; `pick` or
    /// `pick_variable` is set.
    NginxWorker(PluginConfig),
}

/// The tick period of a poller or picker: the core decides what is due;
/// the tick only bounds how late a due deadline is served.
pub const POLL_TICK_MS: u64 = 50;
/// nginx workers: ngx_wasm_module cannot send a call from a call's answer,
/// so the next long poll after news waits for the next tick (the news itself
/// is applied at once: deltas, and picks of the same worker refresh when its
/// poller publishes); the other workers' picks refresh on their tick. Each
/// tick wakes the worker: measured on ngx_wasm_module 3bed278, an empty
/// tick costs 0.4-0.5 % of a core per worker at 10 ms, 0.2 % at 50 ms.
pub const NGINX_TICK_MS: u64 = 50;
/// How often an EDS server with `eds_hold_ms` checks its held requests.
pub const HOLD_TICK_MS: u64 = 10;

impl RoleConfig {
    /// The tick period this role needs, if any.
    pub fn tick_ms(&self) -> Option<u64> {
        match self {
            RoleConfig::Server(s) if s.eds_hold_ms == 0 => None,
            RoleConfig::Server(_) => Some(HOLD_TICK_MS),
            RoleConfig::NginxWorker(_) => Some(NGINX_TICK_MS),
            _ => Some(POLL_TICK_MS),
        }
    }
}

/// The role for `root_id` with `config`, or the error to log.
pub fn role_config(root_id: &str, config: &[u8]) -> Result<RoleConfig, String> {
    if root_id == SERVER_ROOT_ID {
        return parse_server_config(config)
            .map(RoleConfig::Server)
            .map_err(|e| format!("invalid configuration for root_id {SERVER_ROOT_ID:?}: {e}"));
    }
    let cfg = PluginConfig::parse(config).map_err(|e| format!("invalid configuration: {e}"))?;
    match (cfg.host, root_id) {
        // With `discover` and neither, the filter only polls (and answers its status paths).
        (HostKind::Nginx, _) if cfg.pick.is_some() || cfg.pick_variable.is_some() || !cfg.discover.is_empty() => {
            Ok(RoleConfig::NginxWorker(cfg))
        }
        (HostKind::Nginx, _) => Err("invalid configuration: pick: no such upstream".into()),
        (HostKind::Envoy, POLLER_ROOT_ID) => Ok(RoleConfig::Poller(cfg)),
        (HostKind::Envoy, PICK_ROOT_ID) if cfg.pick.is_some() => Ok(RoleConfig::EnvoyPick(cfg)),
        (HostKind::Envoy, PICK_ROOT_ID) => Err(format!(
            "invalid configuration: pick: required with root_id {PICK_ROOT_ID:?} (the upstream to pick from)"
        )),
        (HostKind::Envoy, other) => Err(format!(
            "root_id {other:?} is not one of {POLLER_ROOT_ID:?} (registry poller), {SERVER_ROOT_ID:?} (EDS and status server) or {PICK_ROOT_ID:?} (pick mode); for nginx set \"host\": \"nginx\""
        )),
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const UP: &str = r#"{"name":"web","registry":{"type":"etcd_v3","target":"etcd","prefix":"/p/"}}"#;

    fn role(root_id: &str, json: &str) -> Result<RoleConfig, String> {
        role_config(root_id, json.as_bytes())
    }

    #[test]
    fn each_root_id_gets_its_role() {
        let poller = format!(r#"{{"upstreams":[{UP}]}}"#);
        assert!(matches!(role(POLLER_ROOT_ID, &poller), Ok(RoleConfig::Poller(_))));
        assert_eq!(
            role(SERVER_ROOT_ID, r#"{"eds_hold_ms":300}"#),
            Ok(RoleConfig::Server(ServerConfig {
                eds_hold_ms: 300,
                ..parse_server_config(b"{\"eds_hold_ms\":300}").unwrap()
            }))
        );
        let pick = format!(r#"{{"pick":"web","upstreams":[{UP}]}}"#);
        assert!(matches!(role(PICK_ROOT_ID, &pick), Ok(RoleConfig::EnvoyPick(_))));
        let nginx = format!(r#"{{"host":"nginx","upstreams":[{}]}}"#, UP.replace("\"etcd\"", "\"127.0.0.1:2379\""));
        let Ok(RoleConfig::NginxWorker(cfg)) = role("anything", &nginx) else { panic!() };
        assert_eq!(RoleConfig::NginxWorker(cfg.clone()).tick_ms(), Some(NGINX_TICK_MS));
        assert_eq!(RoleConfig::Server(ServerConfig { eds_hold_ms: 0, ..ServerConfig::default() }).tick_ms(), None);
        assert_eq!(
            RoleConfig::Server(ServerConfig { eds_hold_ms: 9, ..ServerConfig::default() }).tick_ms(),
            Some(HOLD_TICK_MS)
        );
        assert_eq!(cfg.pick.as_deref(), Some("web"), "nginx picks its only upstream by default");
    }

    #[test]
    fn mixups_are_refused_with_the_reason() {
        let poller = format!(r#"{{"upstreams":[{UP}]}}"#);
        let e = role("upsync", &poller).unwrap_err();
        assert!(e.contains("is not one of") && e.contains("host\": \"nginx"), "{e}");
        let e = role(PICK_ROOT_ID, &poller).unwrap_err();
        assert!(e.contains("pick: required"), "{e}");
        let e = role(SERVER_ROOT_ID, &poller).unwrap_err();
        assert!(e.contains("upstreams"), "{e}");
        let e = role(POLLER_ROOT_ID, "{").unwrap_err();
        assert!(e.starts_with("invalid configuration: (configuration)"), "{e}");
    }
}
