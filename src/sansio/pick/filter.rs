//! A worker's pick filter, host-free: what to do with each request
//! (answer status, route to a member, or refuse), and what to do with its
//! response (passive health). The host only reads the request, applies the
//! [`RouteMode`] and sends the replies this returns.
//!
//! The per-request path is kept to what the decision needs, since on Envoy
//! each host call costs about as much as the whole filter should: the path
//! is read only when `status_path` or `metrics_path` is set, the clock only
//! before the first tick or to record a failure, the response status only
//! with passive health, a header only when a hash key or subset rule names
//! it; the pick copies no text, and the member list is re-read on the tick
//! (a small version read), never per request. A list published by the
//! poller is in force on a worker from its next tick on: within 50 ms on
//! Envoy, 10 ms on nginx ([`crate::sansio::config::roles`]), plus however
//! long the worker is busy with other callbacks.

use crate::sansio::config::{authorized, PluginConfig, Secret, UNAUTHORIZED};
use crate::sansio::pick::named::NamedPickers;
use crate::sansio::pick::picker::{Chosen, Report, UpstreamPicker};
use crate::sansio::pick::request_key::{hash_key_value, RequestView};
use crate::sansio::pick::route::RouteMode;
use crate::sansio::shared::health;
use crate::sansio::shared::store::SharedStore;

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer it with the status JSON (its path is the `status_path`).
    Status,
    /// Answer it with Prometheus metrics (its path is the `metrics_path`).
    Metrics,
    /// Hand [`Routed::address`] to the router ([`PickFilter::route_mode`]).
    Route(Routed),
    /// Answer it with this status and error message: no member is available.
    Refuse { status: u16, message: &'static str },
}

/// A routed request: the upstream it was picked from and the member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// 0 with `pick`; the upstream's slot with `pick_variable`.
    upstream: usize,
    pub chosen: Chosen,
}

impl Routed {
    pub fn address(&self) -> &str {
        &self.chosen.address
    }
}

/// Where a filter picks from.
enum Target {
    /// `pick`: one upstream, refreshed every tick.
    One {
        picker: UpstreamPicker,
        /// A 503 for "no member" was logged since the last good pick.
        warned_empty: bool,
    },
    /// `pick_variable`: the upstream named per request.
    Named(NamedPickers),
    /// No pick: a filter carrying `discover` for other filters to pick from.
    Nothing,
}

pub struct PickFilter {
    target: Target,
    /// No `upstreams`: the member lists come from another filter's poller.
    pick_only: bool,
    status_path: Option<String>,
    metrics_path: Option<String>,
    status_token: Option<Secret>,
    route: RouteMode,
    /// The view was read at least once (a worker can get a request before
    /// its first tick: nginx respawns workers under load).
    refreshed: bool,
}

impl PickFilter {
    /// `None` when `config.pick` names no upstream of `config` (a pick-only
    /// configuration, without upstreams, may name any).
    pub fn new(config: &PluginConfig, seed: u64) -> Option<PickFilter> {
        let pick_only = !config.polls();
        let target = match (&config.pick_variable, config.pick.as_deref()) {
            (Some(variable), _) => Target::Named(NamedPickers::new(config, variable, seed)),
            (None, Some(name)) => {
                let picker = match (config.upstreams.iter().find(|u| u.name == name), config.discovered(name)) {
                    (Some(upstream), _) => UpstreamPicker::new(upstream, seed),
                    // Found in the registry later, with its entry's defaults.
                    (None, Some(found)) => UpstreamPicker::new(&found, seed),
                    (None, None) if pick_only => UpstreamPicker::pick_only(name, &config.pick_policy, seed),
                    (None, None) => return None,
                };
                Target::One { picker: picker.with_zone(config.zone.clone()), warned_empty: false }
            }
            // A filter that only polls (and answers its status paths).
            (None, None) if !config.discover.is_empty() => Target::Nothing,
            (None, None) => return None,
        };
        Some(PickFilter {
            target,
            pick_only,
            status_path: config.status_path.clone(),
            metrics_path: config.metrics_path.clone(),
            status_token: config.status_token.clone(),
            route: RouteMode::for_config(config),
            refreshed: false,
        })
    }

