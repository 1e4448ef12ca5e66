"""envoy/registries.yaml (one upstream of every registry type) validates,
and Envoy really runs it: its poller accepts the configuration and the
status endpoint lists all seven upstreams with their registry types."""

from __future__ import annotations

import json
import re

import pytest

import harness

REGISTRIES_CONFIG = harness.REPO / "envoy" / "registries.yaml"
EXPECTED = {
    "web": "etcd_v3",
    "legacy": "etcd_v2",
    "assets": "consul_kv",
    "billing": "consul_catalog",
    "api": "consul_health",
    "search": "nacos",
    "payments": "eureka",
}


def test_registries_config_covers_every_registry_type():
    poller = json.loads(harness.poller_json(REGISTRIES_CONFIG.read_text()))
    got = {u["name"]: u["registry"]["type"] for u in poller["upstreams"]}
    assert got == EXPECTED
    assert set(got.values()) == set(harness.REGISTRY_TYPES) | {"nacos", "eureka"}
    regs = {u["name"]: u["registry"] for u in poller["upstreams"]}
    assert regs["web"].get("grpc_target") == "etcd_grpc"
    assert "token" in regs["api"]
    assert regs["search"].get("group") and regs["search"].get("namespace")
    assert "basic" in regs["payments"].get("auth", {})


def test_registries_config_validates(wasm):
    if wasm != harness.DEFAULT_WASM.resolve():
        pytest.skip("registries.yaml points at the default build path; --wasm differs")
    result = harness.run_validate(REGISTRIES_CONFIG, cwd=harness.REPO)
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"envoy --mode validate failed ({result.returncode}):\n{out[-3000:]}"
    assert " OK" in out, out[-3000:]


def _localized(text: str, wasm) -> tuple[str, dict[int, int]]:
    """The config with every address on 127.0.0.1 and every port replaced by
    a free one (the same original port -> the same new port, so the EDS
    listener and its cluster still meet; the registries' ports stay closed)."""
    originals = sorted({int(p) for p in re.findall(r"port_value: (\d+)", text)})
    mapping = dict(zip(originals, harness.free_ports(len(originals))))
    text = re.sub(r"port_value: (\d+)", lambda m: f"port_value: {mapping[int(m.group(1))]}", text)
    text = re.sub(r"address: (\d+\.\d+\.\d+\.\d+)", "address: 127.0.0.1", text)
    if wasm != harness.DEFAULT_WASM.resolve():
        text = text.replace("filename: target/upsync_wasm.wasm", f'filename: "{wasm}"')
    return text, mapping


def test_registries_config_runs_and_lists_every_upstream(wasm, tmp_path):
    """Started for real from the repository root (the plugin path is
    relative), with the registries unreachable (closed ports)."""
    text, ports = _localized(REGISTRIES_CONFIG.read_text(), wasm)
    config = tmp_path / "registries.yaml"
    config.write_text(text)
    admin, eds = ports[9901], ports[9902]
    log = tmp_path / "envoy.log"
    proc = harness._spawn(
        [harness.find_envoy(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "-l", "info"],
        log,
        cwd=harness.REPO,
    )
    try:

        def ready():
            if proc.poll() is not None:
                raise harness.ProcessExited(f"envoy exited {proc.returncode}:\n{harness.log_tail(log, 40)}")
            return harness.http_json("GET", f"http://127.0.0.1:{admin}/ready", timeout=1)[0] == 200

        harness.wait_until(ready, 30, 0.1, "envoy running envoy/registries.yaml")

        def listed():
            code, body = harness.http_json("GET", f"http://127.0.0.1:{eds}/upsync/status", timeout=2)
            if code != 200 or len(body.get("upstreams", [])) < len(EXPECTED):
                return None
            return body

        body = harness.wait_until(listed, 15, 0.1, "all upstreams in /upsync/status")
        got = {u["name"]: u["registry"]["type"] for u in body["upstreams"]}
        assert got == EXPECTED, body
        by_name = {u["name"]: u for u in body["upstreams"]}
        assert by_name["web"]["registry"]["prefix"] == "/upstreams/web/"
        assert by_name["assets"]["registry"]["prefix"] == "upstreams/assets/"
        assert by_name["api"]["registry"]["service"] == "api"
        # the registries are unreachable: fallbacks where configured, errors counted
        assert by_name["web"]["source"] == "fallback" and by_name["api"]["source"] == "fallback", body
        harness.wait_until(
            lambda: all(u["syncs_failed"] > 0 for u in listed()["upstreams"]), 15, 0.1, "every upstream to fail"
        )
        # secrets stay out of the status and the log
        text_out = str(listed()) + log.read_text(errors="replace")
        assert "REPLACE-WITH-ACL-TOKEN" not in text_out and "REPLACE-WITH-PASSWORD" not in text_out
        assert proc.poll() is None, harness.log_tail(log, 40)
    finally:
        harness._stop(proc)
