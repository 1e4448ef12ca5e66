"""Changes at O(change) (issue 10), on a real etcd 3.4 and a real Envoy.

An etcd v3 gRPC watch event, and an etcd v2 long-poll answer, are applied
to `web`'s members as they are: no range read (v3) or recursive read (v2)
follows. etcd counts what it serves in /metrics: every v3 range
(`etcd_debugging_mvcc_range_total`; the plugin's probes and full reads
are ranges, puts and deletes are not) and every v2 recursive read
(`etcd_debugging_store_reads_total{action="getRecursive"}`). The polls
are made rare (interval_ms 60 s) so that nothing else reads meanwhile.

And the safety net: a change made while the watch stream is down (the
gRPC path runs through a relay the test cuts) is found when the watch is
back, by a probe and a full read, long before the next poll; a v2 long
poll whose index etcd no longer keeps (errorCode 401) is followed by a
full read, and changes apply as changes again after it.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import harness
from harness import WEB, wait_until

QUIET_INTERVAL_MS = 60_000


def etcd_metric(etcd: harness.Etcd, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(etcd.url + "/metrics", timeout=3).read().decode()
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    if m is None:
        raise KeyError(f"{name}{labels} not in etcd's /metrics")
    return float(m.group(1))


def v3_ranges(stack) -> float:
    return etcd_metric(stack.etcd, "etcd_debugging_mvcc_range_total")


def v2_recursive_reads(stack) -> float:
    return etcd_metric(stack.etcd, "etcd_debugging_store_reads_total", '{action="getRecursive"}')


def calls(status: dict) -> int:
    """The registry calls the plugin made for an upstream (its call latency count)."""
    return status["call_latency"]["count"]


def web_has(stack, *names: str, timeout: float = 10.0) -> dict:
    want = sorted(stack.addr(n) for n in names)
    return stack.wait_status(lambda st: harness.addresses(st) == want, f"web = {names}", timeout)


def settled(read, what: str, quiet: float = 1.0, timeout: float = 20.0) -> float:
    """Waits until `read()` has not moved for `quiet` seconds; its value."""
    state = {"value": read(), "since": time.monotonic()}

    def check():
        v = read()
        if v != state["value"]:
            state.update(value=v, since=time.monotonic())
            return None
        return v if time.monotonic() - state["since"] >= quiet else None

    return wait_until(check, timeout, 0.1, what)


def test_a_watch_event_is_applied_without_a_range_read(make_stack):
    stack = make_stack(watch=True, interval_ms=QUIET_INTERVAL_MS, backoff_max_ms=QUIET_INTERVAL_MS)
    stack.set_web(alpha={}, beta={})
    harness.route(stack, "alpha", "beta")
    stack.wait_status(lambda st: st.get("watch") == "open", "the watch open")
    # The reads of the start (the first full read, the probe after the watch's creation) are over.
    ranges = settled(lambda: v3_ranges(stack), "etcd's range count to settle")
    before = stack.web_status()
    for step, (write, members) in enumerate(
        [
            (lambda: stack.put_web("gamma"), ("alpha", "beta", "gamma")),
            (lambda: stack.put_web("beta", weight=5), ("alpha", "beta", "gamma")),
            (lambda: stack.delete_web("alpha"), ("beta", "gamma")),
        ]
    ):
        applied = stack.web_status()["updates_applied"]
        write()
        st = stack.wait_status(lambda s: s["updates_applied"] > applied, f"change {step} applied")
        assert harness.addresses(st) == sorted(stack.addr(n) for n in members), st
    assert harness.member(stack.web_status(), stack.addr("beta"))["weight"] == 5
    harness.route(stack, "beta", "gamma")
    after = stack.web_status()
    assert v3_ranges(stack) == ranges, "a range read followed a watch event"
    assert calls(after) == calls(before), "the plugin called etcd for a watch event"
    assert after["updates_applied"] == before["updates_applied"] + 3


def test_v2_long_poll_answers_are_applied_without_a_recursive_read(make_stack):
    stack = make_stack(registry="etcd_v2", interval_ms=QUIET_INTERVAL_MS, backoff_max_ms=QUIET_INTERVAL_MS, wait_ms=30_000)
    stack.set_web(alpha={}, beta={})
    harness.route(stack, "alpha", "beta")
    reads = settled(lambda: v2_recursive_reads(stack), "etcd's recursive reads to settle")
    watches = etcd_metric(stack.etcd, "etcd_debugging_store_watch_requests_total")
    applied = stack.web_status()["updates_applied"]
    stack.put_web("gamma")
    web_has(stack, "alpha", "beta", "gamma")
    stack.put_web("alpha", down=1)
    stack.wait_status(lambda st: harness.member(st, stack.addr("alpha"))["down"], "alpha down")
    stack.delete_web("beta")
    web_has(stack, "alpha", "gamma")
    harness.route(stack, "gamma")
    assert v2_recursive_reads(stack) == reads, "a recursive read followed a long-poll answer"
    assert etcd_metric(stack.etcd, "etcd_debugging_store_watch_requests_total") >= watches + 3
    assert stack.web_status()["updates_applied"] == applied + 3


class Relay:
    """A TCP relay (127.0.0.1) in front of etcd for Envoy's `etcd_grpc`
    cluster only: cut() drops its connections and refuses new ones until
    restore()."""

    def __init__(self, upstream_port: int | None = None):
        # None: refuses connections until it is set.
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.blocked = False
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.blocked or self.upstream_port is None:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.blocked = True
        with self.lock:
            for s in self.open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.open.clear()

    def restore(self) -> None:
        self.blocked = False

    def stop(self) -> None:
        self.stopping = True
        self.cut()
        self.listener.close()


def relay_template(workdir: Path, relay_port: int) -> Path:
    """envoy/demo.yaml with cluster `etcd_grpc` sent to the relay."""
    text = harness.DEMO_TEMPLATE.read_text()
    block = re.search(r"^  - name: etcd_grpc\n.*?(?=^\n)", text, re.M | re.S)
    assert block is not None and block.group(0).count("${ETCD_PORT}") == 1, "etcd_grpc in envoy/demo.yaml"
    grpc = block.group(0).replace("${ETCD_PORT}", str(relay_port))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "demo-relay.yaml"
    path.write_text(text.replace(block.group(0), grpc))
    return path


def test_a_change_missed_while_the_watch_was_down_is_read_when_it_is_back(make_stack, tmp_path):
    relay = Relay()
    try:
        stack = make_stack(
            watch=True,
            interval_ms=QUIET_INTERVAL_MS,
            backoff_max_ms=QUIET_INTERVAL_MS,
            envoy_template=relay_template(tmp_path, relay.port),
        )
        relay.upstream_port = stack.etcd.client_port
        stack.set_web(alpha={}, beta={})
        harness.route(stack, "alpha", "beta")
        stack.wait_status(lambda st: st.get("watch") == "open", "the watch open")
        stack.put_web("gamma")
        web_has(stack, "alpha", "beta", "gamma")

        relay.cut()
        stack.wait_status(lambda st: st.get("watch") == "closed", "the watch closed")
        ranges = v3_ranges(stack)
        stack.delete_web("alpha")
        # Nothing brings it meanwhile: no watch, and the next poll is a minute away.
        time.sleep(2)
        assert harness.addresses(stack.web_status()) == sorted(stack.addr(n) for n in ("alpha", "beta", "gamma"))
        assert v3_ranges(stack) == ranges

        relay.restore()
        t0 = time.monotonic()
        web_has(stack, "beta", "gamma", timeout=15)
        took = time.monotonic() - t0
        assert stack.web_status()["watch"] == "open"
        # The watch came back after the change: a probe found it, a full read read it.
        assert v3_ranges(stack) >= ranges + 2
        harness.route(stack, "beta", "gamma")
        # And the next change applies as a change again.
        ranges = settled(lambda: v3_ranges(stack), "etcd's range count to settle")
        stack.put_web("alpha")
        web_has(stack, "alpha", "beta", "gamma")
        assert v3_ranges(stack) == ranges
        print(f"\nwatch back -> missed change in the plugin: {took:.2f} s")
    finally:
        relay.stop()


def test_a_v2_index_etcd_no_longer_keeps_is_followed_by_a_full_read(make_stack):
    # Long polls held 1 s, asked again every 2 s: the index waited from ages
    # out while other keys are written.
    stack = make_stack(registry="etcd_v2", interval_ms=2000, backoff_max_ms=2000, wait_ms=1000)
    stack.set_web(alpha={}, beta={})
    harness.route(stack, "alpha", "beta")
    reads = settled(lambda: v2_recursive_reads(stack), "etcd's recursive reads to settle", quiet=3.0)
    # More than the 1000 events etcd v2 keeps, none under the watched directory.
    for i in range(1100):
        stack.etcd.v2_put(f"/elsewhere/k{i % 50}", str(i))
    wait_until(lambda: v2_recursive_reads(stack) > reads, 20, 0.1, "a full read after errorCode 401")
    web = stack.web_status()
    assert harness.addresses(web) == sorted(stack.addr(n) for n in ("alpha", "beta"))
    # The long poll waits from the full read's index: the next change is applied as a change.
    reads = settled(lambda: v2_recursive_reads(stack), "etcd's recursive reads to settle", quiet=3.0)
    stack.put_web("gamma")
    web_has(stack, "alpha", "beta", "gamma")
    assert v2_recursive_reads(stack) == reads
