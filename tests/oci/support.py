"""Helpers for the OCI/deploy tests: processes, ports, a registry, an HTTP host.

Standard library only. Every process started here runs in its own session
(process group) and is killed by `Proc.stop()`; the fixtures in conftest.py
register that as a finalizer, and `atexit` catches anything left over.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import sys
import os
import shutil
import subprocess
import tarfile
import threading
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import harness  # noqa: E402
from harness import log_tail, wait_until  # noqa: E402,F401  (used by the tests through this module)
OCI_DIR = REPO / "target" / "oci"
DEPLOY_DIR = REPO / "envoy" / "deploy"

MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cargo_version() -> str:
    """`version` of Cargo.toml's [package], read here: independent of oci/build_oci.py."""
    with open(REPO / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["package"]["version"]


def http_get(url: str, headers: dict | None = None, timeout: float = 3.0):
    """(status, headers, body) of a GET; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


# --------------------------------------------------------------------------
# processes: the end-to-end harness's bookkeeping (own session, log file,
# group kill, leftovers killed at exit)


def free_port() -> int:
    return harness.free_ports(1)[0]


class Proc:
    """A child process in its own session, output to a log file."""

    def __init__(self, argv: list[str], log_path: Path, env: dict | None = None, cwd=None):
        self.argv = argv
        self.log_path = Path(log_path)
        self.popen = harness._spawn(argv, self.log_path, cwd=cwd, env=env)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        harness._stop(self.popen, grace=grace)


# --------------------------------------------------------------------------
# OCI layouts and the compat extraction rule


def read_layout(layout: Path, tag: str) -> dict:
    """Manifest, config and layer of `tag` in an OCI layout, checked for integrity."""
    layout = Path(layout)
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    entries = [
        m for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    assert len(entries) == 1, f"tag {tag!r} in {index}"
    desc = entries[0]

    def blob(d: dict) -> bytes:
        algo, hexd = d["digest"].split(":", 1)
        data = (layout / "blobs" / algo / hexd).read_bytes()
        assert algo == "sha256" and sha256_hex(data) == hexd, f"blob {d['digest']} corrupt"
        assert len(data) == d["size"], f"blob {d['digest']} size {len(data)} != {d['size']}"
        return data

    manifest_bytes = blob(desc)
    manifest = json.loads(manifest_bytes)
    assert len(manifest["layers"]) >= 1
    return {
        "index": index,
        "descriptor": desc,
        "manifest_bytes": manifest_bytes,
        "manifest": manifest,
        "config": json.loads(blob(manifest["config"])),
        "layers": [blob(layer) for layer in manifest["layers"]],
    }


def extract_like_istio(manifest: dict, layers: list[bytes]) -> bytes:
    """The Wasm module as Istio's / Envoy Gateway's image fetcher gets it.

    Mirrors extractOCIStandardImage + extractWasmPluginBinary: take the
    LAST layer, require media type application/vnd.oci.image.layer.v1.tar+gzip,
    gunzip it, walk the tar, return the first entry whose base name is
    plugin.wasm."""
    mt = manifest["layers"][-1]["mediaType"]
    if mt != MEDIA_TYPE_LAYER:
        raise ValueError(f"invalid media type {mt} (expect {MEDIA_TYPE_LAYER})")
    raw = gzip.decompress(layers[-1])
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        for member in tf:
            if os.path.basename(member.name) == "plugin.wasm":
                f = tf.extractfile(member)
                assert f is not None
                return f.read()
    raise ValueError("plugin.wasm not found in the archive")


# --------------------------------------------------------------------------
# a real registry: Debian's docker-registry (distribution 2.8)

REGISTRY_BIN = "/usr/bin/docker-registry"


class Registry:
    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.config = self.workdir / "registry.yml"
        self.log_path = self.workdir / "registry.log"
        self.proc: Proc | None = None

    def start(self, timeout: float = 20.0) -> "Registry":
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n  accesslog:\n    disabled: false\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {data}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
        )
        # REGISTRY_* variables would override the file; start from a clean slate.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self.proc = Proc([REGISTRY_BIN, "serve", str(self.config)], self.log_path, env=env)

        def ready():
            if not self.proc.alive():
                raise harness.ProcessExited(f"docker-registry exited:\n{log_tail(self.log_path)}")
            status, headers, _ = http_get(f"http://{self.host}/v2/", timeout=1.0)
            return status == 200 and headers.get("Docker-Distribution-API-Version") == "registry/2.0"

        wait_until(ready, timeout, 0.1, f"docker-registry on {self.host}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


# --------------------------------------------------------------------------
# skopeo with a private policy and scratch space


def skopeo(args: list[str], workdir: Path, timeout: float = 120.0) -> subprocess.CompletedProcess:
    skopeo_bin = shutil.which("skopeo")
    if skopeo_bin is None:
        raise FileNotFoundError("skopeo not found: `make oci-deps` installs it")
    policy = Path(workdir) / "policy.json"
    if not policy.exists():
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    tmp = Path(workdir) / "skopeo-tmp"
    tmp.mkdir(exist_ok=True)
    env = dict(os.environ, REGISTRY_AUTH_FILE=str(Path(workdir) / "auth.json"))
    argv = [skopeo_bin, "--policy", str(policy), "--tmpdir", str(tmp), *args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


# --------------------------------------------------------------------------
# an HTTP server hosting files from memory (Envoy's `remote` code source)


class ModuleServer:
    """ThreadingHTTPServer on 127.0.0.1 serving {path: bytes}; records requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("content-type", "application/wasm")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> "ModuleServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
