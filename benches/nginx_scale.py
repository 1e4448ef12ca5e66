"""Many upstreams on a real nginx with Kong's ngx_wasm_module (issue 10).

N upstreams (default 1,000) x M members (default 2) in a real etcd 3.4, read
by the plugin in nginx (2 workers) through etcd v2 long polls and through
etcd v3 polling (ngx_wasm_module has no gRPC, so no etcd watch). Members are
real HTTP backends on 127.0.0.1 (tests/e2e/harness.py's Backend).

ngx_wasm_module is in no package registry this project can install from:
this bench builds nothing. Pass an nginx built with the module
(--nginx /path/to/nginx); without one it prints why and exits 0 (skipped).

Layouts (--layout):
- discover: one poller configuration with `"discover"` (every child of
  /upstreams/ becomes an upstream) on a loopback location, plus one traffic
  location `location ~ ^/u/(?<upsync_upstream>[^/]+)/` whose filter picks
  with `"pick_variable": "upsync_upstream"`;
- split: what works without those features: up to --per-directive (20)
  upstreams per `proxy_wasm` directive, one location /g/<k>/ per group (50
  for 1,000); every location's root context runs its own poller, and the
  per-upstream leases leave one poll per upstream for the whole nginx.
  A location can route to one upstream only (`pick`), so changes are timed
  on each group's picked upstream;
- discover-anchor: discover, but the poller filter also holds one static
  upstream (outside /upstreams/) that it picks: for a plugin that refuses
  an nginx filter with neither "pick" nor "pick_variable" ("pick: no such
  upstream", seen on main 2e9572c);
- discover-status: the anchored discover poller alone, no traffic location
  (for a plugin with `discover` but without `pick_variable`): changes are
  timed until /upsync/status lists the new member, not until traffic
  reaches it;
- auto (default): the first of discover, discover-anchor, split that this
  plugin build accepts.

What is measured, per registry (--registries etcd_v2,etcd_v3):
1. start-up: seconds from nginx's start until every upstream /upsync/status
   lists has its M registry members (discover: all N; split: the status
   lists one poller configuration's upstreams) and every routed upstream
   answers from its members;
2. idle, over --idle-seconds (60) after --settle (10): CPU of the nginx
   worker processes, % of one core (utime+stime of /proc/<pid>/stat, the
   workers summed, the master beside them), and registry requests per
   minute as etcd counts them (v2: etcd_debugging_store_watch_requests_total
   plus recursive reads, as etcd_http_received_total leaves long polls out;
   v3: grpc_server_started_total, the JSON gateway calling gRPC); the
   machine's busy cores in the same window (the machine is shared);
3. --changes (30) changes: a new member (a backend no member of that
   upstream uses) is put under a random upstream's prefix; the clock runs
   from the etcd write's return until a request through nginx (a new
   connection each, so either worker may answer) is answered by it; p50,
   p99, max. The member is deleted again before the next change.
A change not routed within --change-timeout is reported (after 3 the
changes stop). Then the error log's lines from warn up once every upstream
was loaded (counted, first few distinct ones shown; "worker_connections are
not enough" counted apart),
worker restarts, and the issue 10 targets: change -> traffic within p99 100 ms
through etcd v2 long poll; idle CPU near zero (nginx-upsync-module idles at
~0 % with 200 upstreams).

Usage: python benches/nginx_scale.py --nginx /path/to/nginx
           [--wasm target/upsync_wasm.wasm] [--upstreams 1000] [--members 2]
           [--layout auto|discover|discover-anchor|split|discover-status]
           [--registries etcd_v2,etcd_v3]
           [--interval-ms 1000] [--idle-seconds 60] [--changes 30] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import scalekit as sk
from scalekit import harness

REGISTRIES = ("etcd_v2", "etcd_v3")
PARENT = "/upstreams/"
# discover-status: the static upstream the poller filter picks (see Layout)
ANCHOR = "anchor"
ANCHOR_PREFIX = "/anchor/"
# nginx refuses a directive parameter longer than about 4 KB (NGX_CONF_BUFFER
# is 4096 bytes and one token must fit in it).
MAX_PARAMETER = 4000
TARGET_CHANGE_P99 = 0.100
TARGET_IDLE_CPU = 1.0  # "near zero": below 1 % of a core
LOG_LEVELS = ("emerg", "alert", "crit", "error", "warn")


class Skip(Exception):
    """The bench cannot run here (printed, exit status 0)."""


class Refused(harness.ProcessExited):
    """The plugin refused the configuration (the log line is the message);
    a ProcessExited, so that harness.wait_until stops waiting at once."""


# --------------------------------------------------------------------------
# nginx


def nginx_has_wasm(nginx: str, work: Path, load_module: str | None) -> tuple[bool, str]:
    """Does this nginx know the `wasm {}` block? (nginx -t on a tiny config)."""
    if not (os.path.isfile(nginx) and os.access(nginx, os.X_OK)):
        return False, f"{nginx} is not an executable file"
    probe = work / "probe"
    (probe / "logs").mkdir(parents=True, exist_ok=True)
    conf = probe / "nginx.conf"
    conf.write_text((f"load_module {load_module};\n" if load_module else "")
                    + "error_log logs/error.log;\npid logs/nginx.pid;\nevents {}\nwasm {}\nhttp {}\n")
    try:
        r = subprocess.run([nginx, "-t", "-p", str(probe), "-c", str(conf)], capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{nginx} -t failed to run: {e}"
    out = (r.stdout + r.stderr).strip()
    if r.returncode == 0:
        return True, ""
    if 'unknown directive "wasm"' in out:
        return False, f"{nginx} has no wasm module (ngx_wasm_module): nginx -t says {out.splitlines()[0]!r}"
    return False, f"{nginx} -t on a minimal `wasm {{}}` configuration failed: {out[-400:]}"


def nginx_version(nginx: str) -> str:
    r = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=30)
    text = r.stdout + r.stderr
    m = re.search(r"nginx version: (\S+)", text)
    wasm = "ngx_wasm_module" if "wasm" in text else "wasm module (dynamic?)"
    return f"{m.group(1) if m else 'nginx'} with {wasm}"


def compact(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


class Layout:
    """The nginx locations of one layout: configuration text, URLs."""

    def __init__(self, kind: str, names: list[str], registry: dict, fields: dict, args):
        self.kind = kind
        self.registry_kind = registry["type"]
        self.names = names
        self.locations: list[str] = []
        self.route: dict[str, str] = {}  # upstream -> request path that routes to it
        # discover-status: the discover poller alone (changes are timed
        # until /upsync/status shows them, not traffic)
        self.status_only = kind == "discover-status"
        anchored = kind in ("discover-status", "discover-anchor")
        if kind.startswith("discover"):
            self.status_path = "/upsync/status"
            poller = {
                "host": "nginx",
                "status_path": self.status_path,
                "discover": [{"registry": dict(registry, prefix=PARENT), "interval_ms": args.discover_interval_ms,
                              "defaults": fields}],
            }
            self.locations.append(self.block("location /upsync/", poller, proxy=False))
            if anchored:
                # For a plugin that refuses an nginx filter without "pick" or
                # "pick_variable": one static upstream outside /upstreams/
                # for the poller filter to pick.
                poller["pick"] = ANCHOR
                poller["upstreams"] = [dict({"name": ANCHOR, "registry": dict(registry, prefix=ANCHOR_PREFIX)},
                                            **fields)]
                self.locations[0] = self.block("location /upsync/", poller, proxy=False)
            if not self.status_only:
                self.locations.append(self.block("location ~ ^/u/(?<upsync_upstream>[^/]+)/",
                                                 {"host": "nginx", "pick_variable": "upsync_upstream"}, proxy=True))
                self.route = {u: f"/u/{u}/" for u in names}
            self.pollers = 1
        else:
            per = args.per_directive
            groups = [names[i:i + per] for i in range(0, len(names), per)]
            self.status_path = "/g/0/upsync/status"
            for k, group in enumerate(groups):
                pick = group[k % len(group)]
                cfg = {"host": "nginx", "pick": pick}
                if k == 0:
                    cfg["status_path"] = self.status_path
                cfg["upstreams"] = [dict({"name": u, "registry": dict(registry, prefix=f"{PARENT}{u}/")}, **fields)
                                    for u in group]
                self.locations.append(self.block(f"location /g/{k}/", cfg, proxy=True))
                self.route[pick] = f"/g/{k}/"
            self.pollers = len(groups)
        self.largest = max(len(loc) for loc in self.locations)

    @staticmethod
    def block(head: str, cfg: dict, proxy: bool) -> str:
        text = compact(cfg)
        if len(text) > MAX_PARAMETER:
            raise ValueError(f"{head}: a {len(text)}-byte proxy_wasm configuration; nginx refuses parameters "
                             f"over ~4 KB (use a smaller --per-directive)")
        body = f"            proxy_wasm upsync '{text}';\n"
        if proxy:
            body += "            proxy_pass http://$upsync_backend;\n            proxy_connect_timeout 1s;\n"
        return f"        {head} {{\n{body}        }}\n"


class Nginx:
    def __init__(self, binary: str, work: Path, wasm: Path, layout: Layout, args):
        self.binary = binary
        self.work = work
        (work / "logs").mkdir(parents=True, exist_ok=True)
        self.port = harness.free_ports(1)[0]
        self.error_log = work / "logs" / "error.log"
        self.conf = work / "nginx.conf"
        load = f"load_module {args.load_module};\n" if args.load_module else ""
        nofile = min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        self.conf.write_text(f"""{load}daemon off;
