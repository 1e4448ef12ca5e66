#!/usr/bin/env python3
"""A Consul HTTP API emulator for tests: KV, catalog, health, blocking queries, ACL tokens.

This is an EMULATOR, not Consul. It was written from Consul's documented HTTP
API (developer.hashicorp.com/consul/api-docs; the pages are listed in
README.md next to this file), so the project's Consul support can be tested on
a machine where no Consul server can be installed. Python 3.11 standard
library only.

Library use::

    from emulator import ConsulEmulator

    with ConsulEmulator(port=0, acl_token="secret") as consul:
        consul.register_service("web", "10.0.0.1", 8080, node="n1")
        consul.put_kv("upstreams/web/10.0.0.1:8080", '{"weight":1}')
        print(consul.url)               # http://127.0.0.1:<port>

Command line::

    python emulator.py --port 8500 [--acl-token T] [--datacenter dc1] [--host 127.0.0.1]

prints the port it listens on and serves until SIGTERM or SIGINT.

What the emulator chose where the documentation leaves room (also in README.md):

* One global Raft-like index, advanced by every write (HTTP or Python), even
  one that changes nothing (a failed CAS, a re-registration of identical data).
* ``X-Consul-Index`` per endpoint, as Consul's state store computes it:
  KV key: the entry's ModifyIndex, else the KV table index; KV recurse/keys:
  the highest ModifyIndex under the prefix, deleted keys' tombstones included,
  else the KV table index; catalog/health service: a per-service index moved
  only by writes that change that service's instances, their checks, their
  nodes or their node-level checks (for a service with no instance: the last
  index at which any service lost its last instance, else the catalog table
  index); catalog services: the services table index. Never below 1.
* Blocking: the wait defaults to 5m, is capped at 10m, and gets a random
  jitter in ``[0, wait/16)`` (switch off with ``jitter=False``). A query on a
  KV key or prefix that matches nothing keeps blocking across writes that
  still leave it matching nothing, as Consul's "not found" optimisation does.

Test hooks are separate from the Consul API: Python methods on
:class:`ConsulEmulator`, and HTTP endpoints under ``/_emulator/`` (never
ACL-checked, faulted or logged).
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import random
import re
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["ConsulEmulator", "EmulatorError", "parse_go_duration", "blocking_hold"]

DEFAULT_WAIT = 300.0  # blocking.mdx: "If not set, the wait time defaults to 5 minutes."
MAX_WAIT = 600.0  # blocking.mdx: "This is limited to 10 minutes."
JITTER_FRACTION = 16  # blocking.mdx: "This adds up to `wait / 16` additional time"
KV_MAX_VALUE = 512 * 1024  # kv.mdx: "Values in the KV store cannot be larger than 512kb."
CHECK_STATUSES = ("passing", "warning", "critical")


class EmulatorError(Exception):
    """A request the emulator refuses: carries the HTTP status and body Consul would send."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ----------------------------------------------------------------------------- helpers

_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}  # fmt: skip
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go ``time.ParseDuration`` string ("5s", "100ms", "1m30s", "0"); ValueError otherwise."""
    s = text
    negative = False
    if s[:1] in ("+", "-"):
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total, pos = 0.0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return -total if negative else total


def blocking_hold(wait: float | None, jitter: bool = True, rng: random.Random | None = None) -> float:
    """How long a blocking query may be held: wait (default 5m, capped at 10m) plus up to wait/16 jitter."""
    if wait is None or wait <= 0:
        wait = DEFAULT_WAIT
    wait = min(wait, MAX_WAIT)
    if jitter:
        wait += (rng or random).random() * (wait / JITTER_FRACTION)
    return wait


def _go_parse_bool(value: str) -> bool:
    """strconv.ParseBool."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(value)


def _ci_get(d: dict, name: str, default: Any = None) -> Any:
    """Field lookup ignoring case, as Consul's JSON decoding does."""
    if name in d:
        return d[name]
    low = name.lower()
    for k, v in d.items():
        if isinstance(k, str) and k.lower() == low:
            return v
    return default


def _as_bytes(value: bytes | str | None) -> bytes | None:
    if value is None:
        return None
    return value.encode() if isinstance(value, str) else bytes(value)


def _json(obj: Any, pretty: bool = False) -> bytes:
    if pretty:
        return (json.dumps(obj, indent=4) + "\n").encode()
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass
class _Answer:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    def set_header(self, name: str, value: str | None) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        if value is not None:
            self.headers.append((name, str(value)))


def _text(status: int, message: str) -> _Answer:
    return _Answer(status, message.encode(), [("Content-Type", "text/plain; charset=utf-8")])


def _json_answer(obj: Any, pretty: bool = False, extra: Iterable[tuple[str, str]] = ()) -> _Answer:
    """200 with obj as JSON; extra: more headers after the Content-Type."""
    return _Answer(200, _json(obj, pretty), [("Content-Type", "application/json"), *extra])


@dataclass
class _Read:
    """What a read computed: its index, its payload and whether nothing matched."""

    index: int
    payload: Any
    not_found: bool = False


@dataclass
class _Fault:
    id: int
    path_prefix: str
    method: str | None
    remaining: int | None
    status: int | None = None
    headers: dict[str, str | None] | None = None
    body: bytes | None = None
    truncate: bool = False
    truncate_at: int | None = None
    oversize: int | None = None
    delay: float = 0.0
    drop: bool = False

    def describe(self) -> dict:
        return {
            "id": self.id,
            "path_prefix": self.path_prefix,
            "method": self.method,
            "remaining": self.remaining,
            "status": self.status,
            "headers": self.headers,
            "body": None if self.body is None else self.body.decode("utf-8", "replace"),
            "truncate": self.truncate,
            "truncate_at": self.truncate_at,
            "oversize": self.oversize,
            "delay": self.delay,
            "drop": self.drop,
        }


# ----------------------------------------------------------------------------- the emulator


