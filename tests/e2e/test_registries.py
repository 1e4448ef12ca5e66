"""`web` on every registry type the suite can run, through real Envoy to real
backends: etcd v2 (a real etcd 3.4 with --enable-v2) and Consul KV, catalog
and health (the project's Consul HTTP API emulator, tests/consul_emulator/,
written from Consul's documentation: not a real Consul).

The per-registry scenarios share one stack per registry type (module fixture
`rstack`, parametrized); the Consul ones run with ACLs on, so every request
the plugin makes must carry its token. Tests that need another setup make
their own stack."""

from __future__ import annotations

import concurrent.futures
import copy
import json
import time

import pytest

import harness
from harness import addresses as _addresses, consul_path as _consul_path, log_lines as _log_lines
from harness import member as _member, route as _route
from harness import CONSUL_REGISTRIES

LONG_POLLING = ("etcd_v2",) + CONSUL_REGISTRIES
TOKEN = "e2e-acl-token-0b6f"
WAIT_MS = 5000  # blocking-query / long-poll wait: short, so idle pacing is measurable here


def _calls(status: dict) -> int:
    """Registry calls the plugin has finished for an upstream, by its own
    counters: each ends as exactly one of ok / failed / refused."""
    return status["syncs_ok"] + status["syncs_failed"] + status["updates_refused"]


def _stack_kwargs(registry: str) -> dict:
    kw = dict(registry=registry, wait_ms=WAIT_MS)
    if registry in CONSUL_REGISTRIES:
        kw.update(consul_acl_token=TOKEN, registry_options={"token": TOKEN})
    return kw


@pytest.fixture(scope="module", params=LONG_POLLING)
def rstack(request, new_stack) -> harness.Stack:
    """One stack per registry type; Consul ones with an ACL token."""
    return new_stack(request, **_stack_kwargs(request.param))


# ---------------------------------------------------------------------------
# the same scenarios on every registry type


def test_registered_members_get_traffic(rstack):
    s = rstack
    s.set_web(alpha={}, beta={})
    _route(s, "alpha", "beta")
    smp = s.sample(200)
    assert smp.failed == 0, smp
    assert abs(smp.counts["alpha"] - smp.counts["beta"]) <= 20, smp
    st = s.web_status()
    assert st["registry"]["type"] == s.registry, st
    assert st["source"] == "registry", st
    assert _addresses(st) == sorted([s.addr("alpha"), s.addr("beta")]), st


def test_added_member_gets_traffic(rstack):
    s = rstack
    s.set_web(alpha={}, beta={})
    _route(s, "alpha", "beta")
    s.put_web("gamma")
    _route(s, "alpha", "beta", "gamma")
    smp = s.sample(300)
    assert smp.only("alpha", "beta", "gamma"), smp
    assert min(smp.counts.values()) >= 50, smp


def test_weight_change_shifts_traffic(rstack):
    s = rstack
    s.set_web(alpha={}, beta={})
    _route(s, "alpha", "beta")
    s.put_web("beta", weight=3)
    s.wait_routing(
        lambda x: x.failed == 0 and x.counts["beta"] >= 2 * x.counts["alpha"] > 0, n=40, what="beta ~3x alpha"
    )
    smp = s.sample(400)
    assert smp.only("alpha", "beta"), smp
    assert 2.0 <= smp.counts["beta"] / smp.counts["alpha"] <= 4.5, smp
    assert _member(s.web_status(), s.addr("beta"))["weight"] == 3


def test_down_member_gets_no_traffic(rstack):
    s = rstack
    s.set_web(alpha={}, beta={})
    _route(s, "alpha", "beta")
    s.put_web("beta", down=1)
    _route(s, "alpha")
    assert s.sample(200).only("alpha")
    beta = _member(s.web_status(), s.addr("beta"))
    assert beta is not None and beta["down"] is True, beta  # kept, marked down
    s.put_web("beta")
    _route(s, "alpha", "beta")


def test_deleted_member_gets_no_traffic(rstack):
    s = rstack
    s.set_web(alpha={}, beta={}, gamma={})
    _route(s, "alpha", "beta", "gamma")
    s.delete_web("gamma")
    _route(s, "alpha", "beta")
    assert s.sample(200).only("alpha", "beta")
    assert _member(s.web_status(), s.addr("gamma")) is None


