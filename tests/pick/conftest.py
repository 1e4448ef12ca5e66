from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def pytest_addoption(parser):
    parser.addoption("--wasm", default=str(REPO / "target" / "upsync_wasm.wasm"), help="the built plugin")
