"""Upstreams found in the registry (`discover`) and served to Envoy as REST CDS
(envoy/discover.yaml): a new upstream in the registry gets traffic with no
Envoy configuration edit, and one that leaves the registry leaves Envoy only
once a later listing confirms it.

One real etcd 3.4 and one Envoy 1.40 per registry type (etcd v3 with the gRPC
Watch, etcd v2, and Consul KV through the project's Consul emulator)."""

from __future__ import annotations

import http.client
import json
import re
import urllib.request

import pytest

import harness
from harness import REPO, Backend, Envoy, Etcd, wait_until

DISCOVER_TEMPLATE = REPO / "envoy" / "discover.yaml"

REGISTRIES = {
    "etcd_v3": {"type": "etcd_v3", "target": "etcd", "prefix": "/upstreams/", "grpc_target": "etcd_grpc"},
    # No watch: the listing reads the upstreams whose keys moved, in transactions.
    "etcd_v3_nowatch": {"type": "etcd_v3", "target": "etcd", "prefix": "/upstreams/"},
    "etcd_v2": {"type": "etcd_v2", "target": "etcd", "prefix": "/upstreams/", "wait_ms": 5000},
    "consul_kv": {"type": "consul_kv", "target": "consul", "prefix": "upstreams/", "wait_ms": 5000},
}
SERVICE_REGISTRIES = {"consul_health": {"type": "consul_health", "target": "consul", "wait_ms": 5000}}


class DiscoverStack:
    def __init__(self, workdir, wasm, kind: str):
        self.kind = kind
        self.etcd = Etcd(workdir / "etcd").start()
        self.consul = None
        consul_port = None
        if kind.startswith("consul"):
            self.consul = harness.consul_emulator_class()(port=0).start()
            consul_port = self.consul.port
        self.backends = {n: Backend(n) for n in ("alpha", "beta", "gamma", "delta")}
        self.envoy = Envoy(
            workdir / "envoy", wasm, self.etcd.client_port, template=DISCOVER_TEMPLATE, interval_ms=300,
            backoff_max_ms=1000, consul_port=consul_port,
        )
        self.envoy.values["DISCOVER_REGISTRY"] = json.dumps({**REGISTRIES, **SERVICE_REGISTRIES}[kind])

    def put(self, upstream: str, backend: str) -> None:
        address = self.backends[backend].address
        value = harness.member_value()
        if self.kind.startswith("etcd_v3"):
            self.etcd.put(f"/upstreams/{upstream}/{address}", value)
        elif self.kind == "etcd_v2":
            self.etcd.v2_put(f"/upstreams/{upstream}/{address}", value)
        else:
            self.consul.put_kv(f"upstreams/{upstream}/{address}", value)

    def delete(self, upstream: str, backend: str) -> None:
        address = self.backends[backend].address
        if self.kind.startswith("etcd_v3"):
            self.etcd.delete(f"/upstreams/{upstream}/{address}")
        elif self.kind == "etcd_v2":
            self.etcd.v2_delete(f"/upstreams/{upstream}/{address}")
        else:
            self.consul.delete_kv(f"upstreams/{upstream}/{address}")

    def remove_upstream(self, upstream: str, backend: str) -> None:
        """Deletes the upstream's last member; on etcd v2 also its directory,
        which etcd v2 keeps when its last key goes (an empty directory is an
        upstream with no members)."""
        self.delete(upstream, backend)
        if self.kind == "etcd_v2":
            status, body = self.etcd._v2("DELETE", f"/upstreams/{upstream}", query="?dir=true&recursive=true")
            assert status in (200, 404), body

    def get(self, upstream: str) -> tuple[int, str | None]:
        conn = http.client.HTTPConnection("127.0.0.1", self.envoy.ingress_port, timeout=5)
        try:
            conn.request("GET", "/", headers={"x-upsync-upstream": upstream})
            resp = conn.getresponse()
            resp.read()
            return resp.status, resp.getheader("x-backend")
        finally:
            conn.close()

    def envoy_clusters(self) -> set[str]:
        _, text = harness.http_text("GET", f"http://127.0.0.1:{self.envoy.admin_port}/clusters?format=json")
        return {c["name"] for c in json.loads(text).get("cluster_statuses", [])}

    def close(self) -> None:
        self.envoy.stop()
        for b in self.backends.values():
            b.stop()
        if self.consul is not None:
            self.consul.stop()
        self.etcd.kill()


@pytest.fixture(params=sorted(REGISTRIES))
def discover_stack(request, tmp_path, wasm):
    stack = DiscoverStack(tmp_path, wasm, request.param)
    request.addfinalizer(stack.close)
    stack.put("web", "alpha")
    stack.put("api", "beta")
    stack.envoy.start()
    return stack


