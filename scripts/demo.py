#!/usr/bin/env python3
"""`make demo`: watch Envoy follow etcd, step by step.

Starts etcd, three HTTP backends (alpha, beta, gamma) and Envoy running the
upsync-wasm plugin (envoy/demo.yaml), all on 127.0.0.1. Then it changes the
member list in etcd the way an operator or a deploy tool would, and after
each change sends a short burst of requests through Envoy to show who
answers. Everything it started is stopped at the end, on error, or on
Ctrl-C.

    python scripts/demo.py --wasm target/upsync_wasm.wasm
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

import harness  # noqa: E402
from harness import WEB  # noqa: E402

SAMPLE = 60


def say(text: str = "") -> None:
    print(text, flush=True)


def step(n: int, title: str) -> None:
    say()
    say(f"[{n}] {title}")


def show(smp: harness.Sample, names, always_failed: bool = False) -> None:
    width = max(smp.counts.values(), default=1)
    for name in names:
        c = smp.counts.get(name, 0)
        bar = "#" * round(30 * c / width) if width else ""
        say(f"      {name:<6} {bar:<30} {c}")
    if smp.failed or always_failed:
        say(f"      failed {smp.failed}" + (f" {dict(smp.errors)}" if smp.errors else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wasm", default=str(harness.DEFAULT_WASM), help="built plugin (default: %(default)s)")
    ap.add_argument("--interval-ms", type=int, default=200, help="etcd poll interval (default: %(default)s)")
    ap.add_argument("--no-watch", action="store_true", help="poll only; no etcd gRPC Watch")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs and logs)")
    args = ap.parse_args()

    harness.raise_keyboard_interrupt_on_sigterm()
    stack = harness.Stack(
        wasm=args.wasm,
        interval_ms=args.interval_ms,
        backoff_max_ms=max(1000, args.interval_ms),
        watch=not args.no_watch,
        keep_workdir=args.keep,
    )
    names = ("alpha", "beta", "gamma")
    t_start = time.monotonic()
    try:
        say("Starting etcd, three backends (alpha, beta, gamma) and Envoy with the upsync-wasm plugin ...")
        stack.start()
        e = stack.envoy
        say(f"  etcd     http://127.0.0.1:{stack.etcd.client_port}")
        for n in names:
            say(f"  {n:<8} http://{stack.addr(n)}")
        say(f"  Envoy    traffic http://127.0.0.1:{e.ingress_port}/   admin http://127.0.0.1:{e.admin_port}/")
        how = "polls" if args.no_watch else "watches etcd over gRPC, and polls as a safety net"
        say(f"  plugin   http://127.0.0.1:{e.eds_port}/upsync/status   ({how} every {args.interval_ms} ms)")

        def change(what: str, pred, write, timeout: float = 10.0) -> float:
            say(f"    etcd: {what}")
            t0 = time.monotonic()
            write()
            _, took = stack.wait_routing(pred, timeout=timeout, n=10, what=what)
            say(f"    Envoy routes by it {took * 1000:.0f} ms after the write. {SAMPLE} requests:")
            show(stack.sample(SAMPLE), names)
            return time.monotonic() - t0

        def key(name: str) -> str:
            return WEB + stack.addr(name)

        step(1, "Register alpha and beta under /upstreams/web/")
        change(
            f"put {key('alpha')} and {key('beta')} = {harness.member_value()}",
            lambda s: s.only("alpha", "beta"),
            lambda: stack.set_web(alpha={}, beta={}),
        )

        step(2, "A new instance comes up: gamma registers itself")
        change(
            f"put {key('gamma')}",
            lambda s: s.only("alpha", "beta", "gamma"),
            lambda: stack.etcd.put_member(WEB, stack.addr("gamma")),
        )

        step(3, "Give beta three times the weight of the others")
        change(
            f"put {key('beta')} = {harness.member_value(weight=3)}",
            lambda s: s.failed == 0 and s.counts["beta"] >= 2 * max(s.counts["alpha"], s.counts["gamma"], 1),
            lambda: stack.etcd.put_member(WEB, stack.addr("beta"), weight=3),
        )

        step(4, 'Take alpha out of rotation for maintenance: "down":1 (it stays registered)')
        change(
            f"put {key('alpha')} = {harness.member_value(down=1)}",
            lambda s: s.only("beta", "gamma"),
            lambda: stack.etcd.put_member(WEB, stack.addr("alpha"), down=1),
        )

        step(5, "gamma shuts down and deregisters: its key is deleted")
        change(
            f"delete {key('gamma')}",
            lambda s: s.only("beta"),
            lambda: stack.etcd.delete(key("gamma")),
        )

        step(6, "etcd dies (SIGKILL) while traffic flows")
        with harness.Load(e.ingress_port, connections=2) as load:
            time.sleep(0.3)
            stack.etcd.kill()
            say("    etcd is gone. Envoy keeps the last members it knew; 2 s of traffic:")
            before = load.snapshot()
            time.sleep(2.0)
            after = load.snapshot()
        during = harness.Sample()
        during.counts = after.counts - before.counts
        during.failed = after.failed - before.failed
        during.errors = after.errors - before.errors
        show(during, names, always_failed=True)
        st = stack.web_status()
        say(
            f"    plugin: source={st['source']} members={len(st['members'])} syncs_failed={st['syncs_failed']} "
            f"last_error={st['last_error']!r}"
        )

        step(7, "etcd comes back (same data, same port); the poller picks up where it left off")
        stack.etcd.start()
        say("    etcd is up again.")
        change(
            f"put {key('alpha')} = {harness.member_value()}  (alpha back in rotation)",
            lambda s: s.only("alpha", "beta"),
            lambda: stack.etcd.put_member(WEB, stack.addr("alpha"), down=0),
            timeout=15,
        )

        say()
        say("What the plugin believes now (GET /upsync/status?upstream=web):")
        code, body = e.status("web")
        if code != 200:
            raise RuntimeError(f"/upsync/status?upstream=web -> {code}: {body!r}")
        st = body["upstreams"][0]
        brief = {k: st.get(k) for k in ("name", "version", "source", "syncs_ok", "syncs_failed", "last_error")}
        say("    " + json.dumps(brief))
        if st.get("last_error") and st.get("last_error_ms") and st.get("last_sync_ms"):
            age = (st["last_sync_ms"] - st["last_error_ms"]) / 1000
            if age > 0:
                say(f"    (last_error is from the outage: the last good sync came {age:.1f} s after it)")
        for m in st.get("members", []):
            say(f"    {stack.name_of(m['address']) or '?':<6} {json.dumps(m)}")
        say()
        say(f"Demo finished in {time.monotonic() - t_start:.0f} s; stopping everything.")
        return 0
    except KeyboardInterrupt:
        say("\nInterrupted; stopping everything.")
        return 130
    except Exception as exc:  # noqa: BLE001 - tell the user, then clean up
        say(f"\nDemo failed: {exc}")
        if stack.envoy is not None:
            say("--- last lines of the Envoy log ---")
            say(harness.log_tail(stack.envoy.log_path, 30))
        return 1
    finally:
        stack.close()
        if args.keep:
            say(f"(work directory kept: {stack.workdir})")


if __name__ == "__main__":
    sys.exit(main())
