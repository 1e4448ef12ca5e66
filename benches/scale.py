"""Many upstreams on one Envoy (issue 10): N upstreams x M members, real etcd
3.4, Envoy --concurrency 2, the plugin's etcd gRPC watch on, and the shipped
EDS settings (envoy/production.yaml's EDS filter configuration, eds_hold_ms
included, and its EDS cluster timings; one EDS cluster per upstream written
by scripts/gen_envoy_clusters.py). See benches/scalekit.py for where every
figure is read.

Steps and what is printed:
1. accepted: Envoy started with a poller configuration of --accept upstreams
   (10,000; no registry behind it): accepted when Envoy runs and the
   plugin's /upsync/status lists them all.
2. N x M members are written to etcd, then Envoy starts: seconds until
   /ready and until every member of every upstream is in Envoy
   (cluster.<u>.membership_total of every cluster).
3. idle, over --idle-seconds (60) after a --settle pause: Envoy's CPU as %
   of one core (/proc/<pid>/stat utime+stime), EDS requests/s received by
   the plugin's EDS listener (http.upsync_eds.downstream_rq_total),
   registry requests/min (Envoy's upstream_rq_total of the etcd and
   etcd_grpc clusters; etcd's grpc_server_started_total beside it), and the
   whole machine's busy cores in the same window (others share it).
4. etcd watch streams open (etcd_debugging_mvcc_watch_stream_total).
5. --changes changes, each in a random upstream: a new member is put, then
   deleted; the time from the etcd write's return until Envoy's membership
   of that cluster shows it (polled every 2 ms), p50/p99/max over all adds
   and deletes.
Then a line per target of issue 10's table.

Today's plugin accepts at most 256 upstreams: when N is refused, the run
says so and measures --fallback (200x10) instead.

Usage: python benches/scale.py --wasm target/upsync_wasm.wasm
           [--upstreams 1000] [--members 20] [--quick] [--eds-hold-ms N]
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import scalekit as sk
from scalekit import harness

TARGET_UPSTREAMS = 10_000
TARGET_IDLE_AT = 1000
TARGET_IDLE_CPU = 5.0


def accept_check(work: Path, wasm: Path, n: int) -> tuple[bool, str]:
    """Does the poller take a configuration of n upstreams?"""
    names = [f"a{i:05d}" for i in range(n)]
    closed = harness.free_ports(1)[0]  # no registry: only the configuration matters
    envoy = sk.ScaleEnvoy(work / "accept", wasm, closed, names)
    envoy.values["EDS_CLUSTERS"] = ""
    try:
        sk.start_envoy(envoy, timeout=300)
        listed = harness.wait_until(lambda: len(envoy.status_json().get("upstreams", [])) or None,
                                    60, 0.5, "the status endpoint")
        return listed == n, f"{listed} listed by /upsync/status"
    except sk.ConfigRefused as e:
        return False, str(e)
    except (harness.ProcessExited, RuntimeError, TimeoutError) as e:
        return False, f"Envoy did not run: {str(e)[:300]}"
    finally:
        envoy.stop()


def run(work: Path, wasm: Path, n: int, m: int, args) -> dict:
    names = [f"u{i:04d}" for i in range(n)]
    reg = sk.Registry(work / f"etcd-{n}x{m}").start()
    envoy = None
    try:
        items = [(sk.prefix_of(u) + sk.member_addr(j), sk.member_value()) for u in names for j in range(m)]
        reg.put_many(items)
        envoy = sk.ScaleEnvoy(work / f"envoy-{n}x{m}", wasm, reg.port, names,
                              eds_hold_ms=args.eds_hold_ms, poller_fields={"interval_ms": args.interval_ms},
                              eds_timings={"request_timeout": args.request_timeout}, **sk.stack_kwargs(args))
        t0 = time.monotonic()
        ready = sk.start_envoy(envoy, timeout=600)
        all_in = sk.wait_membership(envoy, {u: m for u in names}, timeout=600) - t0
        print(f"  {n} x {m}: /ready after {ready:.1f} s, every member in Envoy after {all_in:.1f} s", flush=True)

        time.sleep(args.settle)
        load0 = sk.machine_load()
        eds0, reg0, etcd0 = envoy.eds_requests(), envoy.registry_requests(), sk.etcd_requests(reg.metrics())
        machine = sk.MachineCpu()
        c0, w0 = envoy.cpu_seconds(), time.monotonic()
        time.sleep(args.idle_seconds)
        c1, w1 = envoy.cpu_seconds(), time.monotonic()
        busy = machine.busy_cores()
        eds1, reg1, etcd_m = envoy.eds_requests(), envoy.registry_requests(), reg.metrics()
        window = w1 - w0
        idle = {
            "cpu": 100 * (c1 - c0) / window,
            "eds_rps": (eds1 - eds0) / window,
            "registry_rpm": (reg1 - reg0) * 60 / window,
            "etcd_rpm": (sk.etcd_requests(etcd_m) - etcd0) * 60 / window,
            "window": window,
            "machine_busy": busy,
            "load": f"{load0} before, {sk.machine_load()} after",
        }
        streams = sk.watch_streams(etcd_m)
        print(f"  idle {window:.0f} s: Envoy CPU {idle['cpu']:.1f} % of a core, {idle['eds_rps']:.0f} EDS req/s, "
              f"{idle['registry_rpm']:.0f} registry req/min (etcd saw {idle['etcd_rpm']:.0f}/min); "
              f"machine busy {busy:.2f} of 2 cores; watch streams at etcd {streams['streams']}", flush=True)

        rng = random.Random(args.seed)
        delays, adds = [], []
        for i in range(args.changes):
            u = rng.choice(names)
            key = sk.prefix_of(u) + sk.member_addr(m + i)
            d = sk.time_change(envoy, lambda: reg.put(key, sk.member_value()), u, m + 1)
            adds.append(d)
            delays.append(d)
            delays.append(sk.time_change(envoy, lambda: reg.delete(key), u, m))
        # One spot check that membership means the right members.
        hosts = envoy.cluster_hosts(u)
        expected = {sk.member_addr(j) for j in range(m)}
        if hosts != expected:
            raise RuntimeError(f"{u}: Envoy holds {len(hosts)} hosts, not the {m} registered ones")
        print(f"  {args.changes} changes (add + delete each, random upstream): p50 {sk.ms(sk.quantile(delays, 50))}, "
              f"p99 {sk.ms(sk.quantile(delays, 99))}, max {sk.ms(max(delays))}", flush=True)
        memories = envoy.wasm_memories()
        status_mem = envoy.status_json().get("wasm_memory_bytes")
        return {
            "n": n, "m": m, "ready": ready, "all_in": all_in, "idle": idle, "streams": streams,
            "delays": delays, "adds": adds, "rss": envoy.rss_bytes(), "memories": memories,
            "status_mem": status_mem,
        }
    finally:
        if envoy is not None:
            envoy.stop()
        reg.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasm", default=str(sk.REPO / "target" / "upsync_wasm.wasm"))
    ap.add_argument("--upstreams", type=int, default=1000)
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--fallback", default="200x10", help="size measured when --upstreams is refused ('' = none)")
    ap.add_argument("--accept", type=int, default=TARGET_UPSTREAMS, help="upstream count for the accept check (0: skip)")
    ap.add_argument("--idle-seconds", type=float, help="idle window (default 60; --quick 20)")
    ap.add_argument("--settle", type=float, help="pause between start-up and the idle window (default 5; --quick 3)")
    ap.add_argument("--changes", type=int, help="changes timed (default 30; --quick 20)")
    ap.add_argument("--interval-ms", type=int, default=sk.POLLER_FIELDS["interval_ms"],
                    help="poll interval: with the watch on, the safety net")
    ap.add_argument("--eds-hold-ms", type=int, help="override production.yaml's eds_hold_ms")
    ap.add_argument("--request-timeout", help="override production.yaml's EDS request_timeout (e.g. 35s); "
                    "default: production.yaml's, or eds_hold_ms + 5 s when --eds-hold-ms is not below it")
    ap.add_argument("--seed", type=int, default=10)
    sk.add_stack_args(ap)
    ap.add_argument("--quick", action="store_true", help="idle 20 s, 20 changes, settle 3 s")
    args = ap.parse_args()
    for name, full, quick in (("idle_seconds", 60.0, 20.0), ("changes", 30, 20), ("settle", 5.0, 3.0)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    wasm = Path(args.wasm).resolve()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    shipped = sk.gen.shipped_eds_settings()
    hold = args.eds_hold_ms if args.eds_hold_ms is not None else shipped["eds_hold_ms"]
    if args.request_timeout is None and args.eds_hold_ms is not None \
            and args.eds_hold_ms >= 1000 * sk.seconds(shipped["request_timeout"]):
        # Envoy would give up every held request first: a held request must
        # end before the EDS request_timeout.
        args.request_timeout = f"{args.eds_hold_ms / 1000 + 5:g}s"
    timeout = args.request_timeout or shipped["request_timeout"]
    print(f"scale bench: EDS settings from envoy/production.yaml: refresh_delay {shipped['refresh_delay']}, "
          f"request_timeout {timeout}{' (overridden)' if args.request_timeout else ''}, "
          f"initial_fetch_timeout {shipped['initial_fetch_timeout']}, "
          f"eds_hold_ms {hold}{' (overridden)' if args.eds_hold_ms is not None else ''}; watch on, "
          f"safety poll every {args.interval_ms} ms; {sk.machine_load()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="upsync-scale-"))
    try:
        accepted, why = (None, "skipped") if args.accept <= 0 else accept_check(work, wasm, args.accept)
        print(f"  config of {args.accept} upstreams: {'accepted' if accepted else 'refused'} ({why})", flush=True)
        size, note = (args.upstreams, args.members), ""
        try:
            r = run(work, wasm, *size, args)
        except sk.ConfigRefused as e:
            if not args.fallback:
                raise
            fn, fm = (int(x) for x in args.fallback.split("x"))
            note = f"{args.upstreams} upstreams refused ({e}); measured {fn} x {fm}"
            print(f"  {note}", flush=True)
            r = run(work, wasm, fn, fm, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n, m, idle = r["n"], r["m"], r["idle"]
    print(f"\nscale: {n} upstreams x {m} members on one Envoy (--concurrency 2), etcd watch on, "
          f"eds_hold_ms {hold}, refresh_delay {shipped['refresh_delay']}, request_timeout {timeout}")
    if note:
        print(f"  note: {note}")
    print(f"  time until every member is in Envoy   {r['all_in']:.1f} s (from Envoy's start; /ready at {r['ready']:.1f} s)")
    print(f"  idle Envoy CPU over {idle['window']:.0f} s             {idle['cpu']:.1f} % of a core")
    print(f"  EDS requests at idle                  {idle['eds_rps']:.0f} /s")
    print(f"  registry requests at idle             {idle['registry_rpm']:.0f} /min (Envoy's etcd + etcd_grpc "
          f"upstream_rq_total); etcd counted {idle['etcd_rpm']:.0f} /min (grpc_server_started_total)")
    if idle["window"] * 1000 < 2 * args.interval_ms:
        print(f"    (a window shorter than two safety polls of {args.interval_ms} ms: the registry rate is "
              "not representative)")
    s = r["streams"]
    print(f"  etcd watch streams open               {s['streams']} (watchers {s['watchers']}, "
          f"gRPC Watch calls open {s['grpc_watch_open']})")
    d, a = r["delays"], r["adds"]
    print(f"  change -> Envoy membership            p50 {sk.ms(sk.quantile(d, 50))}, p99 {sk.ms(sk.quantile(d, 99))}, "
          f"max {sk.ms(max(d))} over {len(d)} changes ({len(a)} adds: p50 {sk.ms(sk.quantile(a, 50))}); "
          f"{sk.poll_cost()}")
    mem = sorted(r["memories"].values(), reverse=True)
    print(f"  Envoy RSS {r['rss'] / 2**20:.0f} MiB; wasm linear memories {[f'{x / 2**20:.1f} MiB' for x in mem]}; "
          f"status wasm_memory_bytes {r['status_mem'] if r['status_mem'] is not None else 'n/a'}")
    print(f"  machine during the idle window: {idle['machine_busy']:.2f} of 2 cores busy; {idle['load']}")

    print("\nissue 10 targets:")
    accept_value = "skipped" if accepted is None else f"{args.accept}: {'yes' if accepted else 'no'}"
    print(sk.target_line("upstreams accepted by the config", accept_value,
                         f"{TARGET_UPSTREAMS:,}", None if accepted is None else bool(accepted) and args.accept >= TARGET_UPSTREAMS))
    cpu_met = idle["cpu"] < TARGET_IDLE_CPU
    if n < TARGET_IDLE_AT:
        cpu_met = False if not cpu_met else None
    print(sk.target_line(f"idle Envoy CPU, {n} x {m}, eds_hold_ms {hold}", f"{idle['cpu']:.1f} % of a core",
                         f"< {TARGET_IDLE_CPU:.0f} % at {TARGET_IDLE_AT:,} upstreams", cpu_met,
                         "" if n >= TARGET_IDLE_AT else f"measured at {n} upstreams"))
    print(sk.target_line(f"etcd Watch streams for {n} etcd upstreams", str(s["streams"]), "1", s["streams"] <= 1))
    print(sk.target_line("change -> Envoy membership, random upstream",
                         f"p99 {sk.ms(sk.quantile(d, 99))}", "p99 < 100 ms (issue 4)", sk.quantile(d, 99) < 0.1,
                         "no target in issue 10's table"))
    print(sk.target_line("one upstream of 10,000 members", "see big_service.py", "p99 < 100 ms", None))
    print(sk.target_line("nginx: idle, upstreams per proxy_wasm directive", "-", "beat upsync; 10,000", None,
                         "nginx bench, not this one"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
