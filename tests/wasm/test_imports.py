"""The module imports only what both hosts provide.

ngx_wasm_module refuses to start a module with an import its host table
lacks ("incompatible host interface"), so every `env` import must be a
proxy-wasm ABI 0.2.1 host function, and every WASI import one of the few
that Rust's standard library pulls in. The import section is read straight
from the built .wasm (no tools needed).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WASM = Path(os.environ.get("UPSYNC_WASM", REPO / "target" / "upsync_wasm.wasm"))

# proxy-wasm ABI 0.2.1 host functions (spec abi-versions/v0.2.1, as the
# Rust SDK 0.2.x declares them).
PROXY_WASM_0_2_1 = {
    "proxy_log", "proxy_get_log_level", "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds", "proxy_get_buffer_bytes", "proxy_set_buffer_bytes",
    "proxy_get_header_map_pairs", "proxy_set_header_map_pairs", "proxy_get_header_map_value",
    "proxy_add_header_map_value", "proxy_replace_header_map_value", "proxy_remove_header_map_value",
    "proxy_get_property", "proxy_set_property", "proxy_get_shared_data", "proxy_set_shared_data",
    "proxy_register_shared_queue", "proxy_resolve_shared_queue", "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue", "proxy_continue_stream", "proxy_close_stream",
    "proxy_send_local_response", "proxy_http_call", "proxy_grpc_call", "proxy_grpc_stream",
    "proxy_grpc_send", "proxy_grpc_cancel", "proxy_grpc_close", "proxy_get_status",
    "proxy_set_effective_context", "proxy_call_foreign_function", "proxy_define_metric",
    "proxy_increment_metric", "proxy_record_metric", "proxy_get_metric", "proxy_done",
}
# WASI preview1 functions Rust's std may import; both Envoy and
# ngx_wasm_module provide these.
WASI = {"random_get", "environ_get", "environ_sizes_get", "fd_write", "proc_exit", "clock_time_get"}


def _leb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return result, pos


def _name(data: bytes, pos: int) -> tuple[str, int]:
    n, pos = _leb(data, pos)
    return data[pos:pos + n].decode(), pos + n


def read_imports(wasm: bytes) -> list[tuple[str, str, int]]:
    assert wasm[:4] == b"\0asm", "not a wasm module"
    pos, out = 8, []
    while pos < len(wasm):
        section, pos = wasm[pos], pos + 1
        size, pos = _leb(wasm, pos)
        end = pos + size
        if section == 2:
            count, p = _leb(wasm, pos)
            for _ in range(count):
                module, p = _name(wasm, p)
                field, p = _name(wasm, p)
                kind = wasm[p]
                p += 1
                if kind == 0:  # function: type index
                    _, p = _leb(wasm, p)
                elif kind == 1:  # table: reftype + limits
                    p += 1
                    flags, p = _leb(wasm, p)
                    _, p = _leb(wasm, p)
                    if flags & 1:
                        _, p = _leb(wasm, p)
                elif kind == 2:  # memory: limits
                    flags, p = _leb(wasm, p)
                    _, p = _leb(wasm, p)
                    if flags & 1:
                        _, p = _leb(wasm, p)
                elif kind == 3:  # global: valtype + mutability
                    p += 2
                out.append((module, field, kind))
        pos = end
    return out


@pytest.fixture(scope="module")
def imports():
    if not WASM.is_file():
        pytest.fail(f"{WASM} not built (run `make build`)", pytrace=False)
    return read_imports(WASM.read_bytes())


def test_reader_reads_a_hand_made_module():
    # (module (import "env" "proxy_log" (func (param i32 i32 i32) (result i32))))
    module = bytes.fromhex(
        "0061736d01000000"
        "01080160037f7f7f017f"
        "0211010365 6e76 0970726f78795f6c6f67 0000".replace(" ", "")
    )
    assert read_imports(module) == [("env", "proxy_log", 0)]


def test_every_import_is_proxy_wasm_0_2_1_or_basic_wasi(imports):
    env = {f for m, f, _ in imports if m == "env"}
    wasi = {f for m, f, _ in imports if m == "wasi_snapshot_preview1"}
    others = {(m, f) for m, f, _ in imports if m not in ("env", "wasi_snapshot_preview1")}
    assert env, "no proxy-wasm imports at all?"
    assert env <= PROXY_WASM_0_2_1, f"not in proxy-wasm 0.2.1: {sorted(env - PROXY_WASM_0_2_1)}"
    assert wasi <= WASI, f"WASI imports outside the basic set: {sorted(wasi - WASI)}"
    assert not others, f"imports from unexpected modules: {sorted(others)}"
    assert all(kind == 0 for _, _, kind in imports), "only function imports (memory is exported, not imported)"
