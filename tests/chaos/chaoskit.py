"""The parts of the chaos test: backends in their own processes, wrk, Envoy's
admin view, member churn in etcd, and the whole stack wired through the
fault proxy.

Built on tests/e2e/harness.py (free ports, process bookkeeping, etcd, Envoy,
the demo configuration); only the standard library besides.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
E2E = HERE.parent / "e2e"
if str(E2E) not in sys.path:
    sys.path.insert(0, str(E2E))

import harness  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402

WEB = harness.WEB
WRK_SCRIPT = HERE / "count.lua"

# Lines printed at the end of the run (see conftest.py).
REPORT: list[str] = []


def report(line: str) -> None:
    REPORT.append(line)


# --------------------------------------------------------------------------
# backends


# socketserver's default listen backlog is 5: under wrk's load a burst of
# Envoy's new connections overflows it, SYNs are dropped and Envoy counts
# connect timeouts against a healthy backend. A real server's backlog.
_BACKEND_MAIN = """
import http.server, sys, threading
sys.path.insert(0, sys.argv[1])
import harness
http.server.ThreadingHTTPServer.request_queue_size = 1024
harness.Backend(sys.argv[2], port=int(sys.argv[3]))
threading.Event().wait()
"""


class BackendProcess:
    """harness.Backend (HTTP/1.1, 200, body and x-backend = name) in a
    Python process of its own, so that serving wrk's load does not compete
    for the test process's GIL. stop() kills it."""

    def __init__(self, name: str, workdir: Path):
        self.name = name
        self.log_path = Path(workdir) / f"backend-{name}.log"
        self.proc = None
        for _ in range(3):  # the free port may be taken before the child binds it
            self.port = harness.free_ports(1)[0]
            self.address = f"127.0.0.1:{self.port}"
            self.proc = harness._spawn(
                [sys.executable, "-c", _BACKEND_MAIN, str(E2E), name, str(self.port)], self.log_path
            )
            try:
                harness.wait_until(self._ready, 15, 0.05, f"backend {name} on {self.address}")
                return
            except harness.ProcessExited:
                harness._stop(self.proc)
        raise RuntimeError(f"backend {name} did not start:\n{harness.log_tail(self.log_path)}")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise harness.ProcessExited(f"backend {self.name} exited with {self.proc.returncode}")
        status, backend = harness.Client(self.port, timeout=1).get("/")
        return status == 200 and backend == self.name

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        harness._stop(self.proc, grace=3)


# --------------------------------------------------------------------------
# wrk


class Wrk:
    """Debian's wrk with tests/chaos/count.lua against one URL.

    duration_s=None: runs until stop() (SIGINT; wrk then prints its results)."""

    def __init__(self, url: str, workdir: Path, name: str, duration_s: float | None = None,
                 threads: int = 2, connections: int = 8, timeout_s: int = 10):
        self.url = url
        self.log_path = Path(workdir) / f"wrk-{name}.log"
        self.duration_s = duration_s
        self.argv = [
            "wrk", "-t", str(threads), "-c", str(connections),
            "-d", f"{int(duration_s) if duration_s else 3600}s",
            "--timeout", f"{timeout_s}s", "--latency", "-s", str(WRK_SCRIPT), url,
        ]
        self.proc = None
        self.result: dict | None = None

    def start(self) -> "Wrk":
        self.proc = harness._spawn(self.argv, self.log_path)
        return self

    def wait(self) -> dict:
        """The result of a run with a duration."""
        assert self.duration_s is not None
        try:
            self.proc.wait(timeout=self.duration_s + 30)
        finally:
            harness._stop(self.proc)
        return self._parse()

    def stop(self) -> dict:
        """Ends the run (SIGINT, as Ctrl-C) and returns its result."""
        if self.result is not None:
            return self.result
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # as Ctrl-C: wrk stops and runs done()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass  # killed below; _parse then reports the missing result
        harness._stop(self.proc)
        return self._parse()

    def _parse(self) -> dict:
        text = self.log_path.read_text(errors="replace")
        m = re.search(r"^WRK_RESULT (\{.*\})$", text, re.M)
        if not m:
            raise RuntimeError(f"wrk printed no result (exit {self.proc.returncode}):\n{text[-3000:]}")
        self.result = json.loads(m.group(1))
        self.result["wrk_output"] = text
        return self.result