    pub fn route_mode(&self) -> &RouteMode {
        &self.route
    }

    /// Whether [`PickFilter::on_request`] needs the request's path: only to
    /// answer `status_path` and `metrics_path`.
    pub fn answers_paths(&self) -> bool {
        self.status_path.is_some() || self.metrics_path.is_some()
    }

    /// The worker's tick: brings the view up to date (a small version
    /// read); with `pick_variable`, each upstream's view at its next use.
    pub fn on_tick(&mut self, store: &dyn SharedStore, now: u64) {
        self.refreshed = true;
        match &mut self.target {
            Target::One { picker, .. } => {
                if picker.refresh(store, now) {
                    log::debug!("upstream {}: view now {:?}", picker.name(), picker.source());
                }
            }
            Target::Named(named) => named.on_tick(),
            Target::Nothing => {}
        }
    }

    /// A request for `path` (without its query; `None` when not read:
    /// [`PickFilter::answers_paths`]). `now` is called only when the time
    /// is needed.
    pub fn on_request(
        &mut self,
        path: Option<&str>,
        request: &impl RequestView,
        store: &dyn SharedStore,
        now: &dyn Fn() -> u64,
    ) -> Decision {
        let local = match path {
            Some(p) if self.status_path.as_deref() == Some(p) => Some(Decision::Status),
            Some(p) if self.metrics_path.as_deref() == Some(p) => Some(Decision::Metrics),
            _ => None,
        };
        if let Some(local) = local {
            let authorization = request.header("authorization");
            if authorized(self.status_token.as_ref(), authorization.as_deref()) {
                return local;
            }
            return Decision::Refuse { status: 401, message: UNAUTHORIZED };
        }
        if !self.refreshed {
            self.on_tick(store, now());
        }
        let (upstream, picker, warned_empty) = match &mut self.target {
            Target::One { picker, warned_empty } => (0, picker, warned_empty),
            Target::Nothing => {
                return Decision::Refuse { status: 404, message: "this filter polls the registry and picks nothing" }
            }
            Target::Named(named) => {
                let name = request.variable(named.variable());
                let slot = named.slot_for(name.as_deref(), store, now);
                match slot.map(|i| (i, named.picker_mut(i))) {
                    Ok((i, Some((picker, warned_empty)))) => (i, picker, warned_empty),
                    Ok((_, None)) => return Decision::Refuse { status: 503, message: "no upstream member available" },
                    Err(miss) => return Decision::Refuse { status: 503, message: miss.message() },
                }
            }
        };
        let key = picker.hash_key().and_then(|k| hash_key_value(k, request));
        let subset = picker.subset_header().and_then(|h| request.header(h));
        match picker.choose(key.as_deref(), subset.as_deref()) {
            Some(chosen) => {
                *warned_empty = false;
                Decision::Route(Routed { upstream, chosen })
            }
            None => {
                // Once per run of them: a 503 storm must not flood the log.
                if !std::mem::replace(warned_empty, true) {
                    let hint = if self.pick_only {
                        " (this filter only picks: the list comes from the filter polling it)"
                    } else {
                        ""
                    };
                    log::warn!("upstream {}: answering 503: {}{hint}", picker.name(), picker.unavailable_reason());
                }
                Decision::Refuse { status: 503, message: "no upstream member available" }
            }
        }
    }

    fn picker_of(&mut self, routed: &Routed) -> Option<&mut UpstreamPicker> {
        match &mut self.target {
            Target::One { picker, .. } => Some(picker),
            Target::Named(named) => named.picker_mut(routed.upstream).map(|(picker, _)| picker),
            Target::Nothing => None,
        }
    }

    /// The router could not take the pick: the request ends here, with
    /// the status and error message returned.
    pub fn on_route_failed(&mut self, routed: &Routed, error: &str) -> (u16, &'static str) {
        let route = self.route.clone();
        if let Some(picker) = self.picker_of(routed) {
            log::error!("upstream {}: cannot route to the picked member ({route:?}): {error}", picker.name());
            picker.done(&routed.chosen);
        }
        (500, "upsync: the picked member could not be handed to the proxy")
    }

