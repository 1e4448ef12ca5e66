"""Envoy 1.40 (V8) loads the module from a `remote` HTTP source pinned by sha256.

Runs envoy/deploy/remote-module.yaml, filled in with free ports on 127.0.0.1
and a local HTTP server hosting the module.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest

import support

TEMPLATE = support.DEPLOY_DIR / "remote-module.yaml"
MODULE_PATH = "/modules/upsync_wasm.wasm"


def find_envoy() -> str:
    try:
        return support.harness.find_envoy()
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)


# Test-only addition to the template: the registry poller as a bootstrap
# extension, loaded from the same remote source, with a fallback member and an
# etcd cluster on a port where nothing listens. Shows both roles of the module
# running from the remote copy and sharing data through vm_id `upsync`.
POLLER_BOOTSTRAP = """
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
        code:
          remote:
            http_uri: {uri: "http://127.0.0.1:${MODULE_PORT}${MODULE_PATH}", cluster: wasm_modules, timeout: 10s}
            sha256: "${MODULE_SHA256}"
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: '{"upstreams": [{"name": "web", "registry": {"type": "etcd_v3", "target": "etcd", "prefix": "/upstreams/web/"}, "interval_ms": 200, "timeout_ms": 500, "fallback": ["127.0.0.1:9"]}]}'
"""
ETCD_CLUSTER = """
  - name: etcd
    type: STATIC
    connect_timeout: 0.5s
    load_assignment:
      cluster_name: etcd
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {address: 127.0.0.1, port_value: ${ETCD_PORT}}
"""


class EnvoyRun:
    def __init__(self, workdir: Path, module_port: int, sha256: str, with_poller: bool = False):
        self.workdir = workdir
        self.admin_port, self.eds_port, etcd_port = support.harness.free_ports(3)
        self.config = workdir / "envoy.yaml"
        self.log_path = workdir / "envoy.log"
        text = TEMPLATE.read_text()
        if with_poller:
            assert text.rstrip().endswith("}"), "the template must end with its last cluster"
            text = text.rstrip() + "\n" + ETCD_CLUSTER + POLLER_BOOTSTRAP
        self.config.write_text(string.Template(text).substitute(
            ADMIN_PORT=self.admin_port, EDS_PORT=self.eds_port,
            MODULE_IP="127.0.0.1", MODULE_PORT=module_port,
            MODULE_PATH=MODULE_PATH, MODULE_SHA256=sha256,
            ETCD_PORT=etcd_port,
        ))
        self.proc: support.Proc | None = None

    def start(self) -> "EnvoyRun":
        self.proc = support.Proc(
            [find_envoy(), "-c", str(self.config),
             # a base id of our own, and no hot-restart shared memory to clash on
             "--base-id", str(self.admin_port), "--disable-hot-restart",
             "--concurrency", "1", "-l", "info"],
            self.log_path, cwd=self.workdir,
        )
        return self

    def ready(self) -> tuple[int, str]:
        status, _, body = support.http_get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1.0)
        return status, body.decode(errors="replace").strip()

    def eds_get(self, path: str):
        return support.http_get(f"http://127.0.0.1:{self.eds_port}{path}", timeout=2.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


@pytest.fixture
def module_server(wasm_bytes):
    server = support.ModuleServer({MODULE_PATH: wasm_bytes}).start()
    yield server
    server.stop()


@pytest.fixture
def envoy_runs(request, tmp_path):
    """Factory: start Envoy on the template; every instance is stopped afterwards."""
    runs: list[EnvoyRun] = []

    def start(module_port: int, sha256: str, **kwargs) -> EnvoyRun:
        d = tmp_path / f"envoy{len(runs)}"
        d.mkdir()
        run = EnvoyRun(d, module_port, sha256, **kwargs)
        runs.append(run)
        request.addfinalizer(run.stop)
        return run.start()

    start.runs = runs
    yield start


def _alive(run: EnvoyRun) -> bool:
    if not run.proc.alive():
        raise support.harness.ProcessExited(
            f"envoy exited {run.proc.popen.returncode}:\n{support.log_tail(run.log_path)}"
        )
    return True


def _wait_live(run: EnvoyRun) -> None:
    try:
        support.wait_until(lambda: _alive(run) and run.ready() == (200, "LIVE"), 30, 0.1, "envoy /ready LIVE")
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{support.log_tail(run.log_path)}") from None


def test_envoy_loads_the_module_from_remote_with_sha256(module_server, envoy_runs, wasm_bytes):
    run = envoy_runs(module_server.port, support.sha256_hex(wasm_bytes))
    _wait_live(run)
    assert MODULE_PATH in module_server.requests, "Envoy did not fetch the module over HTTP"

    # The module is running: its EDS/status filter answers on the listener.
    status, headers, body = run.eds_get("/upsync/status")
    assert status == 200, body[:300]
    assert headers["content-type"].startswith("application/json")
    status = json.loads(body)
    assert status["upstreams"] == []  # no poller in this layout: nothing published
    assert status["wasm_memory_bytes"]["poller"] is None and status["wasm_memory_bytes"]["worker"] > 0, status
    status, _, _ = run.eds_get("/not-the-plugins")
    assert status == 404  # passed through to the route's direct_response

    bad = [line for line in run.log().splitlines()
           if re.search(r"\]\[(error|critical)\]", line)
           or (re.search(r"\]\[warning\]", line) and re.search(r"wasm|plugin|upsync", line, re.I)
               and "Wasm remote code fetch is unstable" not in line)]
    assert not bad, "envoy logged errors:\n" + "\n".join(bad)


def test_envoy_refuses_a_module_with_another_sha256(module_server, envoy_runs, wasm_bytes):
    wrong = support.sha256_hex(wasm_bytes + b"tampered")
    run = envoy_runs(module_server.port, wrong)
    # Envoy fetches, rejects the hash and retries (retry_policy), while the
    # listener stays uninitialised: the server never goes LIVE.
    support.wait_until(lambda: _alive(run) and module_server.requests.count(MODULE_PATH) >= 2,
                       30, 0.1, "a second fetch after a rejected module")
    status, body = run.ready()
    assert (status, body) != (200, "LIVE")
    try:
        status, _, _ = run.eds_get("/upsync/status")
    except OSError:  # refused or reset: the listener is not serving
        status = None
    assert status != 200


def test_bootstrap_poller_also_loads_from_the_remote_source(module_server, envoy_runs, wasm_bytes):
    run = envoy_runs(module_server.port, support.sha256_hex(wasm_bytes), with_poller=True)
    _wait_live(run)

    def web_from_fallback():
        status, _, body = run.eds_get("/upsync/status")
        if status != 200:
            return None
        ups = json.loads(body)["upstreams"]
        return ups if ups and ups[0]["source"] == "fallback" else None

    ups = support.wait_until(web_from_fallback, 15, 0.1, "the poller's fallback members in /upsync/status")
    assert [u["name"] for u in ups] == ["web"]
    assert [m["address"] for m in ups[0]["members"]] == ["127.0.0.1:9"]
    assert module_server.requests.count(MODULE_PATH) >= 2  # one fetch per role
