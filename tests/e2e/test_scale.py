"""Many upstreams on one Envoy, scaled down for `make test` (issue 10):
300 upstreams x 5 members in a real etcd 3.4 under /upstreams/<name>/, one
real Envoy (--concurrency 2) in envoy/production.yaml's layout with the
etcd gRPC watch on: the bench stack of benches/scalekit.py (one EDS cluster
per upstream written by scripts/gen_envoy_clusters.py, the shipped EDS
filter configuration and EDS cluster timings read from
envoy/production.yaml, eds_hold_ms included).

Checked, in this order (one stack for the module):
1. every member of every upstream, with its weight, is in Envoy (/clusters);
2. etcd has exactly one Watch stream open, carrying 300 watchers;
3. at idle (a 5 s window), no upstream polls etcd more often than its
   interval_ms allows, counted by etcd itself (Range calls), by Envoy (the
   `etcd` cluster's requests) and per upstream (/upsync/status counters);
   nor asks the plugin for EDS more often than eds_hold_ms allows;
4. an add, a removal and a weight change in each of 20 random upstreams all
   reach Envoy, nothing else moves, and the single watch stream stays;
5. on a stack of its own, 1,000 upstreams x 2 members: a new member in every
   upstream at once (10 transactions) reaches Envoy, and every EDS request
   is held again afterwards.

Correctness, not speed: every wait is a bounded condition with a generous
timeout. The one timeout with a meaning is the changes' (20 s): below the
30 s safety poll, so changes that arrive in time came through the watch.
"""

from __future__ import annotations

import math
import random
import re
import resource
import sys
import time
from pathlib import Path

import harness
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benches"))
import scalekit as sk  # noqa: E402

UPSTREAMS = 300
MEMBERS = 5
CHANGED = 20
# The safety poll behind the watch (as in the benches and docs/fleet-model).
INTERVAL_MS = 30_000
IDLE_WINDOW_S = 5.0
CHANGE_TIMEOUT_S = 20.0  # < INTERVAL_MS: only the watch can make it in time
NAMES = [f"s{i:03d}" for i in range(UPSTREAMS)]
SEED = 10

HOST_LINE = re.compile(r"^([^:]+)::([0-9.]+:[0-9]+)::weight::([0-9]+)$")


def weight_of(j: int) -> int:
    return j % 4 + 1


class ScaleRun:
    def __init__(self, wasm: Path, workdir: Path, names: list[str] = NAMES, members: int = MEMBERS):
        self.reg = sk.Registry(workdir / "etcd")
        self.wasm = wasm
        self.workdir = workdir
        self.names = names
        self.envoy: sk.ScaleEnvoy | None = None
        # What etcd holds: {upstream: {address: weight}}.
        self.expected = {u: {sk.member_addr(j): weight_of(j) for j in range(members)} for u in names}

    def start(self) -> None:
        self.reg.start()
        self.reg.put_many([
            (sk.prefix_of(u) + addr, sk.member_value(w)) for u, members in self.expected.items()
            for addr, w in members.items()
        ])
        self.envoy = sk.ScaleEnvoy(self.workdir / "envoy", self.wasm, self.reg.port, self.names,
                                   poller_fields={"interval_ms": INTERVAL_MS})
        self.envoy.start(timeout=120)

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        self.reg.stop()

    def hosts(self) -> dict[str, dict[str, int]]:
        """{upstream cluster: {address: weight}} as Envoy holds them (admin /clusters)."""
        out: dict[str, dict[str, int]] = {}
        wanted = set(self.names)
        for line in self.envoy.admin_get("/clusters").splitlines():
            m = HOST_LINE.match(line)
            if m and m.group(1) in wanted:
                out.setdefault(m.group(1), {})[m.group(2)] = int(m.group(3))
        return out

    def wait_envoy_matches(self, timeout: float, what: str) -> None:
        last: dict = {}

        def matches():
            nonlocal last
            last = self.hosts()
            return all(last.get(u, {}) == want for u, want in self.expected.items())

        try:
            harness.wait_until(matches, timeout, 0.5, what)
        except TimeoutError:
            wrong = {u: {"etcd": want, "envoy": last.get(u, {})} for u, want in self.expected.items()
                     if last.get(u, {}) != want}
            pytest.fail(f"{what}: after {timeout:.0f} s, {len(wrong)} of {len(self.names)} upstreams differ in Envoy, "
                        f"e.g. {dict(list(wrong.items())[:3])}\nenvoy log:\n{harness.log_tail(self.envoy.log_path)}")


@pytest.fixture(scope="module")
def nofile():
    # Every held EDS request is two sockets in Envoy: lift a low soft limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def run(wasm, tmp_path_factory, nofile):
    r = ScaleRun(wasm, tmp_path_factory.mktemp("scale"))
    try:
        r.start()
        yield r
    finally:
        r.stop()


def test_every_member_of_every_upstream_reaches_envoy(run):
    run.wait_envoy_matches(90, f"{UPSTREAMS} x {MEMBERS} members in Envoy")
    # Counted by the plugin too: one read at least per upstream got there.
    ranges = sk.metric_sum(run.reg.metrics(), "grpc_server_started_total", grpc_method="Range")
    assert ranges >= UPSTREAMS, f"etcd counted {ranges:.0f} Range calls for {UPSTREAMS} upstreams' first reads"


def test_one_watch_stream_carries_every_upstream(run):
    def streams():
        s = sk.watch_streams(run.reg.metrics())
        return s if s["watchers"] == UPSTREAMS else None

    try:
        s = harness.wait_until(streams, 30, 0.5, f"{UPSTREAMS} watchers at etcd")
    except TimeoutError as e:
        pytest.fail(f"{e}; now {sk.watch_streams(run.reg.metrics())}")
    assert s["streams"] == 1, f"etcd watch streams: {s}"
    assert s["grpc_watch_open"] == 1, f"gRPC Watch calls open at etcd: {s}"


