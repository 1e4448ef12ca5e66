//! A worker's pick filter, host-free: what to do with each request
//! (answer status, route to a member, or refuse), and what to do with its
//! response (passive health). The host only reads the request, applies the
//! [`RouteMode`] and sends the replies this returns.

use crate::sansio::config::{authorized, PluginConfig, Secret, UNAUTHORIZED};
use crate::sansio::pick::picker::{Picked, Report, UpstreamPicker};
use crate::sansio::pick::request_key::{hash_key_value, RequestView};
use crate::sansio::pick::route::RouteMode;
use crate::sansio::shared::store::SharedStore;

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer it with the status JSON (its path is the `status_path`).
    Status,
    /// Answer it with Prometheus metrics (its path is the `metrics_path`).
    Metrics,
    /// Hand `Picked::address` to the router ([`PickFilter::route_mode`]).
    Route(Picked),
    /// Answer it with this status and error message: no member is available.
    Refuse { status: u16, message: &'static str },
}

pub struct PickFilter {
    picker: UpstreamPicker,
    status_path: Option<String>,
    metrics_path: Option<String>,
    status_token: Option<Secret>,
    route: RouteMode,
    /// A 503 for "no member" was logged since the last good pick.
    warned_empty: bool,
    /// The view was read at least once (a worker can get a request before
    /// its first tick: nginx respawns workers under load).
    refreshed: bool,
}

impl PickFilter {
    /// `None` when `config.pick` names no upstream.
    pub fn new(config: &PluginConfig, seed: u64) -> Option<PickFilter> {
        let name = config.pick.as_deref()?;
        let upstream = config.upstreams.iter().find(|u| u.name == name)?;
        Some(PickFilter {
            picker: UpstreamPicker::new(upstream, seed).with_zone(config.zone.clone()),
            status_path: config.status_path.clone(),
            metrics_path: config.metrics_path.clone(),
            status_token: config.status_token.clone(),
            route: RouteMode::for_config(config),
            warned_empty: false,
            refreshed: false,
        })
    }

    pub fn route_mode(&self) -> &RouteMode {
        &self.route
    }

    pub fn name(&self) -> &str {
        self.picker.name()
    }

    /// The worker's tick: brings the view up to date (a small version read).
    pub fn on_tick(&mut self, store: &dyn SharedStore, now: u64) {
        self.refreshed = true;
        if self.picker.refresh(store, now) {
            log::debug!("upstream {}: view now {:?}", self.picker.name(), self.picker.source());
        }
    }

    /// A request for `path` (without its query).
    pub fn on_request(
        &mut self,
        path: &str,
        request: &impl RequestView,
        store: &dyn SharedStore,
        now: u64,
    ) -> Decision {
        let local = if self.status_path.as_deref() == Some(path) {
            Some(Decision::Status)
        } else if self.metrics_path.as_deref() == Some(path) {
            Some(Decision::Metrics)
        } else {
            None
        };
        if let Some(local) = local {
            let authorization = request.header("authorization");
            if authorized(self.status_token.as_ref(), authorization.as_deref()) {
                return local;
            }
            return Decision::Refuse { status: 401, message: UNAUTHORIZED };
        }
        if !self.refreshed {
            self.on_tick(store, now);
        }
        let key = self.picker.hash_key().and_then(|k| hash_key_value(k, request));
        let subset = self.picker.subset_header().and_then(|h| request.header(h));
        match self.picker.pick_in(key.as_deref(), subset.as_deref()) {
            Some(picked) => {
                self.warned_empty = false;
                Decision::Route(picked)
            }
            None => {
                // Once per run of them: a 503 storm must not flood the log.
                if !std::mem::replace(&mut self.warned_empty, true) {
                    log::warn!("upstream {}: answering 503: {}", self.picker.name(), self.picker.unavailable_reason());
                }
                Decision::Refuse { status: 503, message: "no upstream member available" }
            }
        }
    }

