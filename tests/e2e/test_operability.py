"""Operating the plugin: the mass-deletion guard, metrics on both the
plugin's endpoint and Envoy's, the status token, and addresses that are
not members, on real etcd and Envoy."""

from __future__ import annotations

import re
import urllib.request

import harness
from harness import WEB


def _metrics(stack, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{stack.envoy.eds_port}/upsync/metrics")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _sample(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def test_a_mass_deletion_is_held_then_applied_once_confirmed(make_stack):
    # interval_ms 1500: the hold is long enough to see, short enough to wait for.
    stack = make_stack(interval_ms=1500, backoff_max_ms=3000)
    stack.set_web(alpha={}, beta={}, gamma={})
    stack.wait_routing(lambda s: s.only("alpha", "beta", "gamma"), what="three members")
    applied = stack.web_status()["updates_applied"]

    # Two of three gone at once (the prefix cleared, alpha put back): over
    # max_removal_share (0.5). Seen in between, the empty list is refused.
    stack.etcd.delete_prefix(WEB)
    stack.etcd.put_member(WEB, stack.addr("alpha"))
    held = stack.wait_status(lambda s: s["held"], "the removal held")
    assert held["updates_held"] >= 1, held
    assert held["updates_applied"] == applied, held
    assert len(held["members"]) == 3, held
    assert stack.sample(30).only("alpha", "beta", "gamma"), "traffic keeps all three while held"

    # A read interval_ms later confirms it: applied.
    st = stack.wait_status(lambda s: not s["held"] and len(s["members"]) == 1, "the removal confirmed", timeout=10)
    assert st["members"][0]["address"] == stack.addr("alpha"), st
    stack.wait_routing(lambda s: s.only("alpha"), what="alpha only after confirmation")


def test_a_deletion_restored_before_confirmation_loses_nothing(make_stack):
    stack = make_stack(interval_ms=3000, backoff_max_ms=6000)
    stack.set_web(alpha={}, beta={}, gamma={})
    stack.wait_routing(lambda s: s.only("alpha", "beta", "gamma"), what="three members")
    applied = stack.web_status()["updates_applied"]
    stack.etcd.delete_prefix(WEB)
    stack.etcd.put_member(WEB, stack.addr("alpha"))
    stack.wait_status(lambda s: s["held"], "the removal held")
    # The registry heals before the confirming read.
    stack.etcd.put_member(WEB, stack.addr("beta"))
    stack.etcd.put_member(WEB, stack.addr("gamma"))
    st = stack.wait_status(lambda s: not s["held"], "the hold released", timeout=10)
    assert len(st["members"]) == 3, st
    assert st["updates_applied"] == applied, "nothing was applied and restored: nothing lost"
    assert stack.sample(30).only("alpha", "beta", "gamma")


def test_metrics_move_with_events_on_the_plugin_and_in_envoy(make_stack):
    stack = make_stack()
    stack.set_web(alpha={})
    stack.wait_routing(lambda s: s.only("alpha"), what="alpha")
    code, text = _metrics(stack)
    assert code == 200, text
    for name in ("upsync_syncs_total", "upsync_members", "upsync_registry_call_duration_seconds"):
        assert f"# TYPE {name} " in text, name
    applied = _sample(text, 'upsync_updates_applied_total{upstream="web"}')
    up = _sample(text, 'upsync_members{upstream="web",state="up"}')
    assert (applied, up) == (applied, 1.0) and applied and applied >= 1, text

    stack.put_web("beta")
    stack.put_web("gamma", down=1)
    stack.wait_status(lambda s: len(s["members"]) == 3, "three members")
    _, text = _metrics(stack)
    assert _sample(text, 'upsync_updates_applied_total{upstream="web"}') > applied, text
    assert _sample(text, 'upsync_members{upstream="web",state="up"}') == 2.0, text
    assert _sample(text, 'upsync_members{upstream="web",state="down"}') == 1.0, text
    assert _sample(text, 'upsync_registry_call_duration_seconds_count{upstream="web"}') >= 1, text

    # The registry goes away: failures counted by reason, age grows.
    stack.registry_down()
    harness.wait_until(
        lambda: (_sample(_metrics(stack)[1], 'upsync_syncs_total{upstream="web",result="failed"}') or 0) >= 2,
        15,
        0.1,
        "failed syncs in the metrics",
    )
    _, text = _metrics(stack)
    reasons = re.findall(r'upsync_sync_failures_total\{upstream="web",reason="(\w+)"\} (\d+)', text)
    assert reasons and all(int(n) >= 1 for _, n in reasons), text
    stack.registry_up()

    # Envoy's own stats carry the same counters, labelled by upstream.
    code, prom = harness.http_text("GET", f"http://127.0.0.1:{stack.envoy.admin_port}/stats/prometheus")
    assert code == 200
    assert re.search(r'^upsync_updates_applied_total\{upstream="web"\} [1-9]', prom, re.M), prom[-2000:]
    assert re.search(r'^upsync_syncs_failed_total\{upstream="web"\} [1-9]', prom, re.M), prom[-2000:]


def test_unspecified_broadcast_and_multicast_addresses_are_not_members(make_stack):
    stack = make_stack()
    stack.set_web(alpha={})
    stack.wait_routing(lambda s: s.only("alpha"), what="alpha")
    port = stack.addr("alpha").rsplit(":", 1)[1]
    for addr in (f"0.0.0.0:{port}", "255.255.255.255:80", "224.0.0.1:80", f"[::]:{port}"):
        stack.etcd.put_member(WEB, addr)
    st = stack.wait_status(lambda s: s["bad_entries"] >= 4, "four refused addresses")
    assert [m["address"] for m in st["members"]] == [stack.addr("alpha")], st
    assert stack.sample(40).only("alpha")


def test_status_token_guards_status_and_metrics(make_stack, tmp_path):
    token = "s3cret-token-0123456789"
    template = tmp_path / "demo-token.yaml"
    text = harness.DEMO_TEMPLATE.read_text()
    assert "'{\"eds_hold_ms\": 25000}'" in text
    template.write_text(text.replace("'{\"eds_hold_ms\": 25000}'", f"'{{\"eds_hold_ms\": 25000, \"status_token\": \"{token}\"}}'"))
    stack = make_stack(envoy_template=template)
    stack.set_web(alpha={})
    stack.wait_routing(lambda s: s.only("alpha"), what="alpha (EDS needs no token)")
    base = f"http://127.0.0.1:{stack.envoy.eds_port}"
    assert harness.http_text("GET", f"{base}/upsync/status")[0] == 401
    assert harness.http_text("GET", f"{base}/upsync/status", headers={"authorization": "Bearer nope"})[0] == 401
    code, body = harness.http_text("GET", f"{base}/upsync/status", headers={"authorization": f"Bearer {token}"})
    assert code == 200 and '"web"' in body, body
    assert _metrics(stack)[0] == 401
    assert _metrics(stack, token)[0] == 200
    assert token not in stack.envoy.log_path.read_text(), "the token is never logged"


GRPC_TARGET = "no_such_cluster"


def test_a_grpc_target_envoy_cannot_use_costs_the_watch_not_the_vm(make_stack):
    """`grpc_target` naming no Envoy cluster: Envoy refuses the gRPC stream.
    The stream is first tried with the raw ABI (on a BadArgument the SDK's
    own call would panic and kill every root context of the VM), so any
    refusal is a logged error: the plugin keeps polling and routing."""
    stack = make_stack(registry_options={"grpc_target": GRPC_TARGET})
    stack.set_web(alpha={})
    stack.wait_routing(lambda s: s.only("alpha"), what="alpha, polled without a watch")
    st = stack.wait_status(lambda s: s.get("watch") == "closed", "the watch shown closed")
    assert st["syncs_ok"] >= 1, st
    stack.put_web("beta")
    stack.wait_routing(lambda s: s.only("alpha", "beta"), what="beta still followed")
    log = stack.envoy.log_path.read_text()
    assert "cannot open the etcd watch stream" in log, log[-3000:]
    assert "panicked" not in log and "RuntimeError" not in log, log[-3000:]
