"""One registry member dies (issue 11, defect 7): a real three-member etcd
3.4 on loopback, Envoy with the registry path of envoy/registries.yaml (the
retrying relay listener, outlier detection, health checks) listing the
three members, gRPC watch on, interval_ms 500 (tests/e2e/failover.py).

Rounds: the etcd leader is SIGKILLed three times and a follower once; each
time a member change is written through a survivor at once, and must reach
traffic within a generous bound (10 s); the killed member is restarted,
rejoins, and Envoy's members end equal to etcd's. The latencies are printed
at the end of the run, not asserted (benches/etcd_failover.py measures
them over many rounds against baselines).
"""

from __future__ import annotations

import string

import pytest

import failover
import harness

ROUTE_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def fo(request, wasm, tmp_path_factory) -> failover.Failover:
    f = failover.Failover(wasm, tmp_path_factory.mktemp("etcd-cluster"))
    request.addfinalizer(f.close)
    f.start()
    request.node._failover = f  # for the failure report (conftest.py)
    return f


def test_the_stack_runs_the_shipped_registry_path(fo):
    """What runs is envoy/registries.yaml's registry path on three members."""
    config = fo.envoy.config_path.read_text()
    for name in ("etcd_relay", "etcd", "etcd_members", "etcd_grpc"):
        block = string.Template(failover.shipped_block(name)).substitute(
            {k: str(v) for k, v in fo.envoy.values.items()}
        )
        assert block in config, f"{name} of envoy/registries.yaml is not in the running configuration"
    for cluster in ("etcd_members", "etcd_grpc"):
        hosts = failover.registry_hosts(fo.envoy, cluster)
        assert sorted(hosts) == sorted(fo.cluster.client_ports), (cluster, hosts)
    assert fo.envoy.upstream_status("web")["watch"] == "open"


def test_production_config_has_the_same_registry_path():
    """envoy/production.yaml's relay listener and etcd clusters are those of
    envoy/registries.yaml, so what this module measures holds for both."""
    prod, reg = harness.PRODUCTION_CONFIG.read_text(), failover.REGISTRIES_CONFIG.read_text()
    for name in ("etcd_relay", "etcd", "etcd_members"):
        a = failover._block(prod, name, "envoy/production.yaml").group(0)
        b = failover._block(reg, name, "envoy/registries.yaml").group(0)
        assert a == b, f"{name} differs between envoy/production.yaml and envoy/registries.yaml"


def _check_round(fo: failover.Failover, rnd: failover.Round) -> None:
    # settled by kill_round: all three members back and caught up, Envoy's
    # `web` equal to etcd's, traffic only to the member the write brought up
    assert rnd.routed_s <= ROUTE_TIMEOUT_S
    assert len(fo.cluster.running()) == 3
    etcd = fo.etcd_web()
    assert fo.envoy_web() == etcd
    assert [a for a, up in etcd.items() if up] == [fo.addr(fo.up)], etcd
    failover.report(rnd.line())


def test_leader_killed_three_times(fo):
    for _ in range(3):
        rnd = fo.kill_round("leader", route_timeout=ROUTE_TIMEOUT_S)
        assert rnd.elected_s is not None, "the survivors did not agree on a new leader"
        _check_round(fo, rnd)


def test_follower_killed(fo):
    rnd = fo.kill_round("follower", route_timeout=ROUTE_TIMEOUT_S)
    _check_round(fo, rnd)


def test_members_end_equal_to_etcd(fo):
    st = fo.envoy.upstream_status("web")
    plugin = {m["address"]: not m["down"] for m in st["members"]}
    assert st["source"] == "registry"
    assert plugin == fo.etcd_web() == fo.envoy_web()
    # every member, the restarted ones included, holds the same members
    lists = [m.get_prefix(harness.WEB) for m in fo.cluster.members]
    assert all(x == lists[0] for x in lists), lists