class ConsulEmulator:
    """An in-process Consul HTTP API emulator (KV, catalog, health) on a threaded HTTP/1.1 server.

    ``port=0`` picks a free port (read it from ``.port`` after ``start()``);
    ``acl_token`` switches ACL enforcement on: every Consul API request must
    then carry that token (``X-Consul-Token``, ``Authorization: Bearer`` or
    ``?token=``). State survives ``stop()``/``start()`` (same port), which is
    how a test makes the registry disappear and come back.
    """

    def __init__(
        self,
        port: int = 0,
        acl_token: str | None = None,
        datacenter: str = "dc1",
        *,
        host: str = "127.0.0.1",
        jitter: bool = True,
        initial_index: int = 1,
        empty_as_null: bool = False,
        verbose: bool = False,
        log_limit: int = 100_000,
    ):
        self.host = host
        self.port = port
        self.acl_token = acl_token
        self.datacenter = datacenter
        self.jitter = jitter
        self.empty_as_null = empty_as_null
        self.verbose = verbose
        self._rng = random.Random()

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._raft = max(0, int(initial_index))
        self._generation = 0
        self._stopping = False
        self._stop_event = threading.Event()

        # KV: key -> entry dict (CreateIndex, ModifyIndex, LockIndex, Flags, Value(bytes|None), Session)
        self._kv: dict[str, dict] = {}
        self._tombstones: dict[str, int] = {}
        self._tables = {"kvs": 0, "nodes": 0, "services": 0, "checks": 0}
        # catalog
        self._nodes: dict[str, dict] = {}
        self._services: dict[tuple[str, str], dict] = {}
        self._checks: dict[tuple[str, str], dict] = {}
        self._service_index: dict[str, int] = {}
        self._extinction_index = 0

        # test hooks
        self._faults: list[_Fault] = []
        self._fault_seq = 0
        self._log: deque[dict] = deque(maxlen=log_limit)
        self._blocked: dict[str, int] = {}

        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "ConsulEmulator":
        """Listens (on ``self.port``, or a free port if 0) and serves in a background thread."""
        if self._server is not None:
            return self
        with self._lock:
            self._stopping = False
            self._stop_event.clear()
        server = _Server((self.host, self.port), _Handler)
        server.emulator = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"consul-emulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops listening and closes every open connection (held blocking queries included). Keeps the state."""
        server = self._server
        if server is None:
            return
        with self._cond:
            self._stopping = True
            self._stop_event.set()
            self._cond.notify_all()
        server.shutdown()
        server.server_close()
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                conn.close()
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def restart(self) -> None:
        """stop() then start() on the same port, keeping the state."""
        self.stop()
        self.start()

    def __enter__(self) -> "ConsulEmulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    # ------------------------------------------------------------------ index bookkeeping

    @property
    def index(self) -> int:
        """The current global (Raft-like) index: that of the last write."""
        with self._lock:
            return self._raft

    def _write(self, mutate: Callable[[int], Any]) -> tuple[int, Any]:
        """Runs one write at a new index and wakes every blocked query."""
        with self._cond:
            self._raft += 1
            idx = self._raft
            try:
                result = mutate(idx)
            except Exception:
                self._raft -= 1  # refused before any change: no index consumed
                raise
            self._cond.notify_all()
            return idx, result

    def reset_index(self, value: int) -> None:
        """Test hook: sets the global index to ``value``.

        Lowering it also lowers every stored index above it to ``value`` (as a
        restored older Raft snapshot would), so every endpoint's
        ``X-Consul-Index`` goes backwards, and releases every held blocking
        query at once with its (lower) index. Later writes continue from
        ``value + 1``. Raising it only moves the counter.
        """
        value = int(value)
        if value < 0:
            raise ValueError("index must be >= 0")
        with self._cond:
            if value < self._raft:
                clamp = lambda i: min(i, value)  # noqa: E731
                for e in self._kv.values():
                    e["CreateIndex"], e["ModifyIndex"] = clamp(e["CreateIndex"]), clamp(e["ModifyIndex"])
                for store in (self._nodes, self._services, self._checks):
                    for e in store.values():
                        e["CreateIndex"], e["ModifyIndex"] = clamp(e["CreateIndex"]), clamp(e["ModifyIndex"])
                self._tombstones = {k: clamp(v) for k, v in self._tombstones.items()}
                self._tables = {k: clamp(v) for k, v in self._tables.items()}
                self._service_index = {k: clamp(v) for k, v in self._service_index.items()}
                self._extinction_index = clamp(self._extinction_index)
                self._generation += 1
            self._raft = value
            self._cond.notify_all()

    # ------------------------------------------------------------------ KV (Python)

    def put_kv(self, key: str, value: bytes | str | None, flags: int = 0) -> int:
        """Sets a key (as ``PUT /v1/kv/<key>``); returns the write's index."""
        data = _as_bytes(value)
        idx, _ = self._write(lambda i: self._kv_set(i, key, data or None, flags))
        return idx

    def delete_kv(self, key: str, recurse: bool = False) -> int:
        """Deletes a key or, with ``recurse``, every key under a prefix; returns the write's index."""
        idx, _ = self._write(lambda i: self._kv_delete(i, key, recurse))
        return idx

    def get_kv(self, key: str) -> dict | None:
        """The stored entry (``Value`` as bytes or None), or None."""
        with self._lock:
            e = self._kv.get(key)
            return copy.deepcopy(e) if e else None

    def kv_keys(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(k for k in self._kv if k.startswith(prefix))

    def reap_tombstones(self, prefix: str = "") -> None:
        """Test hook: forgets deleted keys' tombstones (Consul reaps them after a while).

        A recurse query whose highest index came from a tombstone then reports
        a lower index: one of the documented ways an index goes backwards.
        """
        with self._cond:
            self._tombstones = {k: v for k, v in self._tombstones.items() if not k.startswith(prefix)}
            self._generation += 1
            self._cond.notify_all()

    def _kv_set(self, idx: int, key: str, value: bytes | None, flags: int, cas: int | None = None) -> bool:
        existing = self._kv.get(key)
        if cas is not None:
            if cas == 0 and existing is not None:
                return False
            if cas != 0 and (existing is None or existing["ModifyIndex"] != cas):
                return False
        entry = {
            "LockIndex": existing["LockIndex"] if existing else 0,
            "Key": key,
            "Flags": int(flags),
            "Value": value if value else None,
            "CreateIndex": existing["CreateIndex"] if existing else idx,
            "ModifyIndex": idx,
        }
        self._kv[key] = entry
        self._tombstones.pop(key, None)
        self._tables["kvs"] = idx
        return True

    def _kv_delete(self, idx: int, key: str, recurse: bool, cas: int | None = None) -> bool:
        if recurse:
            doomed = [k for k in self._kv if k.startswith(key)]
        else:
            existing = self._kv.get(key)
            if cas is not None:
                if existing is None:
                    return True
                if existing["ModifyIndex"] != cas:
                    return False
            doomed = [key] if existing is not None else []
        for k in doomed:
            del self._kv[k]
            self._tombstones[k] = idx
        if doomed:
            self._tables["kvs"] = idx
        return True

    # ------------------------------------------------------------------ catalog (Python)

    def register(self, payload: dict) -> int:
        """Registers a node/service/checks from a ``PUT /v1/catalog/register`` body; returns the index."""
        reg = self._parse_registration(payload)
        idx, _ = self._write(lambda i: self._apply_registration(i, reg))
        return idx

    def register_service(
        self,
        service: str,
        address: str,
        port: int,
        *,
        node: str | None = None,
        node_address: str | None = None,
        service_id: str | None = None,
        tags: Iterable[str] = (),
        meta: dict[str, str] | None = None,
        weights: dict[str, int] | None = None,
        status: str | None = "passing",
        check_id: str | None = None,
    ) -> int:
        """Convenience: registers one service instance (node defaults to ``node-<address>``).

        With ``status`` (default "passing") it also registers a service check
        ``service:<id>`` in that state; ``status=None`` registers no check.
        """
        node = node or f"node-{address}"
        sid = service_id or f"{service}-{address}-{port}"
        body: dict[str, Any] = {
            "Node": node,
            "Address": node_address or address,
            "Service": {
                "ID": sid,
                "Service": service,
                "Address": address,
                "Port": port,
                "Tags": list(tags),
                "Meta": dict(meta or {}),
            },
        }
        if weights is not None:
            body["Service"]["Weights"] = dict(weights)
        if status is not None:
            body["Check"] = {
                "CheckID": check_id or f"service:{sid}",
                "Name": f"Service '{service}' check",
                "Status": status,
                "ServiceID": sid,
            }
        return self.register(body)

    def deregister(self, node: str, service_id: str | None = None, check_id: str | None = None) -> int:
        """As ``PUT /v1/catalog/deregister``: a service (and its checks), a check, or the whole node."""
        idx, _ = self._write(lambda i: self._apply_deregistration(i, node, service_id or "", check_id or ""))
        return idx

    def set_check_status(self, node: str, check_id: str, status: str, output: str = "") -> int:
        """Sets a check's status (passing/warning/critical) and output; returns the write's index.

        The write always advances the global index; the affected services'
        indexes move only if the check actually changed (as in Consul).
        """
        if status not in CHECK_STATUSES:
            raise ValueError(f"status must be one of {CHECK_STATUSES}")

        def mutate(idx: int) -> None:
            chk = self._checks.get((node, check_id))
            if chk is None:
                raise KeyError(f"no check {check_id!r} on node {node!r}")
            new = dict(chk, Status=status, Output=output)
            self._store_check(idx, node, new)

        with self._lock:
            if (node, check_id) not in self._checks:
                raise KeyError(f"no check {check_id!r} on node {node!r}")
        idx, _ = self._write(mutate)
        return idx

    def set_node_check(
        self, node: str, status: str, check_id: str = "serfHealth", name: str = "Serf Health Status", output: str = ""
    ) -> int:
        """Creates or updates a node-level check (ServiceID ""), which applies to every service on the node."""
        return self.register(
            {
                "Node": node,
                "Address": self._node_address(node),
                "SkipNodeUpdate": True,
                "Check": {"CheckID": check_id, "Name": name, "Status": status, "Output": output, "ServiceID": ""},
            }
        )

    def touch_service(self, service: str) -> int:
        """Test hook: an idempotent write that moves ``service``'s index without changing any data.

        Held blocking queries on it return with an unchanged body and a higher
        index (the documented "no guarantee of a change").
        """

        def mutate(idx: int) -> None:
            if any(s["Service"] == service for s in self._services.values()):
                self._service_index[service] = idx

        idx, _ = self._write(mutate)
        return idx

    def services(self) -> dict[str, list[dict]]:
        """Snapshot: service name -> instances (copies of the stored records, with node name)."""
        with self._lock:
            out: dict[str, list[dict]] = {}
            for (node, _sid), svc in sorted(self._services.items()):
                out.setdefault(svc["Service"], []).append(dict(copy.deepcopy(svc), Node=node))
            return out

    def _node_address(self, node: str) -> str:
        with self._lock:
            n = self._nodes.get(node)
            if n is None:
                raise KeyError(f"no node {node!r}")
            return n["Address"]

    # ------------------------------------------------------------------ test hooks: faults and log

    def inject_fault(
        self,
        path_prefix: str,
        count: int | None = 1,
        *,
        method: str | None = None,
        status: int | None = None,
        headers: dict[str, str | None] | None = None,
        body: bytes | str | None = None,
        truncate: bool = False,
        truncate_at: int | None = None,
        oversize: int | None = None,
        delay: float = 0.0,
        drop: bool = False,
    ) -> int:
        """Test hook: the next ``count`` requests (None: all, until cleared) whose path starts
        with ``path_prefix`` (and whose method is ``method``, if given) misbehave.

        * ``delay``: seconds slept before anything else happens (then the
          request is served normally unless another option says otherwise).
        * ``drop``: the connection is closed with no response at all.
        * ``status``: this status is sent instead of the real answer, with
          ``headers`` and ``body`` (default empty, ``text/plain``).
        * without ``status``: the real answer is computed (ACL, blocking and
          all), then ``headers`` override its headers (a value of None removes
          one, e.g. ``{"X-Consul-Index": None}``) and ``body`` replaces its body.
        * ``oversize``: the body is replaced by ``oversize`` bytes of valid JSON
          (a single string in an array), with a correct Content-Length.
        * ``truncate``: Content-Length announces the whole body but only
          ``truncate_at`` bytes (default: half) are sent, then the connection
          is closed.

        Returns the fault's id. Faults are taken first-registered first.
        """
        if count is not None and count < 1:
            raise ValueError("count must be >= 1 or None")
        with self._lock:
            self._fault_seq += 1
            fault = _Fault(
                id=self._fault_seq,
                path_prefix=path_prefix,
                method=method.upper() if method else None,
                remaining=count,
                status=status,
                headers=dict(headers) if headers else None,
                body=_as_bytes(body),
                truncate=truncate,
                truncate_at=truncate_at,
                oversize=oversize,
                delay=float(delay),
                drop=drop,
            )
            self._faults.append(fault)
            return fault.id

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def faults(self) -> list[dict]:
        with self._lock:
            return [f.describe() for f in self._faults]

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for f in self._faults:
                if path.startswith(f.path_prefix) and (f.method is None or f.method == method):
                    if f.remaining is not None:
                        f.remaining -= 1
                        if f.remaining <= 0:
                            self._faults.remove(f)
                    return f
            return None

    def requests(
        self, path_prefix: str | None = None, method: str | None = None, since: float | None = None
    ) -> list[dict]:
        """Test hook: logged Consul API requests, oldest first.

        Each is ``{"time", "monotonic", "method", "path", "raw_query", "query"
        (name -> list of values), "headers" (lower-cased name -> value),
        "status" (None while in flight or when dropped), "fault" (fault id or
        None)}``. ``since`` compares with ``time.monotonic()`` values.
        """
        with self._lock:
            out = []
            for e in self._log:
                if path_prefix is not None and not e["path"].startswith(path_prefix):
                    continue
                if method is not None and e["method"] != method.upper():
                    continue
                if since is not None and e["monotonic"] < since:
                    continue
                out.append(copy.deepcopy(e))
            return out

    def request_count(
        self, path_prefix: str | None = None, method: str | None = None, since: float | None = None
    ) -> int:
        return len(self.requests(path_prefix, method, since))

    def requests_per_minute(self, path_prefix: str | None = None, window: float = 60.0) -> float:
        """Requests matching ``path_prefix`` in the last ``window`` seconds, scaled to one minute."""
        n = self.request_count(path_prefix, since=time.monotonic() - window)
        return n * 60.0 / window

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def blocked_count(self, path_prefix: str | None = None) -> int:
        """How many blocking queries are being held right now (on paths with ``path_prefix``)."""
        with self._lock:
            return sum(n for p, n in self._blocked.items() if path_prefix is None or p.startswith(path_prefix))

    def wait_until_blocked(self, n: int = 1, path_prefix: str | None = None, timeout: float = 5.0) -> bool:
        """Waits until at least ``n`` blocking queries are held; False on timeout.

        A write made after this returns True is seen by those held queries.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.blocked_count(path_prefix) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    # ------------------------------------------------------------------ catalog internals

    def _parse_registration(self, body: Any) -> dict:
        if not isinstance(body, dict):
            raise EmulatorError(400, "Request decode failed: expected a JSON object")
        node = _ci_get(body, "Node") or ""
        address = _ci_get(body, "Address") or ""
        if not node:
            raise EmulatorError(400, "Missing node name")
        dc = _ci_get(body, "Datacenter") or ""
        if dc and dc != self.datacenter:
            raise EmulatorError(500, "No path to datacenter")
        skip_node_update = bool(_ci_get(body, "SkipNodeUpdate", False))
        if not address and not skip_node_update:
            raise EmulatorError(400, "Missing node address")
        reg: dict[str, Any] = {
            "node": node,
            "address": address,
            "id": _ci_get(body, "ID") or "",
            "tagged": dict(_ci_get(body, "TaggedAddresses") or {}),
            "meta": dict(_ci_get(body, "NodeMeta") or {}),
            "skip_node_update": skip_node_update,
            "service": None,
            "checks": [],
        }
        svc = _ci_get(body, "Service")
        if svc:
            name = _ci_get(svc, "Service") or ""
            if not name:
                raise EmulatorError(400, "Missing service name")
            weights = _ci_get(svc, "Weights")
            reg["service"] = {
                "ID": _ci_get(svc, "ID") or name,
                "Service": name,
                "Tags": list(_ci_get(svc, "Tags") or []),
                "Address": _ci_get(svc, "Address") or "",
                "TaggedAddresses": copy.deepcopy(_ci_get(svc, "TaggedAddresses") or {}),
                "Meta": dict(_ci_get(svc, "Meta") or {}),
                "Port": int(_ci_get(svc, "Port") or 0),
                "Weights": {
                    "Passing": int(_ci_get(weights, "Passing", 1)) if weights else 1,
                    "Warning": int(_ci_get(weights, "Warning", 1)) if weights else 1,
                },
                "EnableTagOverride": bool(_ci_get(svc, "EnableTagOverride", False)),
                "Kind": _ci_get(svc, "Kind") or "",
            }
        checks = []
        one = _ci_get(body, "Check")
        if one:
            checks.append(one)
        checks.extend(_ci_get(body, "Checks") or [])
        for c in checks:
            if not isinstance(c, dict):
                raise EmulatorError(400, "Request decode failed: a check is not an object")
            cid = _ci_get(c, "CheckID") or _ci_get(c, "Name") or ""
            if not cid:
                raise EmulatorError(400, "Missing check ID")
            status = _ci_get(c, "Status") or "critical"
            if status not in CHECK_STATUSES:
                raise EmulatorError(400, "Invalid check status")
            reg["checks"].append(
                {
                    "CheckID": cid,
                    "Name": _ci_get(c, "Name") or cid,
                    "Status": status,
                    "Notes": _ci_get(c, "Notes") or "",
                    "Output": _ci_get(c, "Output") or "",
                    "ServiceID": _ci_get(c, "ServiceID") or "",
                    "Type": _ci_get(c, "Type") or "",
                    "Definition": copy.deepcopy(_ci_get(c, "Definition") or {}),
                }
            )
        return reg

    def _apply_registration(self, idx: int, reg: dict) -> None:
        node = reg["node"]
        # Validate everything before touching the state (a Consul registration is one transaction).
        new_sid = reg["service"]["ID"] if reg["service"] else None
        for c in reg["checks"]:
            sid = c["ServiceID"]
            if sid and sid != new_sid and (node, sid) not in self._services:
                raise EmulatorError(500, f"Unknown service ID {sid!r} for check ID {c['CheckID']!r}")
        if node not in self._nodes or not reg["skip_node_update"]:
            if not reg["address"]:
                raise EmulatorError(400, "Missing node address")
            self._store_node(idx, node, reg["id"], reg["address"], reg["tagged"], reg["meta"])
        if reg["service"]:
            self._store_service(idx, node, reg["service"])
        for c in reg["checks"]:
            self._store_check(idx, node, c)

    def _store_node(self, idx: int, node: str, node_id: str, address: str, tagged: dict, meta: dict) -> None:
        old = self._nodes.get(node)
        new = {"ID": node_id, "Address": address, "TaggedAddresses": tagged, "Meta": meta}
        if old is not None and all(old[k] == v for k, v in new.items()):
            return
        new["CreateIndex"] = old["CreateIndex"] if old else idx
        new["ModifyIndex"] = idx
        self._nodes[node] = new
        self._tables["nodes"] = idx
        self._bump_services_of_node(idx, node)

    def _bump_services_of_node(self, idx: int, node: str) -> None:
        for (n, _sid), svc in self._services.items():
            if n == node:
                self._service_index[svc["Service"]] = idx

    def _store_service(self, idx: int, node: str, svc: dict) -> None:
        key = (node, svc["ID"])
        old = self._services.get(key)
        if old is not None:
            if all(old[k] == v for k, v in svc.items()):
                return
            if old["Service"] != svc["Service"]:
                del self._services[key]
                self._service_gone_or_changed(idx, old["Service"])
        new = dict(copy.deepcopy(svc), CreateIndex=old["CreateIndex"] if old else idx, ModifyIndex=idx)
        self._services[key] = new
        self._tables["services"] = idx
        self._service_index[svc["Service"]] = idx

    def _service_gone_or_changed(self, idx: int, name: str) -> None:
        if any(s["Service"] == name for s in self._services.values()):
            self._service_index[name] = idx
        else:
            self._service_index.pop(name, None)
            self._extinction_index = idx

    def _store_check(self, idx: int, node: str, chk: dict) -> None:
        key = (node, chk["CheckID"])
        old = self._checks.get(key)
        fields = {k: v for k, v in chk.items() if k not in ("CreateIndex", "ModifyIndex")}
        if old is not None and all(old.get(k) == v for k, v in fields.items()):
            return
        if old is not None and old["ServiceID"] and old["ServiceID"] != fields["ServiceID"]:
            prev = self._services.get((node, old["ServiceID"]))
            if prev:
                self._service_index[prev["Service"]] = idx
        new = dict(copy.deepcopy(fields), CreateIndex=old["CreateIndex"] if old else idx, ModifyIndex=idx)
        self._checks[key] = new
        self._tables["checks"] = idx
        self._bump_for_check(idx, node, new["ServiceID"])

    def _bump_for_check(self, idx: int, node: str, service_id: str) -> None:
        if service_id:
            svc = self._services.get((node, service_id))
            if svc:
                self._service_index[svc["Service"]] = idx
        else:
            self._bump_services_of_node(idx, node)

    def _delete_service(self, idx: int, node: str, sid: str) -> None:
        svc = self._services.pop((node, sid), None)
        if svc is None:
            return
        for key in [k for k, c in self._checks.items() if k[0] == node and c["ServiceID"] == sid]:
            del self._checks[key]
            self._tables["checks"] = idx
        self._tables["services"] = idx
        self._service_gone_or_changed(idx, svc["Service"])

    def _apply_deregistration(self, idx: int, node: str, service_id: str, check_id: str) -> None:
        if not node:
            raise EmulatorError(400, "Missing node name")
        if node not in self._nodes:
            return
        if service_id:
            self._delete_service(idx, node, service_id)
        if check_id:
            chk = self._checks.pop((node, check_id), None)
            if chk is not None:
                self._tables["checks"] = idx
                self._bump_for_check(idx, node, chk["ServiceID"])
        if not service_id and not check_id:
            for n, sid in [k for k in self._services if k[0] == node]:
                self._delete_service(idx, n, sid)
            for key in [k for k in self._checks if k[0] == node]:
                del self._checks[key]
                self._tables["checks"] = idx
            del self._nodes[node]
            self._tables["nodes"] = idx

    # ------------------------------------------------------------------ reads (all under the lock)

    def _empty(self, value: Any) -> Any:
        return None if self.empty_as_null and not value else value

    def _kv_entry_json(self, e: dict) -> dict:
        out = {
            "LockIndex": e["LockIndex"],
            "Key": e["Key"],
            "Flags": e["Flags"],
            "Value": base64.b64encode(e["Value"]).decode() if e["Value"] else None,
            "CreateIndex": e["CreateIndex"],
            "ModifyIndex": e["ModifyIndex"],
        }
        if e.get("Session"):
            out["Session"] = e["Session"]
        return out

    def _read_kv(self, key: str, recurse: bool, keys: bool, separator: str) -> _Read:
        table = self._tables["kvs"]
        if not recurse and not keys:
            e = self._kv.get(key)
            if e is None:
                return _Read(table, None, not_found=True)
            return _Read(e["ModifyIndex"], [self._kv_entry_json(e)])
        matched = sorted(k for k in self._kv if k.startswith(key))
        if key:
            live = [self._kv[k]["ModifyIndex"] for k in matched]
            dead = [v for k, v in self._tombstones.items() if k.startswith(key)]
            sub = max(live + dead + [0])
        else:
            sub = table
        index = sub if sub else table
        if not matched:
            return _Read(index, None, not_found=True)
        if keys:
            out: list[str] = []
            for k in matched:
                if separator:
                    cut = k.find(separator, len(key))
                    if cut >= 0:
                        k = k[: cut + len(separator)]
                if not out or out[-1] != k:
                    out.append(k)
            return _Read(index, out)
        return _Read(index, [self._kv_entry_json(self._kv[k]) for k in matched])

    def _service_index_for(self, name: str, with_checks: bool) -> int:
        if name in self._service_index:
            return self._service_index[name]
        if self._extinction_index:
            return self._extinction_index
        tables = ["nodes", "services"] + (["checks"] if with_checks else [])
        return max(self._tables[t] for t in tables)

    def _instances(self, name: str, tags: list[str], node_meta: dict[str, str]) -> list[tuple[str, dict]]:
        out = []
        for (node, _sid), svc in sorted(self._services.items()):
            if svc["Service"] != name:
                continue
            if any(t not in svc["Tags"] for t in tags):
                continue
            meta = self._nodes[node]["Meta"]
            if any(meta.get(k) != v for k, v in node_meta.items()):
                continue
            out.append((node, svc))
        return out

    def _read_catalog_service(self, name: str, tags: list[str], node_meta: dict[str, str]) -> _Read:
        out = []
        for node, svc in self._instances(name, tags, node_meta):
            n = self._nodes[node]
            out.append(
                {
                    "ID": n["ID"],
                    "Node": node,
                    "Address": n["Address"],
                    "Datacenter": self.datacenter,
                    "TaggedAddresses": self._empty(copy.deepcopy(n["TaggedAddresses"])),
                    "NodeMeta": self._empty(copy.deepcopy(n["Meta"])),
                    "ServiceKind": svc["Kind"],
                    "ServiceID": svc["ID"],
                    "ServiceName": svc["Service"],
                    "ServiceTags": self._empty(list(svc["Tags"])),
                    "ServiceAddress": svc["Address"],
                    "ServiceTaggedAddresses": self._empty(copy.deepcopy(svc["TaggedAddresses"])),
                    "ServiceWeights": dict(svc["Weights"]),
                    "ServiceMeta": self._empty(copy.deepcopy(svc["Meta"])),
                    "ServicePort": svc["Port"],
                    "ServiceEnableTagOverride": svc["EnableTagOverride"],
                    "ServiceProxy": {"MeshGateway": {}, "Expose": {}},
                    "ServiceConnect": {},
                    "CreateIndex": svc["CreateIndex"],
                    "ModifyIndex": svc["ModifyIndex"],
                }
            )
        return _Read(self._service_index_for(name, with_checks=False), out)

    def _check_json(self, node: str, chk: dict) -> dict:
        svc = self._services.get((node, chk["ServiceID"])) if chk["ServiceID"] else None
        return {
            "Node": node,
            "CheckID": chk["CheckID"],
            "Name": chk["Name"],
            "Status": chk["Status"],
            "Notes": chk["Notes"],
            "Output": chk["Output"],
            "ServiceID": chk["ServiceID"],
            "ServiceName": svc["Service"] if svc else "",
            "ServiceTags": self._empty(list(svc["Tags"]) if svc else []),
            "Type": chk["Type"],
            "Definition": copy.deepcopy(chk["Definition"]),
            "CreateIndex": chk["CreateIndex"],
            "ModifyIndex": chk["ModifyIndex"],
        }

    def _read_health_service(self, name: str, tags: list[str], node_meta: dict[str, str], passing: bool) -> _Read:
        out = []
        for node, svc in self._instances(name, tags, node_meta):
            n = self._nodes[node]
            by_id = lambda c: c["CheckID"]  # noqa: E731
            mine = [c for (cn, _), c in self._checks.items() if cn == node]
            node_checks = sorted((c for c in mine if not c["ServiceID"]), key=by_id)
            svc_checks = sorted((c for c in mine if c["ServiceID"] == svc["ID"]), key=by_id)
            checks = [self._check_json(node, c) for c in node_checks + svc_checks]
            out.append(
                {
                    "Node": {
                        "ID": n["ID"],
                        "Node": node,
                        "Address": n["Address"],
                        "Datacenter": self.datacenter,
                        "TaggedAddresses": self._empty(copy.deepcopy(n["TaggedAddresses"])),
                        "Meta": self._empty(copy.deepcopy(n["Meta"])),
                        "CreateIndex": n["CreateIndex"],
                        "ModifyIndex": n["ModifyIndex"],
                    },
                    "Service": {
                        "Kind": svc["Kind"],
                        "ID": svc["ID"],
                        "Service": svc["Service"],
                        "Tags": self._empty(list(svc["Tags"])),
                        "Address": svc["Address"],
                        "TaggedAddresses": self._empty(copy.deepcopy(svc["TaggedAddresses"])),
                        "Meta": self._empty(copy.deepcopy(svc["Meta"])),
                        "Port": svc["Port"],
                        "Weights": dict(svc["Weights"]),
                        "EnableTagOverride": svc["EnableTagOverride"],
                        "Proxy": {"MeshGateway": {}, "Expose": {}},
                        "Connect": {},
                        "CreateIndex": svc["CreateIndex"],
                        "ModifyIndex": svc["ModifyIndex"],
                    },
                    "Checks": checks,
                }
            )
        if passing:
            out = _filter_non_passing(out)
        return _Read(self._service_index_for(name, with_checks=True), out)

    def _read_catalog_services(self) -> _Read:
        out: dict[str, list[str]] = {}
        for svc in self._services.values():
            tags = out.setdefault(svc["Service"], [])
            for t in svc["Tags"]:
                if t not in tags:
                    tags.append(t)
        return _Read(self._tables["services"], {k: sorted(v) for k, v in sorted(out.items())})

    def _read_catalog_nodes(self) -> _Read:
        out = [
            {
                "ID": n["ID"],
                "Node": name,
                "Address": n["Address"],
                "Datacenter": self.datacenter,
                "TaggedAddresses": self._empty(copy.deepcopy(n["TaggedAddresses"])),
                "Meta": self._empty(copy.deepcopy(n["Meta"])),
                "CreateIndex": n["CreateIndex"],
                "ModifyIndex": n["ModifyIndex"],
            }
            for name, n in sorted(self._nodes.items())
        ]
        return _Read(self._tables["nodes"], out)

    def _blocking_read(self, path: str, compute: Callable[[], _Read], min_index: int, wait: float | None) -> _Read:
        """Consul's blocking query loop (agent/consul/rpc.go blockingQuery, as documented)."""
        with self._cond:
            res = compute()
            res.index = max(res.index, 1)
            if min_index <= 0:
                return res
            hold = blocking_hold(wait, self.jitter, self._rng)
            deadline = time.monotonic() + hold
            generation = self._generation
            not_found = res.not_found
            while True:
                if res.index > min_index:
                    return res
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping or generation != self._generation:
                    return res
                self._blocked[path] = self._blocked.get(path, 0) + 1
                self._cond.notify_all()  # wake wait_until_blocked()
                try:
                    self._cond.wait(left)
                finally:
                    self._blocked[path] -= 1
                    if not self._blocked[path]:
                        del self._blocked[path]
                res = compute()
                res.index = max(res.index, 1)
                if res.not_found:
                    if not_found:
                        # Still nothing: writes elsewhere in the table must not wake the query.
                        min_index = max(min_index, res.index)
                    not_found = True
                if generation != self._generation:
                    return res

    # ------------------------------------------------------------------ HTTP dispatch

    def _token_of(self, query: dict[str, list[str]], headers: dict[str, str]) -> str:
        """agent/http.go parseToken: ?token=, then X-Consul-Token, then Authorization: Bearer."""
        tok = (query.get("token") or [""])[0]
        if tok:
            return tok
        tok = headers.get("x-consul-token", "")
        if tok:
            return tok
        auth = headers.get("authorization", "")
        parts = auth.split(" ")
        if len(parts) > 1 and parts[0].lower() == "bearer":
            value = " ".join(parts[1:]).strip()
            return value.split(" ")[0].strip()
        return ""

    def _check_acl(self, query: dict[str, list[str]], headers: dict[str, str]) -> None:
        if self.acl_token is None:
            return
        tok = self._token_of(query, headers)
        if tok == self.acl_token:
            return
        if tok == "" or tok == "anonymous":
            raise EmulatorError(403, "Permission denied")
        raise EmulatorError(403, "ACL not found")

    def _base_headers(self) -> list[tuple[str, str]]:
        return [("X-Consul-Default-Acl-Policy", "deny" if self.acl_token is not None else "allow")]

    def dispatch(self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"") -> _Answer:
        """Answers one Consul API request without HTTP (used by the server; handy in unit tests)."""
        split = urlsplit(target)
        query = parse_qs(split.query, keep_blank_values=True)
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        try:
            answer = self._route(method.upper(), split.path, query, hdrs, body)
        except EmulatorError as err:
            answer = _text(err.status, err.message)
        except Exception as err:  # a bug in the emulator: say so instead of dropping the connection
            traceback.print_exc()
            answer = _text(500, f"consul emulator internal error: {err!r}")
        answer.headers = self._base_headers() + answer.headers
        return answer

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes
    ) -> _Answer:
        def allow(*methods: str) -> None:
            if method not in methods:
                raise EmulatorError(405, f"method {method} not allowed")

        if path.startswith("/v1/kv/"):
            key = unquote(path[len("/v1/kv/") :])
            allow("GET", "PUT", "DELETE")
            if method == "GET":
                return self._http_kv_get(path, key, query, headers)
            return self._http_kv_write(method, key, query, headers, body)
        if path == "/v1/catalog/register":
            allow("PUT")
            return self._http_catalog_write(query, headers, body, register=True)
        if path == "/v1/catalog/deregister":
            allow("PUT")
            return self._http_catalog_write(query, headers, body, register=False)
        if path == "/v1/catalog/services":
            allow("GET")
            return self._http_read(path, query, headers, self._read_catalog_services)
        if path.startswith("/v1/catalog/service/"):
            allow("GET")
            name = unquote(path[len("/v1/catalog/service/") :])
            if not name:
                raise EmulatorError(400, "Missing service name")
            tags, node_meta = self._filters(query)
            return self._http_read(path, query, headers, lambda: self._read_catalog_service(name, tags, node_meta))
        if path == "/v1/catalog/nodes":
            allow("GET")
            return self._http_read(path, query, headers, self._read_catalog_nodes)
        if path.startswith("/v1/health/service/"):
            allow("GET")
            name = unquote(path[len("/v1/health/service/") :])
            if not name:
                raise EmulatorError(400, "Missing service name")
            tags, node_meta = self._filters(query)
            passing = False
            if "passing" in query:
                raw = query["passing"][0]
                try:
                    passing = True if raw == "" else _go_parse_bool(raw)
                except ValueError:
                    raise EmulatorError(400, "Invalid value for ?passing") from None
            compute = lambda: self._read_health_service(name, tags, node_meta, passing)  # noqa: E731
            return self._http_read(path, query, headers, compute)
        # catalog.mdx / status.mdx: these two need no ACL and do not block.
        if path == "/v1/catalog/datacenters":
            allow("GET")
            return _json_answer([self.datacenter], "pretty" in query)
        if path == "/v1/status/leader":
            allow("GET")
            return _json_answer(f"{self.host}:8300", "pretty" in query)
        return _text(404, f"consul emulator: no such endpoint {path} (not emulated)")

    def _filters(self, query: dict[str, list[str]]) -> tuple[list[str], dict[str, str]]:
        if "filter" in query:
            raise EmulatorError(400, "consul emulator: ?filter expressions are not emulated")
        tags = [t for t in query.get("tag", []) if t != ""]
        node_meta = {}
        for pair in query.get("node-meta", []):
            k, _, v = pair.partition(":")
            node_meta[k] = v
        return tags, node_meta

    def _read_options(self, query: dict[str, list[str]]) -> tuple[str, float | None, int]:
        """agent/http.go parseConsistency + parseWait + parseDC; raises the documented errors."""
        stale, consistent = "stale" in query, "consistent" in query
        if stale and consistent:
            raise EmulatorError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        wait: float | None = None
        raw_wait = (query.get("wait") or [""])[0]
        if raw_wait:
            try:
                wait = parse_go_duration(raw_wait)
            except ValueError:
                raise EmulatorError(400, "Invalid wait time") from None
        index = 0
        raw_index = (query.get("index") or [""])[0]
        if raw_index:
            if not raw_index.isdigit() or int(raw_index) >= 2**64:
                raise EmulatorError(400, "Invalid index")
            index = int(raw_index)
        self._check_dc(query)
        return ("stale" if stale else "consistent" if consistent else "leader"), wait, index

    def _check_dc(self, query: dict[str, list[str]]) -> None:
        dc = (query.get("dc") or [""])[0]
        if dc and dc != self.datacenter:
            raise EmulatorError(500, "No path to datacenter")

    def _meta_headers(self, index: int, consistency: str) -> list[tuple[str, str]]:
        return [
            ("X-Consul-Effective-Consistency", consistency),
            ("X-Consul-Index", str(index)),
            ("X-Consul-Knownleader", "true"),
            ("X-Consul-Lastcontact", "0"),
        ]

    def _http_read(
        self, path: str, query: dict[str, list[str]], headers: dict[str, str], compute: Callable[[], _Read]
    ) -> _Answer:
        consistency, wait, min_index = self._read_options(query)
        self._check_acl(query, headers)
        res = self._blocking_read(path, compute, min_index, wait)
        meta = self._meta_headers(res.index, consistency)
        return _json_answer(res.payload, "pretty" in query, meta)

    def _http_kv_get(self, path: str, key: str, query: dict[str, list[str]], headers: dict[str, str]) -> _Answer:
        consistency, wait, min_index = self._read_options(query)
        self._check_acl(query, headers)
        keys = "keys" in query
        recurse = "recurse" in query or keys
        separator = (query.get("separator") or [""])[0]
        label = path + "?" + ("keys" if keys else "recurse" if recurse else "")
        res = self._blocking_read(label, lambda: self._read_kv(key, recurse, keys, separator), min_index, wait)
        meta = self._meta_headers(res.index, consistency)
        if res.payload is None:
            return _Answer(404, b"", meta)
        if "raw" in query and not recurse:
            value = self._kv_value_raw(res)
            return _Answer(200, value, [("Content-Type", "text/plain; charset=utf-8")] + meta)
        return _json_answer(res.payload, "pretty" in query, meta)

    @staticmethod
    def _kv_value_raw(res: _Read) -> bytes:
        value = res.payload[0]["Value"]
        return base64.b64decode(value) if value else b""

    def _http_kv_write(
        self, method: str, key: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes
    ) -> _Answer:
        self._check_dc(query)
        self._check_acl(query, headers)
        recurse = "recurse" in query
        if not key and not (method == "DELETE" and recurse):
            raise EmulatorError(400, "Missing key name")
        cas: int | None = None
        if "cas" in query:
            raw = query["cas"][0]
            if not raw.isdigit():
                raise EmulatorError(400, f"Invalid cas index {raw!r}")
            cas = int(raw)
        if method == "PUT":
            if "acquire" in query or "release" in query:
                raise EmulatorError(400, "consul emulator: sessions (?acquire, ?release) are not emulated")
            flags = 0
            if "flags" in query:
                raw = query["flags"][0]
                if not raw.isdigit() or int(raw) >= 2**64:
                    raise EmulatorError(400, f"Invalid flags {raw!r}")
                flags = int(raw)
            if len(body) > KV_MAX_VALUE:
                raise EmulatorError(
                    413,
                    f"Request body({len(body)} bytes) too large, max size: {KV_MAX_VALUE} bytes."
                    " See the kv_max_value_size option.",
                )
            _, ok = self._write(lambda i: self._kv_set(i, key, body or None, flags, cas))
        else:
            _, ok = self._write(lambda i: self._kv_delete(i, key, recurse, cas))
        return _json_answer(ok)

    def _http_catalog_write(
        self, query: dict[str, list[str]], headers: dict[str, str], body: bytes, register: bool
    ) -> _Answer:
        self._check_dc(query)
        self._check_acl(query, headers)
        try:
            payload = json.loads(body or b"null")
        except ValueError as err:
            raise EmulatorError(400, f"Request decode failed: {err}") from None
        if register:
            reg = self._parse_registration(payload)
            self._write(lambda i: self._apply_registration(i, reg))
        else:
            if not isinstance(payload, dict):
                raise EmulatorError(400, "Request decode failed: expected a JSON object")
            dc = _ci_get(payload, "Datacenter") or ""
            if dc and dc != self.datacenter:
                raise EmulatorError(500, "No path to datacenter")
            node = _ci_get(payload, "Node") or ""
            if not node:
                raise EmulatorError(400, "Missing node name")
            sid, cid = _ci_get(payload, "ServiceID") or "", _ci_get(payload, "CheckID") or ""
            self._write(lambda i: self._apply_deregistration(i, node, sid, cid))
        return _json_answer(True)

    # ------------------------------------------------------------------ /_emulator/ HTTP hooks

    def _hook(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> _Answer:
        """The test hooks over HTTP (for tests that drive a CLI emulator). Not part of Consul's API."""
        ok = _json_answer(True)

        def payload() -> dict:
            try:
                data = json.loads(body or b"{}")
            except ValueError as err:
                raise EmulatorError(400, f"bad JSON: {err}") from None
            if not isinstance(data, dict):
                raise EmulatorError(400, "expected a JSON object")
            return data

        write = method in ("PUT", "POST")
        try:
            if path == "/_emulator/state" and method == "GET":
                with self._lock:
                    state = {
                        "index": self._raft,
                        "blocked": self.blocked_count(),
                        "faults": self.faults(),
                        "datacenter": self.datacenter,
                    }
                return _json_answer(state)
            if path == "/_emulator/index" and write:
                self.reset_index(int(payload()["index"]))
                return ok
            if path == "/_emulator/faults" and write:
                spec = payload()
                prefix = spec.pop("path_prefix", None)
                if prefix is None:
                    raise EmulatorError(400, "path_prefix is required")
                fid = self.inject_fault(prefix, **spec)
                return _json_answer({"id": fid})
            if path == "/_emulator/faults" and method == "GET":
                return _json_answer(self.faults())
            if path == "/_emulator/faults" and method == "DELETE":
                self.clear_faults()
                return ok
            if path == "/_emulator/requests" and method == "GET":
                prefix = (query.get("path_prefix") or [None])[0]
                return _json_answer(self.requests(prefix))
            if path == "/_emulator/requests" and method == "DELETE":
                self.clear_requests()
                return ok
            if path == "/_emulator/check" and write:
                spec = payload()
                idx = self.set_check_status(spec["Node"], spec["CheckID"], spec["Status"], spec.get("Output", ""))
                return _json_answer({"index": idx})
            if path.startswith("/_emulator/touch/") and write:
                idx = self.touch_service(unquote(path[len("/_emulator/touch/") :]))
                return _json_answer({"index": idx})
            if path == "/_emulator/reap_tombstones" and write:
                self.reap_tombstones((query.get("prefix") or [""])[0])
                return ok
        except EmulatorError as err:
            return _text(err.status, err.message)
        except (KeyError, ValueError, TypeError) as err:
            return _text(400, f"consul emulator hook: {err!r}")
        return _text(404, f"consul emulator: no such hook {method} {path}")

    def _log_request(self, method: str, path: str, raw_query: str, headers: dict[str, str]) -> dict:
        entry = {
            "time": time.time(),
            "monotonic": time.monotonic(),
            "method": method,
            "path": path,
            "raw_query": raw_query,
            "query": parse_qs(raw_query, keep_blank_values=True),
            "headers": dict(headers),
            "status": None,
            "fault": None,
        }
        with self._lock:
            self._log.append(entry)
        return entry

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)


