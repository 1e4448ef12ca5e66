"""Bytes a client controls reach the plugin through host calls: they must
never trap the VM. proxy-wasm 0.2.5's `get_map_value` unwraps
`String::from_utf8` on a header value, so one request with a byte >= 0x80
in the hashed header used to panic the filter's VM; with the VM dead every
later request failed (docs/sdk-panics.md)."""

from __future__ import annotations

import http.client
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from test_pick_mode import PickStack  # noqa: E402

# obs-text (RFC 9110 field-value): allowed in a header, not UTF-8.
NOT_UTF8 = b"user-\xff\xfe"


@pytest.fixture
def stack(tmp_path, request):
    wasm = Path(request.config.getoption("--wasm")).resolve()
    s = PickStack(tmp_path / "s", wasm, "override_host", {"policy": "hash", "hash_key": "header:x-user"})
    yield s
    s.close()


def get(s: PickStack, value: bytes) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", s.envoy.ingress_port, timeout=5)
    try:
        conn.request("GET", "/", headers={"x-user": value})
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def test_a_header_that_is_not_utf8_is_hashed_not_a_trap(stack):
    s = stack
    s.set_members(alpha={}, beta={}, gamma={})
    s.wait_for(lambda c: len(c) == 3)
    answers = [get(s, NOT_UTF8) for _ in range(5)]
    assert all(status == 200 for status, _ in answers), answers
    # The key still pins one member (decoded lossily, the same each time).
    assert len({body for _, body in answers}) == 1, answers
    # And the VM is alive: ordinary keys still spread and route.
    owners = {get(s, f"user-{n}".encode())[1] for n in range(30)}
    assert owners == {"alpha", "beta", "gamma"}, owners
    log = s.envoy.log()
    assert "panicked" not in log and "panic:" not in log, log[-3000:]
