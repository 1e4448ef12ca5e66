"""One big service (issue 10): one upstream of 10,000 members (and 1,000 for
comparison) on one Envoy (--concurrency 2), real etcd 3.4, the plugin's
etcd gRPC watch on, the shipped EDS settings (as benches/scale.py, see
benches/scalekit.py).

For each size: the time from Envoy's start until every member is in Envoy,
then --changes one-member changes (a new member put, then deleted: two
changes each), each timed from the etcd write's return until Envoy has
applied it; p50/p99/max over all of them. Target: p99 < 100 ms at 10,000
members. etcd's range count (etcd_debugging_mvcc_range_total) over the
changes says how many reads they cost (the plugin applies a watch event
as a change; a module that reads on every event shows about two per
change: a probe and a full read).

How "applied" is seen (--observe; the default, update-time, is exact and
cheap): Envoy applies an EDS answer on its main thread, the thread that
also answers the admin API, so asking it often delays what is measured.
- update-time: Envoy's own gauge cluster.<name>.update_time (wall clock,
  ms), set on the main thread right after the answer was applied (the
  membership gauge is set inside that update); the membership gauge is
  polled every 20 ms only to know when to read it.
- stats: the first 2 ms poll of cluster.<name>.membership_total
  (/stats?filter=..., ~1 ms of the main thread each) that shows it.
- clusters: the first 2 ms poll of the admin /clusters text that shows
  the member (10,000 hosts of text per poll: the measurement then
  inflates itself; only to show the difference).
Several, comma-separated, are run one after the other.

Each change is also split in two, from an access log on the plugin's EDS
listener: "plugin" from the write's return until the plugin's answer
was sent (the watch event, the snapshot published, the held request
answered), "Envoy" from then until update_time. And the CPU each change
cost (/proc/<pid>/task/<tid>/schedstat, from before the write until 50 ms
after it was applied), which the machine's load hardly moves: Envoy's main
thread (the poller's watch event and publish, Envoy's EDS update, the
admin polls) and the workers (the held EDS request answered, the host sets).

--envoy-floor ROUNDS: Envoy alone, without the plugin: a Python REST EDS
server answers Envoy's held request with the answer the module served at
each size (captured from its EDS listener, one member added or removed per
change), and the time from the answer written to update_time and the CPU
of Envoy's main thread per update (/proc/<pid>/task/<pid>/schedstat) are
taken; with --baseline-*, the baseline's answer too, interleaved round by
round. This is Envoy's floor for that answer: no plugin can be faster.

--baseline-wasm: the same runs with another module first (e.g. the one
built from the commit before watch events were applied as changes), in
the same run, and the ratios. --baseline-rev REV builds that module from
a commit of this repository (git archive, its own target dir; minutes).

Usage: python benches/big_service.py --wasm target/upsync_wasm.wasm [--sizes 1000,10000] [--changes 20]
       [--observe update-time[,stats,clusters]] [--envoy-floor 3]
       [--baseline-wasm OLD.wasm | --baseline-rev REV]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import scalekit as sk

NAME = "big"
TARGET_SIZE = 10_000
TARGET_P99 = 0.100
OBSERVERS = ("update-time", "stats", "clusters")
# One line per answer of the plugin's EDS listener: when it ended (start + duration).
ACCESS_FORMAT = "EDS %START_TIME(%s.%6f)% %DURATION% %RESPONSE_CODE% %BYTES_SENT%\n"
EDS_PATH = "/v3/discovery:endpoints"
# How long each admin poll took, per observer (Envoy's main thread was busy that long).
POLL_SECONDS: dict[str, list[float]] = {}


# --------------------------------------------------------------------------
# seeing a change in Envoy


def with_eds_access_log(work: Path, log: Path) -> Path | None:
    """benches/envoy-scale-bench.yaml with a file access log on the plugin's
    EDS listener (None when the template no longer has the anchor)."""
    text = sk.TEMPLATE.read_text()
    anchor = "          stat_prefix: upsync_eds\n"
    if text.count(anchor) != 1:
        return None
    block = (
        anchor
        + "          access_log:\n"
        + "          - name: envoy.access_loggers.file\n"
        + "            typed_config:\n"
        + '              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n'
        + f"              path: {log}\n"
        + "              log_format:\n"
        + "                text_format_source:\n"
        + f"                  inline_string: {json.dumps(ACCESS_FORMAT)}\n"
    )
    out = work / "envoy-scale-bench-eds-log.yaml"
    out.write_text(text.replace(anchor, block))
    return out


def answers_sent(log: Path) -> list[float]:
    """When each 200 answer of the EDS listener ended (wall clock, s)."""
    out = []
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) == 5 and parts[0] == "EDS" and parts[3] == "200" and parts[2].isdigit():
            out.append(float(parts[1]) + int(parts[2]) / 1000)
    return sorted(out)


def applied_at(envoy: sk.ScaleEnvoy, observer: str, expect: int, t_write: float, timeout: float = 30.0) -> float:
    """Wall-clock time at which Envoy had applied the change (membership of
    NAME == expect), as `observer` sees it (module docstring)."""
    deadline = time.monotonic() + timeout
    polls = POLL_SECONDS.setdefault(observer, [])
    while True:
        p0 = time.monotonic()
        seen = envoy.cluster_members(NAME) if observer != "clusters" else len(envoy.cluster_hosts(NAME))
        polls.append(time.monotonic() - p0)
        if seen == expect:
            if observer == "update-time":
                return envoy.stat(f"cluster.{NAME}.update_time") / 1000
            return time.time()
        pause = 0.02 if observer == "update-time" else 0.002
        if time.monotonic() > deadline:
            raise TimeoutError(f"{NAME}: membership not {expect} {timeout:.0f}s after the write ({observer})")
        time.sleep(pause)


def fetch_answer(envoy: sk.ScaleEnvoy) -> bytes:
    """The plugin's whole EDS answer for NAME, as Envoy gets it."""
    req = json.dumps({"version_info": "", "node": {"id": "bench", "cluster": "bench"}, "resource_names": [NAME],
                      "type_url": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"}).encode()
    r = urllib.request.Request(f"http://127.0.0.1:{envoy.eds_port}{EDS_PATH}", data=req, method="POST",
                               headers={"content-type": "application/json"})
    with urllib.request.urlopen(r, timeout=10) as resp:
        return resp.read()


def main_thread_cpu(pid: int) -> float:
    """Seconds on CPU of Envoy's main thread (its tid is the pid)."""
    with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def worker_cpu(pid: int) -> float:
    """Seconds on CPU of Envoy's worker threads (named wrk:worker_N)."""
    total = 0.0
    for tid in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (tid / "comm").read_text().startswith("wrk:"):
                total += int((tid / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended
    return total


def run(work: Path, wasm: Path, m: int, changes: int, extra: dict, observer: str, capture: bool) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    reg = sk.Registry(work / f"etcd-{m}-{observer}").start()
    envoy = None
    access = work / f"eds-access-{m}-{observer}.log"
    extra = dict(extra)
    if "template" not in extra:
        template = with_eds_access_log(work, access)
        if template is not None:
            extra["template"] = template
    try:
        reg.put_many([(sk.prefix_of(NAME) + sk.member_addr(j), sk.member_value()) for j in range(m)])
        envoy = sk.ScaleEnvoy(work / f"envoy-{m}-{observer}", wasm, reg.port, [NAME], **extra)
        t0 = time.monotonic()
        sk.start_envoy(envoy, timeout=300)
        all_in = sk.wait_membership(envoy, {NAME: m}, timeout=300) - t0
        time.sleep(2)
        ranges = sk.metric_sum(reg.metrics(), "etcd_debugging_mvcc_range_total")
        updates = envoy.stat(f"cluster.{NAME}.update_success")
        writes, applied, main_cpu, workers_cpu = [], [], [], []
        for i in range(changes):
            key = sk.prefix_of(NAME) + sk.member_addr(m + i)
            for write, expect in ((lambda: reg.put(key, sk.member_value()), m + 1), (lambda: reg.delete(key), m)):
                c0, w0 = main_thread_cpu(envoy.pid), worker_cpu(envoy.pid)
                write()
                t_write = time.time()
                writes.append(t_write)
                applied.append(applied_at(envoy, observer, expect, t_write))
                # The workers' host sets and the next held request follow within a few ms.
                time.sleep(0.05)
                main_cpu.append(main_thread_cpu(envoy.pid) - c0)
                workers_cpu.append(worker_cpu(envoy.pid) - w0)
        updates = envoy.stat(f"cluster.{NAME}.update_success") - updates
        ranges = sk.metric_sum(reg.metrics(), "etcd_debugging_mvcc_range_total") - ranges
        hosts = envoy.cluster_hosts(NAME)
        if hosts != {sk.member_addr(j) for j in range(m)}:
            raise RuntimeError(f"Envoy holds {len(hosts)} hosts, not the {m} registered ones")
        answer = fetch_answer(envoy) if capture else b""
        mem = sorted(envoy.wasm_memories().values(), reverse=True)
        rss = envoy.rss_bytes()
    finally:
        if envoy is not None:
            envoy.stop()  # flushes the access log
        reg.stop()
    delays = [a - w for w, a in zip(writes, applied)]
    # Each change's answer: the first one sent after its write.
    sent = answers_sent(access)
    plugin, envoy_part = [], []
    for w, a in zip(writes, applied):
        ends = [e for e in sent if w - 0.001 <= e <= a + 0.002]
        if ends:
            plugin.append(ends[0] - w)
            envoy_part.append(a - ends[0])
    r = {"m": m, "all_in": all_in, "delays": delays, "rss": rss, "memories": mem, "ranges": ranges,
         "observer": observer, "plugin": plugin, "envoy": envoy_part, "updates": updates,
         "main_cpu": main_cpu, "workers_cpu": workers_cpu,
         "answer": answer}
    split = ""
    if plugin:
        split = (f"; plugin (write -> answer sent) p50 {sk.ms(sk.quantile(plugin, 50))}, Envoy (answer -> applied) "
                 f"p50 {sk.ms(sk.quantile(envoy_part, 50))} ({len(plugin)} matched)")
    print(f"  {m} members [{observer}]: all in Envoy after {all_in:.1f} s; {len(delays)} changes: "
          f"p50 {sk.ms(sk.quantile(delays, 50))}, p99 {sk.ms(sk.quantile(delays, 99))}, "
          f"max {sk.ms(max(delays))}; {ranges:.0f} etcd range reads, {updates} EDS updates{split}; CPU per change: "
          f"Envoy's main thread p50 {1000 * statistics.median(main_cpu):.1f} ms, workers "
          f"{1000 * statistics.median(workers_cpu):.1f} ms", flush=True)
    return r


# --------------------------------------------------------------------------
# Envoy alone (--envoy-floor)

FLOOR_TEMPLATE = """# Envoy alone: one REST EDS cluster whose EDS source is a Python server.
node: {id: envoy-floor, cluster: envoy-floor}
admin:
  address:
    socket_address: {address: 127.0.0.1, port_value: ${ADMIN_PORT}}
static_resources:
  clusters:
${EDS_CLUSTERS}
  - name: upsync_eds
    type: STATIC
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: upsync_eds
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {address: 127.0.0.1, port_value: ${EDS_PORT}}
"""


class FloorServer:
    """A REST EDS server holding a request whose version is current until
    the next set(), as the plugin does; records when each answer was written
    and which versions Envoy asked with."""

    def __init__(self):
        self.cv = threading.Condition()
        self.version = 0
        self.body = b""
        self.sent: dict[int, float] = {}
        self.asked: set[str] = set()
        state = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                try:
                    req = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                    have = str(req.get("version_info", ""))
                    with state.cv:
                        state.asked.add(have)
                        state.cv.notify_all()
                        deadline = time.monotonic() + 20
                        while have == str(state.version) and time.monotonic() < deadline:
                            state.cv.wait(deadline - time.monotonic())
                        version, body = state.version, state.body
                    if have == str(version):
                        self.send_response(304)
                        self.send_header("content-length", "0")
                        self.end_headers()
                        return
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    self.wfile.flush()
                    with state.cv:
                        state.sent[version] = time.time()
                except (OSError, ValueError):
                    pass  # Envoy went away (stop) or sent junk

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def __enter__(self) -> "FloorServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def set(self, body: bytes) -> int:
        with self.cv:
            self.version += 1
            self.body = body.replace(b'"version_info":"@"', f'"version_info":"{self.version}"'.encode(), 1)
            self.cv.notify_all()
            return self.version

    def wait_asked(self, version: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cv:
            while str(version) not in self.asked:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"Envoy never asked with version {version}")
                self.cv.wait(left)


def answer_variants(answer: bytes, m: int, changes: int) -> tuple[bytes, list[bytes]]:
    """The captured answer (version_info "@" for FloorServer.set) and, per
    change, the same answer with member m + i added (even changes) or
    removed again (odd): the module's own JSON shape, one member moved."""
    doc = json.loads(answer)
    cla = doc["resources"][0]
    group = next(g for g in cla["endpoints"] if g.get("priority", 0) == 0)
    eps = group["lb_endpoints"]
    first = json.dumps(eps[0], separators=(",", ":"))
    doc["version_info"] = "@"

    def text() -> bytes:
        return json.dumps(doc, separators=(",", ":")).encode()

    base = text()
    out = []
    for i in range(changes):
        host, port = sk.member_addr(m + i).rsplit(":", 1)
        new = json.loads(first)
        new["endpoint"]["address"]["socket_address"] = {"address": host, "port_value": int(port)}
        eps.append(new)
        out.append(text())
        eps.pop()
        out.append(base)
    return base, out




def floor_run(work: Path, answer: bytes, m: int, changes: int) -> dict:
    """Envoy alone applying `answer` (one member moved per update)."""
    base, bodies = answer_variants(answer, m, changes)
    work.mkdir(parents=True, exist_ok=True)
    template = work / "envoy-floor.yaml"
    template.write_text(FLOOR_TEMPLATE)
    with FloorServer() as srv:
        srv.set(base)
        envoy = sk.ScaleEnvoy(work / f"floor-{m}-{time.monotonic_ns()}", Path("/dev/null"), 1, [NAME],
                              template=template)
        envoy.values["EDS_PORT"] = srv.port
        try:
            sk.start_envoy(envoy, timeout=300)
            sk.wait_membership(envoy, {NAME: m}, timeout=300)
            time.sleep(1)
            delays, cpu = [], []
            for body in bodies:
                c0 = main_thread_cpu(envoy.pid)
                v = srv.set(body)
                # Envoy asks again with the new version once it has applied it.
                srv.wait_asked(v)
                cpu.append(main_thread_cpu(envoy.pid) - c0)
                delays.append(envoy.stat(f"cluster.{NAME}.update_time") / 1000 - srv.sent[v])
            if envoy.cluster_members(NAME) != m:
                raise RuntimeError(f"Envoy alone holds {envoy.cluster_members(NAME)} hosts, not {m}")
        finally:
            envoy.stop()
    return {"bytes": len(base), "delays": delays, "cpu": cpu}


def floor_table(rows: list[tuple[str, int, dict]]) -> None:
    print(f"\nEnvoy alone (--envoy-floor): each module's answer, one member moved per update, from a Python REST EDS "
          f"server; {sk.machine_load()}")
    print(f"{'module':>9} {'members':>8} {'answer KB':>10} {'updates':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
          f"  main-thread CPU per update: p50 / mean ms")
    for who, m, r in rows:
        d, c = r["delays"], r["cpu"]
        print(f"{who:>9} {m:>8} {r['bytes'] / 1000:>10.0f} {len(d):>8} {1000 * sk.quantile(d, 50):>7.0f} "
              f"{1000 * sk.quantile(d, 99):>7.0f} {1000 * max(d):>7.0f}  {1000 * statistics.median(c):>6.1f} / "
              f"{1000 * statistics.mean(c):.1f}")


def merge(rs: list[dict]) -> dict:
    return {"bytes": rs[0]["bytes"], "delays": [x for r in rs for x in r["delays"]],
            "cpu": [x for r in rs for x in r["cpu"]]}


# --------------------------------------------------------------------------


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
    print(f"{'members':>8} {'observer':>12} {'all in (s)':>11} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'reads':>6} "
          f"{'RSS MiB':>8}  plugin p50/p99 ms  Envoy p50/p99 ms  CPU ms main/workers  wasm memories MiB")
    for r in rows:
        d = r["delays"]
        split = "        -                 -   "
        if r["plugin"]:
            p, e = r["plugin"], r["envoy"]
            split = (f"{1000 * sk.quantile(p, 50):>9.0f} /{1000 * sk.quantile(p, 99):>4.0f}"
                     f"  {1000 * sk.quantile(e, 50):>10.0f} /{1000 * sk.quantile(e, 99):>4.0f}")
        print(f"{r['m']:>8} {r['observer']:>12} {r['all_in']:>11.1f} {1000 * sk.quantile(d, 50):>7.0f} "
              f"{1000 * sk.quantile(d, 99):>7.0f} {1000 * max(d):>7.0f} {r['ranges']:>6.0f} {r['rss'] / 2**20:>8.0f}  "
              f"{split}  {1000 * statistics.median(r['main_cpu']):>10.1f} / {1000 * statistics.median(r['workers_cpu']):<6.1f}"
              f"  {[round(x / 2**20, 1) for x in r['memories']]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasm", default=str(sk.REPO / "target" / "upsync_wasm.wasm"))
    ap.add_argument("--sizes", default="1000,10000", help="member counts of the one upstream")
    ap.add_argument("--changes", type=int, default=20, help="member adds (each followed by its delete)")
    ap.add_argument("--observe", default="update-time",
                    help=f"how a change is seen in Envoy, comma-separated, of {', '.join(OBSERVERS)}")
    ap.add_argument("--envoy-floor", type=int, default=0, metavar="ROUNDS",
                    help="also measure Envoy alone applying each module's answer, this many rounds")
    base = ap.add_mutually_exclusive_group()
    base.add_argument("--baseline-wasm", type=Path, help="another module measured first, in the same run")
    base.add_argument("--baseline-rev", help="a commit whose module is built and measured first")
    sk.add_stack_args(ap)
    args = ap.parse_args()
    observers = [o.strip() for o in args.observe.split(",") if o.strip()]
    if not observers or any(o not in OBSERVERS for o in observers):
        ap.error(f"--observe takes {', '.join(OBSERVERS)}")
    wasm = Path(args.wasm).resolve()
    shipped = sk.gen.shipped_eds_settings()
    print(f"big service bench: one upstream, watch on, eds_hold_ms {shipped['eds_hold_ms']}, refresh_delay "
          f"{shipped['refresh_delay']} (envoy/production.yaml); {sk.machine_load()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="upsync-big-"))
    sizes = [int(s) for s in args.sizes.split(",")]
    baseline_rows: list[dict] = []
    rows: list[dict] = []
    floor_rows: list[tuple[str, int, dict]] = []
    try:
        baseline = args.baseline_wasm.resolve() if args.baseline_wasm else None
        if args.baseline_rev:
            baseline = build_rev(args.baseline_rev, work)
        for m in sizes:
            for observer in observers:
                capture = args.envoy_floor > 0 and observer == observers[0]
                # Each size: the baseline, then this module, back to back (the same machine load).
                if baseline is not None:
                    print(f"baseline {baseline}:", flush=True)
                    baseline_rows.append(run(work / "baseline", baseline, m, args.changes, sk.stack_kwargs(args),
                                             observer, capture))
                    print(f"this module {wasm}:", flush=True)
                rows.append(run(work / "module", wasm, m, args.changes, sk.stack_kwargs(args), observer, capture))
            if args.envoy_floor > 0:
                answers = [("module", next(r for r in rows if r["m"] == m)["answer"])]
                if baseline_rows:
                    answers.insert(0, ("baseline", next(r for r in baseline_rows if r["m"] == m)["answer"]))
                got: dict[str, list[dict]] = {who: [] for who, _ in answers}
                for k in range(args.envoy_floor):
                    for who, answer in answers:
                        r = floor_run(work / "floor", answer, m, args.changes)
                        got[who].append(r)
                        print(f"  Envoy alone, {who}'s answer ({r['bytes'] / 1000:.0f} KB), {m} members, round "
                              f"{k + 1}: p50 {sk.ms(sk.quantile(r['delays'], 50))}, main-thread CPU p50 "
                              f"{1000 * statistics.median(r['cpu']):.1f} ms; {sk.machine_load()}", flush=True)
                floor_rows += [(who, m, merge(rs)) for who, rs in got.items()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    what = (f"one upstream, one-member change -> Envoy applied it ({2 * args.changes} changes each: "
            f"{args.changes} adds, {args.changes} deletes); reads: etcd range reads over the changes; "
            f"{sk.machine_load()}")
    if baseline_rows:
        table(f"baseline ({args.baseline_rev or args.baseline_wasm}): {what}", baseline_rows)
    table(f"this module: {what}", rows)
    for b, r in zip(baseline_rows, rows):
        ratio = {q: sk.quantile(r["delays"], q) / max(sk.quantile(b["delays"], q), 1e-9) for q in (50, 99)}
        print(f"  {r['m']} members [{r['observer']}]: p50 {ratio[50]:.2f}x, p99 {ratio[99]:.2f}x the baseline's; "
              f"reads {r['ranges']:.0f} vs {b['ranges']:.0f}")
    for observer, polls in POLL_SECONDS.items():
        print(f"  [{observer}] each admin poll took p50 {1000 * sk.quantile(polls, 50):.1f} ms, max "
              f"{1000 * max(polls):.1f} ms ({len(polls)} polls)")
    if floor_rows:
        floor_table(floor_rows)
    big = [r for r in rows if r["m"] >= TARGET_SIZE]
    print("\nissue 10 target:")
    if big:
        p99 = sk.quantile(big[0]["delays"], 99)
        print(sk.target_line(f"one upstream of {big[0]['m']:,} members: change -> Envoy", f"p99 {sk.ms(p99)}",
                             "p99 < 100 ms", p99 < TARGET_P99, big[0]["observer"]))
        alone = [r for who, m, r in floor_rows if who == "module" and m == big[0]["m"]]
        if alone:
            print(sk.target_line("  Envoy alone applying that answer (its floor)",
                                 f"p99 {sk.ms(sk.quantile(alone[0]['delays'], 99))}", "p99 < 100 ms",
                                 sk.quantile(alone[0]["delays"], 99) < TARGET_P99,
                                 f"p50 {sk.ms(sk.quantile(alone[0]['delays'], 50))}"))
    else:
        print(sk.target_line(f"one upstream of {TARGET_SIZE:,} members", "-", "p99 < 100 ms", None,
                             f"no size >= {TARGET_SIZE} given"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
