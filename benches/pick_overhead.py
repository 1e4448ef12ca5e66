"""Per-request overhead of pick mode, through a real Envoy, measured with wrk.

Envoy answers every request itself (direct_response), once with no wasm
filter (the baseline) and once with the upsync pick filter picking among
10, 1000 and 10000 members registered in a real etcd. The ratio is pick
rps / baseline rps, both measured in this run, alternating, best of
ROUNDS. Target: >= 0.90 at 10000 members.

Usage: python benches/pick_overhead.py --wasm target/upsync_wasm.wasm
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import harness  # noqa: E402

TEMPLATE = REPO / "benches" / "envoy-pick-bench.yaml"
PICK_FILTER = """          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: upsync_pick
                root_id: upsync_pick
                vm_config:
                  vm_id: upsync
                  runtime: envoy.wasm.runtime.v8
                  code:
                    local: {filename: "${WASM_PATH}"}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: *cfg"""
PREFIX = "/upstreams/web/"


def register(etcd: harness.Etcd, n: int) -> None:
    etcd.delete_prefix(PREFIX)
    addrs = [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:8080" for i in range(n)]
    for start in range(0, n, 100):  # etcd allows 128 operations per txn
        ops = [
            {"requestPut": {"key": harness.b64(PREFIX + a), "value": harness.b64('{"weight":1}')}}
            for a in addrs[start:start + 100]
        ]
        etcd._post("/v3/kv/txn", {"success": ops})


class BenchEnvoy(harness.Envoy):
    """One worker: wrk gets the other core."""

    def argv(self, *extra: str) -> list[str]:
        argv = super().argv(*extra)
        argv[argv.index("--concurrency") + 1] = "1"
        return argv


def start_envoy(workdir: Path, wasm: Path, etcd: harness.Etcd, pick: bool) -> harness.Envoy:
    envoy = BenchEnvoy(workdir, wasm, etcd.client_port, template=TEMPLATE)
    envoy.values["PICK_FILTER"] = PICK_FILTER.replace("${WASM_PATH}", str(envoy.wasm)) if pick else ""
    envoy.start()
    return envoy


def wrk(port: int, seconds: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not m or errors:
        raise RuntimeError(f"wrk: {out}")
    return float(m.group(1))


def wait_members(envoy: harness.Envoy, n: int, timeout: float = 60) -> None:
    # No status endpoint in this config: wait until a request is answered
    # 200 (the pick filter answers 503 while it has no member), then give
    # the worker a moment to settle.
    deadline = time.monotonic() + timeout
    client = harness.Client(envoy.ingress_port)
    try:
        while time.monotonic() < deadline:
            status, _ = client.get("/")
            if status == 200:
                time.sleep(1.0)
                return
            time.sleep(0.2)
    finally:
        client.close()
    raise TimeoutError(f"{n} members not in use after {timeout}s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wasm", default=str(REPO / "target" / "upsync_wasm.wasm"))
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sizes", default="10,1000,10000")
    args = ap.parse_args()
    wasm = Path(args.wasm).resolve()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="upsync-bench-"))
    etcd = harness.Etcd(work / "etcd").start()
    rows = []
    try:
        for n in sizes:
            register(etcd, n)
            base, pick = [], []
            for r in range(args.rounds):
                for variant in ("baseline", "pick"):
                    envoy = start_envoy(work / f"envoy-{n}-{variant}-{r}", wasm, etcd, variant == "pick")
                    try:
                        wait_members(envoy, n)
                        wrk(envoy.ingress_port, 1)  # warm-up
                        (pick if variant == "pick" else base).append(wrk(envoy.ingress_port, args.seconds))
                    finally:
                        envoy.stop()
            rows.append((n, max(base), max(pick)))
            print(f"  {n:>6} members: baseline {max(base):>9.0f} rps, pick {max(pick):>9.0f} rps, ratio {max(pick) / max(base):.2f}", flush=True)
    finally:
        etcd.kill()
    print("\npick-mode overhead (wrk -t1 -c32, Envoy --concurrency 1, direct_response; best of "
          f"{args.rounds} x {args.seconds}s)")
    print(f"{'members':>8} {'baseline rps':>13} {'pick rps':>10} {'ratio':>6}")
    for n, b, p in rows:
        print(f"{n:>8} {b:>13.0f} {p:>10.0f} {p / b:>6.2f}")
    worst = min(p / b for _, b, p in rows)
    print(f"target: ratio >= 0.90 at 10000 members -> {'met' if rows[-1][2] / rows[-1][1] >= 0.9 else 'NOT met'}")
    return 0 if worst > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
