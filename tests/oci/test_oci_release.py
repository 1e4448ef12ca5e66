"""What `make oci` made agrees with Cargo.toml, CHANGELOG.md and the deploy examples."""

from __future__ import annotations

import json
import re
import tarfile

import build_oci
import support

REPO = support.REPO


def newest_changelog_version() -> str:
    for line in (REPO / "CHANGELOG.md").read_text().splitlines():
        m = re.match(r"^## \[?v?(\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?)\]?(?:\s|$)", line)
        if m:
            return m.group(1)
        assert not line.startswith("## "), f"CHANGELOG heading without a version: {line!r}"
    raise AssertionError("CHANGELOG.md has no `## <version>` heading")


def test_cargo_version_changelog_and_image_tag_agree(made_image, oci_dir):
    version = support.cargo_version()
    assert newest_changelog_version() == version, "newest CHANGELOG.md entry is not the crate version"
    assert made_image["version"] == version
    assert made_image["tag"] == version, "`make oci` must tag the image with the crate version"
    index = json.loads((oci_dir / "layout" / "index.json").read_text())
    refs = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert refs == [version]


def test_make_oci_output_matches_an_in_process_build(made_image, oci_dir, wasm_bytes):
    version = support.cargo_version()
    img = build_oci.build_image(wasm_bytes, version=version)
    assert made_image["manifest_digest"] == img.manifest_digest
    got = support.read_layout(oci_dir / "layout", version)
    assert got["descriptor"]["digest"] == img.manifest_digest
    assert support.extract_like_istio(got["manifest"], got["layers"]) == wasm_bytes


def test_make_oci_archive_is_named_after_the_version(made_image, oci_dir):
    version = support.cargo_version()
    tar = oci_dir / f"upsync-wasm-{version}.tar"
    assert tar.is_file(), f"`make oci` should write {tar}"
    with tarfile.open(tar, mode="r:") as tf:
        f = tf.extractfile("index.json")
        assert f is not None
        index = json.loads(f.read())
    assert index["manifests"][0]["digest"] == made_image["manifest_digest"]


def test_deploy_examples_name_the_current_image():
    version = support.cargo_version()
    for name in ("istio-wasmplugin.yaml", "envoy-gateway-extensionpolicy.yaml"):
        text = (support.DEPLOY_DIR / name).read_text()
        assert f"upsync-wasm:{version}" in text, f"envoy/deploy/{name} does not use upsync-wasm:{version}"