def failures(result: dict) -> dict:
    """Every way a wrk request failed: non-2xx answers and socket errors."""
    out = {"non2xx": result["non2xx"]}
    out.update({k: v for k, v in result["errors"].items() if k != "status"})
    return out


def ms(us: int) -> str:
    return f"{us / 1000:.1f} ms"


# --------------------------------------------------------------------------
# Envoy's admin view


def brief(hosts: dict, limit: int = 12) -> str:
    """A member dict for a message, cut when long."""
    if len(hosts) <= limit:
        return str(hosts)
    items = ", ".join(f"{k!r}: {v!r}" for k, v in sorted(hosts.items())[:limit])
    return f"{{{items}, ...}} ({len(hosts)} members)"


def admin_get(envoy: harness.Envoy, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}{path}", timeout=5) as r:
        return r.read().decode()


def stats(envoy: harness.Envoy, regex: str) -> dict[str, int]:
    """Counters and gauges whose name matches regex (histograms left out)."""
    text = admin_get(envoy, "/stats?filter=" + urllib.request.quote(regex))
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


# Envoy's Wasm stats: VMs created and active per runtime, the VM count, and
# each plugin's vm_reload counters: a new or reloaded VM moves them.
WASM_STATS = r"^wasm\."
# What clients got from the ingress listener (asserted), and Envoy's failed
# connections to members (reported: Envoy hides a failed connection
# attempt when another connection takes the request).
TRAFFIC_STATS = r"^http\.ingress\.downstream_rq_[1-5]xx$|^cluster\.web\.upstream_cx_connect_(fail|timeout)$"

# Envoy log lines that mean a Wasm VM failed. Seen on Envoy 1.40 with a
# module that panics in on_tick: "[critical][wasm] ... wasm log upsync_poller
# upsync: panicked at ..." then "[error][wasm] ... Function: proxy_on_tick
# failed: Uncaught RuntimeError: unreachable". With the default failure
# policy (fail closed) the VM is not replaced and none of WASM_STATS moves,
# so this log check is what tells a crashed VM.
WASM_FAILURE = re.compile(r"\]\[wasm\].*(panic|Function: \w+ failed)", re.I)


def web_hosts(envoy: harness.Envoy, cluster: str = "web") -> dict[str, tuple[int, str]]:
    """Envoy's members of `cluster`: address -> (weight, EDS health)."""
    data = json.loads(admin_get(envoy, "/clusters?format=json"))
    for c in data.get("cluster_statuses", []):
        if c.get("name") == cluster:
            out = {}
            for h in c.get("host_statuses", []):
                sa = h["address"]["socket_address"]
                health = h.get("health_status", {}).get("eds_health_status", "HEALTHY")
                out[f"{sa['address']}:{sa['port_value']}"] = (int(h.get("weight", 1)), health)
            return out
    return {}


def registry_hosts(etcd: harness.Etcd, prefix: str = WEB) -> dict[str, tuple[int, str]]:
    """etcd's members under prefix, as Envoy should show them."""
    out = {}
    for key, value in etcd.get_prefix(prefix).items():
        attrs = dict(harness.DEFAULT_ATTRS)
        attrs.update(json.loads(value))
        health = "UNHEALTHY" if attrs["down"] else "HEALTHY"
        out[key[len(prefix):]] = (int(attrs["weight"]), health)
    return out


