"""ZooKeeper freshness and the bridge's memory.

1. Propagation: a ZooKeeper write → the first request Envoy routes by it,
   per layout. The stack is tests/zk/zk_harness.py's: Debian's ZooKeeper
   3.8 (standalone), upsync-zk-bridge (the optimised `zk-bridge` build),
   Envoy running envoy/zookeeper.yaml with the plugin's `consul_kv`
   blocking queries on the bridge (wait 50 s), REST EDS as a long poll.
   A change flips which of two backends is down (upsync: `"down":1`;
   Curator: `enabled:false`; Dubbo 2: `disabled=true`, a re-registration);
   the clock runs from the ZooKeeper write's return (kazoo waits for the
   server's answer) to the first request answered by the backend that just
   came up.
2. Memory: the bridge's resident set (VmRSS) idle with three empty mounts,
   then with 10,000 znodes (upsync layout, ~70-byte values) under one
   mount, served and consistent; and how long the bridge took to serve them
   after they were written.

Usage: python benches/zk_propagation.py --wasm target/upsync_wasm.wasm [--changes 50] [--znodes 10000]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "zk"))

import zk_harness  # noqa: E402
from zk_harness import harness  # noqa: E402


def q(xs: list[float], p: int) -> float:
    return 1000 * (max(xs) if p == 100 else statistics.quantiles(xs, n=100, method="inclusive")[p - 1])


def measure(stack: zk_harness.ZkStack, path: str, flip, changes: int) -> list[float]:
    flip("alpha", "beta")
    stack.wait_routing(lambda s: s.only("alpha"), path, timeout=20, what="alpha only")
    delays = []
    for i in range(changes):
        up, down = ("beta", "alpha") if i % 2 == 0 else ("alpha", "beta")
        flip(up, down)
        t0 = time.monotonic()
        while True:
            if time.monotonic() - t0 > 10:
                raise TimeoutError(f"change {i} not routed in 10 s; bridge {stack.bridge.status()}")
            status, backend = stack.client.get(path)
            if status == 200 and backend == up:
                delays.append(time.monotonic() - t0)
                break
            time.sleep(0.001)
        stack.wait_routing(lambda s: s.only(up), path, timeout=10, what=f"only {up}")
    return delays


def propagation(wasm: str, changes: int) -> list[tuple[str, list[float]]]:
    rows = []
    with zk_harness.ZkStack(wasm=wasm, session_timeout_ms=10_000) as stack:
        a = stack.addr

        # `down` goes first: the clock starts when the write that brings
        # `up` back returns.
        def upsync_flip(up, down):
            stack.upsync.put(a(down), down=1)
            stack.upsync.put(a(up))

        def curator_flip(up, down):
            stack.curator.register(a(down), enabled=False)
            stack.curator.register(a(up), enabled=True)

        def dubbo_flip(up, down):
            stack.dubbo.register(a(down), disabled="true", seq=time.monotonic_ns())
            stack.dubbo.register(a(up), disabled="false", seq=time.monotonic_ns())

        for label, path, flip in [
            ("upsync znodes (/upstreams/api)", "/api/", upsync_flip),
            ("Curator instances (/services/web)", "/", curator_flip),
            ("Dubbo 2 providers (/dubbo/.../providers)", "/orders/", dubbo_flip),
        ]:
            delays = measure(stack, path, flip, changes)
            rows.append((label, delays))
            print(f"  {label}: p50 {q(delays, 50):.0f} ms, p99 {q(delays, 99):.0f} ms, max {q(delays, 100):.0f} ms",
                  flush=True)
    return rows


def memory(n: int) -> tuple[int, int, int, int]:
    """(idle RSS KiB, RSS KiB after n znodes were created under a running
    bridge, RSS KiB of a bridge started with them present, entries served)."""
    workdir = Path(tempfile.mkdtemp(prefix="upsync-zk-bench-"))
    harness._TEMP_DIRS.add(workdir)
    zk = zk_harness.ZooKeeper(workdir / "zk").start()
    client = zk_harness.kazoo_client(zk.address)
    bridge = None
    try:
        client.start(timeout=20)
        client.ensure_path(zk_harness.API_PATH)
        mounts = zk_harness.default_mounts()
        for m in mounts:
            m["max_znodes"] = max(n, 10_000)
        bridge = zk_harness.Bridge(workdir / "bridge", zk.address, mounts, session_timeout_ms=10_000).start()
        time.sleep(1)
        idle = bridge.rss_kib()
        t0 = time.monotonic()
        value = harness.member_value().encode()
        # asynchronous creates, in batches, as fast as ZooKeeper takes them
        for start in range(0, n, 500):
            futures = [
                client.create_async(f"{zk_harness.API_PATH}/10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:8080", value)
                for i in range(start, min(n, start + 500))
            ]
            for f in futures:
                f.get(timeout=30)
        written = time.monotonic()
        harness.wait_until(
            lambda: next(m for m in bridge.status()["mounts"] if m["prefix"] == zk_harness.API_PREFIX)["entries"] == n,
            120, 0.05, f"{n} entries served",
        )
        served_after = time.monotonic() - written
        served = len(bridge.members(zk_harness.API_PREFIX))
        time.sleep(1)
        full = bridge.rss_kib()
        print(f"  wrote {n} znodes in {written - t0:.1f} s; all served {served_after * 1000:.0f} ms after the last write",
              flush=True)
        # a bridge that starts with them there: one full read
        bridge.stop()
        t0 = time.monotonic()
        bridge = zk_harness.Bridge(workdir / "bridge2", zk.address, mounts, session_timeout_ms=10_000).start()
        print(f"  a bridge started with {n} znodes present served them after {time.monotonic() - t0:.2f} s", flush=True)
        assert len(bridge.members(zk_harness.API_PREFIX)) == n
        time.sleep(1)
        cold = bridge.rss_kib()
        return idle, full, cold, served
    finally:
        if bridge is not None:
            bridge.stop()
        client.stop()
        client.close()
        zk.kill()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wasm", default=str(REPO / "target" / "upsync_wasm.wasm"))
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--znodes", type=int, default=10_000)
    args = ap.parse_args()
    harness.raise_keyboard_interrupt_on_sigterm()
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)  # its reconnect chatter while ZooKeeper is down
    print(f"bridge: {zk_harness.find_bridge()}")
    rows = propagation(args.wasm, args.changes)
    idle, full, cold, served = memory(args.znodes)
    print(f"\nZooKeeper write -> first request routed by it, through upsync-zk-bridge and Envoy ({args.changes} changes each)")
    print(f"{'layout':<42} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    for label, d in rows:
        print(f"{label:<42} {q(d, 50):>7.0f} {q(d, 99):>7.0f} {q(d, 100):>7.0f}")
    print(f"\nbridge resident memory (VmRSS) with {served} znodes served under one mount:")
    print(f"  idle, three empty mounts                {idle / 1024:6.1f} MiB")
    print(f"  started with the znodes present         {cold / 1024:6.1f} MiB (+{(cold - idle) / max(served, 1):.2f} KiB per znode)")
    print(f"  after they were created while running   {full / 1024:6.1f} MiB (+{(full - idle) / max(served, 1):.2f} KiB per znode)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
