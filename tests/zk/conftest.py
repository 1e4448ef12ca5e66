"""pytest wiring for the ZooKeeper suite: --wasm, stacks, logs on failure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zk_harness  # noqa: E402
from zk_harness import harness  # noqa: E402
from suite_options import pytest_addoption, pytest_configure, wasm  # noqa: E402,F401


def _track(node, stack):
    stacks = getattr(node, "_zk_stacks", [])
    stacks.append(stack)
    node._zk_stacks = stacks


@pytest.fixture
def make_stack(request, wasm):
    """make_stack(**ZkStack arguments): a started stack private to one test."""

    def make(**kwargs) -> zk_harness.ZkStack:
        stack = zk_harness.ZkStack(wasm=wasm, **kwargs)
        request.addfinalizer(stack.close)
        _track(request.node, stack)
        return stack.start()

    return make


@pytest.fixture(scope="module")
def stack(request, wasm) -> zk_harness.ZkStack:
    """One standalone ZooKeeper + bridge + Envoy shared by a module's tests."""
    s = zk_harness.ZkStack(wasm=wasm)
    request.addfinalizer(s.close)
    _track(request.node, s)
    return s.start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    stacks = list(getattr(item, "_zk_stacks", []))
    mod = item.getparent(pytest.Module)
    if mod is not None:
        stacks += getattr(mod, "_zk_stacks", [])
    for s in stacks:
        if s.bridge is not None:
            rep.sections.append(("bridge log (tail)", harness.log_tail(s.bridge.log_path, 40)))
        if s.envoy is not None:
            rep.sections.append(("envoy log (tail)", harness.log_tail(s.envoy.log_path, 30)))
        zks = s.ensemble.members if s.ensemble else ([s.zk] if s.zk else [])
        for z in zks:
            rep.sections.append((f"zookeeper {z.address} log (tail)", harness.log_tail(z.log_path, 15)))
    if stacks and call.excinfo is not None:
        rep.sections.append(("failure (repeated from above)", call.excinfo.exconly()[:3000]))
