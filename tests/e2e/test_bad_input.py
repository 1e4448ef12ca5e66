"""Bad registry answers and bad registry data, through real Envoy.

HTTP-level faults come from the Consul emulator's fault hooks
(tests/consul_emulator/, written from Consul's documentation: not a real
Consul); bad data is written to etcd v3 and Consul KV (upsync key layout) or
registered in the emulator's catalog. For each: the last good list stays,
the status endpoint shows the error or counter, Envoy stays up and keeps
serving, and the Envoy log has a line naming the upstream and the problem.

The three stacks (etcd_v3, consul_kv, consul_catalog) are made on first use
and shared by the whole module; `web` refuses answers over 4096 bytes."""

from __future__ import annotations

import json
import time

import pytest

import harness
from harness import addresses as _addresses, consul_path as _consul_path, log_lines as _log_lines
from harness import member as _member, route as _route
from harness import WEB_SERVICE

MAX_BODY = 4096
WAIT_MS = 5000
IPV6 = harness.ipv6_loopback_available()
FAULT_REGISTRIES = ("consul_kv", "consul_catalog")
KV_REGISTRIES = ("etcd_v3", "consul_kv")


@pytest.fixture(scope="module")
def stacks(request, new_stack):
    """stacks(registry) -> the module's stack for that registry type."""
    cache: dict[str, harness.Stack] = {}

    def get(registry: str) -> harness.Stack:
        if registry not in cache:
            cache[registry] = new_stack(
                request,
                registry=registry,
                wait_ms=WAIT_MS,
                extra_web_fields=f', "max_body_bytes": {MAX_BODY}',
                backends=("alpha", "beta", "gamma") + (("v6",) if IPV6 else ()),
                ipv6_backends=("v6",) if IPV6 else (),
            )
        s = cache[registry]
        s.set_web(alpha={}, beta={})
        _route(s, "alpha", "beta")
        # clean data read back in full (earlier tests remove what they add)
        s.wait_status(lambda st: st["bad_entries"] == 0 and st["consecutive_failures"] == 0, "a clean read of `web`")
        return s

    return get


def _assert_log(stack, *needles: str) -> None:
    assert _log_lines(stack, *needles), f"no Envoy log line with {needles}:\n{harness.log_tail(stack.envoy.log_path)}"


def _assert_still_serving(stack, *names) -> None:
    assert stack.envoy.running, harness.log_tail(stack.envoy.log_path)
    smp = stack.sample(100)
    assert smp.only(*names), smp
    assert harness.http_json("GET", f"http://127.0.0.1:{stack.envoy.admin_port}/ready")[0] == 200


def _eds_endpoints(stack) -> dict[str, dict]:
    code, body = stack.envoy.eds("web")
    assert code == 200, (code, body)
    out = {}
    for group in body["resources"][0].get("endpoints", []):
        for lb in group["lb_endpoints"]:
            sa = lb["endpoint"]["address"]["socket_address"]
            host = sa["address"]
            out[f"[{host}]:{sa['port_value']}" if ":" in host else f"{host}:{sa['port_value']}"] = lb
    return out


def _fault_next(stack, **fault) -> int:
    """Makes the plugin's next call for `web` get `fault`; returns once that
    call was answered (the fault's id)."""
    c, path = stack.consul, _consul_path(stack)
    assert c.wait_until_blocked(1, path), "no blocking query held"
    fid = c.inject_fault(path, count=1, **fault)
    stack.web.poke()  # the held query answers as usual; the next call takes the fault
    harness.wait_until(
        lambda: any(r["fault"] == fid for r in c.requests(path)), 5, 0.02, "the plugin's call to take the fault"
    )
    if fault.get("status") is None and not fault.get("drop"):
        # built on the real answer, so itself a blocking query: release it
        assert c.wait_until_blocked(1, path)
        stack.web.poke()
    return fid


def _recover(stack) -> None:
    """After a failed call the plugin retries its blocking query (after the
    backoff); wake it and wait for a good answer."""
    c, path = stack.consul, _consul_path(stack)
    assert c.wait_until_blocked(1, path, timeout=10), "the plugin did not retry"
    stack.web.poke()
    harness.wait_until(lambda: stack.web_status()["consecutive_failures"] == 0, 10, 0.05, "a good answer again")


# ---------------------------------------------------------------------------
# HTTP-level faults (emulator fault hooks)

