"""Checks the Consul emulator against Consul's documented HTTP API examples and semantics.

Pages (see README.md): api-docs/kv, api-docs/catalog, api-docs/health,
api-docs/features/blocking, api-docs/features/consistency,
api-docs/api-structure#authentication. Everything runs on 127.0.0.1 on free
ports, every wait is bounded, every emulator is stopped by its fixture.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from emulator import ConsulEmulator, blocking_hold, parse_go_duration  # noqa: E402

TIMEOUT = 10.0  # ceiling for any single HTTP exchange in these tests


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def index(self) -> int:
        return int(self.headers["x-consul-index"])


def call(emu: ConsulEmulator, method: str, target: str, body=None, headers=None, conn=None) -> Resp:
    c = conn or http.client.HTTPConnection("127.0.0.1", emu.port, timeout=TIMEOUT)
    try:
        c.request(method, target, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        if conn is None:
            c.close()


def get(emu, target, **kw) -> Resp:
    return call(emu, "GET", target, **kw)


def put(emu, target, body=b"", **kw) -> Resp:
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    return call(emu, "PUT", target, body=body, **kw)


class Background:
    """Runs one request in a thread; .join() returns (Resp, monotonic time it came back)."""

    def __init__(self, emu, target, headers=None):
        self.result = None
        self.error = None
        self.done_at = None

        def run():
            try:
                self.result = get(emu, target, headers=headers)
            except Exception as err:  # noqa: BLE001 - reported by join()
                self.error = err
            self.done_at = time.monotonic()

        self.thread = threading.Thread(target=run, daemon=True)
        self.started_at = time.monotonic()
        self.thread.start()

    def join(self, timeout=TIMEOUT):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "request still running"
        if self.error:
            raise self.error
        return self.result, self.done_at


@pytest.fixture
def consul():
    emu = ConsulEmulator(port=0).start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def acl_consul():
    emu = ConsulEmulator(port=0, acl_token="s3cr3t-token").start()
    try:
        yield emu
    finally:
        emu.stop()


# Sample payload of "Register Entity" in api-docs/catalog.
CATALOG_SAMPLE = {
    "Datacenter": "dc1",
    "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
    "Node": "t2.320",
    "Address": "192.168.10.10",
    "TaggedAddresses": {"lan": "192.168.10.10", "wan": "10.0.10.10"},
    "NodeMeta": {"somekey": "somevalue"},
    "Service": {
        "ID": "redis1",
        "Service": "redis",
        "Tags": ["primary", "v1"],
        "Address": "127.0.0.1",
        "TaggedAddresses": {
            "lan": {"address": "127.0.0.1", "port": 8000},
            "wan": {"address": "198.18.0.1", "port": 80},
        },
        "Meta": {"redis_version": "4.0"},
        "Port": 8000,
    },
    "Check": {
        "Node": "t2.320",
        "CheckID": "service:redis1",
        "Name": "Redis health check",
        "Notes": "Script based health check",
        "Status": "passing",
        "ServiceID": "redis1",
        "Definition": {
            "TCP": "localhost:8888",
            "Interval": "5s",
            "Timeout": "1s",
            "DeregisterCriticalServiceAfter": "30s",
        },
    },
    "SkipNodeUpdate": False,
}


# ----------------------------------------------------------------------------- KV


def test_emulator_kv_round_trip_base64_and_indexes(consul):
    r = put(consul, "/v1/kv/my-key", b"test")
    assert (r.status, r.json(), r.headers["content-type"]) == (200, True, "application/json")
    r = get(consul, "/v1/kv/my-key")
    assert r.status == 200
    [entry] = r.json()
    assert set(entry) == {"LockIndex", "Key", "Flags", "Value", "CreateIndex", "ModifyIndex"}
    assert entry["Key"] == "my-key" and entry["Flags"] == 0 and entry["LockIndex"] == 0
    assert entry["Value"] == "dGVzdA=="  # the documented sample's value: base64("test")
    assert entry["CreateIndex"] == entry["ModifyIndex"] == r.index
    assert r.headers["x-consul-knownleader"] == "true" and r.headers["x-consul-lastcontact"] == "0"

    first = r.index
    assert put(consul, "/v1/kv/my-key?flags=42", b"\x00\xffbinary").json() is True
    r = get(consul, "/v1/kv/my-key")
    [entry] = r.json()
    assert base64.b64decode(entry["Value"]) == b"\x00\xffbinary"
    assert entry["Flags"] == 42
    assert entry["CreateIndex"] == first < entry["ModifyIndex"] == r.index


def test_emulator_kv_empty_value_is_null_and_raw(consul):
    put(consul, "/v1/kv/empty", b"")
    [entry] = get(consul, "/v1/kv/empty").json()
    assert entry["Value"] is None
    r = get(consul, "/v1/kv/empty?raw")
    assert (r.status, r.body) == (200, b"")
    put(consul, "/v1/kv/bin", b"\x01\x02)k")
    r = get(consul, "/v1/kv/bin?raw")
    assert (r.status, r.body, r.headers["content-type"]) == (200, b"\x01\x02)k", "text/plain; charset=utf-8")
    assert r.index == consul.get_kv("bin")["ModifyIndex"]


def test_emulator_kv_recurse_keys_and_documented_separator_example(consul):
    for key in ("/web/bar", "/web/foo", "/web/subdir/a", "/web/subdir/b", "/webx"):
        put(consul, "/v1/kv/" + key, key.encode())
    r = get(consul, "/v1/kv//web/?recurse")
    assert [e["Key"] for e in r.json()] == ["/web/bar", "/web/foo", "/web/subdir/a", "/web/subdir/b"]
    assert r.index == max(e["ModifyIndex"] for e in r.json())
    # api-docs/kv "Keys Response": listing /web/ with a / separator.
    assert get(consul, "/v1/kv//web/?keys&separator=/").json() == ["/web/bar", "/web/foo", "/web/subdir/"]
    assert get(consul, "/v1/kv//web/?keys").json() == ["/web/bar", "/web/foo", "/web/subdir/a", "/web/subdir/b"]
    # ?recurse treats the key as a plain prefix.
    assert [e["Key"] for e in get(consul, "/v1/kv//web?recurse").json()][-1] == "/webx"
    # ?raw is for single keys only: with ?recurse the answer stays JSON.
    assert get(consul, "/v1/kv//web/?recurse&raw").headers["content-type"] == "application/json"


def test_emulator_kv_404_carries_index(consul):
    r = get(consul, "/v1/kv/missing")
    assert (r.status, r.body) == (404, b"") and r.index >= 1
    idx = consul.put_kv("other", "x")
    r = get(consul, "/v1/kv/missing")
    assert r.status == 404 and r.index == idx  # the KV table index
    r = get(consul, "/v1/kv/missing/?recurse")
    assert r.status == 404 and r.index == idx
    assert get(consul, "/v1/kv/missing/?keys").status == 404


def test_emulator_kv_cas_and_delete(consul):
    assert put(consul, "/v1/kv/c?cas=0", b"1").json() is True
    assert put(consul, "/v1/kv/c?cas=0", b"2").json() is False  # exists already
    mi = consul.get_kv("c")["ModifyIndex"]
    assert put(consul, f"/v1/kv/c?cas={mi + 100}", b"3").json() is False
    assert put(consul, f"/v1/kv/c?cas={mi}", b"4").json() is True
    assert consul.get_kv("c")["Value"] == b"4"
    mi = consul.get_kv("c")["ModifyIndex"]
    assert call(consul, "DELETE", "/v1/kv/c?cas=0").json() is False  # "a 0 index will not delete the key"
    assert call(consul, "DELETE", f"/v1/kv/c?cas={mi}").json() is True
    assert consul.get_kv("c") is None

    for k in ("t/a", "t/b/c", "tx"):
        consul.put_kv(k, "v")
    assert call(consul, "DELETE", "/v1/kv/t/?recurse").json() is True
    assert consul.kv_keys() == ["tx"]
    assert call(consul, "DELETE", "/v1/kv/").status == 400  # Missing key name
    assert put(consul, "/v1/kv/big", b"x" * (512 * 1024 + 1)).status == 413


def test_emulator_kv_prefix_index_never_goes_back_on_delete_until_tombstones_reaped(consul):
    i1 = consul.put_kv("p/1", "a")
    i2 = consul.put_kv("p/2", "b")
    assert get(consul, "/v1/kv/p/?recurse").index == i2
    i3 = consul.delete_kv("p/2")
    r = get(consul, "/v1/kv/p/?recurse")
    assert [e["Key"] for e in r.json()] == ["p/1"] and r.index == i3  # the tombstone's index
    consul.reap_tombstones("p/")
    assert get(consul, "/v1/kv/p/?recurse").index == i1  # documented "index went backwards" case


# ----------------------------------------------------------------------------- catalog


def test_emulator_catalog_register_sample_and_response_fields(consul):
    r = put(consul, "/v1/catalog/register", CATALOG_SAMPLE)
    assert (r.status, r.json()) == (200, True)
    r = get(consul, "/v1/catalog/service/redis")
    [e] = r.json()
    documented = {
        "ID", "Node", "Address", "Datacenter", "TaggedAddresses", "NodeMeta", "CreateIndex", "ModifyIndex",
        "ServiceAddress", "ServiceEnableTagOverride", "ServiceID", "ServiceName", "ServicePort", "ServiceMeta",
        "ServiceTaggedAddresses", "ServiceTags", "ServiceWeights", "ServiceKind", "ServiceProxy", "ServiceConnect",
    }  # fmt: skip
    assert documented <= set(e)
    assert e["ID"] == "40e4a748-2192-161a-0510-9bf59fe950b5"
    assert (e["Node"], e["Address"], e["Datacenter"]) == ("t2.320", "192.168.10.10", "dc1")
    assert e["TaggedAddresses"] == {"lan": "192.168.10.10", "wan": "10.0.10.10"}
    assert e["NodeMeta"] == {"somekey": "somevalue"}
    assert (e["ServiceID"], e["ServiceName"]) == ("redis1", "redis")
    assert (e["ServiceAddress"], e["ServicePort"]) == ("127.0.0.1", 8000)
    assert e["ServiceTags"] == ["primary", "v1"] and e["ServiceMeta"] == {"redis_version": "4.0"}
    assert e["ServiceTaggedAddresses"]["wan"] == {"address": "198.18.0.1", "port": 80}
    assert e["ServiceWeights"] == {"Passing": 1, "Warning": 1}
    assert e["ServiceEnableTagOverride"] is False
    assert e["CreateIndex"] == e["ModifyIndex"] == r.index

    assert get(consul, "/v1/catalog/services").json() == {"redis": ["primary", "v1"]}
    assert get(consul, "/v1/catalog/service/redis?tag=v1").json()[0]["ServiceID"] == "redis1"
    assert get(consul, "/v1/catalog/service/redis?tag=v1&tag=nope").json() == []
    assert get(consul, "/v1/catalog/service/redis?dc=dc1").status == 200
    assert get(consul, "/v1/catalog/service/redis?node-meta=somekey:somevalue").json() != []
    assert get(consul, "/v1/catalog/service/redis?node-meta=somekey:other").json() == []
    assert get(consul, "/v1/catalog/nodes").json()[0]["Node"] == "t2.320"
    assert get(consul, "/v1/catalog/datacenters").json() == ["dc1"]
    assert get(consul, "/v1/catalog/register").status == 405


def test_emulator_catalog_weights_and_deregister(consul):
    consul.register_service("web", "10.0.0.1", 80, node="n1", weights={"Passing": 10, "Warning": 1}, tags=["a"])
    consul.register_service("web", "10.0.0.2", 80, node="n2", tags=["b"])
    entries = get(consul, "/v1/catalog/service/web").json()
    assert [(e["Node"], e["ServiceWeights"]["Passing"]) for e in entries] == [("n1", 10), ("n2", 1)]
    assert get(consul, "/v1/catalog/services").json() == {"web": ["a", "b"]}

    sid = entries[0]["ServiceID"]
    assert put(consul, "/v1/catalog/deregister", {"Node": "n1", "ServiceID": sid}).json() is True
    assert [e["Node"] for e in get(consul, "/v1/catalog/service/web").json()] == ["n2"]
    assert [c["CheckID"] for c in consul_checks(consul, "web")] == ["service:web-10.0.0.2-80"]  # n1's check went too

    put(consul, "/v1/catalog/deregister", {"Node": "n2", "CheckID": "service:web-10.0.0.2-80"})
    assert get(consul, "/v1/health/service/web").json()[0]["Checks"] == []
    idx = put(consul, "/v1/catalog/deregister", {"Datacenter": "dc1", "Node": "n2"}) and consul.index
    r = get(consul, "/v1/catalog/service/web")
    assert r.json() == [] and r.index == idx  # the service's extinction index
    assert get(consul, "/v1/catalog/services").json() == {}
    assert put(consul, "/v1/catalog/deregister", {"ServiceID": "x"}).status == 400  # Missing node name


def consul_checks(consul, service):
    return [c for e in get(consul, f"/v1/health/service/{service}").json() for c in e["Checks"]]


def test_emulator_catalog_register_validation(consul):
    assert put(consul, "/v1/catalog/register", {"Address": "1.2.3.4"}).status == 400
    assert put(consul, "/v1/catalog/register", {"Node": "n"}).status == 400
    bad = {"Node": "n", "Address": "1.2.3.4", "Check": {"CheckID": "c", "Status": "sick"}}
    assert put(consul, "/v1/catalog/register", bad).status == 400
    orphan = {"Node": "n", "Address": "1.2.3.4", "Check": {"CheckID": "c", "ServiceID": "ghost"}}
    assert put(consul, "/v1/catalog/register", orphan).status == 500
    before = consul.index
    assert put(consul, "/v1/catalog/register", b"{not json").status == 400
    assert consul.index == before


# ----------------------------------------------------------------------------- health


def test_emulator_health_passing_filter(consul):
    consul.register_service("web", "10.0.0.1", 80, node="n1")
    consul.register_service("web", "10.0.0.2", 80, node="n2", status="warning")
    consul.register_service("web", "10.0.0.3", 80, node="n3", status="critical")
    consul.register_service("web", "10.0.0.4", 80, node="n4", status=None)  # no check at all: passes

    def nodes(q):
        r = get(consul, "/v1/health/service/web" + q)
        assert r.status == 200, r.body
        return [e["Node"]["Node"] for e in r.json()]

    assert nodes("") == ["n1", "n2", "n3", "n4"]
    assert nodes("?passing") == nodes("?passing=true") == nodes("?passing=1") == ["n1", "n4"]
    assert nodes("?passing=false") == nodes("?passing=0") == ["n1", "n2", "n3", "n4"]
    # Consul's filterNonPassing swaps each failing entry with the last kept one: order is not kept.
    consul.register_service("web", "10.0.0.5", 80, node="n5")
    assert nodes("?passing") == ["n1", "n5", "n4"]
    consul.deregister("n5")
    assert get(consul, "/v1/health/service/web?passing=maybe").status == 400

    consul.set_check_status("n3", "service:web-10.0.0.3-80", "passing")
    assert nodes("?passing") == ["n1", "n4", "n3"]  # n2 was swapped with n4
    entry = get(consul, "/v1/health/service/web?passing").json()[0]
    assert set(entry) == {"Node", "Service", "Checks"}
    assert entry["Service"]["Weights"] == {"Passing": 1, "Warning": 1}
    assert (entry["Service"]["Address"], entry["Service"]["Port"]) == ("10.0.0.1", 80)
    assert get(consul, "/v1/health/service/nope").json() == []
    assert get(consul, "/v1/health/service/").status == 400  # Missing service name


def test_emulator_health_node_level_check_applies_to_every_service_on_the_node(consul):
    consul.register_service("web", "10.0.0.1", 80, node="n1")
    consul.register_service("api", "10.0.0.1", 81, node="n1")
    consul.register_service("web", "10.0.0.2", 80, node="n2")
    web_before = get(consul, "/v1/health/service/web").index
    api_before = get(consul, "/v1/health/service/api").index

    idx = consul.set_node_check("n1", "critical")
    assert [e["Node"]["Node"] for e in get(consul, "/v1/health/service/web?passing").json()] == ["n2"]
    assert get(consul, "/v1/health/service/api?passing").json() == []
    web = get(consul, "/v1/health/service/web")
    checks = web.json()[0]["Checks"]
    assert [(c["CheckID"], c["ServiceID"], c["Status"]) for c in checks] == [
        ("serfHealth", "", "critical"),
        ("service:web-10.0.0.1-80", "web-10.0.0.1-80", "passing"),
    ]
    assert web.index == idx > web_before
    assert get(consul, "/v1/health/service/api").index == idx > api_before

    consul.set_node_check("n1", "passing")
    assert len(get(consul, "/v1/health/service/web?passing").json()) == 2


def test_emulator_service_index_ignores_unrelated_and_idempotent_writes(consul):
    consul.register_service("web", "10.0.0.1", 80, node="n1")
    idx = get(consul, "/v1/health/service/web").index
    consul.register_service("api", "10.0.0.9", 80, node="n9")
    consul.put_kv("k", "v")
    consul.register_service("web", "10.0.0.1", 80, node="n1")  # identical re-registration
    r = get(consul, "/v1/health/service/web")
    assert r.index == idx < consul.index
    body = r.body
    t = consul.touch_service("web")
    r = get(consul, "/v1/health/service/web")
    assert (r.index, r.body) == (t, body)  # index moved, nothing changed


# ----------------------------------------------------------------------------- blocking queries


def test_emulator_blocking_query_held_until_a_write(consul):
    idx = consul.register_service("web", "10.0.0.1", 80, node="n1")
    bg = Background(consul, f"/v1/health/service/web?index={idx}&wait=10s")
    assert consul.wait_until_blocked(1, "/v1/health/service/web", timeout=5)
    time.sleep(0.2)
    assert bg.thread.is_alive()  # still held
    written_at = time.monotonic()
    new = consul.register_service("web", "10.0.0.2", 80, node="n2")
    r, done_at = bg.join()
    assert done_at - written_at < 0.1
    assert r.status == 200 and r.index == new > idx
    assert len(r.json()) == 2


def test_emulator_blocking_query_returns_at_wait_expiry_with_unchanged_index(consul):
    idx = consul.put_kv("cfg", "1")
    t0 = time.monotonic()
    r = get(consul, f"/v1/kv/cfg?index={idx}&wait=300ms")
    elapsed = time.monotonic() - t0
    assert r.status == 200 and r.index == idx
    assert 0.3 <= elapsed < 0.3 + 0.3 / 16 + 0.25


def test_emulator_blocking_index_zero_or_stale_answers_at_once(consul):
    consul.put_kv("a", "1")
    current = consul.put_kv("a", "2")
    for q in ("index=0&wait=5s", f"index={current - 1}&wait=5s", "wait=1m"):
        t0 = time.monotonic()
        r = get(consul, "/v1/kv/a?" + q)
        assert r.status == 200 and r.index == current
        assert time.monotonic() - t0 < 0.5, q


def test_emulator_blocking_ignores_writes_elsewhere(consul):
    consul.register_service("web", "10.0.0.1", 80, node="n1")
    idx = get(consul, "/v1/health/service/web").index
    bg = Background(consul, f"/v1/health/service/web?index={idx}&wait=600ms")
    assert consul.wait_until_blocked(1, "/v1/health/service/web")
    consul.register_service("api", "10.0.0.9", 80, node="n9")
    consul.put_kv("x", "y")
    time.sleep(0.15)
    assert consul.blocked_count("/v1/health/service/web") == 1
    r, done_at = bg.join()
    assert r.index == idx and done_at - bg.started_at >= 0.6


def test_emulator_blocking_on_missing_key_wakes_only_when_it_appears(consul):
    r = get(consul, "/v1/kv/later")
    assert r.status == 404
    bg = Background(consul, f"/v1/kv/later?index={r.index}&wait=10s")
    assert consul.wait_until_blocked(1, "/v1/kv/later")
    consul.put_kv("unrelated", "1")
    time.sleep(0.15)
    assert consul.blocked_count("/v1/kv/later") == 1  # Consul's "not found" optimisation
    written_at = time.monotonic()
    idx = consul.put_kv("later", "now")
    r, done_at = bg.join()
    assert r.status == 200 and r.index == idx and done_at - written_at < 0.1


def test_emulator_blocking_on_prefix_wakes_on_delete(consul):
    consul.put_kv("up/a", "1")
    idx = consul.put_kv("up/b", "2")
    bg = Background(consul, f"/v1/kv/up/?recurse&index={idx}&wait=10s")
    assert consul.wait_until_blocked(1, "/v1/kv/up/")
    deleted = consul.delete_kv("up/b")
    r, _ = bg.join()
    assert [e["Key"] for e in r.json()] == ["up/a"] and r.index == deleted


def test_emulator_wait_and_index_parsing():
    assert parse_go_duration("5s") == 5 and parse_go_duration("100ms") == pytest.approx(0.1)
    assert parse_go_duration("1m") == 60 and parse_go_duration("1m30s") == 90 and parse_go_duration("0") == 0
    assert parse_go_duration("1.5h") == 5400 and parse_go_duration("250us") == pytest.approx(0.00025)
    for bad in ("", "5", "s", "5x", "1m 2s"):
        with pytest.raises(ValueError):
            parse_go_duration(bad)
    assert blocking_hold(None, jitter=False) == 300  # default 5m
    assert blocking_hold(0, jitter=False) == 300
    assert blocking_hold(3600, jitter=False) == 600  # limited to 10 minutes
    holds = [blocking_hold(16.0) for _ in range(2000)]
    assert all(16.0 <= h < 17.0 for h in holds) and max(holds) - min(holds) > 0.5  # up to wait/16 jitter


def test_emulator_bad_wait_or_index_is_400(consul):
    r = get(consul, "/v1/kv/a?index=1&wait=soon")
    assert (r.status, r.body) == (400, b"Invalid wait time")
    r = get(consul, "/v1/kv/a?index=abc")
    assert (r.status, r.body) == (400, b"Invalid index")
    assert get(consul, "/v1/kv/a?index=-1").status == 400


# ----------------------------------------------------------------------------- consistency, dc, ACL


def test_emulator_stale_and_consistent_are_exclusive(consul):
    consul.put_kv("k", "v")
    r = get(consul, "/v1/kv/k?stale&consistent")
    assert (r.status, r.body) == (400, b"Cannot specify ?stale with ?consistent, conflicting semantics.")
    assert get(consul, "/v1/kv/k?stale").headers["x-consul-effective-consistency"] == "stale"
    assert get(consul, "/v1/kv/k?consistent").headers["x-consul-effective-consistency"] == "consistent"
    assert get(consul, "/v1/kv/k").headers["x-consul-effective-consistency"] == "leader"
    assert get(consul, "/v1/health/service/x?stale&cached").status == 200


def test_emulator_unknown_datacenter(consul):
    for target in ("/v1/kv/k?dc=dc2", "/v1/health/service/web?dc=dc2", "/v1/catalog/service/web?dc=dc2"):
        r = get(consul, target)
        assert (r.status, r.body) == (500, b"No path to datacenter"), target
    assert put(consul, "/v1/kv/k?dc=dc2", b"v").status == 500
    assert put(consul, "/v1/catalog/register", dict(CATALOG_SAMPLE, Datacenter="dc9")).status == 500
    assert get(consul, "/v1/health/service/web?dc=dc1").status == 200


def test_emulator_acl_token_required(acl_consul):
    consul = acl_consul
    consul.put_kv("k", "v")
    r = get(consul, "/v1/kv/k")
    assert (r.status, r.body) == (403, b"Permission denied")
    assert r.headers["x-consul-default-acl-policy"] == "deny"
    r = get(consul, "/v1/kv/k", headers={"X-Consul-Token": "wrong"})
    assert (r.status, r.body) == (403, b"ACL not found")
    assert get(consul, "/v1/health/service/web").status == 403
    assert put(consul, "/v1/kv/k", b"w").status == 403
    assert consul.get_kv("k")["Value"] == b"v"

    ok = [
        get(consul, "/v1/kv/k", headers={"X-Consul-Token": "s3cr3t-token"}),
        get(consul, "/v1/kv/k", headers={"Authorization": "Bearer s3cr3t-token"}),
        get(consul, "/v1/kv/k", headers={"Authorization": "bearer s3cr3t-token"}),
        get(consul, "/v1/kv/k?token=s3cr3t-token"),
    ]
    assert [r.status for r in ok] == [200, 200, 200, 200]
    assert put(consul, "/v1/kv/k?token=s3cr3t-token", b"w").json() is True
    assert get(consul, "/v1/kv/k", headers={"Authorization": "Basic s3cr3t-token"}).status == 403
    # The test hooks are not part of Consul's API: no token needed.
    assert get(consul, "/_emulator/state").status == 200


# ----------------------------------------------------------------------------- test hooks


def test_emulator_fault_status_and_retry_after_for_next_n_requests(consul):
    consul.put_kv("k", "v")
    consul.inject_fault("/v1/kv/", count=2, status=429, headers={"Retry-After": "7"}, body="Too Many Requests")
    rs = [get(consul, "/v1/kv/k") for _ in range(3)]
    assert [r.status for r in rs] == [429, 429, 200]
    assert rs[0].headers["retry-after"] == "7" and rs[0].body == b"Too Many Requests"
    assert get(consul, "/v1/catalog/services").status == 200
    assert consul.faults() == []
    assert [e["fault"] is not None for e in consul.requests("/v1/kv/")] == [True, True, False]


def test_emulator_fault_truncated_body(consul):
    consul.register_service("web", "10.0.0.1", 80)
    consul.inject_fault("/v1/health/service/web", truncate=True)
    conn = http.client.HTTPConnection("127.0.0.1", consul.port, timeout=TIMEOUT)
    conn.request("GET", "/v1/health/service/web")
    r = conn.getresponse()
    assert r.status == 200
    with pytest.raises(http.client.IncompleteRead):
        r.read()
    conn.close()
    assert get(consul, "/v1/health/service/web").status == 200  # only the next request


def test_emulator_fault_oversize_delay_drop_and_header_override(consul):
    idx = consul.put_kv("k", "v")
    consul.inject_fault("/v1/kv/k", oversize=2_000_000)
    r = get(consul, "/v1/kv/k")
    assert len(r.body) == 2_000_000 and isinstance(r.json(), list) and r.index == idx

    consul.inject_fault("/v1/kv/k", delay=0.3)
    t0 = time.monotonic()
    r = get(consul, "/v1/kv/k")
    assert r.status == 200 and time.monotonic() - t0 >= 0.3

    consul.inject_fault("/v1/kv/k", drop=True)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        get(consul, "/v1/kv/k")

    consul.inject_fault("/v1/kv/k", headers={"X-Consul-Index": "0"})
    assert get(consul, "/v1/kv/k").headers["x-consul-index"] == "0"
    consul.inject_fault("/v1/kv/k", headers={"X-Consul-Index": None})
    assert "x-consul-index" not in get(consul, "/v1/kv/k").headers

    consul.inject_fault("/v1/kv/k", method="PUT", status=503)
    assert get(consul, "/v1/kv/k").status == 200
    assert put(consul, "/v1/kv/k", b"x").status == 503

    consul.inject_fault("/v1/", count=None, status=500)
    assert [get(consul, "/v1/kv/k").status for _ in range(3)] == [500, 500, 500]
    consul.clear_faults()
    assert get(consul, "/v1/kv/k").status == 200


def test_emulator_http_hooks(consul):
    consul.register_service("web", "10.0.0.1", 80, node="n1")
    spec = {"path_prefix": "/v1/health/", "count": 1, "status": 503, "headers": {"Retry-After": "1"}}
    r = put(consul, "/_emulator/faults", spec)
    assert r.status == 200 and "id" in r.json()
    assert len(get(consul, "/_emulator/faults").json()) == 1
    assert get(consul, "/v1/health/service/web").status == 503
    r = put(consul, "/_emulator/check", {"Node": "n1", "CheckID": "service:web-10.0.0.1-80", "Status": "critical"})
    assert r.status == 200
    assert get(consul, "/v1/health/service/web?passing").json() == []
    assert put(consul, "/_emulator/touch/web").json()["index"] == consul.index
    assert put(consul, "/_emulator/index", {"index": 1}).status == 200
    assert get(consul, "/_emulator/state").json()["index"] == 1
    log = get(consul, "/_emulator/requests?path_prefix=/v1/health/").json()
    assert [e["status"] for e in log] == [503, 200]
    assert call(consul, "DELETE", "/_emulator/requests").status == 200
    assert consul.requests() == []
    assert put(consul, "/_emulator/faults", {"count": 1}).status == 400


def test_emulator_reset_index_releases_blocked_queries_with_a_lower_index(consul):
    for i in range(5):
        consul.put_kv("k", str(i))
    high = consul.index
    bg = Background(consul, f"/v1/kv/k?index={high}&wait=10s")
    assert consul.wait_until_blocked(1, "/v1/kv/k")
    consul.reset_index(2)
    r, _ = bg.join()
    assert r.status == 200 and r.index == 2 < high
    assert consul.put_kv("k", "after") == 3
    assert get(consul, "/v1/kv/k").index == 3


def test_emulator_request_log(consul):
    t0 = time.monotonic()
    get(consul, "/v1/kv/a?recurse&index=0", headers={"X-Consul-Token": "tok"})
    put(consul, "/v1/kv/a", b"1")
    get(consul, "/v1/health/service/web?passing")
    kv = consul.requests("/v1/kv/")
    assert [(e["method"], e["path"]) for e in kv] == [("GET", "/v1/kv/a"), ("PUT", "/v1/kv/a")]
    assert kv[0]["query"] == {"recurse": [""], "index": ["0"]} and kv[0]["raw_query"] == "recurse&index=0"
    assert kv[0]["headers"]["x-consul-token"] == "tok" and "x-consul-token" not in kv[1]["headers"]
    assert [e["status"] for e in kv] == [404, 200]
    assert consul.request_count("/v1/kv/", method="GET") == 1
    assert consul.request_count(since=t0) == 3
    assert consul.requests_per_minute("/v1/", window=60) == 3
    consul.clear_requests()
    assert consul.request_count() == 0


def test_emulator_keep_alive_and_stop_closes_connections(consul):
    consul.put_kv("k", "v")
    conn = http.client.HTTPConnection("127.0.0.1", consul.port, timeout=TIMEOUT)
    try:
        targets = ("/v1/kv/k", "/v1/kv/missing", f"/v1/kv/k?index={consul.index}&wait=50ms")
        rs = [get(consul, t, conn=conn) for t in targets]
        sock = conn.sock
        rs.append(put(consul, "/v1/kv/k", b"w", conn=conn))
        assert [r.status for r in rs] == [200, 404, 200, 200]
        assert conn.sock is sock  # one connection for all of them
        port = consul.port
        consul.stop()
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError, OSError)):
            get(consul, "/v1/kv/k", conn=conn)
    finally:
        conn.close()
    with pytest.raises(ConnectionError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    consul.start()  # same port, same state
    assert consul.port == port
    [entry] = get(consul, "/v1/kv/k").json()
    assert base64.b64decode(entry["Value"]) == b"w"


def test_emulator_stop_releases_held_blocking_queries(consul):
    idx = consul.put_kv("k", "v")
    bg = Background(consul, f"/v1/kv/k?index={idx}&wait=30s")
    assert consul.wait_until_blocked(1)
    t0 = time.monotonic()
    consul.stop()
    bg.thread.join(5)
    assert not bg.thread.is_alive() and time.monotonic() - t0 < 5


def test_emulator_empty_as_null_option():
    with ConsulEmulator(port=0, empty_as_null=True) as emu:
        emu.register({"Node": "n", "Address": "10.0.0.1", "Service": {"Service": "web", "Port": 80}})
        [e] = get(emu, "/v1/catalog/service/web").json()
        assert e["ServiceTags"] is None and e["ServiceMeta"] is None and e["NodeMeta"] is None
        assert e["ServiceID"] == "web"  # ID defaults to the service name


def test_emulator_cli_prints_port_and_stops_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "emulator.py"), "--port", "0", "--acl-token", "cli-token"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "the emulator printed no port"
        port = int(proc.stdout.readline())
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        conn.request("PUT", "/v1/kv/cli", body=b"1", headers={"X-Consul-Token": "cli-token"})
        assert conn.getresponse().read() == b"true"
        conn.request("GET", "/v1/kv/cli")
        r = conn.getresponse()
        assert (r.status, r.read()) == (403, b"Permission denied")
        conn.close()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        proc.stdout.close()
        proc.stderr.close()
