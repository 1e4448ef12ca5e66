"""A real three-member etcd behind Envoy's registry path as shipped in
envoy/registries.yaml, and one failover round: take a member away (SIGKILL
or SIGSTOP), write a member change through a survivor at once, time it
until traffic follows, bring the member back.

Used by tests/e2e/test_etcd_cluster.py (a few rounds, correctness asserted)
and benches/etcd_failover.py (many rounds, p50/p99/max printed). Built on
harness.py: EtcdCluster, Envoy with a template, Backend, Client.

The Envoy configuration is envoy/demo.yaml (gRPC watch on, interval_ms
500) whose `etcd` and `etcd_grpc` clusters are replaced by the relay
listener `etcd_relay` and the clusters `etcd`, `etcd_members` and
`etcd_grpc` of envoy/registries.yaml, word for word except the member
addresses and the relay's port: the shipped retries, outlier detection,
health checks and balancer are what runs. Two other configurations serve
as baselines in the benchmark (CONFIGS).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import harness

REGISTRIES_CONFIG = harness.REPO / "envoy" / "registries.yaml"
WEB = harness.WEB
API = harness.API
# the three etcd members of envoy/registries.yaml, in order
SHIPPED_MEMBERS = ("10.0.0.11", "10.0.0.12", "10.0.0.13")
# the port of its relay listener `etcd_relay`
SHIPPED_RELAY_PORT = 9903
REGISTRY_CLUSTERS = ("etcd", "etcd_grpc")
KINDS = ("leader", "follower", "leader_hang")
CONFIGS = ("shipped", "outlier", "plain")
# Envoy counters reported per round: ejections and failed health checks
ENVOY_EVENTS = r"^cluster\.etcd(_grpc|_members)?\.(outlier_detection\.ejections_enforced_total|health_check\.failure|upstream_rq_retry)$"
# per-member counters of the plugin's calls (cluster `etcd`)
HOST_COUNTERS = ("rq_success", "rq_error", "rq_timeout", "cx_connect_fail")

# Lines printed at the end of a pytest run (tests/e2e/conftest.py).
REPORT: list[str] = []


def report(line: str) -> None:
    REPORT.append(line)


def _block(text: str, name: str, source: str) -> re.Match:
    """The YAML of one listener or cluster of static_resources: from
    `  - name: NAME` to the blank line or the next line at that level (an
    entry, a comment, a key)."""
    m = re.search(rf"^  - name: {re.escape(name)}\n.*?(?=^\n|^  \S|^\S|\Z)", text, re.M | re.S)
    if not m:
        raise RuntimeError(f"{source}: {name!r} not found")
    return m


def shipped_block(name: str) -> str:
    """Listener or cluster `name` of envoy/registries.yaml, its etcd member
    addresses turned into 127.0.0.1 and ${ETCD_PORT_0..2}, the relay
    listener's port into ${ETCD_RELAY_PORT}; otherwise word for word."""
    block = _block(REGISTRIES_CONFIG.read_text(), name, "envoy/registries.yaml").group(0)
    if name in ("etcd_members", "etcd_grpc"):
        for i, addr in enumerate(SHIPPED_MEMBERS):
            old = f"{{address: {addr}, port_value: 2379}}"
            if block.count(old) != 1:
                raise RuntimeError(f"envoy/registries.yaml: {name} does not list {addr}:2379 once")
            block = block.replace(old, f"{{address: 127.0.0.1, port_value: ${{ETCD_PORT_{i}}}}}")
    if name in ("etcd", "etcd_relay"):
        old = f"port_value: {SHIPPED_RELAY_PORT}}}"
        if block.count(old) != 1:
            raise RuntimeError(f"envoy/registries.yaml: {name} does not use port {SHIPPED_RELAY_PORT} once")
        block = block.replace(old, "port_value: ${ETCD_RELAY_PORT}}")
    return block


def _renamed(block: str, old: str, new: str) -> str:
    for a, b in ((f"  - name: {old}\n", f"  - name: {new}\n"), (f"cluster_name: {old}\n", f"cluster_name: {new}\n")):
        if block.count(a) != 1:
            raise RuntimeError(f"cluster {old}: {a.strip()!r} not found once")
        block = block.replace(a, b)
    return block


