"""One big service (issue 10): one upstream of 10,000 members (and 1,000 for
comparison) on one Envoy (--concurrency 2), real etcd 3.4, the plugin's
etcd gRPC watch on, the shipped EDS settings (as benches/scale.py, see
benches/scalekit.py).

For each size: the time from Envoy's start until every member is in Envoy,
then --changes one-member changes (a new member put, then deleted: two
changes each), each timed from the etcd write's return until Envoy's
membership of the cluster (cluster.big.membership_total, polled every
2 ms) shows it; p50/p99/max over all of them. Target: p99 < 100 ms at
10,000 members. etcd's range count (etcd_debugging_mvcc_range_total)
over the changes says how many reads they cost (the plugin applies a
watch event as a change; a module that reads on every event shows about
two per change: a probe and a full read).

--baseline-wasm: the same runs with another module first (e.g. the one
built from the commit before watch events were applied as changes), in
the same run, and the ratios. --baseline-rev REV builds that module from
a commit of this repository (git archive, its own target dir; minutes).

Usage: python benches/big_service.py --wasm target/upsync_wasm.wasm [--sizes 1000,10000] [--changes 20]
       [--baseline-wasm OLD.wasm | --baseline-rev REV]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
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
        ranges = sk.metric_sum(reg.metrics(), "etcd_debugging_mvcc_range_total")
        delays = []
        for i in range(changes):
            key = sk.prefix_of(NAME) + sk.member_addr(m + i)
            delays.append(sk.time_change(envoy, lambda: reg.put(key, sk.member_value()), NAME, m + 1))
            delays.append(sk.time_change(envoy, lambda: reg.delete(key), NAME, m))
        ranges = sk.metric_sum(reg.metrics(), "etcd_debugging_mvcc_range_total") - ranges
        hosts = envoy.cluster_hosts(NAME)
        if hosts != {sk.member_addr(j) for j in range(m)}:
            raise RuntimeError(f"Envoy holds {len(hosts)} hosts, not the {m} registered ones")
        mem = sorted(envoy.wasm_memories().values(), reverse=True)
        r = {"m": m, "all_in": all_in, "delays": delays, "rss": envoy.rss_bytes(), "memories": mem,
             "ranges": ranges}
        print(f"  {m} members: all in Envoy after {all_in:.1f} s; {len(delays)} changes: "
              f"p50 {sk.ms(sk.quantile(delays, 50))}, p99 {sk.ms(sk.quantile(delays, 99))}, "
              f"max {sk.ms(max(delays))}; {ranges:.0f} etcd range reads", flush=True)
        return r
    finally:
        if envoy is not None:
            envoy.stop()
        reg.stop()


def build_rev(rev: str, work: Path) -> Path:
    """The module of commit `rev`, built as `make build` builds it, in `work`."""
    src = work / f"src-{rev}"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(sk.REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    print(f"building the module of {rev} in {src} (minutes)", flush=True)
    subprocess.run(["make", "--no-print-directory", "build"], cwd=src, check=True, stdout=subprocess.DEVNULL)
    return src / "target" / "upsync_wasm.wasm"


def table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'members':>8} {'all in (s)':>11} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'reads':>6} {'RSS MiB':>8}"
          "  wasm memories MiB")
    for r in rows:
        d = r["delays"]
        print(f"{r['m']:>8} {r['all_in']:>11.1f} {1000 * sk.quantile(d, 50):>7.0f} {1000 * sk.quantile(d, 99):>7.0f} "
              f"{1000 * max(d):>7.0f} {r['ranges']:>6.0f} {r['rss'] / 2**20:>8.0f}  "
              f"{[round(x / 2**20, 1) for x in r['memories']]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasm", default=str(sk.REPO / "target" / "upsync_wasm.wasm"))
    ap.add_argument("--sizes", default="1000,10000", help="member counts of the one upstream")
    ap.add_argument("--changes", type=int, default=20, help="member adds (each followed by its delete)")
    base = ap.add_mutually_exclusive_group()
    base.add_argument("--baseline-wasm", type=Path, help="another module measured first, in the same run")
    base.add_argument("--baseline-rev", help="a commit whose module is built and measured first")
    sk.add_stack_args(ap)
    args = ap.parse_args()
    wasm = Path(args.wasm).resolve()
    shipped = sk.gen.shipped_eds_settings()
    print(f"big service bench: one upstream, watch on, eds_hold_ms {shipped['eds_hold_ms']}, refresh_delay "
          f"{shipped['refresh_delay']} (envoy/production.yaml); {sk.machine_load()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="upsync-big-"))
    sizes = [int(s) for s in args.sizes.split(",")]
    baseline_rows: list[dict] = []
    try:
        baseline = args.baseline_wasm.resolve() if args.baseline_wasm else None
        if args.baseline_rev:
            baseline = build_rev(args.baseline_rev, work)
        rows = []
        for m in sizes:
            # Each size: the baseline, then this module, back to back (the same machine load).
            if baseline is not None:
                print(f"baseline {baseline}:", flush=True)
                baseline_rows.append(run(work / "baseline", baseline, m, args.changes, sk.stack_kwargs(args)))
                print(f"this module {wasm}:", flush=True)
            rows.append(run(work, wasm, m, args.changes, sk.stack_kwargs(args)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    what = (f"one upstream, one-member change -> Envoy membership ({2 * args.changes} changes each: "
            f"{args.changes} adds, {args.changes} deletes); reads: etcd range reads over the changes; "
            f"{sk.machine_load()}")
    if baseline_rows:
        table(f"baseline ({args.baseline_rev or args.baseline_wasm}): {what}", baseline_rows)
    table(f"this module: {what}", rows)
    for b, r in zip(baseline_rows, rows):
        ratio = {q: sk.quantile(r["delays"], q) / max(sk.quantile(b["delays"], q), 1e-9) for q in (50, 99)}
        print(f"  {r['m']} members: p50 {ratio[50]:.2f}x, p99 {ratio[99]:.2f}x the baseline's; "
              f"reads {r['ranges']:.0f} vs {b['ranges']:.0f}")
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
