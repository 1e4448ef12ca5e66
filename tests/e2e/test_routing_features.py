"""Routing by what the registry knows, on a real Envoy fed by the plugin's
REST EDS (envoy/routing.yaml): zone-aware routing and locality-weighted
balancing from member zones, canary subsets from member tags, and TCP
upstreams through tcp_proxy.

The zone test prints the share of local-zone traffic at each step:
    .venv/bin/python -m pytest -q -s tests/e2e/test_routing_features.py -k zone
"""

from __future__ import annotations

import collections
import http.client
import socket
import threading
from pathlib import Path

import pytest

import harness
from harness import wait_until

TEMPLATE = harness.REPO / "envoy" / "routing.yaml"
WEB = "/upstreams/web/"
TCP = "/upstreams/tcp/"


class TcpBackend:
    """A TCP server that writes its name to every connection, then closes it."""

    def __init__(self, name: str):
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name=f"tcp-{name}", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            with conn:
                try:
                    conn.sendall(self.name.encode() + b"\n")
                except OSError:
                    pass

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=2)
        self.sock.close()


class RoutingStack:
    def __init__(self, workdir: Path, wasm: Path):
        self.etcd = harness.Etcd(workdir / "etcd").start()
        self.http = {n: harness.Backend(n) for n in ("a1", "a2", "b1", "b2", "canary-a", "canary-b")}
        self.tcp = {n: TcpBackend(n) for n in ("t1", "t2", "t3")}
        self.envoy = harness.Envoy(
            workdir / "envoy", wasm, self.etcd.client_port, interval_ms=100, backoff_max_ms=500, template=TEMPLATE
        )
        self.tcp_port = harness.free_ports(1)[0]
        self.envoy.values.update(TCP_PORT=self.tcp_port, NODE_ZONE="zone-a")
        self.envoy.start()

    def close(self) -> None:
        self.envoy.stop()
        self.etcd.kill()
        for b in self.http.values():
            b.stop()
        for t in self.tcp.values():
            t.stop()

    # HTTP -----------------------------------------------------------------
    def set_web(self, **members: dict) -> None:
        self.etcd.set_members(WEB, {self.http[n].address: attrs for n, attrs in members.items()})

    def sample(self, n: int, path: str = "/", headers: dict | None = None) -> collections.Counter:
        """Who answered n requests (one keep-alive connection)."""
        got: collections.Counter = collections.Counter()
        conn = http.client.HTTPConnection("127.0.0.1", self.envoy.ingress_port, timeout=5)
        try:
            for _ in range(n):
                conn.request("GET", path, headers=headers or {})
                r = conn.getresponse()
                r.read()
                got[r.getheader("x-backend") if r.status == 200 else f"HTTP {r.status}"] += 1
        finally:
            conn.close()
        return got

    def wait_sample(self, pred, n: int = 40, path: str = "/", headers: dict | None = None, what: str = "routing"):
        return wait_until(lambda: (lambda s: s if pred(s) else None)(self.sample(n, path, headers)), 15, 0.05, what)

    # TCP ------------------------------------------------------------------
    def set_tcp(self, **members: dict) -> None:
        self.etcd.set_members(TCP, {self.tcp[n].address: attrs for n, attrs in members.items()})

    def tcp_sample(self, n: int) -> collections.Counter:
        got: collections.Counter = collections.Counter()
        for _ in range(n):
            try:
                with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=3) as s:
                    data = b""
                    while chunk := s.recv(64):
                        data += chunk
                got[data.decode().strip() or "closed"] += 1
            except OSError as e:
                got[type(e).__name__] += 1
        return got

    def wait_tcp(self, names: set[str], n: int = 30, what: str = "tcp routing"):
        return wait_until(lambda: (lambda s: s if set(s) == names else None)(self.tcp_sample(n)), 15, 0.05, what)


@pytest.fixture(scope="module")
def rs(tmp_path_factory, wasm):
    s = RoutingStack(tmp_path_factory.mktemp("routing"), wasm)
    yield s
    s.close()


def zone(z: str, **attrs) -> dict:
    # Stable members carry canary=false: the default subset of cluster `web`.
    return {"zone": z, "tags": {"canary": "false"}, **attrs}


def local_share(sample: collections.Counter) -> float:
    total = sum(sample.values())
    return sum(v for k, v in sample.items() if k.startswith("a")) / total if total else 0.0


