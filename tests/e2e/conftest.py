"""pytest wiring for the end-to-end suite: --wasm, stacks, cleanup, logs on failure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from suite_options import pytest_addoption, pytest_configure, wasm  # noqa: E402,F401


def _new_stack(request, wasm: Path, **kwargs) -> harness.Stack:
    stack = harness.Stack(wasm=wasm, **kwargs)
    request.addfinalizer(stack.close)
    stacks = getattr(request.node, "_e2e_stacks", [])
    stacks.append(stack)
    request.node._e2e_stacks = stacks
    stack.start()
    return stack


@pytest.fixture(scope="module")
def stack(request, wasm) -> harness.Stack:
    """One etcd + alpha/beta/gamma + Envoy shared by the tests of a module."""
    return _new_stack(request, wasm)


@pytest.fixture
def make_stack(request, wasm):
    """Factory for a stack private to one test: make_stack(start_etcd=False, ...)."""

    def make(**kwargs) -> harness.Stack:
        return _new_stack(request, wasm, **kwargs)

    return make


@pytest.fixture(scope="session")
def new_stack(wasm):
    """new_stack(request, **kwargs): a started stack that lives as long as
    `request` (the `request` of any fixture, e.g. a module-scoped
    parametrized one: each parameter gets its own stack, closed when pytest
    moves on to the next parameter)."""

    def make(request, **kwargs) -> harness.Stack:
        return _new_stack(request, wasm, **kwargs)

    return make


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of the Envoy and etcd logs to the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    stacks = list(getattr(item, "_e2e_stacks", []))
    mod = item.getparent(pytest.Module)
    if mod is not None:
        stacks += getattr(mod, "_e2e_stacks", [])
    # a module's stacks include those of earlier parameters, already closed
    stacks = [s for s in stacks if s.envoy is not None and s.envoy.log_path.exists()]
    # The logs below are long; the failure itself is repeated after them so
    # a log viewer that shows only the end still shows what went wrong.
    failure = call.excinfo.exconly()[:3000] if call.excinfo is not None else "?"
    for s in stacks:
        tag = f" [{s.registry}]"
        rep.sections.append(("envoy log (tail)" + tag, harness.log_tail(s.envoy.log_path, 60)))
        try:
            rep.sections.append(("/upsync/status" + tag, str(s.envoy.status())[:4000]))
        except Exception as e:  # noqa: BLE001
            rep.sections.append(("/upsync/status" + tag, repr(e)))
        if s.etcd is not None and s.etcd.log_path.exists():
            rep.sections.append(("etcd log (tail)" + tag, harness.log_tail(s.etcd.log_path, 15)))
        if s.consul is not None:
            lines = [
                f"{r['monotonic']:.3f} {r['method']} {r['path']}?{r['raw_query']} -> {r['status']} fault={r['fault']}"
                for r in s.consul.requests()[-30:]
            ]
            rep.sections.append(("consul emulator requests (last 30)" + tag, "\n".join(lines)))
    fo = getattr(mod, "_failover", None) if mod is not None else None
    if fo is not None and fo.envoy is not None:  # test_etcd_cluster.py
        rep.sections.append(("envoy log (tail) [etcd cluster]", harness.log_tail(fo.envoy.log_path, 60)))
        for m in fo.cluster.members if fo.cluster is not None else []:
            rep.sections.append((f"etcd {m.name} log (tail)", harness.log_tail(m.log_path, 15)))
    if stacks or fo is not None:
        rep.sections.append(("failure (repeated from above)", failure))


def pytest_terminal_summary(terminalreporter):
    """Numbers measured by the run (printed, never asserted)."""
    failover = sys.modules.get("failover")
    lines = getattr(failover, "REPORT", None) if failover is not None else None
    if lines:
        terminalreporter.section("etcd cluster: member killed -> change in traffic (this run)")
        for line in lines:
            terminalreporter.write_line(line)
