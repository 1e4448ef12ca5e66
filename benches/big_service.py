"""One big service (issue 10): one upstream of 10,000 members (and 1,000 for
comparison) on one Envoy (--concurrency 2), real etcd 3.4, the plugin's
etcd gRPC watch on, the shipped EDS settings (as benches/scale.py, see
benches/scalekit.py).

For each size: the time from Envoy's start until every member is in Envoy,
then --changes one-member changes (a new member put, then deleted: two
changes each), each timed from the etcd write's return until Envoy's
membership of the cluster (cluster.big.membership_total, polled every
2 ms) shows it; p50/p99/max over all of them. Target: p99 < 100 ms at
10,000 members.

Usage: python benches/big_service.py --wasm target/upsync_wasm.wasm [--sizes 1000,10000] [--changes 20]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import scalekit as sk

NAME = "big"
TARGET_SIZE = 10_000
TARGET_P99 = 0.100


def run(work: Path, wasm: Path, m: int, changes: int, extra: dict) -> dict:
    reg = sk.Registry(work / f"etcd-{m}").start()
    envoy = None
    try:
        reg.put_many([(sk.prefix_of(NAME) + sk.member_addr(j), sk.member_value()) for j in range(m)])
        envoy = sk.ScaleEnvoy(work / f"envoy-{m}", wasm, reg.port, [NAME], **extra)
        t0 = time.monotonic()
        sk.start_envoy(envoy, timeout=300)
        all_in = sk.wait_membership(envoy, {NAME: m}, timeout=300) - t0
        time.sleep(2)
        delays = []
        for i in range(changes):
            key = sk.prefix_of(NAME) + sk.member_addr(m + i)
            delays.append(sk.time_change(envoy, lambda: reg.put(key, sk.member_value()), NAME, m + 1))
            delays.append(sk.time_change(envoy, lambda: reg.delete(key), NAME, m))
        hosts = envoy.cluster_hosts(NAME)
        if hosts != {sk.member_addr(j) for j in range(m)}:
            raise RuntimeError(f"Envoy holds {len(hosts)} hosts, not the {m} registered ones")
        mem = sorted(envoy.wasm_memories().values(), reverse=True)
        r = {"m": m, "all_in": all_in, "delays": delays, "rss": envoy.rss_bytes(), "memories": mem}
        print(f"  {m} members: all in Envoy after {all_in:.1f} s; {len(delays)} changes: "
              f"p50 {sk.ms(sk.quantile(delays, 50))}, p99 {sk.ms(sk.quantile(delays, 99))}, "
              f"max {sk.ms(max(delays))}", flush=True)
        return r
    finally:
        if envoy is not None:
            envoy.stop()
        reg.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasm", default=str(sk.REPO / "target" / "upsync_wasm.wasm"))
    ap.add_argument("--sizes", default="1000,10000", help="member counts of the one upstream")
    ap.add_argument("--changes", type=int, default=20, help="member adds (each followed by its delete)")
    sk.add_stack_args(ap)
    args = ap.parse_args()
    wasm = Path(args.wasm).resolve()
    shipped = sk.gen.shipped_eds_settings()
    print(f"big service bench: one upstream, watch on, eds_hold_ms {shipped['eds_hold_ms']}, refresh_delay "
          f"{shipped['refresh_delay']} (envoy/production.yaml); {sk.machine_load()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="upsync-big-"))
    try:
        rows = [run(work, wasm, int(s), args.changes, sk.stack_kwargs(args)) for s in args.sizes.split(",")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\none upstream, one-member change -> Envoy membership ({2 * args.changes} changes each: "
          f"{args.changes} adds, {args.changes} deletes); {sk.machine_load()}")
    print(f"{'members':>8} {'all in (s)':>11} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'RSS MiB':>8}  wasm memories MiB")
    for r in rows:
        d = r["delays"]
        print(f"{r['m']:>8} {r['all_in']:>11.1f} {1000 * sk.quantile(d, 50):>7.0f} {1000 * sk.quantile(d, 99):>7.0f} "
              f"{1000 * max(d):>7.0f} {r['rss'] / 2**20:>8.0f}  {[round(x / 2**20, 1) for x in r['memories']]}")
    print(f"  {sk.poll_cost()}")
    big = [r for r in rows if r["m"] >= TARGET_SIZE]
    print("\nissue 10 target:")
    if big:
        p99 = sk.quantile(big[0]["delays"], 99)
        print(sk.target_line(f"one upstream of {big[0]['m']:,} members: change -> Envoy", f"p99 {sk.ms(p99)}",
                             "p99 < 100 ms", p99 < TARGET_P99))
    else:
        print(sk.target_line(f"one upstream of {TARGET_SIZE:,} members", "-", "p99 < 100 ms", None,
                             f"no size >= {TARGET_SIZE} given"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