# max_body_bytes of both upstreams in the chaos stack, and the size of the
# proxy's `oversize` answers. Smaller than the 8 MiB default so that an
# oversize answer reaches the plugin well within timeout_ms under load (a
# 9 MiB one through the loaded 2-core machine often ends as a 504 instead).
MAX_BODY_BYTES = 1024 * 1024
OVERSIZE_BYTES = 2 * MAX_BODY_BYTES


def chaos_template(workdir: Path) -> Path:
    """envoy/demo.yaml with two changes: the gRPC Watch cluster `etcd_grpc`
    gets its own port placeholder (the poller's HTTP calls, cluster `etcd`,
    go through the fault proxy; the watch, whose events are applied as
    changes, straight to etcd), and the `api` upstream gets MAX_BODY_BYTES (`web` gets it
    through EXTRA_WEB_FIELDS)."""
    text = harness.DEMO_TEMPLATE.read_text()
    text, n1 = re.subn(
        r"(- name: etcd_grpc\n.*?port_value: )\$\{ETCD_PORT\}", r"\1${ETCD_GRPC_PORT}", text, count=1, flags=re.S
    )
    api_end = '"allow_empty": false, "fallback": []}'
    n2 = text.count(api_end)
    text = text.replace(api_end, api_end[:-1] + f', "max_body_bytes": {MAX_BODY_BYTES}}}')
    if n1 != 1 or n2 != 1 or "${ETCD_PORT}" not in text:
        raise RuntimeError("envoy/demo.yaml: cluster etcd_grpc, etcd or the api upstream not where expected")
    path = Path(workdir) / "chaos-template.yaml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------
# the stack


