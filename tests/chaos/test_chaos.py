"""Chaos: wrk load through a real Envoy while the registry misbehaves.

One stack for the whole module (see chaoskit.Chaos): etcd 3.4, the fault
proxy between Envoy's `etcd` cluster and etcd, backends in their own
processes, Envoy on envoy/demo.yaml with the plugin (etcd v3, gRPC Watch on,
interval 200 ms, backoff up to 1 s). The tests run in order:

1. a baseline wrk run without churn (latency reference);
2. then one wrk run for the rest of the module, during which
   - members are added, removed, re-weighted and marked down in etcd,
   - etcd is SIGKILLed and restarted twice,
   - the proxy answers the poller with each fault in turn;
   every step checks that Envoy's members come back equal to etcd's, that
   clients saw no non-2xx answer (Envoy's own counters), and that no Wasm
   VM was created, reloaded or failed;
3. the last test stops wrk and asserts its totals: 0 non-2xx, 0 socket
   errors.

Request counts and p99 latency with and without churn are printed at the
end of the run (not asserted: numbers from a shared 2-core machine).
"""

from __future__ import annotations

import os
import time

import pytest

import chaoskit
from chaoskit import brief, failures, ms, report, web_hosts

# How long a fault is held: at least this, and until the proxy has given
# the poller several faulty answers.
FAULT_HOLD_S = 1.5
FAULT_ANSWERS = 4

FAULT_MODES = ["garbage", "http500", "truncated", "cut", "hang", "empty", "oversize"]


@pytest.fixture(scope="module")
def chaos(request, wasm, tmp_path_factory):
    seed = int(os.environ.get("CHAOS_SEED") or int(time.time()) % 100_000)
    c = chaoskit.Chaos(wasm, tmp_path_factory.mktemp("chaos"), seed=seed)
    request.addfinalizer(c.close)
    request.node._chaos = c  # for the failure report (conftest.py)
    c.start()
    report(f"churn seed {seed} (CHAOS_SEED={seed} repeats the same choices of operations)")
    return c


@pytest.fixture(scope="module")
def churn_load(chaos):
    """wrk for the rest of the module, started by the first test that uses it."""
    w = chaos.wrk("churn")
    chaos.churn_wrk = w
    return w


def test_baseline_without_churn(chaos):
    before = chaos.traffic()
    res = chaos.wrk("baseline", duration_s=8).wait()
    chaos.baseline = res
    report(
        f"baseline (no churn, no faults): {res['requests']} requests, {res['non2xx']} non-2xx, "
        f"p50 {ms(res['latency_us']['p50'])} p99 {ms(res['latency_us']['p99'])}"
    )
    assert res["requests"] > 0, res
    assert not any(failures(res).values()), failures(res)
    chaos.assert_clean_since(before)
    chaos.assert_envoy_matches_registry()


def test_member_churn(chaos, churn_load):
    before = chaos.traffic()
    waits = []
    for _ in range(14):
        chaos.churn.step()
        waits.append(chaos.churn.settle())
    chaos.churn.drain_retiring()
    delta = chaos.assert_clean_since(before)
    report(
        f"churn: {len(waits)} changes, each in Envoy after at most {max(waits) * 1000:.0f} ms; "
        f"{delta.get('http.ingress.downstream_rq_2xx', 0)} requests 2xx meanwhile"
    )


def test_etcd_sigkilled_and_restarted_twice(chaos, churn_load):
    before = chaos.traffic()
    for round_ in (1, 2):
        chaos.churn.settle()
        members = web_hosts(chaos.envoy)
        down0 = chaos.proxy.counts()["upstream_down"]
        chaos.etcd.kill()
        # the poller keeps trying, and gets nowhere
        chaoskit.harness.wait_until(
            lambda: chaos.proxy.counts()["upstream_down"] >= down0 + 3,
            15, 0.05, "registry calls to meet a dead etcd",
        )
        t_end = time.monotonic() + FAULT_HOLD_S
        while time.monotonic() < t_end:
            assert web_hosts(chaos.envoy) == members, f"members changed while etcd was down (round {round_})"
            time.sleep(0.1)
        t0 = time.monotonic()
        chaos.etcd.start()
        restart_s = time.monotonic() - t0
        op = chaos.churn.step()
        took = chaos.churn.settle(timeout=20)
        report(
            f"etcd SIGKILL #{round_}: members held while down; etcd back in {restart_s * 1000:.0f} ms, "
            f"then '{op}' in Envoy {took * 1000:.0f} ms after the write"
        )
    chaos.churn.drain_retiring()
    chaos.assert_clean_since(before)


