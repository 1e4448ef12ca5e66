"""Round trip through a real OCI registry: `make publish`, then pull it back.

The registry is Debian's docker-registry (distribution 2.8) on 127.0.0.1 with
filesystem storage in a temp dir; pushing and pulling is skopeo's. The pulled
image is checked the way Istio's / Envoy Gateway's image fetcher reads it.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

import support

REPO = support.REPO


@pytest.fixture(scope="module")
def pushed(registry, wasm_path, tmp_path_factory):
    """`make publish` of the current image into the test registry."""
    ref = f"{registry.host}/upsync-wasm:{support.cargo_version()}"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    r = subprocess.run(
        ["make", "--no-print-directory", "publish", f"REGISTRY={ref}", "ALLOW_DIRTY=1", f"WASM={wasm_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, f"make publish failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    info = json.loads((REPO / "target" / "oci" / "image.json").read_text())
    pushed_digest = (REPO / "target" / "oci" / "pushed-digest").read_text().strip()
    return {"ref": ref, "digest": info["manifest_digest"], "pushed_digest": pushed_digest,
            "workdir": tmp_path_factory.mktemp("skopeo")}


def test_publish_keeps_the_manifest_digest(pushed, wasm_bytes):
    assert pushed["pushed_digest"] == pushed["digest"]
    r = support.skopeo(["inspect", "--tls-verify=false", f"docker://{pushed['ref']}"], pushed["workdir"])
    info = json.loads(r.stdout)
    assert info["Digest"] == pushed["digest"]
    assert info["Os"] == "wasip1" and info["Architecture"] == "wasm"


def test_pull_back_with_skopeo_gives_the_same_module(pushed, wasm_bytes, tmp_path):
    layout = tmp_path / "pulled"
    support.skopeo(
        ["copy", "--src-tls-verify=false", "--preserve-digests",
         f"docker://{pushed['ref']}", f"oci:{layout}:{support.cargo_version()}"],
        pushed["workdir"],
    )
    got = support.read_layout(layout, support.cargo_version())
    assert got["descriptor"]["digest"] == pushed["digest"]
    m = got["manifest"]
    assert m["mediaType"] == support.MEDIA_TYPE_MANIFEST
    assert m["config"]["mediaType"] == support.MEDIA_TYPE_CONFIG
    assert [layer["mediaType"] for layer in m["layers"]] == [support.MEDIA_TYPE_LAYER]
    assert m["annotations"]["module.wasm.image/variant"] == "compat-smart"
    module = support.extract_like_istio(m, got["layers"])
    assert support.sha256_hex(module) == support.sha256_hex(wasm_bytes)


def test_registry_api_serves_what_istio_fetches(pushed, registry, wasm_bytes):
    """The same requests go-containerregistry's remote.Get/Image make for Istio."""
    base = f"http://{registry.host}/v2/upsync-wasm"
    accept = ", ".join([
        support.MEDIA_TYPE_MANIFEST, support.MEDIA_TYPE_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ])
    for ref in (support.cargo_version(), pushed["digest"]):  # by tag, and pinned by digest
        status, headers, body = support.http_get(f"{base}/manifests/{ref}", {"Accept": accept})
        assert status == 200, (ref, status, body[:300])
        assert headers["Content-Type"] == support.MEDIA_TYPE_MANIFEST
        assert headers["Docker-Content-Digest"] == pushed["digest"]
        assert "sha256:" + support.sha256_hex(body) == pushed["digest"]
    manifest = json.loads(body)
    layers = []
    for desc in [manifest["config"], *manifest["layers"]]:
        status, _, blob = support.http_get(f"{base}/blobs/{desc['digest']}", timeout=10)
        assert status == 200 and "sha256:" + support.sha256_hex(blob) == desc["digest"]
        layers.append(blob)
    assert json.loads(layers[0])["rootfs"]["type"] == "layers"
    assert support.extract_like_istio(manifest, layers[1:]) == wasm_bytes


def test_layout_archive_is_readable_by_skopeo(made_image, oci_dir, tmp_path):
    tar = oci_dir / f"upsync-wasm-{support.cargo_version()}.tar"
    r = support.skopeo(["inspect", f"oci-archive:{tar}:{support.cargo_version()}"], tmp_path)
    assert json.loads(r.stdout)["Digest"] == made_image["manifest_digest"]