master_process on;
worker_processes {args.workers};
worker_rlimit_nofile {nofile};
error_log logs/error.log {args.error_log_level};
pid logs/nginx.pid;

events {{
    worker_connections {args.worker_connections};
}}

wasm {{
    module upsync {wasm};
    shm_kv * {args.shm_mb}m;
}}

http {{
    access_log off;
    server {{
        listen 127.0.0.1:{self.port};
        set $upsync_backend "127.0.0.1:1";
{''.join(layout.locations)}    }}
}}
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = harness._spawn([self.binary, "-p", str(self.work), "-c", str(self.conf)],
                                   self.work / "stdout.log")
        harness.wait_until(self._listening, 60, 0.1, "nginx to listen")

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise harness.ProcessExited(f"nginx exited with {self.proc.returncode}:\n"
                                        f"{harness.log_tail(self.work / 'stdout.log')}\n"
                                        f"{harness.log_tail(self.error_log)}")
        if len(self.workers()) < 1:
            return False
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            conn.close()
            conn.connect()
            conn.close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        harness._stop(self.proc, signal.SIGQUIT, grace=10)

    @property
    def master(self) -> int:
        if self.proc is None:
            raise RuntimeError("nginx not started")
        return self.proc.pid

    def workers(self) -> list[int]:
        """The master's child processes (the workers)."""
        try:
            kids = Path(f"/proc/{self.master}/task/{self.master}/children").read_text().split()
            return sorted(int(k) for k in kids)
        except OSError:
            found = []
            for d in Path("/proc").iterdir():
                if d.name.isdigit():
                    try:
                        stat = (d / "stat").read_text()
                    except OSError:
                        continue
                    if int(stat[stat.rindex(")") + 2:].split()[1]) == self.master:
                        found.append(int(d.name))
            return sorted(found)

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        """One request on a new connection (either worker may take it)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        finally:
            conn.close()

    def log_size(self) -> int:
        try:
            return self.error_log.stat().st_size
        except OSError:
            return 0

    def log_text(self, offset: int = 0) -> str:
        try:
            with open(self.error_log, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_summary(self, offset: int = 0) -> tuple[collections.Counter, list[str]]:
        """Lines per level from warn up after `offset`, and the first
        distinct messages."""
        counts: collections.Counter = collections.Counter()
        samples: list[str] = []
        seen: set[str] = set()
        lines = self.log_text(offset).splitlines()
        for line in lines:
            m = re.search(r"\[(emerg|alert|crit|error|warn)\]", line)
            if not m:
                continue
            counts[m.group(1)] += 1
            # the message without date, pid and connection numbers
            msg = re.sub(r"^\S+ \S+ \[\w+\] \d+#\d+: (\*\d+ )?", "", line)
            msg = re.sub(r"\d+", "N", msg)[:200]
            if msg not in seen and len(samples) < 8:
                seen.add(msg)
                samples.append(line[:300])
        return counts, samples


# --------------------------------------------------------------------------
# etcd


class EtcdWriter:
    """Writes members in one registry's layout (v2 keyspace or v3)."""

    def __init__(self, kind: str, reg: sk.Registry):
        self.kind = kind
        self.reg = reg
        self.conn: http.client.HTTPConnection | None = None

    def _v2(self, method: str, key: str, value: str | None = None) -> None:
        body = urllib.parse.urlencode({"value": value}).encode() if value is not None else None
        headers = {"content-type": "application/x-www-form-urlencoded"} if body is not None else {}
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.reg.port, timeout=30)
            try:
                self.conn.request(method, "/v2/keys" + urllib.parse.quote(key), body=body, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                if resp.status not in (200, 201) and not (method == "DELETE" and resp.status == 404):
                    raise RuntimeError(f"etcd v2 {method} {key} -> {resp.status}: {raw[:200]!r}")
                return
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise

    def put_many(self, items: list[tuple[str, str]]) -> None:
        if self.kind == "etcd_v3":
            self.reg.put_many(items)
        else:
            for key, value in items:
                self._v2("PUT", key, value)

    def put(self, key: str, value: str) -> None:
        if self.kind == "etcd_v3":
            self.reg.put(key, value)
        else:
            self._v2("PUT", key, value)

    def delete(self, key: str) -> None:
        if self.kind == "etcd_v3":
            self.reg.delete(key)
        else:
            self._v2("DELETE", key)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def v2_requests(metrics: dict[str, float]) -> float:
    """v2 API reads: long polls (etcd_debugging_store_watch_requests_total)
    plus full recursive reads. etcd_http_received_total does not count
    long polls at all."""
    return (sk.metric_sum(metrics, "etcd_debugging_store_watch_requests_total")
            + sk.metric_sum(metrics, "etcd_debugging_store_reads_total", action="getRecursive"))


def registry_requests(metrics: dict[str, float]) -> float:
    """Every registry request etcd received: v2 long polls and reads, plus
    gRPC calls (the v3 JSON gateway calls gRPC in-process)."""
    return v2_requests(metrics) + sk.etcd_requests(metrics)


# --------------------------------------------------------------------------
# one run


def status_upstreams(nginx: Nginx, path: str) -> dict[str, dict]:
    status, _, body = nginx.get(path, timeout=10)
    if status != 200:
        raise RuntimeError(f"GET {path} -> {status}: {body[:200]!r}")
    return {u["name"]: u for u in json.loads(body).get("upstreams", [])}


def wait_loaded(nginx: Nginx, layout: Layout, expected: dict[str, set[str]], members: dict[str, list],
                timeout: float) -> int:
    """Wait until every upstream /upsync/status lists has its members, every
    routed upstream answers from one of its members, and (discover) the
    status lists every upstream. Returns how many upstreams the status lists."""
    pending = set(layout.route)
    last = {"listed": 0, "ok": 0}

    def loaded():
        why = refused_line(nginx)
        if why:
            raise Refused(why)
        ups = status_upstreams(nginx, layout.status_path)
        listed = [u for u in ups if u in expected]
        ok = sum(1 for u in listed if {m["address"] for m in ups[u].get("members", [])} == expected[u])
        last.update(listed=len(listed), ok=ok)
        for u in sorted(pending):
            status, headers, _ = nginx.get(layout.route[u])
            if status == 200 and headers.get("x-backend") in {b.name for b in members[u]}:
                pending.discard(u)
        complete = len(listed) == len(expected) if layout.kind.startswith("discover") else len(listed) > 0
        return (complete and ok == len(listed) and not pending) or None

    try:
        harness.wait_until(loaded, timeout, 0.5, "every upstream's members")
    except TimeoutError:
        raise RuntimeError(f"after {timeout:.0f} s /upsync/status lists {last['listed']} of {len(expected)} "
                           f"upstreams, {last['ok']} with their members; {len(pending)} of {len(layout.route)} "
                           f"routed upstreams not answering from their members; log:\n"
                           f"{harness.log_tail(nginx.error_log, 15)}") from None
    return last["listed"]


def try_get(nginx: Nginx, path: str) -> tuple[int, str | None]:
    """A request through nginx: (status, x-backend); (0, error) when the
    connection failed or was closed without an answer."""
    try:
        status, headers, _ = nginx.get(path)
        return status, headers.get("x-backend")
    except (OSError, http.client.HTTPException) as e:
        return 0, f"{type(e).__name__}: {e}"


def wait_gone(nginx: Nginx, path: str, name: str, misses: int, timeout: float) -> bool:
    """Wait until `misses` answers in a row are not from `name` (round robin
    over M+1 members reaches it every M+1 picks per worker)."""
    deadline = time.monotonic() + timeout
    run = 0
    while run < misses:
        if time.monotonic() > deadline:
            return False
        status, backend = try_get(nginx, path)
        run = run + 1 if status == 200 and backend != name else 0
        time.sleep(0.002)
    return True


def status_members(nginx: Nginx, layout: Layout, upstream: str) -> set[str] | None:
    try:
        ups = status_upstreams(nginx, f"{layout.status_path}?upstream={upstream}")
    except (OSError, http.client.HTTPException, RuntimeError, ValueError):
        return None
    return {m["address"] for m in ups.get(upstream, {}).get("members", [])}


def change_gap(layout: Layout, args) -> float:
    """The longest random pause between changes: at least one poll period
    of etcd v3 (per upstream, or the discover listing's when shorter), so
    that a change lands at a random phase of the polling (up to 10 s)."""
    if args.change_gap is not None:
        return args.change_gap
    period = args.interval_ms
    if layout.kind.startswith("discover"):
        period = min(period, args.discover_interval_ms)
    return 0.5 if layout.registry_kind == "etcd_v2" else max(0.5, min(10.0, period / 1000))


def time_changes(nginx: Nginx, writer: EtcdWriter, layout: Layout, expected: dict[str, set[str]],
                 probes: list, args) -> tuple[list[float], list[int], list[str]]:
    """Put a new member under a random routed upstream, time until a request
    through nginx reaches it (discover-status: until /upsync/status lists
    it), delete it again; --changes times. Stops after 3 changes that were
    not seen within --change-timeout."""
    rng = random.Random(args.seed)
    routed = sorted(layout.route) if not layout.status_only else layout.names
    delays: list[float] = []
    requests: list[int] = []
    failures: list[str] = []
    for i in range(args.changes):
        u = rng.choice(routed)
        probe = next(p for p in probes if p.address not in expected[u])
        key = f"{PARENT}{u}/{probe.address}"
        writer.put(key, sk.member_value())
        t0 = time.monotonic()
        n, answers = 0, collections.Counter()
        while True:
            n += 1
            if layout.status_only:
                listed = status_members(nginx, layout, u)
                if listed is not None and probe.address in listed:
                    delays.append(time.monotonic() - t0)
                    requests.append(n)
                    break
                answers[str(sorted(listed)) if listed is not None else "no status"] += 1
            else:
                status, backend = try_get(nginx, layout.route[u])
                if status == 200 and backend == probe.name:
                    delays.append(time.monotonic() - t0)
                    requests.append(n)
                    break
                answers[f"{status} {backend}"] += 1
            if time.monotonic() - t0 > args.change_timeout:
                failures.append(f"change {i}: {probe.name} added to {u}, not seen through nginx in "
                                f"{args.change_timeout:.0f} s; answers meanwhile: {dict(answers.most_common(3))}")
                break
            time.sleep(0.001)
        writer.delete(key)
        if layout.status_only:
            gone = True
            try:
                harness.wait_until(lambda: status_members(nginx, layout, u) == expected[u], args.change_timeout,
                                   0.01, f"{probe.name} out of {u}")
            except TimeoutError:
                gone = False
        else:
            gone = wait_gone(nginx, layout.route[u], probe.name, 4 * (args.members + 1), args.change_timeout)
        if not gone:
            failures.append(f"change {i}: {probe.name} still in {u} {args.change_timeout:.0f} s after "
                            "its key was deleted")
        if len(failures) >= 3:
            failures.append(f"changes stopped after {i + 1} of {args.changes}")
            break
        time.sleep(rng.uniform(0.05, change_gap(layout, args)))
    return delays, requests, failures


def refused_line(nginx: Nginx) -> str | None:
    try:
        text = nginx.error_log.read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"^.*invalid configuration.*$", text, re.M)
    return m.group(0)[:400] if m else None