    /// The router could not take the pick: the request ends here, with
    /// the status and error message returned.
    pub fn on_route_failed(&mut self, picked: &Picked, error: &str) -> (u16, &'static str) {
        log::error!("upstream {}: cannot route to the picked member ({:?}): {error}", self.picker.name(), self.route);
        self.picker.done(picked);
        (500, "upsync: the picked member could not be handed to the proxy")
    }

    /// The response to a routed request had `status` (`None`: no response).
    pub fn on_response(&mut self, store: &mut dyn SharedStore, picked: &Picked, status: Option<u16>, now: u64) {
        match self.picker.report(store, picked, status, now) {
            Ok(Report::TookOut { max_fails, fail_timeout }) => log::warn!(
                "upstream {}: {} out for {fail_timeout} s after {max_fails} failures",
                self.picker.name(),
                picked.address
            ),
            Ok(Report::Ignored | Report::Counted) => {}
            Err(e) => log::warn!("upstream {}: cannot record a failure: {e}", self.picker.name()),
        }
        self.picker.done(picked);
    }

    /// A routed request ended without a response (reset, timeout).
    pub fn on_done(&mut self, picked: &Picked) {
        self.picker.done(picked);
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::shared::store::{MemoryStore, StoreRules};

    struct NoHeaders;

    impl RequestView for NoHeaders {
        fn header(&self, _: &str) -> Option<String> {
            None
        }
        fn client_address(&self) -> Option<String> {
            None
        }
    }

    fn filter(fallback: &str) -> PickFilter {
        let json = format!(
            r#"{{"host":"nginx","status_path":"/upsync/status","upstreams":[{{"name":"web",
            "registry":{{"type":"etcd_v3","target":"127.0.0.1:2379","prefix":"/p/"}},"fallback":[{fallback}]}}]}}"#
        );
        PickFilter::new(&PluginConfig::parse(json.as_bytes()).unwrap(), 1).unwrap()
    }

    #[test]
    fn status_path_then_picks_before_the_first_tick() {
        let store = MemoryStore::new(StoreRules::NgxWasm);
        let mut f = filter(r#""10.0.0.1:80""#);
        assert_eq!(f.on_request("/upsync/status", &NoHeaders, &store, 0), Decision::Status);
        // No tick yet: the view is read on the first request.
        let Decision::Route(picked) = f.on_request("/", &NoHeaders, &store, 0) else { panic!() };
        assert_eq!(picked.address, "10.0.0.1:80");
        assert_eq!(f.route_mode(), &RouteMode::NginxVariable);
        f.on_done(&picked);
    }

    #[test]
    fn no_member_is_a_503_with_the_error_body() {
        let store = MemoryStore::new(StoreRules::NgxWasm);
        let mut f = filter("");
        for _ in 0..3 {
            let decision = f.on_request("/", &NoHeaders, &store, 0);
            assert_eq!(decision, Decision::Refuse { status: 503, message: "no upstream member available" });
        }
        assert!(f.warned_empty, "logged once for the run");
    }

    #[test]
    fn failed_responses_take_a_member_out_for_every_request_after() {
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        let mut f = filter(r#""10.0.0.1:80","10.0.0.2:80""#);
        f.on_tick(&store, 0);
        let mut out = None;
        for t in 0..6 {
            let Decision::Route(p) = f.on_request("/", &NoHeaders, &store, t) else { panic!() };
            if p.address == "10.0.0.1:80" {
                f.on_response(&mut store, &p, Some(502), t);
                out = Some(p.address);
            } else {
                f.on_response(&mut store, &p, Some(200), t);
            }
        }
        assert_eq!(out.as_deref(), Some("10.0.0.1:80"));
        for t in 6..10 {
            let Decision::Route(p) = f.on_request("/", &NoHeaders, &store, t) else { panic!() };
            assert_eq!(p.address, "10.0.0.2:80", "after max_fails (2) the member is out");
            f.on_done(&p);
        }
    }

    struct Headers(Vec<(&'static str, &'static str)>);

    impl RequestView for Headers {
        fn header(&self, name: &str) -> Option<String> {
            self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        }
        fn client_address(&self) -> Option<String> {
            None
        }
    }

    /// Two zones, a canary in each; the proxy runs in zone-a.
    fn zoned_publish(store: &mut MemoryStore, down: &[&str]) {
        use crate::sansio::model::locality::{Locality, MemberMeta};
        use crate::sansio::model::member::{Member, MemberAttrs};
        use crate::sansio::model::member_set::MemberSet;
        use crate::sansio::model::update::{Published, Source};
        let member = |addr: &str, zone: &str, canary: bool| Member {
            addr: addr.parse().unwrap(),
            attrs: MemberAttrs { down: down.contains(&addr), ..MemberAttrs::default() },
            meta: MemberMeta {
                locality: Locality { zone: zone.into(), ..Locality::default() },
                tags: if canary { vec![("canary".into(), "true".into())] } else { Vec::new() },
            },
        };
        let members = MemberSet::from_members([
            member("10.0.0.1:80", "zone-a", false),
            member("10.0.0.2:80", "zone-a", false),
            member("10.0.0.3:80", "zone-a", true),
            member("10.0.1.1:80", "zone-b", false),
            member("10.0.1.2:80", "zone-b", false),
            member("10.0.1.3:80", "zone-b", true),
        ])
        .0;
        crate::sansio::shared::snapshot::publish(store, "web", &Published { members, source: Source::Registry })
            .unwrap();
    }

    fn zoned_filter(share: &str) -> PickFilter {
        let json = format!(
            r#"{{"host":"nginx","zone":"zone-a","upstreams":[{{"name":"web",
            "registry":{{"type":"etcd_v3","target":"127.0.0.1:2379","prefix":"/p/"}},
            "zone_min_healthy_share":{share},"subset":{{"header":"x-canary","key":"canary"}}}}]}}"#
        );
        PickFilter::new(&PluginConfig::parse(json.as_bytes()).unwrap(), 1).unwrap()
    }

    fn picks(f: &mut PickFilter, store: &MemoryStore, headers: Vec<(&'static str, &'static str)>) -> Vec<String> {
        let request = Headers(headers);
        let mut got: Vec<String> = (0..12)
            .map(|_| match f.on_request("/", &request, store, 0) {
                Decision::Route(p) => {
                    f.on_done(&p);
                    p.address
                }
                other => panic!("{other:?}"),
            })
            .collect();
        got.sort();
        got.dedup();
        got
    }

    #[test]
    fn zone_preference_and_canary_header_together() {
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        zoned_publish(&mut store, &[]);
        let mut f = zoned_filter("0.7");
        f.on_tick(&store, 0);
        assert_eq!(picks(&mut f, &store, vec![]), ["10.0.0.1:80", "10.0.0.2:80"], "stable, local zone");
        assert_eq!(picks(&mut f, &store, vec![("x-canary", "true")]), ["10.0.0.3:80"], "canary, local zone");
        // One of the two local stable members down: 50 % < 70 %, spill over.
        zoned_publish(&mut store, &["10.0.0.1:80"]);
        f.on_tick(&store, 1);
        assert_eq!(picks(&mut f, &store, vec![]), ["10.0.0.2:80", "10.0.1.1:80", "10.0.1.2:80"]);
        // With a threshold of one half it stays home.
        let mut half = zoned_filter("0.5");
        half.on_tick(&store, 1);
        assert_eq!(picks(&mut half, &store, vec![]), ["10.0.0.2:80"]);
        // The local canary down: canary traffic goes to the other zone's canary.
        zoned_publish(&mut store, &["10.0.0.3:80"]);
        f.on_tick(&store, 2);
        assert_eq!(picks(&mut f, &store, vec![("x-canary", "true")]), ["10.0.1.3:80"]);
        // Every canary down: canary requests go to the stable members.
        zoned_publish(&mut store, &["10.0.0.3:80", "10.0.1.3:80"]);
        f.on_tick(&store, 3);
        assert_eq!(picks(&mut f, &store, vec![("x-canary", "true")]), ["10.0.0.1:80", "10.0.0.2:80"]);
    }
}