def test_registry_down_under_load_keeps_members_then_resumes(rstack):
    """etcd SIGKILLed / the emulator stopped (every connection dropped, held
    blocking queries included) while traffic flows: not one request fails,
    the last members stay; when it is back, the next change is routed."""
    s = rstack
    s.set_web(alpha={}, beta={})
    _route(s, "alpha", "beta")
    before = s.web_status()

    with harness.Load(s.envoy.ingress_port, connections=2) as load:
        time.sleep(0.3)
        s.registry_down()
        at_down = load.snapshot()
        st1 = s.wait_status(
            lambda st: st["last_error"] and st["syncs_failed"] > before["syncs_failed"],
            "the poller to notice the registry is gone",
        )
        harness.wait_until(
            lambda: s.web_status()["syncs_failed"] > st1["syncs_failed"], 10, 0.05, "failures to keep counting"
        )
        time.sleep(0.5)
        during = load.snapshot()
        st = s.web_status()
        assert _addresses(st) == sorted([s.addr("alpha"), s.addr("beta")]), st
        assert st["consecutive_failures"] > 0, st
        assert during.failed == 0, during
        for name in ("alpha", "beta"):
            assert during.counts[name] > at_down.counts[name] + 20, (at_down, during)

        # back on the same port with the same data; the plugin's next call
        # (after its backoff) is a blocking query / long poll from where it
        # was, so the change below answers it at once
        s.registry_up()
        s.put_web("gamma")
        _route(s, "alpha", "beta", "gamma", timeout=15)
        time.sleep(0.2)

    total = load.stop()
    assert total.failed == 0, total
    assert total.backends() == {"alpha", "beta", "gamma"}, total
    st = s.web_status()
    assert st["consecutive_failures"] == 0 and st["source"] == "registry", st
    assert st["syncs_ok"] > before["syncs_ok"], st


def test_emptied_registry_is_refused_without_a_hot_loop(rstack):
    """The last member removed (allow_empty=false): the last list stays and
    the refusal is counted, and the registry is asked again at a bounded pace
    (at most about one call per interval_ms, 100 ms here). One member only,
    so there is no intermediate list: catalog and etcd v2 removals are one
    write per member."""
    s = rstack
    s.set_web(alpha={})
    _route(s, "alpha")
    refused = s.web_status()["updates_refused"]
    try:
        s.delete_web("alpha")
        st0 = s.wait_status(lambda st: st["updates_refused"] > refused, "the empty list to be refused")
        assert s.sample(100).only("alpha")
        t0 = time.monotonic()
        time.sleep(1.0)
        st1 = s.web_status()
        window = time.monotonic() - t0
        calls = _calls(st1) - _calls(st0)
        if s.consul is not None:
            calls = max(calls, s.consul.request_count(_consul_path(s), since=t0))
        assert _addresses(st1) == [s.addr("alpha")], st1
        assert "no members" in (st1["last_error"] or ""), st1
        bound = int(window * 1000 / s.interval_ms) + 5
        assert calls <= bound, f"{calls} registry calls in {window:.1f}s with an empty registry (bound {bound})"
    finally:
        s.set_web(alpha={}, beta={})
        _route(s, "alpha", "beta")


# ---------------------------------------------------------------------------
# Consul: ACL token


@pytest.mark.parametrize("rstack", CONSUL_REGISTRIES, indirect=True)
def test_consul_token_is_sent_and_blocking_queries_are_used(rstack):
    s, c = rstack, rstack.consul
    s.set_web(alpha={}, beta={})
    _route(s, "alpha", "beta")
    path = _consul_path(s)
    reqs = c.requests(path)
    assert reqs, "the plugin never asked the emulator"
    assert all(r["headers"].get("x-consul-token") == TOKEN for r in reqs), [
        r["headers"].get("x-consul-token") for r in reqs
    ]
    assert all(r["status"] != 403 for r in reqs), [r["status"] for r in reqs]
    # the first call is a plain read, the later ones block on the index
    assert "index=" not in reqs[0]["raw_query"], reqs[0]
    blocking = [r for r in reqs if "index" in r["query"]]
    assert blocking, [r["raw_query"] for r in reqs]
    assert all(r["query"]["wait"] == [f"{WAIT_MS}ms"] for r in blocking), [r["raw_query"] for r in blocking]
    assert c.wait_until_blocked(1, path), "no blocking query held by the emulator"


