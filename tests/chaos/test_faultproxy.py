"""The fault proxy does what the chaos test says it does, against a real etcd."""

from __future__ import annotations

import base64
import http.client
import json
import socket

import pytest

from chaoskit import WEB, harness
from faultproxy import GARBAGE, FaultProxy

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    e = harness.Etcd(tmp_path_factory.mktemp("etcd")).start()
    e.set_members(WEB, {"127.0.0.1:9001": {}, "127.0.0.1:9002": {"weight": 3}})
    yield e
    e.kill()


@pytest.fixture
def proxy(etcd):
    with FaultProxy(etcd.client_port, oversize_bytes=LIMIT) as p:
        yield p


def _range(port: int, timeout: float = 5.0):
    """(status, body) of a full range read of WEB through port; raises on
    a broken answer."""
    body = json.dumps({"key": harness.b64(WEB), "range_end": harness.b64(harness.prefix_end(WEB))})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v3/kv/range", body=body, headers={"content-type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _keys(body: bytes) -> list[str]:
    return [base64.b64decode(kv["key"]).decode() for kv in json.loads(body).get("kvs", [])]


def test_pass_relays_etcd(proxy):
    status, body = _range(proxy.port)
    assert status == 200
    assert _keys(body) == [WEB + "127.0.0.1:9001", WEB + "127.0.0.1:9002"]
    assert proxy.counts()["pass"] == 1


def _usable_range_answer(body: bytes) -> bool:
    try:
        answer = json.loads(body)
        kvs = answer["kvs"]
        return "header" in answer and isinstance(kvs, list) and all(base64.b64decode(kv["key"], validate=True) for kv in kvs)
    except (ValueError, KeyError, TypeError):
        return False


def test_garbage_is_never_an_etcd_answer(proxy):
    assert _usable_range_answer(_range(proxy.port)[1])  # the check can tell
    proxy.set_mode("garbage")
    seen = set()
    for _ in range(len(GARBAGE)):
        status, body = _range(proxy.port)
        assert status == 200 and not _usable_range_answer(body), body
        seen.add(body)
    assert seen == set(GARBAGE)


def test_http500(proxy):
    proxy.set_mode("http500")
    assert _range(proxy.port)[0] == 500


def test_truncated_ends_the_stream_early(proxy):
    proxy.set_mode("truncated")
    with pytest.raises(http.client.IncompleteRead):
        _range(proxy.port)


def test_cut_is_a_complete_answer_with_half_a_body(proxy):
    full = _range(proxy.port)[1]
    proxy.set_mode("cut")
    status, body = _range(proxy.port)
    assert status == 200 and body == full[: len(full) // 2]
    with pytest.raises(ValueError):
        json.loads(body)


def test_hang_never_answers(proxy):
    proxy.set_mode("hang")
    with pytest.raises(socket.timeout):
        _range(proxy.port, timeout=0.5)
    assert proxy.counts()["hang"] == 1


def test_empty_is_a_valid_answer_without_members(proxy):
    proxy.set_mode("empty")
    status, body = _range(proxy.port)
    answer = json.loads(body)
    assert status == 200 and "header" in answer and "revision" in answer["header"]
    assert "kvs" not in answer and "count" not in answer


def test_oversize_is_valid_json_over_the_limit(proxy):
    proxy.set_mode("oversize")
    status, body = _range(proxy.port)
    assert status == 200 and len(body) > LIMIT
    keys = _keys(body)
    assert keys[:2] == [WEB + "127.0.0.1:9001", WEB + "127.0.0.1:9002"]
    assert len(keys) > 100 and all(k.startswith(WEB + "10.200.") for k in keys[2:])
    assert int(json.loads(body)["count"]) == len(keys)


def test_etcd_down_resets_the_connection(tmp_path):
    (port,) = harness.free_ports(1)  # nothing listens there
    with FaultProxy(port) as p:
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            _range(p.port)
        assert p.counts()["upstream_down"] == 1