FAULTS = {
    # id: (fault, text expected in last_error and in the log line)
    "500": (dict(status=500, body="boom: internal error"), "HTTP 500: boom"),
    "503": (dict(status=503, body="No cluster leader"), "HTTP 503: No cluster leader"),
    "cut-short": (dict(truncate=True), "no status (cut short?)"),
    "oversize": (dict(oversize=3 * MAX_BODY), f"over max_body_bytes ({MAX_BODY})"),
    "not-json": (dict(body="<html>gateway says hello</html>"), "not JSON"),
    "wrong-shape": (dict(body='{"members": []}'), "unexpected response shape"),
    "no-index": (dict(headers={"X-Consul-Index": None}), "X-Consul-Index"),
    "dropped": (dict(drop=True), "HTTP 503"),
}


@pytest.mark.parametrize("registry", FAULT_REGISTRIES)
@pytest.mark.parametrize("case", list(FAULTS))
def test_http_fault_keeps_last_list(stacks, registry, case):
    fault, expected = FAULTS[case]
    s = stacks(registry)
    before = s.web_status()
    _fault_next(s, **fault)
    st = s.wait_status(lambda st: st["syncs_failed"] > before["syncs_failed"], "the failed call to be counted")
    assert expected in (st["last_error"] or ""), st
    assert "keeping the last good list" in st["last_error"], st
    assert _addresses(st) == _addresses(before), st
    assert st["version"] == before["version"], st
    _assert_still_serving(s, "alpha", "beta")
    _assert_log(s, "upstream web", expected)
    _recover(s)
    s.put_web("gamma")
    _route(s, "alpha", "beta", "gamma")


def test_404_from_catalog_is_an_error(stacks):
    s = stacks("consul_catalog")
    failed = s.web_status()["syncs_failed"]
    _fault_next(s, status=404, body="Unknown service", headers={"X-Consul-Index": str(s.consul.index)})
    st = s.wait_status(lambda st: st["syncs_failed"] > failed, "a failure")
    assert "HTTP 404" in st["last_error"], st
    _assert_still_serving(s, "alpha", "beta")
    _assert_log(s, "upstream web", "HTTP 404")
    _recover(s)


def test_404_from_kv_means_no_members_and_is_refused(stacks):
    """Consul KV answers 404 for a prefix with no keys: an empty list,
    refused (allow_empty=false); the last list stays."""
    s = stacks("consul_kv")
    refused = s.web_status()["updates_refused"]
    # Consul's 404 carries the KV index: one above the index of _fault_next's
    # poke, so the plugin reads it as a change (an equal index is "unchanged")
    _fault_next(s, status=404, headers={"X-Consul-Index": str(s.consul.index + 2)})
    st = s.wait_status(lambda st: st["updates_refused"] > refused, "a refusal")
    assert "no members" in st["last_error"], st
    assert _addresses(st) == sorted([s.addr("alpha"), s.addr("beta")]), st
    _assert_still_serving(s, "alpha", "beta")
    _assert_log(s, "upstream web", "no members")


@pytest.mark.parametrize("registry", FAULT_REGISTRIES)
def test_429_retry_after_is_honoured_up_to_backoff_max_ms(stacks, registry):
    """429 with Retry-After: 2 on a stack whose backoff_max_ms is 1000: the
    next call waits for the cap, 1 s (a retry at once, or the ~100 ms
    backoff, would be sooner; the full 2 s would freeze updates longer than
    the operator allowed), as the emulator's request log shows."""
    s = stacks(registry)
    assert s.backoff_max_ms >= 1000
    c, path = s.consul, _consul_path(s)
    fid = _fault_next(s, status=429, headers={"Retry-After": "2"}, body="rate limited")
    t429 = next(r["monotonic"] for r in c.requests(path) if r["fault"] == fid)
    nxt = harness.wait_until(
        lambda: next((r for r in c.requests(path) if r["monotonic"] > t429), None), 10, 0.05, "the next call"
    )
    gap = nxt["monotonic"] - t429
    assert s.backoff_max_ms == 1000
    # One run on a loaded machine measured 0.895 s; the cause was not found
    # (the plugin's only clock is the host's wall clock, the emulator's is
    # monotonic). A retry at once (0 s) or the plain backoff (<= 0.1 s here)
    # stay far below 0.8 s, the uncapped Retry-After (2 s) far above 1.9 s.
    assert 0.8 <= gap < 1.9, f"next call {gap:.3f}s after the 429 with Retry-After: 2 (cap 1 s)"
    st = s.web_status()
    assert "HTTP 429" in st["last_error"] and "Retry-After" in st["last_error"], st
    _assert_still_serving(s, "alpha", "beta")
    _assert_log(s, "upstream web", "429", "Retry-After")
    s.web.poke()
    harness.wait_until(lambda: s.web_status()["consecutive_failures"] == 0, 10, 0.05, "a good answer again")


