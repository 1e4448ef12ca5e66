"""pytest wiring for the OCI image / deployment tests (`make test-oci`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "oci"))

import support  # noqa: E402


def pytest_addoption(parser):
    try:
        parser.addoption(
            "--wasm",
            default=str(support.harness.DEFAULT_WASM),
            help="path of the built plugin (default: %(default)s; `make build` makes it)",
        )
    except ValueError:
        pass  # already added by another conftest (e.g. tests/e2e) in the same run
    parser.addoption(
        "--oci-dir",
        default=str(support.OCI_DIR),
        help="where `make oci` put the image (default: %(default)s)",
    )


def pytest_configure(config):
    # SIGTERM/SIGHUP -> KeyboardInterrupt, so the finalizers still stop the
    # registry and Envoy when the run is killed.
    support.harness.raise_keyboard_interrupt_on_sigterm()


@pytest.fixture(scope="session")
def wasm_path(pytestconfig) -> Path:
    path = Path(pytestconfig.getoption("--wasm")).resolve()
    if not path.is_file():
        pytest.fail(f"plugin not built: {path} does not exist (run `make build`)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def wasm_bytes(wasm_path) -> bytes:
    return wasm_path.read_bytes()


@pytest.fixture(scope="session")
def oci_dir(pytestconfig) -> Path:
    return Path(pytestconfig.getoption("--oci-dir")).resolve()


@pytest.fixture(scope="session")
def made_image(oci_dir, wasm_bytes) -> dict:
    """The summary `make oci` (or `make oci-image`) wrote, checked to be fresh."""
    import json

    summary = oci_dir / "image.json"
    if not summary.is_file():
        pytest.fail(f"{summary} missing: run `make oci` (or `make test-oci`)", pytrace=False)
    info = json.loads(summary.read_text())
    if info["wasm_sha256"] != support.sha256_hex(wasm_bytes):
        pytest.fail(f"{oci_dir} was built from another module: run `make oci` again", pytrace=False)
    return info


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """A real OCI registry (distribution 2.8) on 127.0.0.1, filesystem storage."""
    if not Path(support.REGISTRY_BIN).exists():
        pytest.fail(f"{support.REGISTRY_BIN} missing: `make oci-deps` installs it", pytrace=False)
    reg = support.Registry(tmp_path_factory.mktemp("registry"))
    try:
        reg.start()
        yield reg
    finally:
        reg.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tails of the logs of the processes the test used."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    for name in ("registry", "envoy_runs"):
        obj = item.funcargs.get(name) if hasattr(item, "funcargs") else None
        if obj is None:
            continue
        obj = getattr(obj, "runs", obj)
        runs = obj if isinstance(obj, list) else [obj]
        for r in runs:
            log = getattr(r, "log_path", None)
            if log is not None:
                rep.sections.append((f"{log.name} (tail)", support.log_tail(log, 40)))