    /// The response to a routed request came; `status` reads its status
    /// (`None`: no response), called only with passive health on.
    pub fn on_response(
        &mut self,
        store: &mut dyn SharedStore,
        routed: &Routed,
        status: impl FnOnce() -> Option<u16>,
        now: &dyn Fn() -> u64,
    ) {
        let Some(picker) = self.picker_of(routed) else { return };
        let picked = &routed.chosen;
        if picker.counts_failures() {
            let status = status();
            if health::is_failure(status) {
                match picker.report(store, picked, status, now()) {
                    Ok(Report::TookOut { max_fails, fail_timeout }) => log::warn!(
                        "upstream {}: {} out for {fail_timeout} s after {max_fails} failures",
                        picker.name(),
                        picked.address
                    ),
                    Ok(Report::Ignored | Report::Counted) => {}
                    Err(e) => log::warn!("upstream {}: cannot record a failure: {e}", picker.name()),
                }
            }
        }
        picker.done(picked);
    }

    /// A routed request ended without a response (reset, timeout).
    pub fn on_done(&mut self, routed: &Routed) {
        if let Some(picker) = self.picker_of(routed) {
            picker.done(&routed.chosen);
        }
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

    /// A request for `path` at time `now`.
    fn request(f: &mut PickFilter, path: &str, view: &impl RequestView, store: &MemoryStore, now: u64) -> Decision {
        let path = f.answers_paths().then_some(path);
        f.on_request(path, view, store, &|| now)
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
        assert_eq!(request(&mut f, "/upsync/status", &NoHeaders, &store, 0), Decision::Status);
        // No tick yet: the view is read on the first request.
        let Decision::Route(picked) = request(&mut f, "/", &NoHeaders, &store, 0) else { panic!() };
        assert_eq!(picked.address(), "10.0.0.1:80");
        assert_eq!(f.route_mode(), &RouteMode::NginxVariable);
        f.on_done(&picked);
    }

    #[test]
    fn no_member_is_a_503_with_the_error_body() {
        let store = MemoryStore::new(StoreRules::NgxWasm);
        let mut f = filter("");
        for _ in 0..3 {
            let decision = request(&mut f, "/", &NoHeaders, &store, 0);
            assert_eq!(decision, Decision::Refuse { status: 503, message: "no upstream member available" });
        }
        assert!(matches!(f.target, Target::One { warned_empty: true, .. }), "logged once for the run");
    }

    #[test]
    fn failed_responses_take_a_member_out_for_every_request_after() {
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        let mut f = filter(r#""10.0.0.1:80","10.0.0.2:80""#);
        f.on_tick(&store, 0);
        let mut out = None;
        for t in 0..6 {
            let Decision::Route(p) = request(&mut f, "/", &NoHeaders, &store, t) else { panic!() };
            if p.address() == "10.0.0.1:80" {
                f.on_response(&mut store, &p, || Some(502), &|| t);
                out = Some(p.address().to_string());
            } else {
                f.on_response(&mut store, &p, || Some(200), &|| t);
            }
        }
        assert_eq!(out.as_deref(), Some("10.0.0.1:80"));
        for t in 6..10 {
            let Decision::Route(p) = request(&mut f, "/", &NoHeaders, &store, t) else { panic!() };
            assert_eq!(p.address(), "10.0.0.2:80", "after max_fails (2) the member is out");
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
            .map(|_| match f.on_request(None, &request, store, &|| 0) {
                Decision::Route(p) => {
                    f.on_done(&p);
                    p.address().to_string()
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

    fn parse(json: &str) -> PickFilter {
        PickFilter::new(&PluginConfig::parse(json.as_bytes()).unwrap(), 1).unwrap()
    }

    fn publish(store: &mut MemoryStore, upstream: &str, addrs: &[&str]) {
        use crate::sansio::model::member::Member;
        use crate::sansio::model::member_set::MemberSet;
        use crate::sansio::model::update::{Published, Source};
        let members =
            MemberSet::from_members(addrs.iter().map(|a| Member::new(a.parse().unwrap(), Default::default()))).0;
        crate::sansio::shared::snapshot::publish(store, upstream, &Published { members, source: Source::Registry })
            .unwrap();
    }

    /// The time must not be read: it costs a host call.
    fn no_clock() -> u64 {
        panic!("the clock was read")
    }

    #[test]
    fn a_routed_request_reads_no_path_no_clock_and_no_status_it_does_not_need() {
        let mut store = MemoryStore::new(StoreRules::Envoy);
        publish(&mut store, "web", &["10.0.0.1:80", "10.0.0.2:80"]);
        let envoy = |passive: bool| {
            parse(&format!(
                r#"{{"pick":"web","upstreams":[{{"name":"web","passive_health":{passive},
                "registry":{{"type":"etcd_v3","target":"etcd","prefix":"/p/"}}}}]}}"#
            ))
        };
        let mut f = envoy(false);
        assert!(!f.answers_paths(), "no status_path on Envoy: the path is never read");
        f.on_tick(&store, 0);
        for _ in 0..4 {
            let Decision::Route(r) = f.on_request(None, &NoHeaders, &store, &no_clock) else { panic!() };
            f.on_response(&mut store, &r, || panic!("the status was read without passive health"), &no_clock);
        }
        // With passive health the status is read, the clock only for a failure.
        let mut f = envoy(true);
        f.on_tick(&store, 0);
        let Decision::Route(r) = f.on_request(None, &NoHeaders, &store, &no_clock) else { panic!() };
        let mut read = false;
        f.on_response(
            &mut store,
            &r,
            || {
                read = true;
                Some(200)
            },
            &no_clock,
        );
        assert!(read);
        let Decision::Route(r) = f.on_request(None, &NoHeaders, &store, &no_clock) else { panic!() };
        f.on_response(&mut store, &r, || Some(502), &|| 7);
        assert_eq!(crate::sansio::shared::health::out_members(&store, "web", 7), Vec::<String>::new(), "1 of 2 fails");
    }

    #[test]
    fn a_pick_only_filter_routes_by_the_snapshot_another_filter_published() {
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        let mut f = parse(r#"{"host":"nginx","pick":"web","balance":{"policy":"hash","hash_key":"header:x-user"}}"#);
        assert_eq!(f.route_mode(), &RouteMode::NginxVariable);
        // Nothing published yet: 503, the existing reason.
        assert_eq!(
            request(&mut f, "/", &NoHeaders, &store, 0),
            Decision::Refuse { status: 503, message: "no upstream member available" }
        );
        publish(&mut store, "web", &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        f.on_tick(&store, 1);
        // The top-level balance: one user stays on one member.
        let user = Headers(vec![("x-user", "u-42")]);
        let got: Vec<String> = (0..8)
            .map(|_| match request(&mut f, "/", &user, &store, 1) {
                Decision::Route(r) => r.address().to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(got.iter().all(|a| *a == got[0]), "{got:?}");
        // Passive health (on by default) counts against `web`.
        let Decision::Route(r) = request(&mut f, "/", &user, &store, 2) else { panic!() };
        f.on_response(&mut store, &r, || Some(502), &|| 2);
        let Decision::Route(r) = request(&mut f, "/", &user, &store, 3) else { panic!() };
        f.on_response(&mut store, &r, || None, &|| 3);
        assert_eq!(crate::sansio::shared::health::out_members(&store, "web", 3), [got[0].clone()]);
    }

    struct Variable(&'static [u8]);

    impl RequestView for Variable {
        fn header(&self, _: &str) -> Option<String> {
            None
        }
        fn client_address(&self) -> Option<String> {
            None
        }
        fn variable(&self, name: &str) -> Option<Vec<u8>> {
            assert_eq!(name, "upsync_upstream");
            Some(self.0.to_vec())
        }
    }

    #[test]
    fn pick_variable_routes_each_request_to_the_upstream_it_names() {
        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        publish(&mut store, "web", &["10.0.0.1:80"]);
        publish(&mut store, "api", &["10.0.1.1:80", "10.0.1.2:80"]);
        let mut f = parse(r#"{"host":"nginx","pick_variable":"upsync_upstream","passive_health":false}"#);
        f.on_tick(&store, 0);
        let route = |f: &mut PickFilter, store: &MemoryStore, name: &'static [u8]| match f.on_request(
            None,
            &Variable(name),
            store,
            &|| 0,
        ) {
            Decision::Route(r) => {
                f.on_done(&r);
                Ok(r.address().to_string())
            }
            Decision::Refuse { status: 503, message } => Err(message),
            other => panic!("{other:?}"),
        };
        assert_eq!(route(&mut f, &store, b"web").as_deref(), Ok("10.0.0.1:80"));
        let api: Vec<String> = (0..4).map(|_| route(&mut f, &store, b"api").unwrap()).collect();
        assert_eq!(api, ["10.0.1.1:80", "10.0.1.2:80", "10.0.1.1:80", "10.0.1.2:80"], "round robin by default");
        assert_eq!(route(&mut f, &store, b""), Err("no upstream named for this request"));
        assert_eq!(route(&mut f, &store, b"db"), Err("no member list for the requested upstream"));
        assert_eq!(route(&mut f, &store, b"../etc"), Err("no member list for the requested upstream"));
        // A new list of one upstream is in force from the next tick on.
        publish(&mut store, "web", &["10.0.0.7:80"]);
        f.on_tick(&store, 1);
        assert_eq!(route(&mut f, &store, b"web").as_deref(), Ok("10.0.0.7:80"));
        // Passive health is off (top level): failures are not even read.
        let Decision::Route(r) = f.on_request(None, &Variable(b"web"), &store, &|| 1) else { panic!() };
        f.on_response(&mut store, &r, || panic!("status read"), &no_clock);
    }

    #[test]
    fn a_discover_filter_picks_with_the_entry_defaults_or_only_polls() {
        const DISCOVER: &str = r#""discover":[{"registry":{"type":"etcd_v2","target":"127.0.0.1:2379","prefix":"/upstreams/"},
            "name_pattern":"web*","defaults":{"balance":{"policy":"hash","hash_key":"header:x-user"}}}]"#;
        let parse = |json: String| PluginConfig::parse(json.as_bytes()).unwrap();
        let store = MemoryStore::new(StoreRules::NgxWasm);
        // Only polls: its status path answers, anything else is a 404.
        let mut poller =
            PickFilter::new(&parse(format!(r#"{{"host":"nginx","status_path":"/s",{DISCOVER}}}"#)), 1).unwrap();
        assert_eq!(request(&mut poller, "/s", &NoHeaders, &store, 0), Decision::Status);
        assert!(matches!(request(&mut poller, "/", &NoHeaders, &store, 0), Decision::Refuse { status: 404, .. }));
        // Picks a found upstream with the entry's defaults (a hash key here).
        let cfg = parse(format!(r#"{{"host":"nginx","pick":"web-1",{DISCOVER}}}"#));
        let picker = PickFilter::new(&cfg, 1).unwrap();
        let Target::One { picker, .. } = &picker.target else { panic!() };
        assert!(picker.hash_key().is_some());
        // A name the entry would not find is a configuration error.
        let e = PluginConfig::parse(format!(r#"{{"host":"nginx","pick":"api",{DISCOVER}}}"#).as_bytes()).unwrap_err();
        assert_eq!(e.field, "pick", "{e}");
    }

    #[test]
    fn the_shipped_nginx_discover_config_is_accepted() {
        let conf = include_str!("../../../nginx-wasm/discover.conf");
        let configs: Vec<&str> =
            conf.split("proxy_wasm upsync '").skip(1).filter_map(|rest| rest.split("';").next()).collect();
        assert_eq!(configs.len(), 2);
        let pick = PluginConfig::parse(configs[0].as_bytes()).unwrap();
        assert_eq!(pick.pick_variable.as_deref(), Some("upsync_upstream"));
        let poller = PluginConfig::parse(configs[1].as_bytes()).unwrap();
        assert_eq!(poller.discover.len(), 1);
        // The discover filter runs the worker's poller; the pick-only one does not
        // (a real nginx showed a discover filter that never polled).
        assert!(poller.polls() && !pick.polls());
        // The role an nginx worker gives each filter (a refused filter makes every worker exit).
        for config in &configs {
            let role = crate::sansio::config::roles::role_config("", config.as_bytes());
            assert!(matches!(role, Ok(crate::sansio::config::roles::RoleConfig::NginxWorker(_))), "{role:?}");
        }
        assert!(PickFilter::new(&poller, 1).is_some() && PickFilter::new(&pick, 1).is_some());
    }
}