class Chaos:
    """etcd 3.4, the fault proxy in front of its client port, backends in
    their own processes, and Envoy (envoy/demo.yaml, the gRPC Watch on)
    whose `etcd` cluster is the proxy."""

    ORIGINALS = ("alpha", "beta", "gamma")

    def __init__(self, wasm: Path, workdir: Path, seed: int, interval_ms: int = 200, backoff_max_ms: int = 1000):
        self.wasm = Path(wasm)
        self.workdir = Path(workdir)
        self.seed = seed
        self.interval_ms = interval_ms
        self.backoff_max_ms = backoff_max_ms
        self.etcd: harness.Etcd | None = None
        self.proxy: FaultProxy | None = None
        self.envoy: harness.Envoy | None = None
        self.backends: dict[str, BackendProcess] = {}
        self.churn: Churn | None = None
        self.wasm_baseline: dict[str, int] = {}
        self.wrks: list[Wrk] = []
        self.baseline: dict | None = None  # the wrk result without churn
        self.churn_wrk: Wrk | None = None

    def start(self) -> "Chaos":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.etcd = harness.Etcd(self.workdir / "etcd").start()
        self.proxy = FaultProxy(self.etcd.client_port, oversize_bytes=OVERSIZE_BYTES).start()
        for name in self.ORIGINALS:
            b = BackendProcess(name, self.workdir)
            self.backends[b.address] = b
        self.etcd.set_members(WEB, {a: {} for a in self.backends})
        self.envoy = harness.Envoy(
            self.workdir / "envoy",
            self.wasm,
            self.proxy.port,  # cluster `etcd`: through the fault proxy
            interval_ms=self.interval_ms,
            backoff_max_ms=self.backoff_max_ms,
            template=chaos_template(self.workdir),
            extra_web_fields=f', "max_body_bytes": {MAX_BODY_BYTES}',
            web_registry=harness.web_registry_config("etcd_v3", watch=True),
        )
        self.envoy.values["ETCD_GRPC_PORT"] = self.etcd.client_port
        self.envoy.start()
        self.churn = Churn(self, random.Random(self.seed))
        self.churn.settle(timeout=30)
        self.wasm_baseline = stats(self.envoy, WASM_STATS)
        if not any(k.endswith(".active") for k in self.wasm_baseline):
            raise RuntimeError(f"no Wasm runtime stats in Envoy's /stats: {self.wasm_baseline}")
        return self

    def close(self) -> None:
        for w in self.wrks:
            if w.proc is not None:
                harness._stop(w.proc)
        if self.envoy:
            self.envoy.stop()
        if self.proxy:
            self.proxy.stop()
        if self.etcd:
            self.etcd.kill()
        for b in self.backends.values():
            b.stop()

    def wrk(self, name: str, duration_s: float | None = None) -> Wrk:
        w = Wrk(f"http://127.0.0.1:{self.envoy.ingress_port}/", self.workdir, name, duration_s)
        self.wrks.append(w)
        return w.start()

    # checks ------------------------------------------------------------------
    def traffic(self) -> dict[str, int]:
        return stats(self.envoy, TRAFFIC_STATS)

    def assert_clean_since(self, before: dict[str, int]) -> dict[str, int]:
        """No client saw a non-2xx answer and Envoy never connected to a
        member that was gone since `before`; no Wasm VM was restarted."""
        after = self.traffic()
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
        bad = {k: v for k, v in delta.items() if v and k.startswith("http.ingress.") and not k.endswith("_2xx")}
        assert not bad, f"clients saw failures: {bad} (all deltas {delta})"
        assert delta.get("http.ingress.downstream_rq_2xx", 0) > 0, f"no traffic went through: {delta}"
        self.assert_no_vm_restart()
        return delta

    def assert_no_vm_restart(self) -> None:
        now = stats(self.envoy, WASM_STATS)
        assert now == self.wasm_baseline, f"Wasm VM stats moved: {self.wasm_baseline} -> {now}"
        failed = [line for line in self.envoy.log().splitlines() if WASM_FAILURE.search(line)]
        assert not failed, "Wasm failures in Envoy's log:\n" + "\n".join(failed[:20])

    def assert_envoy_matches_registry(self) -> None:
        envoy, registry = web_hosts(self.envoy), registry_hosts(self.etcd)
        assert envoy == registry, f"Envoy {brief(envoy)} != etcd {brief(registry)}"

    def status_line(self) -> str:
        try:
            st = self.envoy.upstream_status("web")
        except Exception as e:  # noqa: BLE001 - informational only
            return f"(status unavailable: {e!r})"
        return f"syncs_ok={st.get('syncs_ok')} syncs_failed={st.get('syncs_failed')} last_error={st.get('last_error')!r}"

    def last_error(self) -> tuple[int, str | None]:
        """(when, what): the plugin's last error for `web`, without its retry
        delay. For the report only: the test asserts effects, not messages."""
        try:
            st = self.envoy.upstream_status("web")
        except Exception:  # noqa: BLE001 - informational only
            return (0, None)
        err = st.get("last_error")
        text = re.sub(r"; keeping the last good list, next try in \d+ ms$", "", err) if err else None
        return (st.get("last_error_ms") or 0, text)