def test_found_upstreams_become_envoy_clusters_and_a_new_one_needs_no_config_edit(discover_stack):
    s = discover_stack
    wait_until(lambda: s.get("web") == (200, "alpha") and s.get("api") == (200, "beta"), 30, 0.1,
               "web and api routed through CDS clusters")
    assert s.get("nope")[0] in (404, 503), "a name nobody registered has no cluster"

    s.put("shop", "gamma")
    wait_until(lambda: s.get("shop") == (200, "gamma"), 30, 0.1, "the new upstream shop to get traffic")
    assert {"web", "api", "shop"} <= s.envoy_clusters()
    code, status = s.envoy.status()
    assert code == 200
    assert {"web", "api", "shop"} <= {u["name"] for u in status["upstreams"]}

    # A member change inside a found upstream moves traffic like any upstream
    # (one at a time: replacing its only member at once is a removal of
    # every member, which max_removal_share holds for a confirming read).
    s.put("shop", "delta")
    wait_until(lambda: len(s.envoy.upstream_status("shop")["members"]) == 2, 30, 0.1, "shop's second member")
    s.delete("shop", "gamma")
    wait_until(lambda: s.get("shop") == (200, "delta"), 30, 0.1, "shop's new member")

    # The upstream leaves the registry: it goes from Envoy after a later
    # listing confirms (interval_ms 300 here), and the others keep serving.
    s.remove_upstream("api", "beta")
    wait_until(lambda: "api" not in s.envoy_clusters(), 30, 0.2, "api's cluster removed by CDS")
    assert s.get("web") == (200, "alpha")
    assert "discover[0]: 0 upstream(s) added, 1 removed" in s.envoy.log()


def test_etcd_v2_parent_is_watched_by_one_long_poll_for_every_upstream_found(tmp_path, wasm):
    """etcd v2: the parent is read in full and watched with one recursive
    long poll; the upstreams it found make no calls of their own. etcd
    counts its watchers (`etcd_debugging_store_watchers`) and its recursive
    reads: one watcher for five upstreams, and a change reaches traffic
    through the watch without any read."""
    s = DiscoverStack(tmp_path, wasm, "etcd_v2")
    try:
        names = ["u0", "u1", "u2", "u3", "u4"]
        for n in names:
            s.put(n, "alpha")
        s.envoy.start()
        wait_until(lambda: all(s.get(n) == (200, "alpha") for n in names), 30, 0.1, "five found upstreams routed")
        wait_until(lambda: etcd_metric(s.etcd, "etcd_debugging_store_watchers") == 1, 10, 0.1,
                   "exactly one etcd v2 watcher")
        reads = etcd_metric(s.etcd, "etcd_debugging_store_reads_total", '{action="getRecursive"}')
        s.put("u3", "beta")
        wait_until(lambda: len(s.envoy.upstream_status("u3")["members"]) == 2, 10, 0.05, "u3's second member")
        after = etcd_metric(s.etcd, "etcd_debugging_store_reads_total", '{action="getRecursive"}')
        # The periodic full read of the parent (interval_ms 300 here) may fall
        # in the window; a read per upstream (five) may not.
        assert after - reads <= 2, (reads, after)
        assert etcd_metric(s.etcd, "etcd_debugging_store_watchers") == 1
    finally:
        s.close()


def etcd_metric(etcd: Etcd, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(etcd.url + "/metrics", timeout=3).read().decode()
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    if m is None:
        raise KeyError(f"{name}{labels} not in etcd's /metrics")
    return float(m.group(1))


def test_the_cds_endpoint_answers_like_envoy_expects(discover_stack):
    s = discover_stack
    url = f"http://127.0.0.1:{s.envoy.eds_port}/v3/discovery:clusters"
    request = {"node": {"id": "t", "cluster": "t"}, "type_url": "type.googleapis.com/envoy.config.cluster.v3.Cluster"}
    wait_until(lambda: len(harness.http_json("POST", url, request)[1].get("resources", [])) == 2, 30, 0.1,
               "two clusters served")
    code, body = harness.http_json("POST", url, request)
    assert code == 200
    names = sorted(r["name"] for r in body["resources"])
    assert names == ["api", "web"]
    assert all(r["type"] == "EDS" and r["eds_cluster_config"]["service_name"] == r["name"] for r in body["resources"])
    code, _ = harness.http_json("POST", url, dict(request, version_info=body["version_info"]))
    assert code == 304
    assert harness.http_json("GET", url)[0] == 405
    assert harness.http_text("POST", url)[0] == 400


def test_consul_services_carrying_the_tag_become_upstreams(tmp_path, wasm):
    """consul_health: `GET /v1/catalog/services` as a blocking query, filtered by
    `tag`; each service found is read from /v1/health/service/<name>."""
    s = DiscoverStack(tmp_path, wasm, "consul_health")
    try:
        # `tag` sits beside `registry` in the discover entry, after it in the template.
        s.envoy.values["DISCOVER_REGISTRY"] += ', "tag": "edge"'

        def register(service: str, backend: str, tags=("edge",)) -> None:
            b = s.backends[backend]
            s.consul.register_service(service, "127.0.0.1", b.port, node=f"node-{service}-{backend}",
                                      service_id=f"{service}-{backend}", tags=list(tags))

        register("web", "alpha")
        register("internal", "beta", tags=("private",))
        s.envoy.start()
        wait_until(lambda: s.get("web") == (200, "alpha"), 30, 0.1, "tagged service web routed")
        register("shop", "gamma")
        wait_until(lambda: s.get("shop") == (200, "gamma"), 30, 0.1, "a newly tagged service routed")
        assert "internal" not in s.envoy_clusters(), "a service without the tag is no upstream"
        assert s.get("internal")[0] in (404, 503)
    finally:
        s.close()