def test_zone_aware_routing_stays_local_and_spills_over(rs):
    n = 400
    steps = []

    def measure(label: str, pred) -> collections.Counter:
        got = rs.wait_sample(pred, n=60, what=label)
        got = rs.sample(n)
        steps.append((label, local_share(got), dict(sorted(got.items()))))
        print(f"zone-aware [{label}]: local-zone share {local_share(got):.1%} of {n}: {dict(sorted(got.items()))}")
        return got

    rs.set_web(a1=zone("zone-a"), a2=zone("zone-a"), b1=zone("zone-b"), b2=zone("zone-b"))
    got = measure("all healthy", lambda s: set(s) == {"a1", "a2"})
    assert set(got) == {"a1", "a2"}, got

    # One of two local members down: Envoy keeps as much local as the
    # zone's healthy share allows (1 of 3 healthy members is local, against
    # 1 of 2 Envoys: 2/3 local) and spills the rest.
    rs.set_web(a1=zone("zone-a", down=1), a2=zone("zone-a"), b1=zone("zone-b"), b2=zone("zone-b"))
    got = measure("a1 down", lambda s: "a1" not in s and {"b1", "b2"} & set(s))
    assert "a1" not in got and 0.45 <= local_share(got) <= 0.85, got
    assert got["b1"] > 0 and got["b2"] > 0, got

    rs.set_web(a1=zone("zone-a", down=1), a2=zone("zone-a", down=1), b1=zone("zone-b"), b2=zone("zone-b"))
    got = measure("zone-a all down", lambda s: set(s) == {"b1", "b2"})
    assert set(got) == {"b1", "b2"}, got

    rs.set_web(a1=zone("zone-a"), a2=zone("zone-a"), b1=zone("zone-b"), b2=zone("zone-b"))
    got = measure("zone-a back", lambda s: set(s) == {"a1", "a2"})
    assert set(got) == {"a1", "a2"}, got

    # The status endpoint shows where each member runs.
    st = rs.envoy.upstream_status("web")
    assert {m["zone"] for m in st["members"]} == {"zone-a", "zone-b"}, st


def test_locality_weighted_balancing_follows_member_weights(rs):
    # zone-a: 1 + 1, zone-b: 3 + 3 → zone-a gets 2/8 of the traffic.
    rs.set_web(
        a1=zone("zone-a"), a2=zone("zone-a"), b1=zone("zone-b", weight=3), b2=zone("zone-b", weight=3)
    )
    rs.wait_sample(lambda s: {"b1", "b2"} <= set(s), n=60, path="/weighted", what="weighted localities")
    got = rs.sample(800, path="/weighted")
    share = local_share(got)
    print(f"locality-weighted: zone-a share {share:.1%} (weights 2 vs 6, expected 25%): {dict(sorted(got.items()))}")
    assert 0.17 <= share <= 0.33, got
    assert all(k in {"a1", "a2", "b1", "b2"} for k in got), got


def test_canary_subset_by_header(rs):
    rs.set_web(
        a1=zone("zone-a"),
        b1=zone("zone-b"),
        **{"canary-a": {"zone": "zone-a", "tags": ["canary"]}, "canary-b": {"zone": "zone-b", "tags": ["canary"]}},
    )
    canary = {"x-canary": "true"}
    # Canary requests: only the canaries (the local one first: zone-aware
    # routing works inside the subset too).
    got = rs.wait_sample(lambda s: set(s) == {"canary-a"}, headers=canary, what="canary subset")
    got = rs.sample(100, headers=canary)
    assert set(got) == {"canary-a"}, got
    # Plain requests: the default subset, the stable members.
    got = rs.sample(100)
    assert set(got) == {"a1"}, got
    # A value no member has: the default subset.
    got = rs.sample(40, headers={"x-canary": "nope"})
    assert set(got) == {"a1"}, got
    # The local canary down: canary traffic goes to the other zone's canary.
    rs.set_web(
        a1=zone("zone-a"),
        b1=zone("zone-b"),
        **{"canary-a": {"zone": "zone-a", "tags": ["canary"], "down": 1}, "canary-b": {"zone": "zone-b", "tags": ["canary"]}},
    )
    got = rs.wait_sample(lambda s: set(s) == {"canary-b"}, headers=canary, what="remote canary")
    # Canaries removed from the registry: canary requests fall back to the stable members.
    rs.set_web(a1=zone("zone-a"), b1=zone("zone-b"))
    got = rs.wait_sample(lambda s: set(s) == {"a1"}, headers=canary, what="canary fallback")
    assert set(got) == {"a1"}, got


def test_tcp_proxy_follows_the_registry(rs):
    rs.set_tcp(t1={}, t2={})
    rs.wait_tcp({"t1", "t2"}, what="t1 and t2")
    rs.set_tcp(t1={}, t2={}, t3={})
    rs.wait_tcp({"t1", "t2", "t3"}, what="t3 added")
    rs.set_tcp(t2={}, t3={})
    rs.wait_tcp({"t2", "t3"}, what="t1 removed")
    rs.set_tcp(t2={"down": 1}, t3={})
    rs.wait_tcp({"t3"}, what="t2 down")
    # etcd gone: the last list stays in force.
    rs.etcd.kill()
    for _ in range(3):
        got = rs.tcp_sample(30)
        assert set(got) == {"t3"}, got
        wait_until(lambda: rs.envoy.upstream_status("tcp")["consecutive_failures"] > 0, 10, 0.1, "a failed poll")
    rs.etcd.start()
    rs.set_tcp(t1={}, t3={})
    rs.wait_tcp({"t1", "t3"}, what="sync resumed")