@pytest.mark.parametrize("rstack", CONSUL_REGISTRIES, indirect=True)
def test_consul_revoked_token_gives_403_and_keeps_traffic(rstack):
    """The emulator stops accepting the plugin's token ("ACL not found"):
    403, named in last_error and in the log; traffic stays on the last list;
    once the token is accepted again, sync resumes."""
    s, c = rstack, rstack.consul
    s.set_web(alpha={}, beta={})
    _route(s, "alpha", "beta")
    path = _consul_path(s)
    assert c.wait_until_blocked(1, path)
    failed = s.web_status()["syncs_failed"]
    t0 = time.monotonic()
    c.acl_token = "rotated-" + TOKEN
    try:
        s.web.poke()  # the held query answers; the next one is refused
        st = s.wait_status(lambda st: st["syncs_failed"] > failed, "a failed sync after the token was revoked")
        assert "403" in st["last_error"], st
        assert "ACL not found" in st["last_error"], st
        assert any(r["status"] == 403 for r in c.requests(path, since=t0))
        assert _addresses(st) == sorted([s.addr("alpha"), s.addr("beta")]), st
        assert s.sample(100).only("alpha", "beta")
        assert _log_lines(s, "upstream web", "403"), harness.log_tail(s.envoy.log_path)
        assert s.envoy.running
    finally:
        c.acl_token = TOKEN
    # the retry after the 403 is a blocking query again: wake it
    assert c.wait_until_blocked(1, path)
    s.web.poke()
    harness.wait_until(
        lambda: s.web_status()["consecutive_failures"] == 0, 10, 0.05, "sync to resume with the right token"
    )
    s.put_web("gamma")
    _route(s, "alpha", "beta", "gamma")


def test_consul_missing_token_gives_403_and_keeps_traffic(make_stack):
    """No token configured, and the emulator starts enforcing ACLs:
    "Permission denied" (403); the last list stays."""
    s = make_stack(registry="consul_catalog", wait_ms=WAIT_MS)
    c = s.consul
    s.set_web(alpha={}, beta={})
    _route(s, "alpha", "beta")
    path = _consul_path(s)
    assert all("x-consul-token" not in r["headers"] for r in c.requests(path))
    assert c.wait_until_blocked(1, path)
    c.acl_token = TOKEN
    s.web.poke()
    st = s.wait_status(lambda st: st["last_error"] and "403" in st["last_error"], "a 403 in last_error")
    assert "Permission denied" in st["last_error"], st
    assert _addresses(st) == sorted([s.addr("alpha"), s.addr("beta")]), st
    assert s.sample(100).only("alpha", "beta")
    assert _log_lines(s, "upstream web", "403", "Permission denied")
    c.acl_token = None
    assert c.wait_until_blocked(1, path)
    s.web.poke()
    harness.wait_until(lambda: s.web_status()["consecutive_failures"] == 0, 10, 0.05, "sync to resume")
    s.put_web("gamma")
    _route(s, "alpha", "beta", "gamma")


def test_consul_dc_and_consistency_are_sent_and_unknown_dc_is_an_error(make_stack):
    """`dc` and `consistency` go into every query; a datacenter the agent
    cannot reach is Consul's 500 "No path to datacenter": an error, and the
    fallback members serve meanwhile."""
    s = make_stack(
        registry="consul_catalog",
        wait_ms=WAIT_MS,
        registry_options={"dc": "eu-west-1", "consistency": "consistent"},
        fallback=("alpha",),
    )
    s.set_web(beta={})
    _route(s, "alpha")
    st = s.wait_status(lambda st: st["syncs_failed"] >= 2, "failed syncs")
    assert "HTTP 500" in st["last_error"] and "No path to datacenter" in st["last_error"], st
    assert st["source"] == "fallback", st
    reqs = s.consul.requests(_consul_path(s))
    assert reqs and all(r["query"].get("dc") == ["eu-west-1"] and "consistent" in r["query"] for r in reqs), [
        r["raw_query"] for r in reqs
    ]
    assert all(r["status"] == 500 for r in reqs)
    assert _log_lines(s, "upstream web", "No path to datacenter"), harness.log_tail(s.envoy.log_path)


# ---------------------------------------------------------------------------
# Consul: blocking-query pacing


