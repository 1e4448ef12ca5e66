"""Each ZooKeeper layout, end to end: ZooKeeper → bridge → plugin (`consul_kv`) → Envoy traffic.

One standalone ZooKeeper, one bridge and one Envoy running
envoy/zookeeper.yaml serve three upstreams: `web` from Curator
ServiceInstances (/services/web), `orders` from Dubbo 2 providers
(/dubbo/org.example.OrderService/providers), `api` from upsync znodes
(/upstreams/api/<ip:port>).
"""

from __future__ import annotations

import json
import threading
import time

from zk_harness import API_PREFIX, ORDERS_PREFIX, WEB_PREFIX, harness


def test_curator_instances(stack):
    c = stack.curator
    c.register(stack.addr("alpha"))
    c.register(stack.addr("beta"))
    stack.route("/", "alpha", "beta")

    # enabled=false (Curator 5's way to take an instance out): down
    c.register(stack.addr("beta"), enabled=False)
    stack.route("/", "alpha")
    assert stack.bridge.members(WEB_PREFIX)[stack.addr("beta")]["down"] == 1

    # weight from payload.metadata
    c.register(stack.addr("beta"), enabled=True, weight=3)
    smp = stack.wait_routing(lambda s: s.only("alpha", "beta") and s.counts["beta"] >= 2 * s.counts["alpha"],
                             n=40, what="beta weighted 3:1")
    member = harness.member(stack.upstream_status("web"), stack.addr("beta"))
    assert member["weight"] == 3, member

    # the instance dies: its session ends, its ephemeral znode goes
    c.crash(stack.addr("alpha"))
    stack.route("/", "beta")
    assert sorted(stack.bridge.members(WEB_PREFIX)) == [stack.addr("beta")], smp


def test_dubbo2_providers(stack):
    d = stack.dubbo
    d.register(stack.addr("alpha"), weight=100)
    d.register(stack.addr("gamma"), weight=100)
    stack.route("/orders/", "alpha", "gamma")

    # disabled=true (Dubbo's override to take a provider out): down
    d.register(stack.addr("gamma"), disabled="true")
    stack.route("/orders/", "alpha")

    # another protocol under the same interface is not a member (the
    # mount lists protocols ["dubbo"])
    d.register(stack.addr("beta"), protocol="tri")
    d.register(stack.addr("gamma"), weight=300)
    smp = stack.wait_routing(lambda s: s.only("alpha", "gamma") and s.counts["gamma"] >= 2 * s.counts["alpha"],
                             "/orders/", n=40, what="gamma weighted 3:1, beta (tri) not routed")
    served = stack.bridge.members(ORDERS_PREFIX)
    assert sorted(served) == sorted([stack.addr("alpha"), stack.addr("gamma")]), served
    assert served[stack.addr("gamma")]["meta"]["interface"] == "org.example.OrderService"

    d.deregister(stack.addr("alpha"))
    stack.route("/orders/", "gamma")
    assert smp.failed == 0


def test_upsync_layout(stack):
    u = stack.upsync
    u.put(stack.addr("alpha"))
    u.put(stack.addr("beta"))
    stack.route("/api/", "alpha", "beta")
    u.put(stack.addr("beta"), down=1)
    stack.route("/api/", "alpha")
    u.put(stack.addr("beta"))
    u.delete(stack.addr("alpha"))
    stack.route("/api/", "beta")
    assert harness.addresses(stack.upstream_status("api")) == [stack.addr("beta")]


def test_bridge_speaks_consul_kv_blocking_queries(stack):
    b = stack.bridge
    u = stack.upsync
    u.put(stack.addr("alpha"), weight=2)
    harness.wait_until(lambda: stack.addr("alpha") in b.members(API_PREFIX), 10, 0.05, "alpha served")
    code, headers, body = b.kv(API_PREFIX)
    assert code == 200, body
    index = int(headers["X-Consul-Index"])
    entries = {e["Key"]: e for e in json.loads(body)}
    alpha = entries[API_PREFIX + stack.addr("alpha")]
    assert json.loads(harness.unb64(alpha["Value"]))["weight"] == 2
    assert set(alpha) == {"LockIndex", "Key", "Flags", "Value", "CreateIndex", "ModifyIndex"}
    assert alpha["ModifyIndex"] <= index

    # a blocking query on the current index is held until a write...
    got = {}

    def blocking():
        t0 = time.monotonic()
        got["answer"] = b.kv(API_PREFIX, f"recurse&index={index}&wait=20s", timeout=30)
        got["held"] = time.monotonic() - t0

    t = threading.Thread(target=blocking)
    t.start()
    time.sleep(0.5)
    assert t.is_alive(), "the blocking query returned before any change"
    u.put(stack.addr("alpha"), weight=4)
    t.join(10)
    code, headers, body = got["answer"]
    assert code == 200 and got["held"] >= 0.5, got
    assert int(headers["X-Consul-Index"]) > index
    index2 = int(headers["X-Consul-Index"])

    # ...and, with no change, answers the same index when the wait ends
    t0 = time.monotonic()
    code, headers, _ = b.kv(API_PREFIX, f"recurse&index={index2}&wait=300ms")
    assert code == 200 and int(headers["X-Consul-Index"]) == index2
    assert time.monotonic() - t0 >= 0.3

    # an index from a "future" (a client of an earlier bridge) answers at once
    code, headers, _ = b.kv(API_PREFIX, f"recurse&index={index2 + 10**12}&wait=20s")
    assert code == 200 and int(headers["X-Consul-Index"]) == index2

    # deleting every member: 404 with an index that still grows
    for name in list(b.members(API_PREFIX)):
        u.delete(name)
    harness.wait_until(lambda: b.kv(API_PREFIX)[0] == 404, 10, 0.05, "404 on the emptied prefix")
    code, headers, body = b.kv(API_PREFIX)
    assert int(headers["X-Consul-Index"]) > index2 and body == ""

    # a prefix no mount serves is an error, never "no keys" (a 404)
    code, _, body = b.kv("upstreams/nope/")
    assert code == 400 and "no mount serves" in body, body
    assert b.kv(API_PREFIX, "recurse&wait=5")[0] == 400  # Go durations need a unit, as in Consul
    # the plugin kept its last good list: allow_empty is false
    assert harness.addresses(stack.upstream_status("api")), stack.upstream_status("api")
    u.put(stack.addr("alpha"))
    stack.route("/api/", "alpha")


def test_one_zookeeper_session_however_many_clients(stack):
    bridge_sid = stack.bridge.status()["session"]["id"]
    assert bridge_sid in stack.zk.session_ids()
    before = stack.zk.connections()
    index = int(stack.bridge.kv(WEB_PREFIX)[1]["X-Consul-Index"])
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(stack.bridge.kv(WEB_PREFIX, f"recurse&index={index}&wait=3s", 10)))
        for _ in range(40)
    ]
    for t in threads:
        t.start()
    time.sleep(1)
    during = stack.zk.connections()
    for t in threads:
        t.join(15)
    assert len(results) == 40 and all(code == 200 for code, _, _ in results), [r[0] for r in results]
    # 40 held HTTP queries and three polling upstreams, one ZooKeeper connection
    assert during == before, (before, during)
    assert [s for s in stack.zk.session_ids() if s == bridge_sid] == [bridge_sid]
