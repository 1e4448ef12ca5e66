"""The shipped Envoy configurations validate; a bad plugin configuration stops Envoy."""

from __future__ import annotations

import json

import pytest

import harness


def _validate_ok(result):
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"envoy --mode validate failed ({result.returncode}):\n{out[-3000:]}"
    assert " OK" in out, out[-3000:]


def test_production_config_validates(wasm):
    # production.yaml names the plugin by a path relative to the repository
    # root (where `make build` puts it), so validate from there, as is.
    if wasm != harness.DEFAULT_WASM.resolve():
        pytest.skip("production.yaml points at the default build path; --wasm differs")
    _validate_ok(harness.run_validate(harness.PRODUCTION_CONFIG, cwd=harness.REPO))


def test_demo_config_validates(wasm, tmp_path):
    envoy = harness.Envoy(tmp_path, wasm, etcd_port=harness.free_ports(1)[0], fallback=["127.0.0.1:9001"])
    _validate_ok(envoy.validate())


def test_production_plugin_config_is_accepted(wasm, tmp_path):
    """`--mode validate` does not instantiate bootstrap extensions, so the
    poller's configuration in production.yaml is only checked by starting
    Envoy with it (etcd unreachable: the fallback members are used)."""
    text = harness.PRODUCTION_CONFIG.read_text()
    poller = harness.poller_json(text)
    json.loads(poller)  # well-formed JSON at least
    admin, etcd = harness.free_ports(2)
    indented = "\n".join("          " + line.strip() for line in poller.splitlines())
    config = tmp_path / "poller-only.yaml"
    config.write_text(
        f"""
node: {{id: prod-check, cluster: prod-check}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
bootstrap_extensions:
- name: envoy.bootstrap.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.wasm.v3.WasmService
    singleton: true
    config:
      name: upsync_poller
      root_id: upsync_poller
      vm_config:
        vm_id: upsync
        runtime: envoy.wasm.runtime.v8
        code: {{local: {{filename: "{wasm}"}}}}
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: |
{indented}
static_resources:
  clusters:
  - name: etcd
    type: STATIC
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: etcd
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {etcd}}}}}}}
"""
    )
    log = tmp_path / "envoy.log"
    proc = harness._spawn(
        [harness.find_envoy(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart"], log
    )
    try:
        harness.wait_until(
            lambda: proc.poll() is not None
            or harness.http_json("GET", f"http://127.0.0.1:{admin}/ready", timeout=1)[0] == 200,
            20,
            0.1,
            "envoy with the production poller config",
        )
        assert proc.poll() is None, f"envoy exited {proc.returncode}:\n{harness.log_tail(log, 30)}"
    finally:
        harness._stop(proc)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"extra_web_fields": ', "bogus_knob": 1'}, "bogus_knob"),
        ({"interval_ms": '"soon"'}, "interval_ms"),
    ],
    ids=["unknown-field", "bad-value"],
)
def test_invalid_plugin_config_refuses_to_start(wasm, tmp_path, change, field):
    envoy = harness.Envoy(tmp_path, wasm, etcd_port=harness.free_ports(1)[0], **change)
    envoy.start(wait_ready=False)
    try:
        rc = envoy.wait_exit(timeout=30)
    except Exception:
        pytest.fail(f"envoy kept running with an invalid plugin config:\n{harness.log_tail(envoy.log_path)}")
    log = envoy.log()
    assert rc != 0, f"envoy exited 0 with an invalid plugin config:\n{log[-3000:]}"
    assert field in log, f"log does not name {field!r}:\n{log[-3000:]}"