@pytest.mark.parametrize("rstack", CONSUL_REGISTRIES, indirect=True)
def test_consul_index_going_backwards_is_no_hot_loop(rstack):
    """The emulator's index goes back (a restored Raft snapshot, the
    documented case): the held query is released with a lower index, the
    plugin does one plain read and blocks again; no hot loop, and the next
    change is routed."""
    s, c = rstack, rstack.consul
    s.set_web(alpha={}, beta={})
    _route(s, "alpha", "beta")
    path = _consul_path(s)
    assert c.wait_until_blocked(1, path)
    high = c.index
    t0 = time.monotonic()
    c.reset_index(2)
    time.sleep(2.0)
    reqs = c.requests(path, since=t0)
    # the plain read after the reset, the new blocking query (+ slack)
    assert len(reqs) <= 4, [(round(r["monotonic"] - t0, 3), r["raw_query"]) for r in reqs]
    assert reqs and "index=" not in reqs[0]["raw_query"], [r["raw_query"] for r in reqs]
    assert c.blocked_count(path) == 1
    assert _log_lines(s, "X-Consul-Index went back"), "no log line about the index reset"
    assert high > 2
    s.put_web("gamma")
    _route(s, "alpha", "beta", "gamma")
    st = s.web_status()
    assert st["consecutive_failures"] == 0, st


@pytest.mark.parametrize("rstack", CONSUL_REGISTRIES, indirect=True)
def test_consul_index_zero_is_no_hot_loop(rstack):
    """Every answer says X-Consul-Index: 0 (Consul's docs: "sanity check
    index is greater than zero"). README: "an index below 1 counts as 1, so a
    buggy answer can never turn blocking queries into a hot loop"."""
    s, c = rstack, rstack.consul
    s.set_web(alpha={}, beta={})
    _route(s, "alpha", "beta")
    path = _consul_path(s)
    assert c.wait_until_blocked(1, path)
    fid = c.inject_fault(path, count=None, headers={"X-Consul-Index": "0"})
    try:
        s.web.poke()  # releases the held (unfaulted) query
        harness.wait_until(lambda: any(r["fault"] == fid for r in c.requests(path)), 5, 0.02, "a faulted request")
        assert c.wait_until_blocked(1, path)
        t0 = time.monotonic()
        s.web.poke()  # ... and the faulted one: from here on every answer says 0
        time.sleep(1.0)
        n = c.request_count(path, since=t0)
        assert s.sample(50).only("alpha", "beta")
        bound = int(1000 / s.interval_ms) + 5
        assert n <= bound, f"{n} requests in 1 s while the emulator answers X-Consul-Index: 0 (bound {bound})"
    finally:
        c.clear_faults()
        for _ in range(3):
            s.web.poke()
    s.put_web("gamma")
    _route(s, "alpha", "beta", "gamma")


def test_idle_blocking_queries_and_long_polls_are_paced(make_stack, capsys):
    """At idle, a blocking query / long poll is held for wait_ms, so the
    plugin makes about one request per wait_ms per upstream. Measured with
    wait_ms=5000 over 12 s (<= 4 requests: one per 5 s + Consul's up to
    wait/16 jitter, + one at each window edge). The pacing scales with
    wait_ms: with the default wait_ms=50000 the same behaviour is
    60/50 = 1.2, i.e. <= 2 requests per minute per upstream."""
    # started side by side: each start is mostly waiting for Envoy
    with concurrent.futures.ThreadPoolExecutor(len(LONG_POLLING)) as pool:
        futures = {reg: pool.submit(make_stack, registry=reg, wait_ms=WAIT_MS) for reg in LONG_POLLING}
    stacks = {reg: f.result() for reg, f in futures.items()}
    for s in stacks.values():
        s.set_web(alpha={}, beta={})
    for s in stacks.values():
        _route(s, "alpha", "beta")
    for reg, s in stacks.items():
        if s.consul is not None:
            assert s.consul.wait_until_blocked(1, _consul_path(s)), reg
    time.sleep(0.5)  # let the etcd v2 long polls settle on their waitIndex

    window = 12.0
    t0 = time.monotonic()
    before = {reg: _calls(s.web_status()) for reg, s in stacks.items()}
    time.sleep(window)
    counts, lines = {}, []
    for reg, s in stacks.items():
        by_status = _calls(s.web_status()) - before[reg]
        if s.consul is not None:
            reqs = s.consul.requests(_consul_path(s), since=t0)
            counts[reg] = len(reqs)
            assert all("index" in r["query"] and r["query"]["wait"] == [f"{WAIT_MS}ms"] for r in reqs), [
                r["raw_query"] for r in reqs
            ]
        else:
            counts[reg] = by_status  # etcd keeps no request log: the plugin's own counters
        lines.append(f"{reg} {counts[reg]} requests = {counts[reg] * 60 / window:.1f}/min")
        assert s.sample(20).only("alpha", "beta"), reg
    with capsys.disabled():
        print(f"\nidle registry requests over {window:.0f} s with wait_ms={WAIT_MS}: " + "; ".join(lines))
    for reg, n in counts.items():
        assert 1 <= n <= 4, f"{reg}: {n} requests in {window} s at idle with wait_ms={WAIT_MS}"


