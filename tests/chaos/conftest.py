"""pytest wiring for the chaos test (`make test-chaos`): --wasm, cleanup,
logs on failure, and the measured numbers at the end of the run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import chaoskit  # noqa: E402  (puts tests/e2e on sys.path)
from chaoskit import harness  # noqa: E402
from suite_options import pytest_addoption, pytest_configure, wasm  # noqa: E402,F401


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach Envoy's and etcd's log tails, the plugin's status
    and the fault proxy's counts."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    mod = item.getparent(pytest.Module)
    c = getattr(mod, "_chaos", None) if mod is not None else None
    if c is None or c.envoy is None:
        return
    rep.sections.append(("envoy log (tail)", harness.log_tail(c.envoy.log_path, 60)))
    rep.sections.append(("plugin status (web)", c.status_line()))
    if c.proxy is not None:
        rep.sections.append(("fault proxy", f"mode {c.proxy.mode}, answers {dict(c.proxy.counts())}"))
    if c.churn is not None:
        rep.sections.append(("churn operations", "\n".join(c.churn.ops[-30:])))
    if c.etcd is not None:
        rep.sections.append(("etcd log (tail)", harness.log_tail(c.etcd.log_path, 15)))
    if call.excinfo is not None:
        rep.sections.append(("failure (repeated from above)", call.excinfo.exconly()[:3000]))


def pytest_terminal_summary(terminalreporter):
    if chaoskit.REPORT:
        terminalreporter.section("chaos: measured in this run")
        for line in chaoskit.REPORT:
            terminalreporter.write_line(line)
