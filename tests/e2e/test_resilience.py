"""The registry blinks; traffic does not."""

from __future__ import annotations

import time

import pytest

import harness
from harness import WEB


def test_etcd_killed_under_load_then_restarted(make_stack):
    stack = make_stack()
    stack.set_web(alpha={}, beta={})
    stack.wait_routing(lambda s: s.only("alpha", "beta"), what="alpha+beta")
    before = stack.web_status()

    with harness.Load(stack.envoy.ingress_port, connections=2) as load:
        time.sleep(0.5)
        stack.etcd.kill()
        at_kill = load.snapshot()

        # the poller notices, and keeps failing while etcd is away
        st1 = stack.wait_status(
            lambda s: s["last_error"] and s["syncs_failed"] > before["syncs_failed"],
            "last_error and syncs_failed after the etcd kill",
        )
        harness.wait_until(
            lambda: stack.web_status()["syncs_failed"] > st1["syncs_failed"],
            10,
            0.05,
            "syncs_failed to keep growing",
        )
        time.sleep(1.5)
        during = load.snapshot()
        st_down = stack.web_status()
        assert sorted(m["address"] for m in st_down["members"]) == sorted(
            [stack.addr("alpha"), stack.addr("beta")]
        ), st_down
        assert isinstance(st_down["last_error"], str) and st_down["last_error"], st_down

        # traffic kept flowing to the last known members
        assert during.failed == 0, during
        for name in ("alpha", "beta"):
            assert during.counts[name] > at_kill.counts[name] + 50, (at_kill, during)
        assert during.backends() == {"alpha", "beta"}, during

        # etcd comes back on the same data dir and ports: sync resumes
        stack.etcd.start()
        ok = stack.web_status()["syncs_ok"]
        harness.wait_until(lambda: stack.web_status()["syncs_ok"] > ok, 15, 0.05, "syncs_ok after restart")
        stack.etcd.put_member(WEB, stack.addr("gamma"))
        stack.wait_routing(lambda s: s.only("alpha", "beta", "gamma"), timeout=15, what="gamma after restart")
        time.sleep(0.3)

    total = load.stop()
    assert total.failed == 0, total
    assert total.backends() == {"alpha", "beta", "gamma"}, total
    assert stack.web_status()["source"] == "registry"


def test_envoy_started_while_etcd_is_down_uses_fallback(make_stack):
    stack = make_stack(start_etcd=False, fallback=("alpha", "beta"))
    stack.wait_routing(lambda s: s.only("alpha", "beta"), what="fallback members alpha+beta")
    st = stack.web_status()
    assert st["source"] == "fallback", st
    assert sorted(m["address"] for m in st["members"]) == sorted([stack.addr("alpha"), stack.addr("beta")])
    assert st["last_error"], st
    assert st["syncs_ok"] == 0, st

    # no fallback for `api`: nothing to route to, and it says so
    api = stack.envoy.upstream_status("api")
    assert api["source"] == "none", api
    assert api["members"] == [], api
    # No snapshot yet: the request is held (Envoy keeps waiting), not
    # answered with an empty list.
    with pytest.raises(TimeoutError):
        stack.envoy.eds("api", timeout=1.0)
    smp = stack.sample(5, "/api/x")
    assert smp.failed == 5 and not smp.counts, smp

    # once etcd is reachable, the registry wins over the fallback
    stack.etcd.start()
    stack.set_web(gamma={})
    stack.wait_routing(lambda s: s.only("gamma"), timeout=15, what="registry member gamma")
    assert stack.web_status()["source"] == "registry"