# The baseline: the same three members with nothing but round robin (the
# registry clusters as shipped before outlier detection, health checks and
# the relay).
_PLAIN_ENDPOINTS = "".join(
    f"        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: ${{ETCD_PORT_{i}}}}}}}}}\n"
    for i in range(3)
)
PLAIN_CLUSTERS = {
    "etcd": (
        "  - name: etcd\n    type: STATIC\n    connect_timeout: 1s\n    lb_policy: ROUND_ROBIN\n"
        "    load_assignment:\n      cluster_name: etcd\n      endpoints:\n      - lb_endpoints:\n" + _PLAIN_ENDPOINTS
    ),
    "etcd_grpc": (
        "  - name: etcd_grpc\n    type: STATIC\n    connect_timeout: 1s\n    lb_policy: ROUND_ROBIN\n"
        "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
        '        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n'
        "        explicit_http_config:\n          http2_protocol_options: {}\n"
        "    load_assignment:\n      cluster_name: etcd_grpc\n      endpoints:\n      - lb_endpoints:\n" + _PLAIN_ENDPOINTS
    ),
}


def failover_template(
    workdir: Path, plugin_log_level: str | None = None, clusters: str = "shipped", event_log_dir: Path | None = None
) -> Path:
    """envoy/demo.yaml with its `etcd` and `etcd_grpc` clusters on the
    three etcd members, as one of CONFIGS:
      shipped  envoy/registries.yaml's relay listener `etcd_relay` and its
               clusters `etcd` (the relay), `etcd_members`, `etcd_grpc`
      outlier  the same without the relay: `etcd_members` as `etcd`
      plain    round robin only (PLAIN_CLUSTERS), the baseline
    plugin_log_level sets the poller's log_level; event_log_dir turns on
    Envoy's outlier detection event log there."""
    if clusters not in CONFIGS:
        raise ValueError(f"clusters must be one of {CONFIGS}, got {clusters!r}")
    text = harness.DEMO_TEMPLATE.read_text()
    if clusters == "plain":
        blocks = dict(PLAIN_CLUSTERS)
    elif clusters == "outlier":
        blocks = {"etcd": _renamed(shipped_block("etcd_members"), "etcd_members", "etcd"),
                  "etcd_grpc": shipped_block("etcd_grpc")}
    else:
        blocks = {"etcd": shipped_block("etcd") + "\n" + shipped_block("etcd_members"),
                  "etcd_grpc": shipped_block("etcd_grpc")}
    for name, block in blocks.items():
        m = _block(text, name, "envoy/demo.yaml")
        text = text[: m.start()] + block + text[m.end():]
    if clusters == "shipped":
        if text.count("\n  listeners:\n") != 1:
            raise RuntimeError("envoy/demo.yaml: listeners not where expected")
        text = text.replace("\n  listeners:\n", "\n  listeners:\n" + shipped_block("etcd_relay") + "\n", 1)
    if event_log_dir is not None:
        # Envoy's outlier detection event log: JSON lines, each ejection
        # and unejection with its time, cluster, host and reason
        if text.count("\nstatic_resources:\n") != 1:
            raise RuntimeError("envoy/demo.yaml: static_resources not where expected")
        log = Path(event_log_dir) / "outlier-events.log"
        text = text.replace(
            "\nstatic_resources:\n",
            f"\ncluster_manager:\n  outlier_detection: {{event_log_path: {log}}}\n\nstatic_resources:\n",
        )
    if "${ETCD_PORT}" in text:
        raise RuntimeError("envoy/demo.yaml: a cluster other than etcd/etcd_grpc uses ETCD_PORT")
    # timeout_ms as in envoy/registries.yaml (2000): above the relay's
    # per_try_timeout, so that a member that hangs is left for another one
    # within the plugin's call
    if text.count('"timeout_ms": 1000') != 2:
        raise RuntimeError("envoy/demo.yaml: the upstreams' timeout_ms not where expected")
    text = text.replace('"timeout_ms": 1000', '"timeout_ms": 2000')
    if plugin_log_level:
        head = '{"upstreams": ['
        if text.count(head) != 1:
            raise RuntimeError("envoy/demo.yaml: poller configuration not where expected")
        text = text.replace(head, f'{{"log_level": "{plugin_log_level}", "upstreams": [')
    path = Path(workdir) / "failover-template.yaml"
    path.write_text(text)
    return path