# ---------------------------------------------------------------------------
# bad data in the upsync key layout (etcd v3, Consul KV)


def _bad_entries_grow(stack, before: int) -> dict:
    return stack.wait_status(lambda st: st["bad_entries"] > before, "bad_entries to grow")


@pytest.mark.parametrize("registry", KV_REGISTRIES)
def test_value_over_1kib_keeps_member_with_defaults(stacks, registry):
    s = stacks(registry)
    big = json.dumps({"down": 1, "weight": 7, "note": "x" * 2000})
    s.web.put_raw(s.addr("gamma"), big)
    try:
        _route(s, "alpha", "beta", "gamma")
        st = _bad_entries_grow(s, 0)
        g = _member(st, s.addr("gamma"))
        assert g is not None, st
        assert (g["weight"], g["down"], g["max_fails"], g["fail_timeout"], g["backup"]) == (1, False, 2, 10, False), g
        _assert_still_serving(s, "alpha", "beta", "gamma")
        _assert_log(s, "upstream web", s.addr("gamma"), "over 1024 bytes")
    finally:
        s.web.delete_raw(s.addr("gamma"))
    _route(s, "alpha", "beta")


@pytest.mark.parametrize("registry", KV_REGISTRIES)
def test_same_address_under_two_keys_first_key_wins(stacks, registry):
    s = stacks(registry)
    dup_key = "zz/" + s.addr("beta")  # sorts after the plain key
    s.web.put_raw(dup_key, harness.member_value(down=1, weight=9))
    try:
        st = _bad_entries_grow(s, 0)
        beta = [m for m in st["members"] if m["address"] == s.addr("beta")]
        assert len(beta) == 1 and beta[0]["down"] is False and beta[0]["weight"] == 1, st
        assert _addresses(st) == sorted([s.addr("alpha"), s.addr("beta")]), st
        _assert_still_serving(s, "alpha", "beta")
        _assert_log(s, "upstream web", s.addr("beta"), "more than one key")
    finally:
        s.web.delete_raw(dup_key)


@pytest.mark.parametrize("registry", KV_REGISTRIES)
def test_port_out_of_range_is_skipped(stacks, registry):
    s = stacks(registry)
    s.web.put_raw("127.0.0.1:70000", harness.member_value())
    try:
        st = _bad_entries_grow(s, 0)
        assert _addresses(st) == sorted([s.addr("alpha"), s.addr("beta")]), st
        _assert_still_serving(s, "alpha", "beta")
        _assert_log(s, "upstream web", "127.0.0.1:70000", "skipped")
    finally:
        s.web.delete_raw("127.0.0.1:70000")


@pytest.mark.parametrize("registry", KV_REGISTRIES)
def test_hostname_member_is_listed_but_not_routed(stacks, registry):
    s = stacks(registry)
    s.web.put_raw("backend.upsync-e2e.invalid:8080", harness.member_value())
    try:
        st = s.wait_status(lambda st: _member(st, "backend.upsync-e2e.invalid:8080"), "the hostname member in status")
        m = _member(st, "backend.upsync-e2e.invalid:8080")
        assert m["host"] == "backend.upsync-e2e.invalid" and m["port"] == 8080, m
        eds = _eds_endpoints(s)
        assert set(eds) == {s.addr("alpha"), s.addr("beta")}, eds
        _assert_still_serving(s, "alpha", "beta")
        _assert_log(s, "upstream web", "hostname")
    finally:
        s.web.delete_raw("backend.upsync-e2e.invalid:8080")
    harness.wait_until(lambda: len(s.web_status()["members"]) == 2, 10, 0.05, "hostname member gone")


