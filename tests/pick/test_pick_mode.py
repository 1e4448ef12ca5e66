"""Pick mode on a real Envoy: the plugin picks the member per request and
hands it to Envoy's router, through the override_host policy (a header the
filter always overwrites) or an ORIGINAL_DST cluster (filter state)."""

from __future__ import annotations

import collections
import http.client
import json
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import harness  # noqa: E402

TEMPLATE = REPO / "envoy" / "pick.yaml"
WEB = "/upstreams/web/"
ROUTES = {"override_host": "web", "original_dst": "web_dst"}


class PickStack:
    def __init__(self, workdir: Path, wasm: Path, route: str, balance: dict):
        self.etcd = harness.Etcd(workdir / "etcd").start()
        self.backends = {n: harness.Backend(n) for n in ("alpha", "beta", "gamma")}
        self.envoy = harness.Envoy(
            workdir / "envoy", wasm, self.etcd.client_port, interval_ms=100, backoff_max_ms=1000, template=TEMPLATE
        )
        self.envoy.values.update(PICK_ROUTE=route, ROUTE_CLUSTER=ROUTES[route], BALANCE=json.dumps(balance))
        self.envoy.start()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.envoy.ingress_port, timeout=5)

    def addr(self, name: str) -> str:
        return self.backends[name].address

    def set_members(self, **members: dict) -> None:
        self.etcd.set_members(WEB, {self.addr(n): attrs for n, attrs in members.items()})

    def get(self, headers: dict | None = None) -> tuple[int, str]:
        self.conn.request("GET", "/", headers=headers or {})
        r = self.conn.getresponse()
        body = r.read().decode()
        return r.status, body

    def counts(self, n: int, headers: dict | None = None) -> collections.Counter:
        c: collections.Counter = collections.Counter()
        for _ in range(n):
            status, body = self.get(headers)
            c[body if status == 200 else f"status {status}"] += 1
        return c

    def wait_for(self, pred, n: int = 30, timeout: float = 10.0, headers: dict | None = None):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.counts(n, headers)
            if pred(last):
                return last
            time.sleep(0.05)
        raise AssertionError(f"timed out; last sample {last}")

    def close(self) -> None:
        self.conn.close()
        self.envoy.stop()
        self.etcd.kill()
        for b in self.backends.values():
            b.stop()


@pytest.fixture
def make(tmp_path, request):
    wasm = Path(request.config.getoption("--wasm")).resolve()
    stacks = []

    def make_stack(route: str, balance: dict) -> PickStack:
        s = PickStack(tmp_path / f"s{len(stacks)}", wasm, route, balance)
        stacks.append(s)
        return s

    yield make_stack
    for s in stacks:
        s.close()


@pytest.mark.parametrize("route", ["override_host", "original_dst"])
def test_round_robin_follows_the_registry_and_clients_cannot_steer(make, route):
    s = make(route, {"policy": "round_robin"})
    s.set_members(alpha={}, beta={"weight": 3})
    # nginx's smooth WRR, per worker: over 400 requests exactly 1:3 per worker.
    got = s.wait_for(lambda c: set(c) == {"alpha", "beta"}, n=40)
    got = s.counts(400)
    assert set(got) == {"alpha", "beta"}, got
    assert 2.5 <= got["beta"] / got["alpha"] <= 3.5, got
    # A client naming a host itself gets nothing special: not a host outside
    # the list, and not a listed one either (were the header taken as sent,
    # override_host would send every request to alpha).
    spoof = s.counts(100, headers={"x-upsync-host": s.addr("gamma")})
    assert set(spoof) == {"alpha", "beta"}, spoof
    spoof = s.counts(200, headers={"x-upsync-host": s.addr("alpha")})
    assert set(spoof) == {"alpha", "beta"} and 2.5 <= spoof["beta"] / spoof["alpha"] <= 3.5, spoof
    # Registry changes: down and removal.
    s.set_members(alpha={"down": 1}, beta={}, gamma={})
    s.wait_for(lambda c: set(c) == {"beta", "gamma"})
    s.set_members(gamma={})
    s.wait_for(lambda c: set(c) == {"gamma"})


@pytest.mark.parametrize("route", ["override_host", "original_dst"])
def test_hashing_keeps_a_key_on_one_member(make, route):
    s = make(route, {"policy": "hash", "hash_key": "header:x-user"})
    s.set_members(alpha={}, beta={}, gamma={})
    s.wait_for(lambda c: len(c) == 3)
    owners = {}
    for user in range(30):
        got = s.counts(5, headers={"x-user": f"user-{user}"})
        assert len(got) == 1, (user, got)
        owners[user] = next(iter(got))
    assert len(set(owners.values())) == 3, "keys spread over all members"
    # One member leaves: only its keys move.
    s.set_members(alpha={}, beta={})
    s.wait_for(lambda c: "gamma" not in c and len(c) == 2)
    for user, owner in owners.items():
        got = s.counts(2, headers={"x-user": f"user-{user}"})
        if owner != "gamma":
            assert set(got) == {owner}, (user, owner, got)


def test_no_member_answers_503_and_a_clear_log_line(make):
    s = make("override_host", {"policy": "round_robin"})
    status, body = s.get()
    assert status == 503, (status, body)
    assert "no upstream member" in body
    log = s.envoy.log_path.read_text()
    assert "answering 503" in log, log[-2000:]