def _filter_non_passing(entries: list[dict]) -> list[dict]:
    """Consul's filterNonPassing (agent/health_endpoint.go): a failing entry is swapped with the
    last kept one, so ``?passing`` does not keep the order of the unfiltered list."""
    out = list(entries)
    n = len(out)
    i = 0
    while i < n:
        if any(c["Status"] != "passing" for c in out[i]["Checks"]):
            out[i], out[n - 1] = out[n - 1], out[i]
            n -= 1
            continue
        i += 1
    return out[:n]


def _padding_json(size: int) -> bytes:
    """Exactly ``size`` bytes of valid JSON (``["xxx…"]``), or as close as possible below 5 bytes."""
    if size < 4:
        return b"[]"[:size] if size else b""
    return b'["' + b"x" * (size - 4) + b'"]'


# ----------------------------------------------------------------------------- HTTP server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    emulator: ConsulEmulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (OSError, ValueError)):
            return  # a client that went away, or a connection closed by stop()
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "ConsulEmulator/1.0"
    sys_version = ""
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.server.emulator._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.emulator._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.emulator.verbose:
            sys.stderr.write(f"consul-emulator {self.address_string()} {format % args}\n")

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, answer: _Answer, truncate_at: int | None = None) -> None:
        body = answer.body
        declared = len(body)
        if truncate_at is not None:
            declared = max(declared, 1)
            body = body[: max(0, min(truncate_at, declared - 1))]
            self.close_connection = True
        self.send_response(answer.status)
        for k, v in answer.headers:
            if k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        if body:
            self.wfile.write(body)
        self.wfile.flush()

    def _handle(self) -> None:
        emu = self.server.emulator
        method = self.command.upper()
        split = urlsplit(self.path)
        path, raw_query = split.path, split.query
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self._send(_text(400, "bad request body"))
            return

        if path.startswith("/_emulator/"):
            self._send(emu._hook(method, path, parse_qs(raw_query, keep_blank_values=True), body))
            return

        entry = emu._log_request(method, path, raw_query, headers)
        fault = emu._take_fault(method, path)
        if fault is None:
            answer = emu.dispatch(method, self.path, headers, body)
            entry["status"] = answer.status
            self._send(answer)
            return

        entry["fault"] = fault.id
        if fault.delay > 0:
            emu._stop_event.wait(fault.delay)
        if fault.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault.status is not None:
            answer = _Answer(fault.status, b"", emu._base_headers() + [("Content-Type", "text/plain; charset=utf-8")])
        else:
            answer = emu.dispatch(method, self.path, headers, body)
        for k, v in (fault.headers or {}).items():
            answer.set_header(k, v)
        if fault.body is not None:
            answer.body = fault.body
        if fault.oversize is not None:
            answer.body = _padding_json(fault.oversize)
            answer.set_header("Content-Type", "application/json")
        truncate_at = None
        if fault.truncate:
            truncate_at = fault.truncate_at if fault.truncate_at is not None else len(answer.body) // 2
        entry["status"] = answer.status
        self._send(answer, truncate_at)


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Consul HTTP API emulator (KV, catalog, health, blocking queries, ACL token)."
    )
    parser.add_argument("--port", type=int, default=8500, help="port to listen on; 0 picks a free one (default 8500)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--acl-token", default=None, help="require this token on every Consul API request")
    parser.add_argument("--datacenter", default="dc1", help="the emulated datacenter's name (default dc1)")
    parser.add_argument(
        "--no-jitter", action="store_true", help="hold blocking queries exactly `wait`, no wait/16 jitter"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    emu = ConsulEmulator(
        port=args.port,
        acl_token=args.acl_token,
        datacenter=args.datacenter,
        host=args.host,
        jitter=not args.no_jitter,
        verbose=args.verbose,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    emu.start()
    print(emu.port, flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