@pytest.mark.parametrize("registry", KV_REGISTRIES)
def test_ipv6_member(stacks, registry):
    """[::1]:port: in status and EDS as an IPv6 address; routed when the
    machine has IPv6 loopback (a backend listens there)."""
    s = stacks(registry)
    port = s.backends["v6"].port if IPV6 else harness.free_ports(1)[0]
    addr = f"[::1]:{port}"
    s.web.put_raw(addr, harness.member_value())
    try:
        st = s.wait_status(lambda st: _member(st, addr), "the IPv6 member")
        m = _member(st, addr)
        assert m["host"] == "::1" and m["port"] == port, m
        eds = _eds_endpoints(s)
        assert addr in eds and eds[addr]["endpoint"]["address"]["socket_address"]["address"] == "::1", eds
        if IPV6:
            _route(s, "alpha", "beta", "v6")
        assert s.envoy.running
    finally:
        s.web.delete_raw(addr)
    _route(s, "alpha", "beta")


# ---------------------------------------------------------------------------
# bad data in the Consul catalog


def _register(stack, service_id: str, address: str, port: int, tags=(), node=None) -> str:
    node = node or f"node-{service_id}"
    stack.consul.register_service(
        WEB_SERVICE, address, port, node=node, node_address="127.0.0.1", service_id=service_id, tags=tags
    )
    return node


def test_catalog_duplicate_instances_one_member(stacks):
    s = stacks("consul_catalog")
    node = _register(s, "web-beta-again", "127.0.0.1", s.backends["beta"].port, tags=["weight=5"])
    try:
        st = _bad_entries_grow(s, 0)
        beta = [m for m in st["members"] if m["address"] == s.addr("beta")]
        assert len(beta) == 1 and beta[0]["weight"] in (1, 5), st
        _assert_still_serving(s, "alpha", "beta")
        _assert_log(s, "upstream web", s.addr("beta"), "more than one instance")
    finally:
        s.consul.deregister(node)


def test_catalog_port_out_of_range_is_skipped(stacks):
    s = stacks("consul_catalog")
    node = _register(s, "web-bad-port", "127.0.0.1", 70000)
    try:
        st = _bad_entries_grow(s, 0)
        assert _addresses(st) == sorted([s.addr("alpha"), s.addr("beta")]), st
        _assert_still_serving(s, "alpha", "beta")
        _assert_log(s, "upstream web", "web-bad-port", "70000")
    finally:
        s.consul.deregister(node)


def test_catalog_bad_tag_value_takes_default(stacks):
    s = stacks("consul_catalog")
    s.web.put_member(s.addr("gamma"))
    _route(s, "alpha", "beta", "gamma")
    s.consul.register_service(
        WEB_SERVICE,
        "127.0.0.1",
        s.backends["gamma"].port,
        node=s.web.node(s.addr("gamma")),
        service_id=s.web.service_id(s.addr("gamma")),
        tags=["weight=lots", "max_fails=3"],
        check_id=s.web.check_id(s.addr("gamma")),
    )
    try:
        st = _bad_entries_grow(s, 0)
        g = _member(st, s.addr("gamma"))
        assert g["weight"] == 1 and g["max_fails"] == 3, g
        _assert_still_serving(s, "alpha", "beta", "gamma")
        _assert_log(s, "upstream web", "weight=lots")
    finally:
        s.delete_web("gamma")
    _route(s, "alpha", "beta")


def test_catalog_hostname_instance_is_listed_but_not_routed(stacks):
    s = stacks("consul_catalog")
    node = _register(s, "web-by-name", "backend.upsync-e2e.invalid", 8080)
    try:
        st = s.wait_status(lambda st: _member(st, "backend.upsync-e2e.invalid:8080"), "the hostname member in status")
        assert _member(st, "backend.upsync-e2e.invalid:8080")["host"] == "backend.upsync-e2e.invalid"
        assert set(_eds_endpoints(s)) == {s.addr("alpha"), s.addr("beta")}
        _assert_still_serving(s, "alpha", "beta")
        _assert_log(s, "upstream web", "hostname")
    finally:
        s.consul.deregister(node)


def test_catalog_ipv6_instance(stacks):
    s = stacks("consul_catalog")
    port = s.backends["v6"].port if IPV6 else harness.free_ports(1)[0]
    addr = f"[::1]:{port}"
    node = _register(s, "web-v6", "::1", port)
    try:
        st = s.wait_status(lambda st: _member(st, addr), "the IPv6 member")
        assert _member(st, addr)["host"] == "::1", st
        assert addr in _eds_endpoints(s)
        if IPV6:
            _route(s, "alpha", "beta", "v6")
        assert s.envoy.running
    finally:
        s.consul.deregister(node)
    _route(s, "alpha", "beta")
