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
3. idle, over about --idle-seconds (60) after a --settle pause: Envoy's CPU
   as % of one core (/proc/<pid>/task/*/stat utime+stime: the main thread,
   the workers, the rest), EDS requests/s received by the plugin's EDS
   listener (http.upsync_eds.downstream_rq_total) and their size, registry
   requests/min (Envoy's upstream_rq_total of the etcd and etcd_grpc
   clusters; etcd's grpc_server_started_total beside it), and the whole
   machine's busy cores in the same window (others share it). The window
   is a whole number of EDS cycles (eds_hold_ms + 1.5 x refresh_delay,
   at least one): every cluster's held request ends once per cycle, and the
   holds of clusters that started together end together, so a window that
   is not a whole cycle counts a burst of EDS requests or misses it.
4. etcd watch streams open (etcd_debugging_mvcc_watch_stream_total).
5. --changes changes, each in a random upstream: a new member is put, then
   deleted; the time from the etcd write's return until Envoy's membership
   of that cluster shows it (polled every 2 ms), p50/p99/max over all adds
   and deletes.
Then a line per target of issue 10's table.

Control (on unless --no-control): the same N EDS clusters in an Envoy with
no wasm at all, their EDS served from outside Envoy by this bench (a
server that holds a current request eds_hold_ms and answers 304, as the
plugin does), idle over the same window: Envoy's own idle cost with these
clusters, REST EDS client included. Printed beside the plugin's run, and
the difference: the plugin's part (the poller on the main thread; EDS
serving and the hold's tick on the workers). --breakdown adds two quiet
runs, where no EDS request ends inside the window (the control holding
for an hour, the plugin with eds_hold_ms 60000): Envoy's cost with no EDS
traffic, and the plugin's fixed cost (ticks, the poller) without it; the
rest of each side is the cost of its EDS requests, per request.

Today's plugin accepts at most 256 upstreams: when N is refused, the run
says so and measures --fallback (200x10) instead.

Usage: python benches/scale.py --wasm target/upsync_wasm.wasm
           [--upstreams 1000] [--members 20] [--quick] [--eds-hold-ms N]
           [--no-control] [--breakdown]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import scalekit as sk
from scalekit import harness

TARGET_UPSTREAMS = 10_000
TARGET_IDLE_AT = 1000
TARGET_IDLE_CPU = 5.0
CLA_TYPE_URL = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
# The plugin's eds_hold_ms in the quiet run (--breakdown): its window ends
# inside the first hold.
QUIET_HOLD_MS = 60_000


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


# --------------------------------------------------------------------------
# idle measurement


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of Envoy's main thread, its workers and the rest."""
    out = {"main": 0.0, "workers": 0.0, "other": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:
            continue  # a thread that just ended
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        seconds = (int(fields[11]) + int(fields[12])) / sk.CLK_TCK
        group = "main" if task.name == str(pid) else "workers" if comm.startswith("wrk:") else "other"
        out[group] += seconds
    return out


def eds_cycle_seconds(hold_ms: int, refresh_delay: str) -> float:
    """From the start of one held EDS request to the next of the same
    cluster: the hold, then Envoy's refresh_delay + random(0, refresh_delay)."""
    return hold_ms / 1000 + 1.5 * sk.seconds(refresh_delay)


def cycle_window(seconds: float, cycle: float, cap: float | None = None) -> float:
    """A whole number of EDS cycles near `seconds` (at least one); with a
    cap (quiet runs: inside the first hold), `seconds` up to the cap."""
    if cap is not None:
        return min(seconds, cap)
    return max(1, round(seconds / cycle)) * cycle


def measure_idle(pid: int, window: float, eds_requests, eds_bytes=None, extra=None) -> dict:
    """Envoy's CPU per thread group over `window` seconds, as % of one core,
    with the EDS requests (and their bytes) counted by the callables."""
    load0 = sk.machine_load()
    machine = sk.MachineCpu()
    e0, b0 = eds_requests(), eds_bytes() if eds_bytes else 0
    x0 = extra() if extra else None
    c0, w0 = thread_cpu(pid), time.monotonic()
    time.sleep(window)
    c1, w1 = thread_cpu(pid), time.monotonic()
    e1, b1 = eds_requests(), eds_bytes() if eds_bytes else 0
    x1 = extra() if extra else None
    dt = w1 - w0
    cpu = {k: 100 * (c1[k] - c0[k]) / dt for k in c0}
    requests = e1 - e0
    return {
        "cpu": sum(cpu.values()), "by_thread": cpu, "window": dt, "eds_rps": requests / dt,
        "eds_bytes": (b1 - b0) / requests if eds_bytes and requests else None,
        "machine_busy": machine.busy_cores(), "load": f"{load0} before, {sk.machine_load()} after",
        "extra": (x0, x1, dt),
    }


def cpu_line(r: dict) -> str:
    t = r["by_thread"]
    return (f"{r['cpu']:.1f} % of a core (main thread {t['main']:.2f}, workers {t['workers']:.2f}, "
            f"other {t['other']:.2f}), {r['eds_rps']:.1f} EDS req/s over {r['window']:.0f} s")


# --------------------------------------------------------------------------
# the control: the same EDS clusters, served from outside Envoy


CONTROL_TEMPLATE = """# scale.py's control: the plugin's EDS clusters, no wasm; their EDS is
# served by the bench (ControlEds) on EDS_PORT. The bootstrap settings of
# benches/envoy-scale-bench.yaml (the shipped ones), except that the EDS
# cluster speaks HTTP/1.1: ControlEds has no HTTP/2.
node: {id: scale-bench, cluster: scale-bench}
stats_flush_interval: 60s
admin:
  address:
    socket_address: {address: 127.0.0.1, port_value: ${ADMIN_PORT}}
static_resources:
  clusters:
${EDS_CLUSTERS}
  - name: upsync_eds
    type: STATIC
    connect_timeout: 0.25s
    circuit_breakers:
      thresholds:
      - max_requests: 20000
        max_pending_requests: 20000
        max_connections: 20000
    load_assignment:
      cluster_name: upsync_eds
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {address: 127.0.0.1, port_value: ${EDS_PORT}}
"""

VERSION_RE = re.compile(rb'"version_info":"([^"]*)"')
NAME_RE = re.compile(rb'"resource_names":\["([^"]*)"')


class ControlEds:
    """REST EDS outside Envoy, as the plugin answers it: every cluster gets
    `members`, version "1"; a request already at version "1" is held
    `hold_s`, then answered 304. asyncio on a thread of its own."""

    def __init__(self, port: int, members: list[str], hold_s: float):
        self.port, self.hold_s = port, hold_s
        self.endpoints = [{"endpoint": {"address": {"socket_address": {
            "address": a.rsplit(":", 1)[0], "port_value": int(a.rsplit(":", 1)[1])}}}} for a in members]
        self.requests = 0
        self.bytes = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()

    def start(self) -> "ControlEds":
        self.thread = threading.Thread(target=self._run, name="control-eds", daemon=True)
        self.thread.start()
        if not self._ready.wait(10) or self.error is not None:
            raise RuntimeError(f"control EDS server did not start: {self.error!r}")
        return self

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.server = self.loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", self.port, backlog=4096))
        except OSError as e:
            self.error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.close()

    def stop(self) -> None:
        if self.loop is None or self.thread is None or not self.loop.is_running():
            return

        async def shutdown():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    def _answer(self, body: bytes) -> bytes | None:
        """The 200 answer, or None for a request to hold (already at "1")."""
        v, n = VERSION_RE.search(body), NAME_RE.search(body)
        if v is None or n is None:  # not Envoy's compact JSON: parse it
            req = json.loads(body)
            version, name = req.get("version_info", ""), (req.get("resource_names") or [""])[0]
        else:
            version, name = v.group(1).decode(), n.group(1).decode()
        if version == "1":
            return None
        return json.dumps({"version_info": "1", "type_url": CLA_TYPE_URL, "resources": [
            {"@type": CLA_TYPE_URL, "cluster_name": name, "endpoints": [{"lb_endpoints": self.endpoints}]}]
        }).encode()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                body = await reader.readexactly(int(m.group(1))) if m else b""
                self.requests += 1
                self.bytes += len(head) + len(body)
                out = self._answer(body)
                if out is None:
                    await asyncio.sleep(self.hold_s)
                    writer.write(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(out), out))
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.CancelledError, ConnectionError,
                ValueError):
            pass
        finally:
            writer.close()


def control_run(work: Path, wasm: Path, names: list[str], m: int, hold_ms: int, window: float, args,
                request_timeout: str | None = None) -> dict:
    """Envoy with the same EDS clusters and no wasm, EDS held `hold_ms` by ControlEds."""
    template = work / "control.yaml"
    template.write_text(CONTROL_TEMPLATE)
    timings = {"request_timeout": request_timeout or args.request_timeout}
    envoy = sk.ScaleEnvoy(work / f"control-{hold_ms}", wasm, harness.free_ports(1)[0], names,
                          eds_timings=timings, template=template)
    server = ControlEds(envoy.eds_port, [sk.member_addr(j) for j in range(m)], hold_ms / 1000).start()
    try:
        sk.start_envoy(envoy, timeout=600)
        sk.wait_membership(envoy, {u: m for u in names}, timeout=600)
        time.sleep(args.settle)
        return measure_idle(envoy.pid, window, lambda: server.requests, lambda: server.bytes)
    finally:
        envoy.stop()
        server.stop()


# --------------------------------------------------------------------------
# the plugin


def run(work: Path, wasm: Path, n: int, m: int, args, hold_ms: int, window: float, changes: bool = True,
        request_timeout: str | None = None) -> dict:
    names = [f"u{i:04d}" for i in range(n)]
    reg = sk.Registry(work / f"etcd-{n}x{m}-{hold_ms}").start()
    envoy = None
    try:
        items = [(sk.prefix_of(u) + sk.member_addr(j), sk.member_value()) for u in names for j in range(m)]
        reg.put_many(items)
        envoy = sk.ScaleEnvoy(work / f"envoy-{n}x{m}-{hold_ms}", wasm, reg.port, names,
                              eds_hold_ms=hold_ms, poller_fields={"interval_ms": args.interval_ms},
                              eds_timings={"request_timeout": request_timeout or args.request_timeout},
                              **sk.stack_kwargs(args))
        t0 = time.monotonic()
        ready = sk.start_envoy(envoy, timeout=600)
        all_in = sk.wait_membership(envoy, {u: m for u in names}, timeout=600) - t0
        if not changes:
            time.sleep(args.settle)
            return measure_idle(envoy.pid, window, envoy.eds_requests)
        print(f"  {n} x {m}: /ready after {ready:.1f} s, every member in Envoy after {all_in:.1f} s", flush=True)

        time.sleep(args.settle)
        etcd_before = sk.etcd_requests(reg.metrics())
        idle = measure_idle(envoy.pid, window, envoy.eds_requests,
                            lambda: envoy.stat("http.upsync_eds.downstream_cx_rx_bytes_total"),
                            envoy.registry_requests)
        etcd_m = reg.metrics()
        r0, r1, dt = idle["extra"]
        idle["registry_rpm"] = (r1 - r0) * 60 / dt
        idle["etcd_rpm"] = (sk.etcd_requests(etcd_m) - etcd_before) * 60 / dt
        streams = sk.watch_streams(etcd_m)
        print(f"  idle: Envoy CPU {cpu_line(idle)}; {idle['registry_rpm']:.0f} registry req/min "
              f"(etcd saw {idle['etcd_rpm']:.0f}/min); machine busy {idle['machine_busy']:.2f} of 2 cores; "
              f"watch streams at etcd {streams['streams']}", flush=True)

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
            "n": n, "m": m, "names": names, "ready": ready, "all_in": all_in, "idle": idle, "streams": streams,
            "delays": delays, "adds": adds, "rss": envoy.rss_bytes(), "memories": memories,
            "status_mem": status_mem,
        }
    finally:
        if envoy is not None:
            envoy.stop()
        reg.stop()


def print_breakdown(plugin: dict, control: dict | None, quiet: dict | None, plugin_quiet: dict | None) -> None:
    """The plugin's run beside the controls, and what each part costs."""
    if control is None:
        return
    print("\nidle CPU, % of one core (same clusters, same window length):")
    print(f"  with the plugin                       {cpu_line(plugin)}")
    print(f"  control: no wasm, EDS from outside    {cpu_line(control)}")
    if control["eds_bytes"]:
        print(f"    (each EDS request is {control['eds_bytes'] / 1024:.0f} KiB: Envoy sends its whole node, "
              "extensions list included, in every REST request)")
    diff = {k: plugin["by_thread"][k] - control["by_thread"][k] for k in plugin["by_thread"]}
    print(f"  the plugin's part (difference)        {plugin['cpu'] - control['cpu']:.1f} % (main thread "
          f"{diff['main']:.2f}, workers {diff['workers']:.2f}, other {diff['other']:.2f})")
    if quiet is None or plugin_quiet is None:
        return
    print(f"  control, no EDS request in the window {cpu_line(quiet)}")
    print(f"  plugin, no EDS request in the window  {cpu_line(plugin_quiet)}")
    rate = control["eds_rps"]
    if rate > 0:
        client = (control["cpu"] - quiet["cpu"]) * 10 / rate  # % of a core per req/s -> ms per request
        print(f"  Envoy's REST EDS client: {control['cpu'] - quiet['cpu']:.1f} % at {rate:.1f} req/s, "
              f"{client:.2f} ms per request (main thread)")
    fixed = plugin_quiet["cpu"] - quiet["cpu"]
    print(f"  the plugin's fixed idle cost (ticks, poller, no EDS traffic): {fixed:.1f} % (main thread "
          f"{plugin_quiet['by_thread']['main'] - quiet['by_thread']['main']:.2f}, workers "
          f"{plugin_quiet['by_thread']['workers'] - quiet['by_thread']['workers']:.2f})")
    serving = plugin["by_thread"]["workers"] - plugin_quiet["by_thread"]["workers"]
    if plugin["eds_rps"] > 0:
        print(f"  serving EDS on the workers (HTTP, filter, parse, 304): {serving:.1f} % at "
              f"{plugin['eds_rps']:.1f} req/s, {serving * 10 / plugin['eds_rps']:.2f} ms per request")


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
    ap.add_argument("--no-control", dest="control", action="store_false",
                    help="skip the control (the same EDS clusters in an Envoy with no wasm)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also the two quiet runs (no EDS request in the window): Envoy's own base cost and the "
                         "plugin's fixed cost, and per-request costs from them")
    sk.add_stack_args(ap)
    ap.add_argument("--quick", action="store_true", help="idle 20 s (one EDS cycle at least), 20 changes, settle 3 s")
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
    cycle = eds_cycle_seconds(hold, shipped["refresh_delay"])
    window = cycle_window(args.idle_seconds, cycle) if hold > 0 else args.idle_seconds
    # Quiet runs: the window ends inside the first hold of QUIET_HOLD_MS.
    quiet_window = cycle_window(window, cycle, cap=QUIET_HOLD_MS / 1000 - args.settle - 5)
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
        print(f"  idle window {window:.1f} s ({window / cycle:.0f} EDS cycle(s) of {cycle:.2f} s)"
              if hold > 0 else f"  idle window {window:.1f} s", flush=True)
        try:
            r = run(work, wasm, *size, args, hold, window)
        except sk.ConfigRefused as e:
            if not args.fallback:
                raise
            fn, fm = (int(x) for x in args.fallback.split("x"))
            note = f"{args.upstreams} upstreams refused ({e}); measured {fn} x {fm}"
            print(f"  {note}", flush=True)
            r = run(work, wasm, fn, fm, args, hold, window)
        control = quiet = plugin_quiet = None
        if args.control:
            control = control_run(work, wasm, r["names"], r["m"], hold, window, args)
            print(f"  control (no wasm, EDS held {hold} ms from outside Envoy): {cpu_line(control)}", flush=True)
        if args.control and args.breakdown:
            quiet = control_run(work, wasm, r["names"], r["m"], 3_600_000, quiet_window, args, "3605s")
            print(f"  control, quiet (EDS held an hour): {cpu_line(quiet)}", flush=True)
            plugin_quiet = run(work, wasm, r["n"], r["m"], args, QUIET_HOLD_MS, quiet_window, changes=False,
                               request_timeout=f"{QUIET_HOLD_MS // 1000 + 5}s")
            print(f"  plugin, quiet (eds_hold_ms {QUIET_HOLD_MS}): {cpu_line(plugin_quiet)}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n, m, idle = r["n"], r["m"], r["idle"]
    print(f"\nscale: {n} upstreams x {m} members on one Envoy (--concurrency 2), etcd watch on, "
          f"eds_hold_ms {hold}, refresh_delay {shipped['refresh_delay']}, request_timeout {timeout}")
    if note:
        print(f"  note: {note}")
    print(f"  time until every member is in Envoy   {r['all_in']:.1f} s (from Envoy's start; /ready at {r['ready']:.1f} s)")
    t = idle["by_thread"]
    print(f"  idle Envoy CPU over {idle['window']:.0f} s             {idle['cpu']:.1f} % of a core (main thread "
          f"{t['main']:.2f}, workers {t['workers']:.2f}, other {t['other']:.2f})")
    size = f", {idle['eds_bytes'] / 1024:.0f} KiB each" if idle["eds_bytes"] else ""
    print(f"  EDS requests at idle                  {idle['eds_rps']:.1f} /s{size}")
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
    print_breakdown(idle, control, quiet, plugin_quiet)

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
