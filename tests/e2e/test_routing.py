"""Members in etcd drive Envoy's routing; /upsync/status and EDS tell the truth.

All tests share one etcd + Envoy (module fixture `stack`); each one sets
the member list it needs first."""

from __future__ import annotations

import threading

import time

import harness
from harness import member as _member, route as _route
from harness import API, WEB


def test_two_members_split_traffic(stack):
    stack.set_web(alpha={}, beta={})
    _route(stack, "alpha", "beta")
    smp = stack.sample(200)
    assert smp.failed == 0, smp
    # round robin with equal weights on one connection: an even split
    assert abs(smp.counts["alpha"] - smp.counts["beta"]) <= 20, smp


def test_added_member_gets_traffic(stack):
    stack.set_web(alpha={}, beta={})
    _route(stack, "alpha", "beta")
    stack.etcd.put_member(WEB, stack.addr("gamma"))
    _route(stack, "alpha", "beta", "gamma")
    smp = stack.sample(300)
    assert smp.only("alpha", "beta", "gamma"), smp
    for name in ("alpha", "beta", "gamma"):
        assert smp.counts[name] >= 50, smp


def test_weights_split_traffic(stack):
    stack.set_web(alpha={}, beta={})
    _route(stack, "alpha", "beta")
    stack.etcd.put_member(WEB, stack.addr("beta"), weight=3)
    stack.wait_routing(
        lambda s: s.failed == 0 and s.counts["beta"] >= 2 * s.counts["alpha"] > 0,
        n=40,
        what="beta to get about 3x alpha's share",
    )
    smp = stack.sample(400)
    assert smp.only("alpha", "beta"), smp
    ratio = smp.counts["beta"] / smp.counts["alpha"]
    assert 2.0 <= ratio <= 4.5, f"expected about 1:3, got {smp}"
    st = stack.web_status()
    assert _member(st, stack.addr("beta"))["weight"] == 3
    assert _member(st, stack.addr("alpha"))["weight"] == 1


def test_down_member_gets_no_traffic(stack):
    stack.set_web(alpha={}, beta={})
    _route(stack, "alpha", "beta")
    stack.etcd.put_member(WEB, stack.addr("beta"), down=1)
    _route(stack, "alpha")
    smp = stack.sample(200)
    assert smp.only("alpha"), smp
    st = stack.web_status()
    beta = _member(st, stack.addr("beta"))
    assert beta is not None, st  # kept, marked down
    assert beta["down"] is True, beta
    # and back up
    stack.etcd.put_member(WEB, stack.addr("beta"), down=0)
    _route(stack, "alpha", "beta")


def test_weight_zero_member_gets_no_traffic(stack):
    stack.set_web(alpha={}, beta={})
    _route(stack, "alpha", "beta")
    stack.etcd.put_member(WEB, stack.addr("beta"), weight=0)
    _route(stack, "alpha")
    assert stack.sample(200).only("alpha")


def test_deleted_member_gets_no_traffic(stack):
    stack.set_web(alpha={}, beta={}, gamma={})
    _route(stack, "alpha", "beta", "gamma")
    stack.etcd.delete(WEB + stack.addr("gamma"))
    _route(stack, "alpha", "beta")
    smp = stack.sample(200)
    assert smp.only("alpha", "beta"), smp
    assert _member(stack.web_status(), stack.addr("gamma")) is None


def test_backup_member_only_when_primaries_are_down(stack):
    stack.set_web(alpha={}, beta={"backup": 1})
    _route(stack, "alpha")
    assert stack.sample(100).only("alpha")
    stack.etcd.put_member(WEB, stack.addr("alpha"), down=1)
    _route(stack, "beta")
    assert _member(stack.web_status(), stack.addr("beta"))["backup"] is True


def test_status_shows_members_attributes_and_counters(stack):
    stack.set_web(
        alpha={"weight": 2, "max_fails": 5, "fail_timeout": 30},
        beta={"down": 1},
    )
    _route(stack, "alpha")
    st = stack.web_status()
    assert st["name"] == "web"
    assert st["registry"]["type"] == "etcd_v3"
    assert st["registry"]["prefix"] == WEB
    assert st["source"] == "registry"
    assert isinstance(st["last_sync_ms"], int), st
    # an error may be remembered, but not one newer than the last good sync
    assert st["last_error"] is None or st.get("last_error_ms", 0) <= st["last_sync_ms"], st
    now_ms = time.time() * 1000
    assert now_ms - 60_000 < st["last_sync_ms"] <= now_ms + 1000, st
    assert sorted(m["address"] for m in st["members"]) == sorted([stack.addr("alpha"), stack.addr("beta")])
    alpha = _member(st, stack.addr("alpha"))
    host, port = stack.addr("alpha").rsplit(":", 1)
    assert alpha == {
        "address": stack.addr("alpha"),
        "host": host,
        "port": int(port),
        "weight": 2,
        "max_fails": 5,
        "fail_timeout": 30,
        "down": False,
        "backup": False,
    }, alpha
    beta = _member(st, stack.addr("beta"))
    assert beta["down"] is True and beta["weight"] == 1 and beta["max_fails"] == 2 and beta["fail_timeout"] == 10

    # polls go on; the version moves only when the member list changes
    version, ok = st["version"], st["syncs_ok"]
    harness.wait_until(
        lambda: stack.web_status()["syncs_ok"] >= ok + 3, 10, 0.05, "syncs_ok to grow"
    )
    assert stack.web_status()["version"] == version, "version changed although etcd did not"
    stack.etcd.put_member(WEB, stack.addr("alpha"), weight=4)
    harness.wait_until(
        lambda: _member(stack.web_status(), stack.addr("alpha"))["weight"] == 4, 10, 0.05, "weight 4 in status"
    )
    assert stack.web_status()["version"] > version
    for key in ("syncs_failed", "updates_refused", "bad_entries"):
        assert isinstance(st[key], int) and st[key] >= 0, (key, st)


