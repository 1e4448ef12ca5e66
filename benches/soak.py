"""Soak (issue 10): 100,000 member updates through etcd, and the plugin's
linear memory and Envoy's RSS after 1,000 / 10,000 / 100,000 of them.

The stack is benches/scale.py's (real etcd 3.4, Envoy --concurrency 2, etcd
gRPC watch on, shipped EDS settings; see benches/scalekit.py) with
--upstreams (10) x --members (100). An update is one etcd operation on a
random upstream: a new member put, a member deleted, or a member's weight
changed. Each upstream keeps its starting size (+-1: a put of a new member
where it is below it, a delete where it is above), so the run compares the
same amount of state after 1,000 and after 100,000 updates while the
addresses keep changing; --drift lets the sizes wander between half and
twice the start instead, as before (then the state itself grows: with the
default seed 984 members after 1,000 updates, 1,213 after 100,000 and
1,494 after 400,000, and the largest upstream from 104 to 194: memory
follows the lists, not the updates). --batch (10) updates with distinct keys go in one etcd
transaction (one revision, one watch event). Every --check-every (1,000)
updates the run waits until the plugin shows exactly the members and
weights written (GET /upsync/status) and Envoy's membership of every
cluster has the right size, so it goes as fast as the plugin keeps up and
no checkpoint is taken with work still queued. The poller's safety poll is
--interval-ms (2 s here, not the 30 s of scale.py): today a watch event that
arrives while a read of its upstream is in flight is dropped, and the change
then waits for the safety poll; the run prints how many checks that cost.

Memory, at each checkpoint:
- wasm linear memory: every V8 wasm memory of the Envoy process, read from
  /proc/<pid>/maps (see scalekit.py): the poller's (main thread), each
  worker's (EDS filter) and Envoy's base VM; their sum is the verdict;
- `wasm_memory_bytes` of GET /upsync/status when the plugin reports it
  ("n/a" otherwise);
- Envoy's RSS (VmRSS).
Target: linear memory after 100,000 updates within 10 % of its size after
the first 1,000.

Usage: python benches/soak.py --wasm target/upsync_wasm.wasm [--baseline main.wasm] [--updates 100000]
       [--upstreams 10] [--members 100] [--drift]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import scalekit as sk
from scalekit import harness

TARGET_GROWTH = 0.10


def checkpoints_for(total: int) -> list[int]:
    marks = [x for x in (1000, 10_000, 100_000) if x <= total]
    return marks if marks and marks[-1] == total else marks + [total]


class Model:
    """What etcd holds: {upstream: {address: weight}}; next fresh member index."""

    def __init__(self, names: list[str], members: int, seed: int, drift: bool = False):
        self.rng = random.Random(seed)
        self.start, self.drift = members, drift
        self.names = names
        self.lo, self.hi = max(1, members // 2), members * 2
        self.state = {u: {sk.member_addr(j): 1 for j in range(members)} for u in names}
        self.next = members

    def batch(self, size: int) -> tuple[list[tuple[str, str]], list[str]]:
        """`size` random updates with distinct keys, applied to the model."""
        puts, deletes, used = [], [], set()
        while len(puts) + len(deletes) < size:
            u = self.rng.choice(self.names)
            members = self.state[u]
            kind = self.rng.choice(("add", "delete", "weight"))
            if not self.drift and kind != "weight" and len(members) != self.start:
                kind = "add" if len(members) < self.start else "delete"
            if len(members) <= self.lo:
                kind = "add"
            elif len(members) >= self.hi:
                kind = "delete"
            if kind == "add":
                addr = sk.member_addr(self.next)
                self.next += 1
                members[addr] = self.rng.randint(1, 10)
            else:
                addr = self.rng.choice(sorted(members))
                if (u, addr) in used:
                    continue
                if kind == "delete":
                    del members[addr]
                    deletes.append(sk.prefix_of(u) + addr)
                    used.add((u, addr))
                    continue
                members[addr] = members[addr] % 10 + 1
            used.add((u, addr))
            puts.append((sk.prefix_of(u) + addr, sk.member_value(members[addr])))
        return puts, deletes


def in_sync(envoy: sk.ScaleEnvoy, model: Model) -> bool:
    shown = {u["name"]: {m["address"]: m["weight"] for m in u.get("members", [])}
             for u in envoy.status_json().get("upstreams", [])}
    if any(shown.get(u) != want for u, want in model.state.items()):
        return False
    sizes = envoy.membership()
    return all(sizes.get(u) == len(want) for u, want in model.state.items())


def snapshot(envoy: sk.ScaleEnvoy, model: Model, done: int, elapsed: float) -> dict:
    mem = envoy.wasm_memories()
    status_mem = envoy.status_json().get("wasm_memory_bytes")
    sizes = [len(ms) for ms in model.state.values()]
    row = {"updates": done, "elapsed": elapsed, "rss": envoy.rss_bytes(), "memories": mem,
           "total": sum(mem.values()), "status_mem": status_mem, "members": sum(sizes), "largest": max(sizes)}
    print(f"  {done:>7} updates after {elapsed:6.0f} s ({row['members']} members, largest upstream "
          f"{row['largest']}): wasm linear memory {row['total'] / 2**20:.1f} MiB "
          f"{[round(v / 2**20, 1) for v in sorted(mem.values(), reverse=True)]}, status wasm_memory_bytes "
          f"{status_mem if status_mem is not None else 'n/a'}, Envoy RSS {row['rss'] / 2**20:.0f} MiB", flush=True)
    return row


def status_mem_total(v) -> float | None:
    """`wasm_memory_bytes` as a number: a number as it is, an object (e.g.
    per VM) as the sum of its numbers, anything else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, dict):
        nums = [x for x in v.values() if isinstance(x, (int, float)) and not isinstance(x, bool)]
        return float(sum(nums)) if nums else None
    return None