@pytest.mark.parametrize("mode", FAULT_MODES)
def test_registry_fault(chaos, churn_load, mode):
    """The registry path answers wrongly: nothing a faulty answer says ever
    shows, and once the path heals Envoy follows etcd again. etcd's own
    changes meanwhile may show: the gRPC watch (straight to etcd) brings
    them, applied as changes, so Envoy holds the last good members or one
    of the states etcd went through."""
    before = chaos.traffic()
    chaos.churn.settle()
    members = web_hosts(chaos.envoy)
    n0 = chaos.proxy.counts()[mode]
    err0 = chaos.last_error()[0]
    chaos.proxy.set_mode(mode)
    try:
        chaoskit.harness.wait_until(
            lambda: chaos.proxy.counts()[mode] >= n0 + 2, 15, 0.02, f"the poller to get {mode} answers"
        )
        # etcd changes meanwhile: only etcd's own states may show, never anything the fault made up
        ops, states = [], [members]
        for _ in range(2):
            ops.append(chaos.churn.step(kinds=("add", "remove", "weight")))
            states.append(chaoskit.registry_hosts(chaos.etcd))
        t_end = time.monotonic() + FAULT_HOLD_S
        said = set()
        while time.monotonic() < t_end or chaos.proxy.counts()[mode] < n0 + FAULT_ANSWERS:
            now = web_hosts(chaos.envoy)
            assert now in states, (
                f"members during {mode} are neither the last good ones nor etcd's: {brief(members)} -> "
                f"{brief(now)}; {chaos.status_line()}"
            )
            assert time.monotonic() < t_end + 20, f"too few {mode} answers: {chaos.proxy.counts()}"
            when, err = chaos.last_error()
            if when > err0 and err:
                said.add(err)
            time.sleep(0.1)
    finally:
        chaos.proxy.set_mode("pass")
    took = chaos.churn.settle(timeout=20)
    chaos.churn.drain_retiring()
    chaos.assert_clean_since(before)
    report(
        f"fault {mode}: {chaos.proxy.counts()[mode] - n0} faulty answers, none shown ({'; '.join(ops)} "
        f"in etcd meanwhile), in sync {took * 1000:.0f} ms after healing; plugin said: {sorted(said)}"
    )


def test_traffic_through_the_chaos(chaos, churn_load):
    chaos.churn.settle()
    res = churn_load.stop()
    envoy_side = {k.rsplit(".", 1)[1]: v for k, v in chaos.traffic().items()}
    chaos.assert_envoy_matches_registry()
    chaos.assert_no_vm_restart()
    base = chaos.baseline
    served_by = {k for k, v in res["backends"].items() if v and k != "(none)"}
    report(
        f"with churn, etcd kills and faults: {res['requests']} requests in {res['duration_us'] / 1e6:.0f} s, "
        f"{res['non2xx']} non-2xx, socket errors {res['errors']}, p50 {ms(res['latency_us']['p50'])} "
        f"p99 {ms(res['latency_us']['p99'])} p99.9 {ms(res['latency_us']['p999'])} max {ms(res['latency_us']['max'])}"
    )
    if base:
        report(
            f"p99 with churn / without: {ms(res['latency_us']['p99'])} / {ms(base['latency_us']['p99'])} "
            f"= {res['latency_us']['p99'] / max(base['latency_us']['p99'], 1):.2f}x"
        )
    report(f"{len(served_by)} backends answered: {dict(sorted(res['backends'].items()))}")
    report(f"churn operations: {len(chaos.churn.ops)}; Wasm stats unchanged: {chaos.wasm_baseline}")
    report(f"fault proxy answers by mode: {dict(chaos.proxy.counts())}")
    report(f"Envoy's counters for the whole run: {envoy_side}")
    assert res["requests"] > 0, res
    assert not any(failures(res).values()), f"wrk saw failures {failures(res)}: statuses {res['statuses']}"
    # the churn reached clients: more backends answered than the three it started with
    assert len(served_by) > len(chaoskit.Chaos.ORIGINALS), res["backends"]