class Churn:
    """Adds, removes, re-weights and marks down members of `web` in etcd.

    Rules that keep 0 failed requests a fair expectation:
    - a member's backend starts before the member is written to etcd;
    - a removed member's backend keeps answering until Envoy has dropped
      the member (its /clusters no longer lists it) and GRACE_S more
      (requests already sent to it finish), and only then stops;
    - at least 3 members stay registered, at least 2 of them up, and at
      most one of the original three is ever removed (their majority stays).
    """

    GRACE_S = 2.0
    MAX_MEMBERS = 7

    def __init__(self, chaos: Chaos, rng: random.Random):
        self.c = chaos
        self.rng = rng
        self.originals = set(chaos.backends)
        self.attrs: dict[str, dict] = {a: {} for a in chaos.backends}
        self.retiring: dict[str, float | None] = {}  # address -> when Envoy was seen without it
        self.added = 0
        self.ops: list[str] = []

    # what the registry holds -------------------------------------------------
    def _up(self) -> list[str]:
        return [a for a, at in self.attrs.items() if not at.get("down")]

    def _write(self, address: str) -> None:
        self.c.etcd.put_member(WEB, address, **self.attrs[address])

    def step(self, kinds=("add", "remove", "weight", "down")) -> str:
        """One change in etcd; returns what it was."""
        possible = []
        if "add" in kinds and len(self.attrs) < self.MAX_MEMBERS:
            possible.append("add")
        removable = self._removable()
        if "remove" in kinds and removable:
            possible.append("remove")
        if "weight" in kinds:
            possible.append("weight")
        if "down" in kinds and (len(self._up()) > 2 or len(self._up()) < len(self.attrs)):
            possible.append("down")
        kind = self.rng.choice(possible)
        if kind == "add":
            self.added += 1
            b = BackendProcess(f"n{self.added}", self.c.workdir)
            self.c.backends[b.address] = b
            self.attrs[b.address] = {"weight": self.rng.randint(1, 3)}
            self._write(b.address)
            op = f"add {b.name} {b.address}"
        elif kind == "remove":
            address = self.rng.choice(removable)
            del self.attrs[address]
            self.c.etcd.delete(WEB + address)
            self.retiring[address] = None
            op = f"remove {self.c.backends[address].name}"
        elif kind == "weight":
            address = self.rng.choice(sorted(self.attrs))
            old = self.attrs[address].get("weight", 1)
            self.attrs[address]["weight"] = self.rng.choice([w for w in range(1, 6) if w != old])
            self._write(address)
            op = f"weight {self.c.backends[address].name} {old}->{self.attrs[address]['weight']}"
        else:
            downs = [a for a in self.attrs if self.attrs[a].get("down")]
            ups = self._up()
            choices = downs + (ups if len(ups) > 2 else [])
            address = self.rng.choice(sorted(choices))
            flag = 0 if self.attrs[address].get("down") else 1
            self.attrs[address]["down"] = flag
            self._write(address)
            op = f"{'down' if flag else 'up'} {self.c.backends[address].name}"
        self.ops.append(op)
        return op

    def _removable(self) -> list[str]:
        if len(self.attrs) <= 3:
            return []
        ups = set(self._up())
        out = []
        for a in sorted(self.attrs):
            if a in ups and len(ups) <= 2:
                continue
            if a in self.originals and not self.originals <= set(self.attrs):
                continue  # one original is gone already
            out.append(a)
        return out

    # Envoy following ---------------------------------------------------------
    def reap(self, envoy_hosts: dict | None = None) -> None:
        """Stops the backends of removed members once Envoy has dropped them
        for GRACE_S."""
        if not self.retiring:
            return
        hosts = envoy_hosts if envoy_hosts is not None else web_hosts(self.c.envoy)
        now = time.monotonic()
        for address, gone_since in list(self.retiring.items()):
            if address in hosts:
                self.retiring[address] = None
            elif gone_since is None:
                self.retiring[address] = now
            elif now - gone_since >= self.GRACE_S:
                self.c.backends[address].stop()
                del self.retiring[address]

    def settle(self, timeout: float = 15.0) -> float:
        """Waits until Envoy's members of `web` equal etcd's; returns how long."""
        t0 = time.monotonic()
        last = {}

        def same():
            hosts = web_hosts(self.c.envoy)
            self.reap(hosts)
            registry = registry_hosts(self.c.etcd)
            last["envoy"], last["etcd"] = hosts, registry
            return hosts == registry

        try:
            harness.wait_until(same, timeout, 0.05, "Envoy's members to equal etcd's")
        except TimeoutError:
            raise AssertionError(
                f"Envoy's members differ from etcd's after {timeout}s:\n envoy {brief(last.get('envoy', {}))}\n"
                f" etcd  {brief(last.get('etcd', {}))}\n status {self.c.status_line()}"
            ) from None
        return time.monotonic() - t0

    def drain_retiring(self, timeout: float = 15.0) -> None:
        """Waits out the grace of every removed member and stops its backend."""
        harness.wait_until(
            lambda: (self.reap(), not self.retiring)[1], timeout, 0.1, "removed members' backends to retire"
        )