# ---------------------------------------------------------------------------
# Consul health: checks


@pytest.fixture(scope="module", params=[True, False], ids=["passing_only", "all_instances"])
def hstack(request, new_stack) -> harness.Stack:
    return new_stack(request, registry="consul_health", wait_ms=WAIT_MS, registry_options={"passing_only": request.param})


@pytest.mark.parametrize("check, status", [("service", "critical"), ("service", "warning"), ("node", "critical")])
def test_health_failing_check_takes_instance_out(hstack, check, status):
    """passing_only (default): Consul filters the instance out (?passing);
    passing_only=false: it is listed, marked down. No traffic either way."""
    s = hstack
    passing_only = s.registry_options["passing_only"]
    s.set_web(alpha={}, beta={})
    _route(s, "alpha", "beta")
    path = _consul_path(s)
    assert all(("passing" in r["query"]) == passing_only for r in s.consul.requests(path)), passing_only
    if check == "service":
        s.web.set_check(s.addr("beta"), status)
    else:
        s.web.set_node_check(s.addr("beta"), status)
    try:
        _route(s, "alpha")
        assert s.sample(200).only("alpha")
        st = s.web_status()
        beta = _member(st, s.addr("beta"))
        if passing_only:
            assert beta is None, st
        else:
            assert beta is not None and beta["down"] is True, st
            code, eds = s.envoy.eds("web")
            assert code == 200, eds
            health = {
                lb["endpoint"]["address"]["socket_address"]["port_value"]: lb.get("health_status", "HEALTHY")
                for group in eds["resources"][0]["endpoints"]
                for lb in group["lb_endpoints"]
            }
            assert health[s.backends["beta"].port] == "UNHEALTHY", health
    finally:
        if check == "service":
            s.web.set_check(s.addr("beta"), "passing")
        else:
            s.web.set_node_check(s.addr("beta"), "passing")
    _route(s, "alpha", "beta")


def test_health_entry_without_checks_is_kept_and_reported(hstack):
    """An entry with no `Checks` list (nginx-upsync-module crashed on this):
    kept as passing, reported in bad_entries and in the log. The emulator
    always sends Checks, so a fault hook serves a crafted answer."""
    s, c = hstack, hstack.consul
    passing_only = s.registry_options["passing_only"]
    s.set_web(alpha={}, beta={})
    _route(s, "alpha", "beta")
    path = _consul_path(s)
    real = c.dispatch("GET", path + ("?passing=1" if passing_only else ""))
    entries = json.loads(real.body)
    gamma = copy.deepcopy(entries[0])
    gamma["Service"]["Port"] = s.backends["gamma"].port
    gamma["Service"]["ID"] = "web-gamma-no-checks"
    gamma["Node"]["Node"] = "node-gamma-no-checks"
    del gamma["Checks"]
    crafted = json.dumps(entries + [gamma])
    assert c.wait_until_blocked(1, path)
    # one above the index the poke below makes: read as a change, then as "unchanged"
    fake_index = c.index + 2
    c.inject_fault(
        path,
        count=None,
        status=200,
        headers={"X-Consul-Index": str(fake_index), "Content-Type": "application/json"},
        body=crafted,
    )
    try:
        s.web.poke()
        _route(s, "alpha", "beta", "gamma")
        st = s.web_status()
        g = _member(st, s.addr("gamma"))
        assert g is not None and g["down"] is False, st
        assert st["bad_entries"] >= 1, st
        assert _log_lines(s, "upstream web", "web-gamma-no-checks", "no Checks"), harness.log_tail(s.envoy.log_path)
        assert s.envoy.running
    finally:
        c.clear_faults()
        for _ in range(3):  # real answers again once the real index passes the fake one
            s.web.poke()
    _route(s, "alpha", "beta")
