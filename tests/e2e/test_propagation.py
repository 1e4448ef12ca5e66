"""How long from an etcd write to Envoy routing by it (measured, loosely bounded)."""

from __future__ import annotations

import statistics
import time

import pytest
from harness import WEB

CHANGES = 20
BOUND_S = 5.0  # generous: a failure means "did not propagate", not "slow"


def _flip(stack, up: str, down: str) -> None:
    stack.etcd.set_members(WEB, {stack.addr(up): {}, stack.addr(down): {"down": 1}})


@pytest.mark.parametrize(
    "mode",
    [
        # Poll etcd every 100 ms.
        dict(watch=False, interval_ms=100),
        # etcd gRPC Watch as the trigger; the 3 s poll is only the safety net,
        # so fast propagation here can only come from the watch.
        dict(watch=True, interval_ms=3000, backoff_max_ms=3000),
    ],
    ids=["poll", "watch"],
)
def test_propagation_delay(make_stack, capsys, mode):
    stack = make_stack(**mode)
    stack.set_web(alpha={}, beta={"down": 1})
    stack.wait_routing(lambda s: s.only("alpha"), what="alpha only")

    to_status, to_route = [], []
    for i in range(CHANGES):
        up, down = ("beta", "alpha") if i % 2 == 0 else ("alpha", "beta")
        t0 = time.monotonic()
        _flip(stack, up, down)
        seen_status = None
        while True:
            now = time.monotonic() - t0
            assert now < BOUND_S, f"change {i} ({up} up) not routed after {BOUND_S}s; status {stack.web_status()}"
            if seen_status is None:
                m = [x for x in stack.web_status()["members"] if x["address"] == stack.addr(up)]
                if m and m[0]["down"] is False:
                    seen_status = time.monotonic() - t0
            status, backend = stack.client.get("/")
            if status == 200 and backend == up:
                to_route.append(time.monotonic() - t0)
                break
            time.sleep(0.003)
        to_status.append(seen_status if seen_status is not None else to_route[-1])
        # settle before the next change: only `up` answers now
        stack.wait_routing(lambda s: s.only(up), timeout=BOUND_S, what=f"only {up} after change {i}")

    def ms(xs, q):
        return 1000 * statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if q < 100 else 1000 * max(xs)

    line = (
        f"propagation over {CHANGES} changes ({'etcd watch' if stack.watch else 'etcd poll'}, interval_ms={stack.interval_ms}, "
        "EDS long poll with eds_hold_ms=25000, refresh_delay=0.02s): "
        f"etcd->status p50 {ms(to_status, 50):.0f} ms max {ms(to_status, 100):.0f} ms; "
        f"etcd->routing p50 {ms(to_route, 50):.0f} ms p90 {ms(to_route, 90):.0f} ms max {ms(to_route, 100):.0f} ms"
    )
    with capsys.disabled():
        print("\n" + line)
    assert max(to_route) < BOUND_S