def run(kind: str, layout_kind: str, nginx_bin: str, wasm: Path, work: Path, args) -> dict:
    names = [f"u{i:04d}" for i in range(args.upstreams)]
    reg = sk.Registry(work / "etcd").start()
    writer = EtcdWriter(kind, reg)
    base = [harness.Backend(f"b{i}") for i in range(max(args.members, args.backends))]
    probes = [harness.Backend(f"p{i}") for i in range(args.members + 2)]
    nginx = None
    try:
        members = {u: [base[(i + j) % len(base)] for j in range(args.members)] for i, u in enumerate(names)}
        expected = {u: {b.address for b in bs} for u, bs in members.items()}
        items = [(f"{PARENT}{u}/{b.address}", sk.member_value()) for u, bs in members.items() for b in bs]
        if layout_kind in ("discover-status", "discover-anchor"):
            items.append((ANCHOR_PREFIX + base[0].address, sk.member_value()))
        t = time.monotonic()
        writer.put_many(items)
        print(f"  {kind}: {len(items)} members written in {time.monotonic() - t:.1f} s", flush=True)

        registry = {"type": kind, "target": f"127.0.0.1:{reg.port}"}
        fields = {"interval_ms": args.interval_ms}
        if kind == "etcd_v2" and args.wait_ms is not None:
            registry["wait_ms"] = args.wait_ms
        layout = Layout(layout_kind, names, registry, fields, args)
        nginx = Nginx(nginx_bin, work / "nginx", wasm, layout, args)
        t0 = time.monotonic()
        nginx.start()
        listed = wait_loaded(nginx, layout, expected, members, args.load_timeout)
        loaded = time.monotonic() - t0
        # the readiness checks' own 503s stay out of the error log summary
        log_offset = nginx.log_size()
        workers0 = nginx.workers()
        print(f"  {kind}/{layout_kind}: nginx {len(workers0)} workers, {layout.pollers} poller configuration(s), "
              f"largest proxy_wasm block {layout.largest} bytes; every upstream's members listed after "
              f"{loaded:.1f} s", flush=True)

        if listed < len(names):
            print(f"  {kind}/{layout_kind}: /upsync/status lists {listed} of {len(names)} upstreams (its upstream "
                  f"index is one poller configuration's)", flush=True)

        time.sleep(args.settle)
        pids = [nginx.master] + nginx.workers()
        machine = sk.MachineCpu()
        m0 = reg.metrics()
        c0 = {p: sk.cpu_seconds(p) for p in pids}
        etcd_c0 = sk.cpu_seconds(reg.etcd.proc.pid) if reg.etcd.proc else 0.0
        w0 = time.monotonic()
        time.sleep(args.idle_seconds)
        window = time.monotonic() - w0
        c1 = {p: sk.cpu_seconds(p) for p in pids}
        etcd_c1 = sk.cpu_seconds(reg.etcd.proc.pid) if reg.etcd.proc else 0.0
        m1 = reg.metrics()
        busy = machine.busy_cores()
        per_worker = [100 * (c1[p] - c0[p]) / window for p in pids[1:]]
        idle = {
            "window": window,
            "workers": sum(per_worker),
            "per_worker": per_worker,
            "master": 100 * (c1[pids[0]] - c0[pids[0]]) / window,
            "etcd_cpu": 100 * (etcd_c1 - etcd_c0) / window,
            "rpm": (registry_requests(m1) - registry_requests(m0)) * 60 / window,
            "machine_busy": busy,
        }
        print(f"  {kind}/{layout_kind}: idle {window:.0f} s: workers {idle['workers']:.2f} % of a core "
              f"({', '.join(f'{x:.2f}' for x in per_worker)}), master {idle['master']:.2f} %, etcd "
              f"{idle['etcd_cpu']:.1f} %; {idle['rpm']:.0f} registry requests/min "
              f"({idle['rpm'] / len(names):.2f} per upstream); machine {busy:.2f} of {os.cpu_count()} cores busy",
              flush=True)

        delays, requests, failures = time_changes(nginx, writer, layout, expected, probes, args)
        if delays:
            print(f"  {kind}/{layout_kind}: {len(delays)} changes seen: p50 {sk.ms(sk.quantile(delays, 50))}, "
                  f"p99 {sk.ms(sk.quantile(delays, 99))}, max {sk.ms(max(delays))} "
                  f"(requests until it was seen: median {sorted(requests)[len(requests) // 2]})",
                  flush=True)
        for f in failures:
            print(f"  {kind}/{layout_kind}: {f}", flush=True)
        workers1 = nginx.workers()
        counts, samples = nginx.log_summary(log_offset)
        exhausted = nginx.log_text(log_offset).count("worker_connections are not enough")
        return {"kind": kind, "layout": layout_kind, "pollers": layout.pollers, "loaded": loaded, "idle": idle,
                "delays": delays, "failures": failures, "respawned": sorted(set(workers1) - set(workers0)),
                "log_counts": counts, "log_samples": samples, "names": len(names), "largest": layout.largest,
                "listed": listed, "exhausted": exhausted}
    finally:
        if nginx is not None:
            nginx.stop()
            if args.keep:
                shutil.copytree(nginx.work, Path(args.keep) / f"{kind}-{layout_kind}", dirs_exist_ok=True)
        writer.close()
        for b in base + probes:
            b.stop()
        reg.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nginx", required=True, help="an nginx binary built with Kong's ngx_wasm_module")
    ap.add_argument("--load-module", help="load_module path, when ngx_wasm_module is a dynamic module")
    ap.add_argument("--wasm", default=str(sk.REPO / "target" / "upsync_wasm.wasm"))
    ap.add_argument("--upstreams", type=int, default=1000)
    ap.add_argument("--members", type=int, default=2, help="members per upstream")
    ap.add_argument("--backends", type=int, default=8, help="real backends the members are spread over")
    ap.add_argument("--layout", choices=("auto", "discover", "discover-anchor", "split", "discover-status"),
                    default="auto")
    ap.add_argument("--per-directive", type=int, default=20, help="upstreams per proxy_wasm directive (split)")
    ap.add_argument("--registries", default=",".join(REGISTRIES))
    ap.add_argument("--interval-ms", type=int, default=1000, help="every upstream's interval_ms (the plugin's default)")
    ap.add_argument("--wait-ms", type=int, help="etcd_v2 long-poll wait_ms (default: the plugin's, 50000)")
    ap.add_argument("--discover-interval-ms", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shm-mb", type=int, default=32)
    ap.add_argument("--worker-connections", type=int, default=16384)
    ap.add_argument("--error-log-level", default="notice")
    ap.add_argument("--idle-seconds", type=float, help="idle window (default 60; --quick 20)")
    ap.add_argument("--settle", type=float, help="pause between start-up and the idle window (default 10; --quick 3)")
    ap.add_argument("--changes", type=int, help="changes timed (default 30; --quick 10)")
    ap.add_argument("--change-gap", type=float,
                    help="random pause after a change, up to this (s); default 0.5 (etcd v2), one poll period (v3)")
    ap.add_argument("--change-timeout", type=float, default=30.0)
    ap.add_argument("--load-timeout", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--keep", help="copy each run's nginx directory (config, logs) here")
    ap.add_argument("--quick", action="store_true", help="idle 20 s, 10 changes, settle 3 s")
    args = ap.parse_args()
    for name, full, quick in (("idle_seconds", 60.0, 20.0), ("changes", 30, 10), ("settle", 10.0, 3.0)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    kinds = [k.strip() for k in args.registries.split(",") if k.strip()]
    if not kinds or any(k not in REGISTRIES for k in kinds):
        ap.error(f"--registries: a comma-separated list of {REGISTRIES}")
    wasm = Path(args.wasm).resolve()
    if not wasm.is_file():
        print(f"nginx scale bench: {wasm} does not exist (run `make build`)", file=sys.stderr)
        return 2
    harness.raise_keyboard_interrupt_on_sigterm()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = Path(tempfile.mkdtemp(prefix="upsync-nginx-scale-"))
    try:
        ok, why = nginx_has_wasm(args.nginx, work, args.load_module)
        if not ok:
            print(f"nginx scale bench: skipped: {why}")
            return 0
        print(f"nginx scale bench: {nginx_version(args.nginx)}; {args.upstreams} upstreams x {args.members} members, "
              f"{args.workers} workers, interval_ms {args.interval_ms}; {sk.machine_load()}", flush=True)
        results = []
        for kind in kinds:
            layouts = ["discover", "discover-anchor", "split"] if args.layout == "auto" else [args.layout]
            for layout_kind in layouts:
                try:
                    results.append(run(kind, layout_kind, args.nginx, wasm, work / f"{kind}-{layout_kind}", args))
                    break
                except Refused as e:
                    print(f"  {kind}/{layout_kind}: the plugin refused this layout: {e}", flush=True)
                    if layout_kind == layouts[-1]:
                        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nnginx scale: {args.upstreams} upstreams x {args.members} members, nginx {args.workers} workers, "
          f"interval_ms {args.interval_ms}, idle window {args.idle_seconds:.0f} s, {args.changes} changes")
    print(f"{'registry':<9} {'layout':<9} {'pollers':>7} {'loaded s':>9} {'workers %cpu':>13} {'req/min':>8} "
          f"{'seen':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    for r in results:
        d, idle = r["delays"], r["idle"]
        q = [f"{1000 * sk.quantile(d, p):>7.0f}" for p in (50, 99, 100)] if d else [f"{'-':>7}"] * 3
        print(f"{r['kind']:<9} {r['layout']:<9} {r['pollers']:>7} {r['loaded']:>9.1f} {idle['workers']:>13.2f} "
              f"{idle['rpm']:>8.0f} {len(d):>7} {' '.join(q)}")
    for r in results:
        counts = ", ".join(f"{lvl} {r['log_counts'][lvl]}" for lvl in LOG_LEVELS if r["log_counts"][lvl]) or "none"
        print(f"  {r['kind']}/{r['layout']}: error log lines from warn up once loaded: {counts}; "
              f"'worker_connections are not enough': {r['exhausted']}; workers respawned: {len(r['respawned'])}")
        for line in r["log_samples"]:
            print(f"    {line}")
        for f in r["failures"]:
            print(f"    {f}")

    print("\nissue 10 targets:")
    for r in results:
        d, idle = r["delays"], r["idle"]
        label = f"{r['kind']} ({r['layout']}, {r['names']} upstreams)"
        what = "change -> /upsync/status" if r["layout"] == "discover-status" else "change -> traffic"
        value = f"p99 {sk.ms(sk.quantile(d, 99))}" if d else "none routed"
        if r["failures"]:
            value += f", {sum('not seen' in f for f in r['failures'])} not routed"
        if r["kind"] == "etcd_v2":
            met = bool(d) and not r["failures"] and sk.quantile(d, 99) < TARGET_CHANGE_P99
            print(sk.target_line(f"{what}, {label}", value, "p99 < 100 ms (long poll)", met))
        else:
            period = args.interval_ms
            if r["layout"].startswith("discover"):
                period = min(period, args.discover_interval_ms)
            print(sk.target_line(f"{what}, {label}", value, f"bounded by the {period} ms poll",
                                 None, "no push on etcd v3 in nginx"))
        print(sk.target_line(f"idle worker CPU, {label}", f"{idle['workers']:.2f} % of a core",
                             f"near 0 (< {TARGET_IDLE_CPU:g} %)", idle["workers"] < TARGET_IDLE_CPU,
                             "nginx-upsync-module: ~0 % at 200 upstreams"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
