#!/usr/bin/env python3
"""`make demo-zk`: watch Envoy follow ZooKeeper, through upsync-zk-bridge.

Starts a private ZooKeeper 3.8 (Debian's), upsync-zk-bridge, three HTTP
backends (alpha, beta, gamma) and Envoy running envoy/zookeeper.yaml with
the upsync-wasm plugin, all on 127.0.0.1. Then it registers and changes
service instances the way Spring Cloud Zookeeper / Curator (ephemeral
ServiceInstance znodes under /services/web) and Dubbo 2 (provider URLs under
/dubbo/<interface>/providers) do, and after each change sends a short burst
of requests through Envoy to show who answers. Everything it started is
stopped at the end, on error, or on Ctrl-C.

    python scripts/demo_zk.py --wasm target/upsync_wasm.wasm
"""

from __future__ import annotations

import argparse
import logging
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "zk"))

import zk_harness  # noqa: E402
from zk_harness import harness  # noqa: E402

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
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs and logs)")
    args = ap.parse_args()

    harness.raise_keyboard_interrupt_on_sigterm()
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)  # its reconnect chatter while ZooKeeper is down
    stack = zk_harness.ZkStack(wasm=args.wasm, keep_workdir=args.keep, session_timeout_ms=4000)
    names = ("alpha", "beta", "gamma")
    t_start = time.monotonic()
    try:
        say("Starting ZooKeeper, upsync-zk-bridge, three backends and Envoy with the upsync-wasm plugin ...")
        stack.start()
        e, b = stack.envoy, stack.bridge
        say(f"  ZooKeeper  {stack.connect}  (zkCli.sh -server {stack.connect})")
        say(f"  bridge     {b.url}/v1/kv/services/web/?recurse   status {b.url}/upsync-zk-bridge/status")
        for n in names:
            say(f"  {n:<10} http://{stack.addr(n)}")
        say(f"  Envoy      traffic http://127.0.0.1:{e.ingress_port}/  (/orders/ -> Dubbo providers)   "
            f"admin http://127.0.0.1:{e.admin_port}/")
        say(f"  plugin     http://127.0.0.1:{e.eds_port}/upsync/status  (consul_kv blocking queries on the bridge)")

        def change(what: str, pred, write, path: str = "/", timeout: float = 15.0) -> None:
            say(f"    ZooKeeper: {what}")
            t0 = time.monotonic()
            write()
            stack.wait_routing(pred, path, timeout=timeout, n=10, what=what)
            took = time.monotonic() - t0
            say(f"    Envoy routes {path} by it {took * 1000:.0f} ms after the write. {SAMPLE} requests:")
            show(stack.sample(SAMPLE, path), names)

        c, d = stack.curator, stack.dubbo
        inst = lambda n: f"/services/web/<id of {n}>"  # noqa: E731

        step(1, "alpha and beta register with Curator / Spring Cloud Zookeeper (ephemeral ServiceInstance znodes)")
        say("    " + json.dumps(zk_harness.service_instance("web", stack.addr("alpha"), "<id>"))[:150] + " ...")
        change(f"create {inst('alpha')}, {inst('beta')}", lambda s: s.only("alpha", "beta"),
               lambda: (c.register(stack.addr("alpha")), c.register(stack.addr("beta"))))

        step(2, "gamma starts and registers with metadata weight=3")
        change(f"create {inst('gamma')} with payload.metadata.weight = \"3\"",
               lambda s: s.only("alpha", "beta", "gamma") and s.counts["gamma"] >= 2 * max(s.counts["alpha"], 1),
               lambda: c.register(stack.addr("gamma"), weight=3))

        step(3, "alpha is disabled for maintenance (ServiceInstance enabled=false): down, still registered")
        change(f"set {inst('alpha')} enabled=false", lambda s: s.only("beta", "gamma"),
               lambda: c.register(stack.addr("alpha"), enabled=False))

        step(4, "gamma's process dies: its ZooKeeper session closes and the ephemeral znode vanishes")
        change(f"session of {inst('gamma')} ends", lambda s: s.only("beta"), lambda: c.crash(stack.addr("gamma")))

        step(5, "Dubbo 2 providers of org.example.OrderService register (URL-encoded znode names)")
        say("    " + zk_harness.dubbo_url(stack.addr("alpha"), weight=100)[:110] + " ...")
        change("create /dubbo/org.example.OrderService/providers/dubbo%3A%2F%2F... for alpha and gamma",
               lambda s: s.only("alpha", "gamma"),
               lambda: d.set_members({stack.addr("alpha"): {"weight": 100}, stack.addr("gamma"): {"weight": 100}}),
               path="/orders/")
        change("re-register gamma with disabled=true (Dubbo's override)", lambda s: s.only("alpha"),
               lambda: d.register(stack.addr("gamma"), disabled="true"), path="/orders/")

        step(6, "ZooKeeper dies (SIGKILL) while traffic flows")
        with harness.Load(e.ingress_port, connections=2) as load:
            time.sleep(0.3)
            stack.zk.kill()
            harness.wait_until(lambda: b.kv(zk_harness.WEB_PREFIX)[0] == 503, 15, 0.05, "503 from the bridge")
            code, _, body = b.kv(zk_harness.WEB_PREFIX)
            say(f"    the bridge has no live session and says so: HTTP {code} {body!r}")
            say("    Envoy keeps the last members the plugin knew; 2 s of traffic:")
            before = load.snapshot()
            time.sleep(2.0)
            after = load.snapshot()
        during = harness.Sample()
        during.counts = after.counts - before.counts
        during.failed = after.failed - before.failed
        during.errors = after.errors - before.errors
        show(during, names, always_failed=True)
        st = stack.upstream_status("web")
        say(f"    plugin: source={st['source']} members={len(st['members'])} syncs_failed={st['syncs_failed']} "
            f"last_error={st['last_error']!r}")

        step(7, "ZooKeeper comes back (same data dir); the bridge reconnects (a new session if its own expired) "
                "and reads everything again")
        stack.zk.start()
        b.wait_serving(30)
        s = b.status()["session"]
        say(f"    bridge session {s['id']} ({s['sessions_opened']} opened, {s['sessions_expired']} expired so far)")
        say("    (the plugin may still be backing off after the 503s: up to backoff_max_ms, 2 s here)")
        change(f"set {inst('alpha')} enabled=true", lambda s: s.only("alpha", "beta"),
               lambda: c.register(stack.addr("alpha"), enabled=True), timeout=20)

        say()
        say(f"What the bridge serves now (GET {b.url}/v1/kv/services/web/?recurse, values decoded):")
        for addr, value in b.members(zk_harness.WEB_PREFIX).items():
            name = next((n for n in names if stack.addr(n) == addr), "?")
            say(f"    {name:<6} {addr} {json.dumps(value)}")
        say()
        say(f"Demo finished in {time.monotonic() - t_start:.0f} s; stopping everything.")
        return 0
    except KeyboardInterrupt:
        say("\nInterrupted; stopping everything.")
        return 130
    except Exception as exc:  # noqa: BLE001 - tell the user, then clean up
        say(f"\nDemo failed: {exc}")
        for label, log in (("bridge", stack.bridge and stack.bridge.log_path), ("Envoy", stack.envoy and stack.envoy.log_path)):
            if log:
                say(f"--- last lines of the {label} log ---")
                say(harness.log_tail(log, 30))
        return 1
    finally:
        stack.close()
        if args.keep:
            say(f"(work directory kept: {stack.workdir})")


if __name__ == "__main__":
    sys.exit(main())