class _Envoy(harness.Envoy):
    """harness.Envoy with extra command-line arguments (component log levels)."""

    def __init__(self, *args, extra_args: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_args = tuple(extra_args)

    def argv(self, *extra: str) -> list[str]:
        return super().argv(*self.extra_args, *extra)


def admin_json(envoy: harness.Envoy, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}{path}", timeout=5) as r:
        return json.loads(r.read())


def admin_stats(envoy: harness.Envoy, regex: str) -> dict[str, int]:
    url = f"http://127.0.0.1:{envoy.admin_port}/stats?filter=" + urllib.request.quote(regex)
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


def registry_hosts(envoy: harness.Envoy, cluster: str) -> dict[int, dict]:
    """Envoy's view of one registry cluster: port -> {"flags": [failed_*
    health flags set], "rq_active": n}."""
    out = {}
    for c in admin_json(envoy, "/clusters?format=json").get("cluster_statuses", []):
        if c.get("name") != cluster:
            continue
        for h in c.get("host_statuses", []):
            port = h["address"]["socket_address"]["port_value"]
            hs = h.get("health_status", {})
            flags = sorted(k for k, v in hs.items() if k.startswith("failed") and v is True)
            stats = {s["name"]: int(s.get("value", 0)) for s in h.get("stats", []) if "name" in s}
            out[port] = {"flags": flags, "rq_active": stats.get("rq_active", 0)}
    return out


@dataclass
class Round:
    """One member SIGKILLed; times in seconds from the SIGKILL."""

    kind: str  # one of KINDS
    victim: str
    via: str  # the member the change was written through
    elected_s: float | None  # a new leader agreed on (leader kills)
    written_s: float  # the write acknowledged by etcd
    routed_s: float  # the first request answered by the member the write brought up
    watch_on_victim: bool  # the plugin's watch stream was held by the killed member
    plugin_failures: dict = field(default_factory=dict)  # failures_by_reason, this round
    ejections: dict = field(default_factory=dict)  # Envoy outlier/HC counters moved, this round
    calls: dict = field(default_factory=dict)  # per member ("victim" or name): HOST_COUNTERS moved

    @property
    def after_write_s(self) -> float:
        return self.routed_s - self.written_s

    def line(self) -> str:
        el = f"elected {self.elected_s * 1000:4.0f} ms, " if self.elected_s is not None else ""
        return (
            f"{self.kind:8} kill {self.victim} (write via {self.via}): {el}write acked {self.written_s * 1000:4.0f} ms, "
            f"traffic {self.routed_s * 1000:5.0f} ms ({self.after_write_s * 1000:4.0f} ms after the write); "
            f"watch on victim: {'yes' if self.watch_on_victim else 'no'}; "
            f"plugin failures {self.plugin_failures or '{}'}; envoy {self.ejections or '{}'}; calls {self.calls}"
        )


class Failover:
    """EtcdCluster (3 members) + backends alpha/beta + Envoy with the
    shipped registry clusters, gRPC watch on, interval_ms 500 (as in the
    issue), `web` flipping between alpha and beta."""

    def __init__(self, wasm: Path, workdir: Path, interval_ms: int = 500, backoff_max_ms: int = 2000,
                 plugin_log_level: str | None = None, envoy_args: tuple[str, ...] = (), clusters: str = "shipped",
                 outlier_event_log: bool = False):
        self.wasm = Path(wasm)
        self.workdir = Path(workdir)
        self.interval_ms = interval_ms
        self.backoff_max_ms = backoff_max_ms
        self.plugin_log_level = plugin_log_level
        self.envoy_args = envoy_args
        self.clusters = clusters
        self.outlier_event_log = outlier_event_log
        # the cluster whose endpoints are the etcd members' JSON gateways
        self.members_cluster = "etcd_members" if clusters == "shipped" else "etcd"
        self.cluster: harness.EtcdCluster | None = None
        self.backends: dict[str, harness.Backend] = {}
        self.envoy: _Envoy | None = None
        self.client: harness.Client | None = None
        self.up = "alpha"  # the member of `web` that is up; the other is down
        self.last_kill_wall = 0.0  # time.time() of the last round's kill

    def start(self) -> "Failover":
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.cluster = harness.EtcdCluster(self.workdir / "etcd").start()
            for name in ("alpha", "beta"):
                self.backends[name] = harness.Backend(name)
            lead = self.cluster.wait_leader()
            self.cluster.put_members_via(lead, WEB, self._web_members(self.up))
            self.cluster.put_members_via(lead, API, {self.addr("alpha"): {}})
            self.envoy = _Envoy(
                self.workdir / "envoy",
                self.wasm,
                self.cluster.client_ports[0],
                interval_ms=self.interval_ms,
                backoff_max_ms=self.backoff_max_ms,
                template=failover_template(
                    self.workdir, self.plugin_log_level, self.clusters,
                    event_log_dir=self.workdir if self.outlier_event_log else None,
                ),
                web_registry=harness.web_registry_config("etcd_v3", watch=True),
                extra_args=self.envoy_args,
            )
            for i, port in enumerate(self.cluster.client_ports):
                self.envoy.values[f"ETCD_PORT_{i}"] = port
            self.envoy.values["ETCD_RELAY_PORT"] = harness.free_ports(1)[0]
            self.envoy.start()
            self.client = harness.Client(self.envoy.ingress_port, timeout=5)
            self.settle(timeout=30)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self.client:
            self.client.close()
        if self.envoy:
            self.envoy.stop()
        if self.cluster:
            self.cluster.kill()
        for b in self.backends.values():
            b.stop()
        self.backends = {}

    def addr(self, name: str) -> str:
        return self.backends[name].address

    def _web_members(self, up: str) -> dict[str, dict]:
        return {self.addr(n): ({} if n == up else {"down": 1}) for n in ("alpha", "beta")}

    # checks ------------------------------------------------------------------
    def envoy_web(self) -> dict[str, bool]:
        """Envoy's members of `web`: address -> healthy (not `down`)."""
        for c in admin_json(self.envoy, "/clusters?format=json").get("cluster_statuses", []):
            if c.get("name") == "web":
                out = {}
                for h in c.get("host_statuses", []):
                    sa = h["address"]["socket_address"]
                    health = h.get("health_status", {}).get("eds_health_status", "HEALTHY")
                    out[f"{sa['address']}:{sa['port_value']}"] = health == "HEALTHY"
                return out
        return {}

    def etcd_web(self) -> dict[str, bool]:
        """etcd's members of `web` (read through any running member)."""
        m = self.cluster.running()[0]
        out = {}
        for key, value in m.get_prefix(WEB).items():
            out[key[len(WEB):]] = not json.loads(value).get("down")
        return out

    def settle(self, timeout: float = 30.0) -> None:
        """Every etcd member runs and has caught up; Envoy sees every member
        of both registry clusters healthy (no ejection, no failed health
        check); the plugin's watch is open and its last call succeeded;
        Envoy's `web` equals etcd's and only the up backend gets traffic."""
        self.cluster.wait_converged(timeout)

        def ready():
            for c in (self.members_cluster, "etcd_grpc"):
                hosts = registry_hosts(self.envoy, c)
                if len(hosts) != 3 or any(h["flags"] for h in hosts.values()):
                    return None
            st = self.envoy.upstream_status("web")
            if st.get("watch") != "open" or st.get("consecutive_failures") or st.get("state") == "backoff":
                return None
            return self.envoy_web() == self.etcd_web()

        harness.wait_until(ready, timeout, 0.1, "etcd, Envoy's registry clusters and the plugin to settle")
        smp = harness.wait_until(
            lambda: (lambda s: s if s.only(self.up) else None)(self.client.sample(10)),
            timeout, 0.02, f"traffic to {self.up} only",
        )
        assert smp.only(self.up), smp

    def watch_holder(self) -> int | None:
        """The client port of the etcd member holding the watch stream (the
        etcd_grpc host with a request in flight; health checks are not
        requests)."""
        active = [p for p, h in registry_hosts(self.envoy, "etcd_grpc").items() if h["rq_active"]]
        return active[0] if len(active) == 1 else None

    def host_calls(self) -> dict[int, dict[str, int]]:
        """Per member of cluster `etcd` (client port): Envoy's counters of the
        plugin's calls there."""
        out = {}
        for c in admin_json(self.envoy, "/clusters?format=json").get("cluster_statuses", []):
            if c.get("name") != self.members_cluster:
                continue
            for h in c.get("host_statuses", []):
                port = h["address"]["socket_address"]["port_value"]
                stats = {s["name"]: int(s.get("value", 0)) for s in h.get("stats", []) if "name" in s}
                out[port] = {k: stats.get(k, 0) for k in HOST_COUNTERS}
        return out

    # one round ---------------------------------------------------------------
    def kill_round(self, kind: str, route_timeout: float = 10.0) -> Round:
        """Take one member away and write the flip of `web` through a
        survivor at once; time it until a request is answered by the backend
        the write brought up. kind: "leader" or "follower" (SIGKILL; the
        member is restarted afterwards, on the same data dir), or
        "leader_hang" (SIGSTOP: the process keeps its sockets and answers
        nothing, as a host that is cut off; SIGCONT afterwards). Everything
        settles before this returns."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        lead = self.cluster.wait_leader()
        followers = [m for m in self.cluster.members if m is not lead]
        victim = followers[0] if kind == "follower" else lead
        survivors = [m for m in self.cluster.members if m is not victim]
        via = lead if kind == "follower" else survivors[0]
        holder = self.watch_holder()
        fails0 = dict(self.envoy.upstream_status("web").get("failures_by_reason") or [])
        od0 = admin_stats(self.envoy, ENVOY_EVENTS)
        calls0 = self.host_calls()
        new_up = "beta" if self.up == "alpha" else "alpha"

        elected: list[float] = []
        th = None
        self.last_kill_wall = time.time()
        t0 = time.monotonic()
        if kind == "leader_hang":
            victim.pause()
        else:
            victim.kill()
        if kind != "follower":
            def watch_election():
                try:
                    self.cluster.wait_leader(timeout=route_timeout, exclude=victim, among=survivors)
                    elected.append(time.monotonic() - t0)
                except Exception:  # noqa: BLE001 - reported as None
                    pass

            th = threading.Thread(target=watch_election, daemon=True)
            th.start()
        try:
            # A write sent before the survivors notice the leader is gone is
            # forwarded to the dead leader and lost; etcd answers it only
            # after its request timeout (5 s + 2 election timeouts). A client
            # with a short timeout that tries again (the write is
            # idempotent) gets through once a new leader is in place.
            self.cluster.put_members_via(via, WEB, self._web_members(new_up), attempt_timeout=0.1)
            written = time.monotonic() - t0
            while True:
                if time.monotonic() - t0 > route_timeout:
                    raise AssertionError(
                        f"{kind} {victim.name}: the change was not routed within {route_timeout} s; "
                        f"status {self.envoy.upstream_status('web')}"
                    )
                try:
                    status, backend = self.client.get("/")
                except (OSError, http.client.HTTPException):
                    status, backend = 0, None
                if status == 200 and backend == new_up:
                    routed = time.monotonic() - t0
                    break
                time.sleep(0.001)
            if th is not None:
                th.join(timeout=route_timeout)
            self.up = new_up
            fails1 = dict(self.envoy.upstream_status("web").get("failures_by_reason") or [])
            od1 = admin_stats(self.envoy, ENVOY_EVENTS)
            calls1 = self.host_calls()
        finally:
            if kind == "leader_hang":
                victim.resume()
            else:
                victim.start()
        names = {m.client_port: ("victim" if m is victim else m.name) for m in self.cluster.members}
        calls = {}
        for port, after in calls1.items():
            before = calls0.get(port, {})
            moved = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
            if moved:
                calls[names.get(port, str(port))] = moved
        rnd = Round(
            kind=kind,
            victim=victim.name,
            via=via.name,
            elected_s=elected[0] if elected else None,
            written_s=written,
            routed_s=routed,
            watch_on_victim=holder == victim.client_port,
            plugin_failures={k: v - fails0.get(k, 0) for k, v in fails1.items() if v != fails0.get(k, 0)},
            ejections={k.replace("cluster.", ""): v - od0.get(k, 0) for k, v in od1.items() if v != od0.get(k, 0)},
            calls=calls,
        )
        self.settle()
        return rnd
