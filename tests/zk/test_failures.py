"""ZooKeeper and the bridge fail; traffic does not, and stale data is never served as fresh."""

from __future__ import annotations

import json
import time

from zk_harness import API_PREFIX, WEB_PREFIX, harness


def served_or_503(bridge, prefix: str):
    """('503', None) or ('200', sorted addresses) of one direct query."""
    code, _, body = bridge.kv(prefix, timeout=10)
    if code == 503:
        return 503, None
    assert code in (200, 404), (code, body)
    return code, sorted(e["Key"][len(prefix):] for e in json.loads(body)) if code == 200 else []


def test_session_expiry_means_a_new_session_and_a_full_read(make_stack):
    stack = make_stack(session_timeout_ms=2000)
    c = stack.curator
    c.register(stack.addr("alpha"))
    c.register(stack.addr("beta"))
    stack.route("/", "alpha", "beta")
    first = stack.bridge.status()["session"]
    assert first["timeout_ms"] == 2000, first

    with harness.Load(stack.envoy.ingress_port, connections=1) as load:
        # The bridge process stops (a long GC-like pause, a frozen VM):
        # ZooKeeper hears nothing and expires its session.
        stack.bridge.pause()
        c.register(stack.addr("gamma"))
        c.crash(stack.addr("beta"))
        time.sleep(2000 * 2.5 / 1000)
        during = load.snapshot()
        stack.bridge.resume()
        # From the moment it runs again: 503 or the new truth, never the
        # list it had before the pause.
        new = sorted([stack.addr("alpha"), stack.addr("gamma")])
        seen = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            code, members = served_or_503(stack.bridge, WEB_PREFIX)
            seen.append(code)
            assert code == 503 or members == new, (code, members, seen)
            if code == 200:
                break
            time.sleep(0.02)
        assert seen[-1] == 200, seen
        stack.route("/", "alpha", "gamma")
        total = load.stop()

    st = stack.bridge.status()["session"]
    assert st["sessions_expired"] >= 1 and st["sessions_opened"] >= 2, st
    assert st["id"] != first["id"], (first, st)
    assert stack.bridge.status()["session"]["id"] in stack.zk.session_ids()
    # the plugin served its last good list all along
    assert total.failed == 0, total
    assert during.backends() <= {"alpha", "beta"} and during.counts, during
    assert "expired" in stack.bridge.log()


def test_zookeeper_killed_then_restarted(make_stack):
    stack = make_stack()
    u = stack.upsync
    u.put(stack.addr("alpha"))
    u.put(stack.addr("beta"))
    stack.route("/api/", "alpha", "beta")
    before = stack.upstream_status("api")

    with harness.Load(stack.envoy.ingress_port, connections=2, path="/api/") as load:
        time.sleep(0.3)
        stack.zk.kill()
        # the bridge answers 503, not an empty list and not its old data
        harness.wait_until(lambda: stack.bridge.kv(API_PREFIX)[0] == 503, 15, 0.05, "503 from the bridge")
        code, headers, body = stack.bridge.kv(API_PREFIX)
        assert "X-Consul-Index" not in headers and "ZooKeeper" in body, (code, headers, body)
        # the plugin fails its syncs and keeps the last good list
        harness.wait_until(
            lambda: stack.upstream_status("api")["syncs_failed"] > before["syncs_failed"], 15, 0.05, "failed syncs"
        )
        time.sleep(1.0)
        mid = stack.upstream_status("api")
        assert harness.addresses(mid) == sorted([stack.addr("alpha"), stack.addr("beta")]), mid
        assert mid["last_error"] and "503" in mid["last_error"], mid
        during = load.snapshot()

        # ZooKeeper comes back with the same data dir and port
        stack.zk.start()
        stack.bridge.wait_serving(30)
        stack.kazoo.ensure_path("/upstreams/api")  # kazoo reconnects by itself
        u.put(stack.addr("gamma"))
        stack.route("/api/", "alpha", "beta", "gamma", timeout=20)
        total = load.stop()

    assert during.failed == 0 and during.backends() == {"alpha", "beta"}, during
    assert total.failed == 0, total
    assert stack.upstream_status("api")["source"] == "registry"


def test_zookeeper_paused_is_not_served_as_fresh(make_stack):
    """A server that stops answering without closing its connections:
    the bridge stops serving within the session timeout (its probes go
    unanswered), and serves again once the server answers."""
    stack = make_stack(session_timeout_ms=3000)
    stack.upsync.put(stack.addr("alpha"))
    stack.route("/api/", "alpha")
    stack.zk.pause()
    try:
        t0 = time.monotonic()
        harness.wait_until(lambda: stack.bridge.kv(API_PREFIX)[0] == 503, 10, 0.05, "503 while ZooKeeper is stopped")
        took = time.monotonic() - t0
        # traffic still goes to the last good list
        assert stack.sample(20, "/api/").only("alpha")
    finally:
        stack.zk.resume()
    assert took < 3.5, f"stale for {took:.1f}s, longer than the session timeout"
    stack.bridge.wait_serving(30)
    stack.upsync.put(stack.addr("beta"))
    stack.route("/api/", "alpha", "beta", timeout=20)