def test_status_filter_and_unknown_upstream(stack):
    code, body = stack.envoy.status()
    assert code == 200, body
    assert sorted(u["name"] for u in body["upstreams"]) == ["api", "web"]

    code, body = stack.envoy.status("api")
    assert code == 200, body
    assert [u["name"] for u in body["upstreams"]] == ["api"]
    assert body["upstreams"][0]["registry"]["prefix"] == API

    code, body = stack.envoy.status("nope")
    assert code == 404, (code, body)
    assert isinstance(body, dict), f"404 body is not JSON: {body!r}"


def test_upstreams_are_independent(stack):
    stack.set_web(alpha={}, beta={})
    stack.etcd.set_members(API, {stack.addr("gamma"): {}})
    _route(stack, "alpha", "beta")
    smp, _ = stack.wait_routing(lambda s: s.only("gamma"), path="/api/x", what="/api/ to gamma")
    assert stack.sample(50, "/api/x").only("gamma")
    assert stack.sample(50).only("alpha", "beta")


def test_eds_answers_and_304_when_current(stack):
    stack.set_web(alpha={"weight": 2}, beta={"down": 1}, gamma={"weight": 0})
    _route(stack, "alpha")
    code, body = stack.envoy.eds("web")
    assert code == 200, (code, body)
    version = body["version_info"]
    assert version, body
    [cla] = body["resources"]
    assert cla["cluster_name"] == "web"
    eps = {}
    for group in cla["endpoints"]:
        for lb in group["lb_endpoints"]:
            sa = lb["endpoint"]["address"]["socket_address"]
            eps[f'{sa["address"]}:{sa["port_value"]}'] = lb
    assert set(eps) == {stack.addr("alpha"), stack.addr("beta"), stack.addr("gamma")}, cla
    assert eps[stack.addr("alpha")]["load_balancing_weight"] == 2
    assert eps[stack.addr("alpha")].get("health_status", "HEALTHY") in ("HEALTHY", "UNKNOWN")
    assert eps[stack.addr("beta")]["health_status"] == "UNHEALTHY"
    assert eps[stack.addr("gamma")]["health_status"] == "DRAINING"

    # The current version is held (a long poll), answered the moment the
    # list changes: a new version, at once.
    held = {}

    def ask():
        held["answer"] = stack.envoy.eds("web", version_info=version, timeout=20)

    t = threading.Thread(target=ask)
    t.start()
    t.join(1.0)
    assert t.is_alive(), f"answered at once although current: {held}"
    stack.put_web("alpha", weight=3)
    t.join(5.0)
    assert not t.is_alive(), "the held request was not answered on a change"
    code, body = held["answer"]
    assert code == 200 and body["version_info"] != version, (code, body)


def test_empty_prefix_keeps_last_members(stack):
    stack.set_web(alpha={}, beta={})
    _route(stack, "alpha", "beta")
    refused = stack.wait_synced()["updates_refused"]
    stack.etcd.delete_prefix(WEB)
    harness.wait_until(
        lambda: stack.web_status()["updates_refused"] > refused, 10, 0.05, "updates_refused to grow"
    )
    smp = stack.sample(200)
    assert smp.only("alpha", "beta"), smp
    st = stack.web_status()
    assert sorted(m["address"] for m in st["members"]) == sorted([stack.addr("alpha"), stack.addr("beta")]), st
    # members come back as soon as the prefix has keys again
    stack.set_web(gamma={})
    _route(stack, "gamma")


def test_garbage_value_adds_member_with_defaults(stack):
    stack.set_web(alpha={})
    _route(stack, "alpha")
    bad = stack.wait_synced()["bad_entries"]
    stack.set_web(alpha={}, beta="not json")
    _route(stack, "alpha", "beta")
    st = stack.web_status()
    beta = _member(st, stack.addr("beta"))
    assert beta is not None, st
    assert (beta["weight"], beta["max_fails"], beta["fail_timeout"], beta["down"], beta["backup"]) == (
        1, 2, 10, False, False,
    ), beta
    assert st["bad_entries"] > bad, st
    assert stack.envoy.running


def test_garbage_key_is_skipped_and_counted(stack):
    stack.set_web(alpha={}, beta={})
    _route(stack, "alpha", "beta")
    bad = stack.wait_synced()["bad_entries"]
    stack.etcd.put(WEB + "nonsense", harness.member_value())
    harness.wait_until(lambda: stack.web_status()["bad_entries"] > bad, 10, 0.05, "bad_entries to grow")
    st = stack.web_status()
    addresses = sorted(m["address"] for m in st["members"])
    assert addresses == sorted([stack.addr("alpha"), stack.addr("beta")]), st
    assert stack.sample(100).only("alpha", "beta")
    assert stack.envoy.running
    stack.etcd.delete(WEB + "nonsense")
