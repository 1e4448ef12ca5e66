"""A three-node ZooKeeper ensemble on loopback ports: the member holding the bridge's connection dies."""

from __future__ import annotations

import time

from zk_harness import harness


def test_member_killed_and_restarted(make_stack):
    stack = make_stack(ensemble=3)
    u = stack.upsync
    u.put(stack.addr("alpha"))
    u.put(stack.addr("beta"))
    stack.route("/api/", "alpha", "beta")
    sid = stack.bridge.status()["session"]["id"]
    members = stack.ensemble.members
    holding = [m for m in members if sid in m.session_ids()]
    assert len(holding) == 1, [(m.address, m.session_ids()) for m in members]
    victim = holding[0]
    victim_mode = victim.mode()

    with harness.Load(stack.envoy.ingress_port, connections=2, path="/api/") as load:
        time.sleep(0.3)
        victim.kill()
        # the bridge moves to a surviving member (same session: the
        # ensemble keeps it) and serves again
        harness.wait_until(
            lambda: any(sid in m.session_ids() for m in members if m is not victim), 30, 0.1,
            "the bridge's session on a surviving member",
        )
        stack.bridge.wait_serving(30)
        st = stack.bridge.status()["session"]
        assert st["id"] == sid and st["reconnects"] >= 1, st
        u.put(stack.addr("gamma"))
        stack.route("/api/", "alpha", "beta", "gamma", timeout=20)

        # the member comes back and rejoins
        victim.start()
        assert victim.mode() in ("follower", "leader")
        u.delete(stack.addr("alpha"))
        stack.route("/api/", "beta", "gamma", timeout=20)
        total = load.stop()

    assert total.failed == 0, total
    assert stack.bridge.status()["session"]["sessions_expired"] == 0
    print(f"killed {victim.address} ({victim_mode}); bridge session {sid} kept")
