"""pytest wiring every suite shares (tests/e2e, tests/chaos, tests/zk): the
--wasm option, the `wasm` session fixture, and SIGTERM/SIGHUP turned into
KeyboardInterrupt so fixture finalizers stop etcd, Envoy and the rest.
A conftest takes them with `from suite_options import ...`."""

from __future__ import annotations

from pathlib import Path

import harness
import pytest


def pytest_addoption(parser):
    try:
        parser.addoption(
            "--wasm",
            default=str(harness.DEFAULT_WASM),
            help="path of the built plugin (default: %(default)s; `make build` makes it)",
        )
    except ValueError:
        pass  # already added by another conftest in the same run


def pytest_configure(config):
    harness.raise_keyboard_interrupt_on_sigterm()


@pytest.fixture(scope="session")
def wasm(pytestconfig) -> Path:
    path = Path(pytestconfig.getoption("--wasm")).resolve()
    if not path.is_file():
        pytest.fail(f"plugin not built: {path} does not exist (run `make build`)", pytrace=False)
    return path