def fmt_status_mem(v) -> str:
    total = status_mem_total(v)
    if total is None:
        return "n/a" if v is None else str(v)[:40]
    return f"{total / 2**20:.2f} MiB"


def soak(args, wasm: Path, label: str) -> tuple[list[dict], list[int]]:
    """One soak on a fresh etcd and Envoy with module `wasm`: its checkpoint
    rows (printed as they come, then as a table with the target)."""
    marks = checkpoints_for(args.updates)
    names = [f"s{i:03d}" for i in range(args.upstreams)]
    model = Model(names, args.members, args.seed, args.drift)
    print(f"soak{label}: {args.updates} updates, {args.upstreams} upstreams x {args.members} members "
          f"({'sizes drift' if args.drift else 'sizes kept'}), {args.batch} per "
          f"etcd transaction, checked every {args.check_every}; module {wasm}; {sk.machine_load()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="upsync-soak-"))
    reg = sk.Registry(work / "etcd").start()
    envoy = None
    rows = []
    try:
        reg.put_many([(sk.prefix_of(u) + a, sk.member_value(w)) for u, ms in model.state.items() for a, w in ms.items()])
        envoy = sk.ScaleEnvoy(work / "envoy", wasm, reg.port, names, poller_fields={"interval_ms": args.interval_ms},
                              **sk.stack_kwargs(args))
        sk.start_envoy(envoy, timeout=300)
        harness.wait_until(lambda: in_sync(envoy, model), 120, 0.2, "the starting members")
        rows.append(snapshot(envoy, model, 0, 0.0))
        t0 = time.monotonic()
        done, waits = 0, []
        while done < args.updates:
            puts, deletes = model.batch(args.batch)
            reg.txn(puts, deletes)
            done += args.batch
            if done % args.check_every == 0:
                w0 = time.monotonic()
                harness.wait_until(lambda: in_sync(envoy, model), 120, 0.05, f"the plugin to show update {done}")
                waits.append(time.monotonic() - w0)
                if done in marks:
                    rows.append(snapshot(envoy, model, done, time.monotonic() - t0))
        elapsed = time.monotonic() - t0
    finally:
        if envoy is not None:
            envoy.stop()
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)

    slow = [w for w in waits if w * 1000 >= args.interval_ms / 2]
    print(f"\nsoak{label}: {args.updates} updates in {elapsed:.0f} s ({args.updates / elapsed:.0f}/s; {sum(waits):.0f} s "
          f"of it waiting at {len(waits)} checks for the plugin to catch up: p50 {sk.ms(sk.quantile(waits, 50))}, "
          f"max {sk.ms(max(waits))}); {sk.machine_load()}")
    print(f"  {len(slow)} of {len(waits)} checks waited >= half the safety poll ({args.interval_ms} ms): changes the "
          "watch-triggered reads missed, caught by the safety poll")
    print(f"{'updates':>8} {'members':>8} {'linear MiB (sum)':>17} {'largest MiB':>12} {'status wasm_memory_bytes':>25} "
          f"{'Envoy RSS MiB':>14}")
    for r in rows:
        largest = max(r["memories"].values(), default=0)
        print(f"{r['updates']:>8} {r['members']:>8} {r['total'] / 2**20:>17.2f} {largest / 2**20:>12.2f} "
              f"{fmt_status_mem(r['status_mem']):>25} {r['rss'] / 2**20:>14.0f}")
    print("  linear memory: V8 wasm memories of the Envoy process (/proc/<pid>/maps), poller + workers + base VM")
    return rows, marks


