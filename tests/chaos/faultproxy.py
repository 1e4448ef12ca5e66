"""A fault-injecting HTTP/1.1 proxy for the registry path: Envoy -> proxy -> etcd.

Envoy's `etcd` cluster (the poller's `registry.target`) points at this proxy;
the proxy forwards to a real etcd's v3 JSON gateway, or answers wrongly, in
the mode the test sets with `set_mode`:

  pass      forward the request, relay etcd's answer (etcd down: the client
            connection is reset, as a refused connection would look)
  garbage   200 with a body that is not an etcd answer (HTML, binary, JSON
            of the wrong shape; a different one on each request)
  http500   HTTP 500
  truncated etcd's real answer with its real Content-Length, but the
            connection is closed halfway through the body
  cut       etcd's real answer cut in half, sent as a complete HTTP answer
            (Content-Length matches): a body that ends mid-JSON
  hang      the request is read and never answered, until the client gives up
  empty     a valid etcd answer with zero kvs: etcd's real answer with `kvs`,
            `count` and `more` removed, as etcd itself sends an empty range
  oversize  etcd's real answer plus bogus members under the requested prefix
            until the body is larger than `oversize_bytes` (valid JSON: a
            plugin that read it would publish thousands of members at
            10.200.x.y that nothing listens on)

Standard library only; one thread per client connection; every answer is
counted per mode (`counts()`), so a test can tell a fault was delivered.
"""

from __future__ import annotations

import base64
import collections
import http.client
import json
import select
import socket
import socketserver
import struct
import threading

MODES = ("pass", "garbage", "http500", "truncated", "cut", "hang", "empty", "oversize")

# The bodies of `garbage`, used in turn.
GARBAGE = (
    b"<html><body><h1>502 Bad Gateway</h1></body></html>",
    bytes(range(256)) * 4,
    b'{"header": {"revision": "7"}, "kvs": "not a list"}',
    b"[1, 2, 3]",
    b'{"header": {}, "kvs": [{"key": "***not base64***", "value": "e30="}]}',
    b"",
)


class _Request:
    def __init__(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes):
        self.method, self.path, self.headers, self.body = method, path, headers, body

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class UpstreamDown(Exception):
    pass


def _read_request(rfile) -> _Request | None:
    """One HTTP/1.1 request (Content-Length or chunked body); None at EOF."""
    line = rfile.readline(65537)
    while line in (b"\r\n", b"\n"):  # tolerate stray blank lines between requests
        line = rfile.readline(65537)
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3:
        raise ValueError(f"bad request line {line!r}")
    method, path, _version = parts
    headers = []
    while True:
        h = rfile.readline(65537)
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers.append((k.strip(), v.strip()))
    req = _Request(method, path, headers, b"")
    if (req.header("transfer-encoding") or "").lower() == "chunked":
        chunks = []
        while True:
            size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                break
            chunks.append(rfile.read(size))
            rfile.readline()
        req.body = b"".join(chunks)
    else:
        length = int(req.header("content-length") or 0)
        req.body = rfile.read(length) if length else b""
    return req


def _bogus_kvs(prefix: bytes, min_bytes: int) -> tuple[str, int]:
    """Comma-joined JSON kvs of made-up members under prefix, at least
    min_bytes long, and how many there are."""
    value = base64.b64encode(b'{"weight":1,"max_fails":2,"fail_timeout":10,"down":0,"backup":0}').decode()
    parts, size, i = [], 0, 0
    while size < min_bytes:
        addr = f"10.200.{(i >> 8) & 255}.{i & 255}:{1000 + (i >> 16)}".encode()
        key = base64.b64encode(prefix + addr).decode()
        kv = (
            f'{{"key":"{key}","create_revision":"2","mod_revision":"{1_000_000 + i}",'
            f'"version":"1","value":"{value}"}}'
        )
        parts.append(kv)
        size += len(kv) + 1
        i += 1
    return ",".join(parts), i