def _idle_counts(run) -> tuple[float, float, float, dict[str, int]]:
    m = run.reg.metrics()
    status = run.envoy.status_json()
    calls = {u["name"]: u["syncs_ok"] + u["syncs_failed"] for u in status["upstreams"]}
    return (sk.metric_sum(m, "grpc_server_started_total", grpc_method="Range"), run.envoy.registry_requests(),
            run.envoy.eds_requests(), calls)


def test_idle_polls_stay_within_interval_and_hold(run):
    # Every cluster's EDS request held: the long poll works at this size.
    harness.wait_until(lambda: run.envoy.stat("http.upsync_eds.downstream_rq_active") == UPSTREAMS, 30, 0.5,
                       f"{UPSTREAMS} EDS requests held")
    t0 = time.monotonic()
    etcd0, envoy0, eds0, calls0 = _idle_counts(run)
    time.sleep(IDLE_WINDOW_S)
    etcd1, envoy1, eds1, calls1 = _idle_counts(run)
    window = time.monotonic() - t0  # covers both reads: an upper bound of the window
    # A poll starts at most once per interval_ms after the previous answer;
    # an idle poll is one Range call (the one-key probe).
    per_upstream = math.floor(window * 1000 / INTERVAL_MS) + 1
    bound = UPSTREAMS * per_upstream
    assert etcd1 - etcd0 <= bound, (
        f"etcd counted {etcd1 - etcd0:.0f} Range calls in {window:.1f} s of idle; at most {bound} "
        f"({UPSTREAMS} upstreams x {per_upstream}) with interval_ms {INTERVAL_MS}")
    assert envoy1 - envoy0 <= bound, f"Envoy sent {envoy1 - envoy0} registry requests in {window:.1f} s of idle"
    busy = {u: calls1.get(u, 0) - n for u, n in calls0.items() if calls1.get(u, 0) - n > per_upstream}
    assert not busy, f"upstreams that polled more than {per_upstream} time(s) in {window:.1f} s: {busy}"
    assert set(calls0) == set(NAMES)
    hold_ms = sk.gen.shipped_eds_settings()["eds_hold_ms"]
    assert hold_ms > 0, "envoy/production.yaml ships eds_hold_ms"
    eds_bound = UPSTREAMS * (math.floor(window * 1000 / hold_ms) + 1)
    assert eds1 - eds0 <= eds_bound, (
        f"{eds1 - eds0:.0f} EDS requests in {window:.1f} s of idle; at most {eds_bound} with eds_hold_ms {hold_ms}")


def test_changes_in_random_upstreams_reach_envoy(run):
    rng = random.Random(SEED)
    for u in rng.sample(NAMES, CHANGED):
        members = run.expected[u]
        new = sk.member_addr(MEMBERS + rng.randrange(1000))
        gone, reweighted = rng.sample(sorted(members), 2)
        run.reg.put(sk.prefix_of(u) + new, sk.member_value(3))
        members[new] = 3
        run.reg.delete(sk.prefix_of(u) + gone)
        del members[gone]
        w = members[reweighted] % 4 + 2  # another weight, 2..5
        run.reg.put(sk.prefix_of(u) + reweighted, sk.member_value(w))
        members[reweighted] = w
    run.wait_envoy_matches(CHANGE_TIMEOUT_S, f"changes in {CHANGED} upstreams in Envoy")
    s = sk.watch_streams(run.reg.metrics())
    assert (s["streams"], s["watchers"], s["grpc_watch_open"]) == (1, UPSTREAMS, 1), f"after the changes: {s}"



# Well past the 150 held requests measured safe in one VM call.
AT_ONCE_UPSTREAMS = 1000


def test_a_change_to_every_upstream_at_once_reaches_envoy(wasm, tmp_path, nofile):
    # Held EDS requests due by the hundreds, on the one worker that holds the
    # HTTP/2 connection: answered a bounded number per tick, and the EDS
    # server keeps serving. How many come due in one tick varies with
    # timing: the module before that bound failed a run like this one (this
    # module's stack at 1,000 x 2, the change right after test 1) in 5 of 7
    # tries, with V8's "Maximum call stack size exceeded" in
    # proxy_on_response_headers, the worker's EDS VM lost and 464 upstreams
    # never changed, but passed this test as written 3 times out of 3:
    # test_eds_burst is the one that fails every time.
    names = [f"m{i:04d}" for i in range(AT_ONCE_UPSTREAMS)]
    run = ScaleRun(wasm, tmp_path, names=names, members=2)
    try:
        run.start()
        run.wait_envoy_matches(90, f"{len(names)} x 2 members in Envoy")
        puts = []
        for u in names:
            new = sk.member_addr(2000)
            puts.append((sk.prefix_of(u) + new, sk.member_value(2)))
            run.expected[u][new] = 2
        run.reg.put_many(puts, per_txn=100)  # etcd's default --max-txn-ops is 128
        run.wait_envoy_matches(CHANGE_TIMEOUT_S, f"one new member in each of {len(names)} upstreams in Envoy")
        failures = [line for line in run.envoy.log_path.read_text(errors="replace").splitlines()
                    if "Maximum call stack" in line or "proxy_on_response_headers failed" in line]
        assert not failures, "\n".join(failures[:5])
        harness.wait_until(lambda: run.envoy.stat("http.upsync_eds.downstream_rq_active") == len(names), 30, 0.5,
                           f"{len(names)} EDS requests held again")
    finally:
        run.stop()
