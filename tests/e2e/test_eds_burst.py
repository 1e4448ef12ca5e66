"""Many held EDS requests due at once, on a real Envoy (2 workers).

Envoy sends a wasm filter's local reply only after the VM call that asked
for it returns, and each reply runs the filter's response callback, which
sends the next queued reply before it returns: replies asked for in one VM
call nest. Before the EDS server bounded the answers per tick
(`MAX_ANSWERS_PER_CALL` in src/sansio/serve/eds_hold.rs), 800 requests held
for one cluster and answered from one tick overflowed V8's stack
("RangeError: Maximum call stack size exceeded" in
proxy_on_response_headers): the worker VMs were lost and every EDS request
after that got a 503. A registry change touching every upstream of a
1,000-upstream proxy makes as many due at once.

Checked: 800 requests held for `web` (HTTP/1.1, one connection each, spread
over both workers) are all answered 200 with the new version when `web`
changes, the plugin's VMs keep serving EDS afterwards, Envoy logs no VM
failure, and the poller's wake-ups reached the workers (src/host/wake.rs).
"""

from __future__ import annotations

import resource
import threading

import harness

HELD = 800
VM_FAILURE = ("Maximum call stack size exceeded", "proxy_on_response_headers failed", "VM failed")


def active_eds_requests(envoy: harness.Envoy) -> int:
    status, body = harness.http_json(
        "GET", f"http://127.0.0.1:{envoy.admin_port}/stats?filter=^http.upsync_eds.downstream_rq_active$&format=json"
    )
    assert status == 200, body
    return sum(int(s.get("value", 0)) for s in body.get("stats", []) if "value" in s)


def test_many_held_requests_due_at_once_are_all_answered(make_stack):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * HELD:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * HELD), hard))
    stack = make_stack()
    stack.web.set_members({stack.addr("alpha"): {}})
    stack.wait_routing(lambda s: s.only("alpha"), what="alpha only")
    status, body = stack.envoy.eds("web", "")
    assert status == 200, body
    version = body["version_info"]
    before = active_eds_requests(stack.envoy)

    answers: list[tuple[int, str | None]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def held_request() -> None:
        try:
            code, reply = stack.envoy.eds("web", version, timeout=60)
            with lock:
                answers.append((code, reply.get("version_info") if isinstance(reply, dict) else None))
        except Exception as e:  # noqa: BLE001 - every failure is reported below
            with lock:
                errors.append(repr(e)[:120])

    threads = [threading.Thread(target=held_request, daemon=True) for _ in range(HELD)]
    for t in threads:
        t.start()
    harness.wait_until(lambda: active_eds_requests(stack.envoy) >= before + HELD, 30, 0.2, f"{HELD} EDS requests held")
    assert not answers and not errors, "answered before anything changed"

    stack.web.set_members({stack.addr("alpha"): {}, stack.addr("beta"): {}})
    for t in threads:
        t.join(60)
    assert not errors, f"{len(errors)} requests failed, e.g. {errors[:3]}"
    wrong = [a for a in answers if a[0] != 200 or a[1] in (None, version)]
    assert len(answers) == HELD and not wrong, f"{len(wrong)} of {len(answers)} not answered 200 with a new version: {wrong[:3]}"

    # The VMs still serve: a fresh request is answered, and traffic follows.
    status, body = stack.envoy.eds("web", "")
    assert status == 200 and body["version_info"] != version, (status, body)
    stack.wait_routing(lambda s: s.only("alpha", "beta"), timeout=15, what="alpha+beta")
    log = stack.envoy.log()
    failures = [line for line in log.splitlines() if any(p in line for p in VM_FAILURE)]
    assert not failures, "\n".join(failures[:5])
    # They were answered from the poller's wake-up (a shared queue per worker), not a tick.
    assert "wake-ups reach this worker" in log, "no worker got the poller's wake-up"