class FaultProxy:
    """Listens on 127.0.0.1:`port` (free port); forwards to 127.0.0.1:upstream_port."""

    def __init__(self, upstream_port: int, oversize_bytes: int = 9 * 1024 * 1024):
        self.upstream_port = upstream_port
        self.oversize_bytes = oversize_bytes
        self._mode = "pass"
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._bogus: dict[bytes, tuple[str, int]] = {}
        self._stopping = threading.Event()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    # control ---------------------------------------------------------------
    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self._mode = mode

    def counts(self) -> collections.Counter[str]:
        """Answers given per mode, plus `upstream_down` (etcd unreachable)."""
        with self._lock:
            return collections.Counter(self._counts)

    def _count(self, what: str) -> int:
        with self._lock:
            self._counts[what] += 1
            return self._counts[what]

    # serving -----------------------------------------------------------------
    def _serve(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rfile = sock.makefile("rb")
        upstream: list[http.client.HTTPConnection | None] = [None]
        try:
            while not self._stopping.is_set():
                try:
                    req = _read_request(rfile)
                except (OSError, ValueError):
                    return
                if req is None:
                    return
                mode = self._mode
                try:
                    keep_open = self._answer(sock, mode, req, upstream)
                except UpstreamDown:
                    self._count("upstream_down")
                    _reset(sock)
                    return
                except OSError:
                    return
                if not keep_open:
                    return
        finally:
            if upstream[0] is not None:
                upstream[0].close()
            rfile.close()

    def _forward(self, req: _Request, upstream: list) -> tuple[int, bytes, str]:
        """etcd's (status, body, content-type) for req; UpstreamDown if unreachable."""
        headers = {k: v for k, v in req.headers if k.lower() in ("content-type", "authorization")}
        for attempt in (1, 2):  # a kept-alive connection etcd closed: retry once on a new one
            if upstream[0] is None:
                upstream[0] = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=5)
            try:
                upstream[0].request(req.method, req.path, body=req.body or None, headers=headers)
                r = upstream[0].getresponse()
                body = r.read()
                return r.status, body, r.getheader("content-type", "application/json")
            except (OSError, http.client.HTTPException):
                upstream[0].close()
                upstream[0] = None
                if attempt == 2:
                    raise UpstreamDown() from None
        raise UpstreamDown()

    def _answer(self, sock: socket.socket, mode: str, req: _Request, upstream: list) -> bool:
        """Answers one request in `mode`; False when the connection must close."""
        if mode == "hang":
            self._count(mode)
            _wait_for_close(sock, self._stopping)
            return False
        if mode == "http500":
            self._count(mode)
            _send(sock, 500, b"injected fault: internal server error\n", "text/plain")
            return True
        if mode == "garbage":
            n = self._count(mode)
            _send(sock, 200, GARBAGE[(n - 1) % len(GARBAGE)], "application/json")
            return True
        status, body, ctype = self._forward(req, upstream)
        self._count(mode)
        if mode == "truncated":
            head = _head(status, len(body), ctype)
            sock.sendall(head + body[: len(body) // 2])
            # FIN, not RST: what was sent arrives, then the stream ends early.
            sock.shutdown(socket.SHUT_WR)
            return False
        if mode == "cut":
            body = body[: len(body) // 2]
        elif mode == "empty" and status == 200:
            answer = json.loads(body)
            for field in ("kvs", "count", "more"):
                answer.pop(field, None)
            body = json.dumps(answer).encode()
        elif mode == "oversize" and status == 200:
            body = self._oversize(req, body)
        _send(sock, status, body, ctype)
        return True

    def _oversize(self, req: _Request, body: bytes) -> bytes:
        answer = json.loads(body)
        try:
            prefix = base64.b64decode(json.loads(req.body)["key"])
        except (ValueError, KeyError, TypeError):
            prefix = b"/"
        if prefix not in self._bogus:
            self._bogus[prefix] = _bogus_kvs(prefix, self.oversize_bytes)
        fragment, n = self._bogus[prefix]
        real = [json.dumps(kv, separators=(",", ":")) for kv in answer.get("kvs", [])]
        count = int(answer.get("count", 0)) + n
        text = (
            '{"header":' + json.dumps(answer.get("header", {}))
            + ',"kvs":[' + ",".join(real + [fragment]) + f'],"count":"{count}"}}'
        )
        return text.encode()


def _head(status: int, length: int, ctype: str) -> bytes:
    reason = http.client.responses.get(status, "Unknown")
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {length}\r\n\r\n"
    ).encode("latin-1")


def _send(sock: socket.socket, status: int, body: bytes, ctype: str) -> None:
    sock.sendall(_head(status, len(body), ctype) + body)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees the connection torn down."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


def _wait_for_close(sock: socket.socket, stopping: threading.Event) -> None:
    """Hold the connection, answering nothing, until the client closes it."""
    while not stopping.is_set():
        ready, _, _ = select.select([sock], [], [], 0.1)
        if ready:
            try:
                if not sock.recv(65536):
                    return
            except OSError:
                return
