#!/usr/bin/env python3
"""How long the poller spends on one large registry answer inside Envoy's V8
(issue 11, defect 5): the time from the answer's arrival to the end of its
handling (parse, checks, diff, publish) on Envoy's main thread, as the
plugin logs it ("an answer of N bytes took M ms to handle").

The `etcd` cluster of envoy/demo.yaml points at a small HTTP server of this
bench that answers etcd v3 JSON-gateway range requests with crafted bodies:
a probe answer whose cursor moves every time (so every interval brings a full
read), and a full read of the shape under test:

- members: as many distinct members as fit in 8 MiB (the largest legitimate
  answer);
- bad keys: as many entries as fit in 8 MiB whose key is not host:port
  (each a bad entry to report);
- nested at the cap: members carrying an unknown field nested 60 deep, just
  under the 500,000 JSON containers the plugin accepts (the most
  allocation-heavy answer it parses);
- empty-objects-8mib: 8 MiB of `{}` (refused before parsing).

Prints the handling time per shape (median and max of the samples). No
assertion: a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import base64
import http.server
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
import harness  # noqa: E402

PREFIX = "/upstreams/web/"
MIB = 1024 * 1024


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def members_body(limit: int) -> bytes:
    kvs, size, i = [], 0, 0
    value = b64('{"weight":1}')
    while True:
        kv = {"key": b64(f"{PREFIX}10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:80"), "value": value,
              "mod_revision": "7"}
        size += len(json.dumps(kv)) + 1
        if size > limit - 200:
            break
        kvs.append(kv)
        i += 1
    return json.dumps({"header": {"revision": "9"}, "kvs": kvs, "count": str(len(kvs))}).encode()


def bad_keys_body(limit: int) -> bytes:
    """As many kvs as fit whose key is not host:port: each one a bad entry."""
    kv = json.dumps({"key": b64(PREFIX + "x"), "value": b64("{}"), "mod_revision": "7"}).encode()
    n = (limit - 200) // (len(kv) + 1)
    return b'{"header":{"revision":"9"},"count":"' + str(n).encode() + b'","kvs":[' + b",".join([kv] * n) + b"]}"


def nested_at_cap_body() -> bytes:
    """Members each carrying an unknown field nested 60 deep, up to just
    under the 500,000-container cap: the most allocation a parse accepts."""
    per = 61  # the kv object and 60 nested ones
    n = 499_000 // per
    kvs = []
    nested = '{"x":' * 60 + "0" + "}" * 60
    for i in range(n):
        key = b64(f"{PREFIX}10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:80")
        kvs.append(f'{{"key":"{key}","value":"{b64("{}")}","mod_revision":"7","x":{nested}}}')
    return ('{"header":{"revision":"9"},"count":"' + str(n) + '","kvs":[' + ",".join(kvs) + "]}").encode()


def empty_objects_body(n: int) -> bytes:
    return b'{"header":{"revision":"9"},"count":"1","kvs":[' + b",".join([b"{}"] * n) + b"]}"


class Crafted(http.server.BaseHTTPRequestHandler):
    body = b""
    probes = 0

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("content-length") or 0)
        req = json.loads(self.rfile.read(length) or b"{}")
        if "sort_target" in req or "keys_only" in req:
            Crafted.probes += 1
            ans = {"header": {"revision": str(100 + Crafted.probes)}, "count": str(Crafted.probes),
                   "kvs": [{"key": b64(PREFIX + "10.0.0.1:80"), "mod_revision": str(100 + Crafted.probes)}]}
            out = json.dumps(ans).encode()
        else:
            out = Crafted.body
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def measure(wasm: Path, shape: str, body: bytes, samples: int) -> list[int]:
    Crafted.body = body
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Crafted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    work = Path(tempfile.mkdtemp(prefix="upsync-parse-v8-"))
    template = work / "demo.yaml"
    text = harness.DEMO_TEMPLATE.read_text().replace('{"upstreams": [', '{"log_level": "debug", "upstreams": [', 1)
    template.write_text(text)
    envoy = harness.Envoy(work / "envoy", wasm, etcd_port=server.server_address[1], interval_ms=1500,
                          backoff_max_ms=3000, template=template, log_level="debug",
                          extra_web_fields=', "max_body_bytes": 9437184, "timeout_ms": 10000')
    try:
        envoy.start(timeout=60)
        pattern = re.compile(r"upstream web: an answer of (\d+) bytes took (\d+) ms to handle")
        deadline = time.monotonic() + 60 + samples * 5
        found: list[int] = []
        while time.monotonic() < deadline:
            found = [int(ms) for size, ms in pattern.findall(envoy.log_path.read_text())
                     if int(size) > MIB / 2]
            if len(found) >= samples:
                break
            time.sleep(0.5)
        return found[:samples]
    finally:
        envoy.stop()
        server.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasm", default="target/upsync_wasm.wasm")
    ap.add_argument("--samples", type=int, default=5)
    args = ap.parse_args()
    harness.raise_keyboard_interrupt_on_sigterm()
    shapes = [
        ("members (8 MiB)", members_body(8 * MIB)),
        ("bad keys (8 MiB, each a bad entry)", bad_keys_body(8 * MIB)),
        ("nested 60 deep, at the container cap", nested_at_cap_body()),
        ("empty-objects-8mib (refused)", empty_objects_body(8 * MIB // 3)),
    ]
    print(f"parse_v8: one etcd v3 full read handled inside Envoy's V8 (main thread), {args.samples} samples each")
    for name, body in shapes:
        ms = measure(Path(args.wasm), name, body, args.samples)
        if ms:
            print(f"  {name:<38} {len(body) / MIB:5.1f} MiB: median {statistics.median(ms):6.0f} ms, max {max(ms):6d} ms  {ms}")
        else:
            print(f"  {name:<38} {len(body) / MIB:5.1f} MiB: no sample (see the Envoy log)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