def growth(rows: list[dict], marks: list[int]) -> dict | None:
    """From the first checkpoint (1,000 updates) to the last: each memory,
    their sum, the plugin's own figure, Envoy's RSS; None without two."""
    first = next((r for r in rows if r["updates"] == marks[0]), None)
    last = rows[-1]
    if first is None or first is last or not first["total"]:
        return None
    s0, s1 = status_mem_total(first["status_mem"]), status_mem_total(last["status_mem"])
    return {"first": first, "last": last, "total": last["total"] / first["total"] - 1,
            "status": s1 / s0 - 1 if s0 and s1 is not None else None, "rss": last["rss"] / first["rss"] - 1}


def report_target(g: dict | None, label: str) -> None:
    print(f"\nissue 10 target{label}:")
    if g is None:
        print(sk.target_line("linear memory after the last update vs the first 1,000", "-", "within 10 %", None))
        return
    first, last = g["first"], g["last"]
    each = [f"{first['memories'][k] / 2**20:.2f} -> {v / 2**20:.2f} MiB ({100 * (v / first['memories'][k] - 1):+.1f} %)"
            for k, v in sorted(last["memories"].items(), key=lambda kv: -kv[1]) if first["memories"].get(k)]
    print(f"  each wasm memory from {first['updates']:,} to {last['updates']:,} updates: {'; '.join(each)}")
    print(f"  members from {first['updates']:,} to {last['updates']:,} updates: {first['members']} -> {last['members']} "
          f"(largest upstream {first['largest']} -> {last['largest']})")
    cold = [k for k, v in last["memories"].items() if first["memories"].get(k) and v >= 1.5 * first["memories"][k]]
    if cold:
        # A worker VM answers its first EDS requests when Envoy first connects
        # to it (under load, possibly after the first checkpoint): one step to
        # its working size, the other worker's size at the first checkpoint.
        print(f"  note: {len(cold)} wasm memory(s) grew by half or more: a VM that reached its working size only "
              "after the first checkpoint (a worker's first EDS answers), not growth from the updates: see each "
              "memory above")
    print(sk.target_line(f"linear memory after {last['updates']:,} vs {first['updates']:,} updates",
                         f"{100 * g['total']:+.1f} %", "within 10 %", abs(g["total"]) <= TARGET_GROWTH))
    if g["status"] is not None:
        print(sk.target_line("same, by the plugin's own wasm_memory_bytes", f"{100 * g['status']:+.1f} %", "within 10 %",
                             abs(g["status"]) <= TARGET_GROWTH))
    print(f"  Envoy RSS over the same run: {first['rss'] / 2**20:.0f} -> {last['rss'] / 2**20:.0f} MiB "
          f"({100 * g['rss']:+.1f} %)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasm", default=str(sk.REPO / "target" / "upsync_wasm.wasm"))
    ap.add_argument("--baseline", metavar="WASM",
                    help="another module (e.g. main's build) soaked first the same way, for a before/after")
    ap.add_argument("--updates", type=int, default=100_000)
    ap.add_argument("--upstreams", type=int, default=10)
    ap.add_argument("--members", type=int, default=100, help="starting members per upstream")
    ap.add_argument("--batch", type=int, default=10, help="updates per etcd transaction (<= 100)")
    ap.add_argument("--check-every", type=int, default=1000, help="wait for the plugin every this many updates")
    ap.add_argument("--interval-ms", type=int, default=2000,
                    help="the poller's safety poll (watch on); see the note printed at the end")
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--drift", action="store_true",
                    help="let each upstream's size wander between half and twice the start (the state grows)")
    sk.add_stack_args(ap)
    args = ap.parse_args()
    if not 1 <= args.batch <= 100 or args.check_every % args.batch:
        ap.error("--batch must be 1..100 and divide --check-every")
    if any(x % args.check_every for x in checkpoints_for(args.updates)):
        ap.error(f"--check-every must divide every checkpoint {checkpoints_for(args.updates)}")
    wasm = Path(args.wasm).resolve()
    before = None
    if args.baseline:
        before = growth(*soak(args, Path(args.baseline).resolve(), " (baseline)"))
        report_target(before, " (baseline)")
        print()
    g = growth(*soak(args, wasm, ""))
    report_target(g, "")
    if before is not None and g is not None:
        poller = {}
        for name, x in (("baseline", before), ("module", g)):
            # The poller's memory: the one (of the plugin's) that moved most, told by the status endpoint.
            s = x["first"]["status_mem"], x["last"]["status_mem"]
            poller[name] = tuple(v.get("poller") if isinstance(v, dict) else None for v in s)
        print("\nbefore/after (same machine, one after the other):")
        for name, x in (("baseline", before), ("module", g)):
            p0, p1 = poller[name]
            pm = f"{p0 / 2**20:.2f} -> {p1 / 2**20:.2f} MiB" if p0 and p1 else "n/a"
            print(f"  {name:>8}: linear memory {x['first']['total'] / 2**20:.2f} -> {x['last']['total'] / 2**20:.2f} MiB "
                  f"({100 * x['total']:+.1f} %), poller VM {pm}, Envoy RSS {100 * x['rss']:+.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
