#!/usr/bin/env python3
"""Package a proxy-wasm module as an OCI image ("compat" Wasm image variant).

Python 3 standard library only. Writes an OCI image layout directory

    <out>/oci-layout
    <out>/index.json                 one manifest, tagged with --tag
    <out>/blobs/sha256/<digest>      config, layer, manifest

and, with --tar, the same layout as one tar file (what `skopeo copy
oci-archive:FILE ...` and most registry clients take).

The image follows the *compat* variant of the Wasm image specification
(solo-io/wasm, spec/spec-compat.md), which is what Istio's and Envoy
Gateway's image fetchers read (pkg/wasm/imagefetcher.go resp.
internal/wasm/imagefetcher.go):

  * an OCI image manifest (application/vnd.oci.image.manifest.v1+json)
    with an OCI image config (application/vnd.oci.image.config.v1+json);
  * exactly one layer of media type application/vnd.oci.image.layer.v1.tar+gzip,
    a gzip'd tar holding one file, `plugin.wasm` (the fetchers gunzip the
    last layer and take the first tar entry whose base name is plugin.wasm:
    an uncompressed tar would be refused);
  * the manifest annotation module.wasm.image/variant=compat-smart, the
    value the project's rollout issue names (see docs/deploy.md for why not
    the spec's plain `compat`; the fetchers do not read it either way).

Reproducible: the same module, version and tag give byte-identical blobs and
therefore the same manifest digest. The tar entry has mtime 0, uid/gid 0, no
user/group names, mode 0644, USTAR format; gzip has mtime 0, no file name,
level 9; JSON is written with sorted keys and no whitespace; the config has
no `created` time and no history.

Usage:
    build_oci.py --wasm target/upsync_wasm.wasm \\
        --version 0.1.0 --out target/oci/layout --tar target/oci/upsync-wasm-0.1.0.tar

Prints one JSON object: manifest digest, tag, wasm sha256 and the paths.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# Media types and annotation (OCI image spec; Wasm image spec, compat variant).
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
VARIANT_ANNOTATION = "module.wasm.image/variant"
VARIANT = "compat-smart"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

WASM_FILE_NAME = "plugin.wasm"  # the name the compat fetchers look for
WASM_MAGIC = b"\0asm"
DEFAULT_NAME = "upsync-wasm"
# The module is built for wasm32-wasip1; Go spells that GOOS=wasip1 GOARCH=wasm.
IMAGE_OS = "wasip1"
IMAGE_ARCH = "wasm"

# A tag per the OCI distribution spec.
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_of(data: bytes) -> str:
    return "sha256:" + sha256_hex(data)


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _tarinfo(name: str, size: int, *, directory: bool = False) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = 0 if directory else size
    ti.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    ti.mode = 0o755 if directory else 0o644
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def layer_tar(wasm: bytes) -> bytes:
    """The uncompressed layer: a tar with the single entry plugin.wasm."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        tf.addfile(_tarinfo(WASM_FILE_NAME, len(wasm)), io.BytesIO(wasm))
    return buf.getvalue()


def gzip_deterministic(data: bytes) -> bytes:
    """gzip with a fixed header: mtime 0, no file name, level 9."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


@dataclass
class Image:
    """An image in memory: every blob by digest, and the manifest's descriptor."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifest_digest: str = ""
    manifest_size: int = 0
    config_digest: str = ""
    layer_digest: str = ""
    wasm_sha256: str = ""

    def add(self, data: bytes) -> str:
        d = digest_of(data)
        self.blobs[d] = data
        return d


def build_image(wasm: bytes, version: str, name: str = DEFAULT_NAME) -> Image:
    if not wasm.startswith(WASM_MAGIC):
        raise ValueError("not a WebAssembly module (no \\0asm magic number)")
    img = Image(wasm_sha256=sha256_hex(wasm))

    tar_bytes = layer_tar(wasm)
    layer = gzip_deterministic(tar_bytes)
    img.layer_digest = img.add(layer)

    config = {
        "architecture": IMAGE_ARCH,
        "os": IMAGE_OS,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(tar_bytes)]},
    }
    config_bytes = canonical_json(config)
    img.config_digest = img.add(config_bytes)

    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {
            "mediaType": MEDIA_TYPE_CONFIG,
            "digest": img.config_digest,
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": MEDIA_TYPE_LAYER,
                "digest": img.layer_digest,
                "size": len(layer),
            }
        ],
        "annotations": {
            VARIANT_ANNOTATION: VARIANT,
            "org.opencontainers.image.title": name,
            "org.opencontainers.image.version": version,
        },
    }
    manifest_bytes = canonical_json(manifest)
    img.manifest_digest = img.add(manifest_bytes)
    img.manifest_size = len(manifest_bytes)
    return img


def index_json(img: Image, tag: str) -> bytes:
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_TYPE_MANIFEST,
                "digest": img.manifest_digest,
                "size": img.manifest_size,
                "annotations": {REF_NAME_ANNOTATION: tag},
            }
        ],
    }
    return canonical_json(index)


OCI_LAYOUT = canonical_json({"imageLayoutVersion": "1.0.0"})


def layout_files(img: Image, tag: str) -> list[tuple[str, bytes]]:
    """(relative path, bytes) of every file of the layout, in a fixed order."""
    files = [("oci-layout", OCI_LAYOUT), ("index.json", index_json(img, tag))]
    for d in sorted(img.blobs):
        algo, hexd = d.split(":", 1)
        files.append((f"blobs/{algo}/{hexd}", img.blobs[d]))
    return files


def write_layout(img: Image, tag: str, out: Path) -> None:
    """Write the layout directory, replacing whatever was at `out`."""
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=".oci-", dir=out.parent))
    try:
        for rel, data in layout_files(img, tag):
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_layout_tar(img: Image, tag: str, tar_path: Path) -> None:
    """The layout as a tar (an "oci-archive"), entries in a fixed order."""
    tar_path = Path(tar_path)
    files = layout_files(img, tag)
    dirs = sorted({str(Path(rel).parent) for rel, _ in files if "/" in rel})
    # every parent directory too, e.g. blobs and blobs/sha256
    all_dirs = sorted({str(p) for d in dirs for p in [Path(d), *Path(d).parents] if str(p) != "."})
    tmp = tar_path.with_name(tar_path.name + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for rel, data in files[:2]:
            tf.addfile(_tarinfo(rel, len(data)), io.BytesIO(data))
        for d in all_dirs:
            tf.addfile(_tarinfo(d + "/", 0, directory=True))
        for rel, data in files[2:]:
            tf.addfile(_tarinfo(rel, len(data)), io.BytesIO(data))
    os.replace(tmp, tar_path)


def crate_version(cargo_toml: Path) -> str:
    """`version` of the [package] table of a Cargo.toml."""
    import tomllib

    with open(cargo_toml, "rb") as f:
        return tomllib.load(f)["package"]["version"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wasm", required=True, type=Path, help="the module to package")
    ap.add_argument("--out", required=True, type=Path, help="OCI layout directory to (re)create")
    ap.add_argument("--tar", type=Path, help="also write the layout as this tar file")
    ap.add_argument("--version", help="image version; default: [package] version of --cargo-toml")
    ap.add_argument("--cargo-toml", type=Path, default=Path("Cargo.toml"))
    ap.add_argument("--tag", help="tag in index.json (default: the version)")
    ap.add_argument("--name", default=DEFAULT_NAME, help="image title annotation")
    ap.add_argument("--summary", type=Path, help="also write the printed JSON summary to this file")
    args = ap.parse_args(argv)

    version = args.version or crate_version(args.cargo_toml)
    tag = args.tag or version
    if not TAG_RE.match(tag):
        ap.error(f"invalid tag {tag!r}")
    wasm = args.wasm.read_bytes()
    try:
        img = build_image(wasm, version=version, name=args.name)
    except ValueError as e:
        ap.error(f"{args.wasm}: {e}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_layout(img, tag, args.out)
    if args.tar:
        args.tar.parent.mkdir(parents=True, exist_ok=True)
        write_layout_tar(img, tag, args.tar)

    summary = json.dumps(
        {
            "manifest_digest": img.manifest_digest,
            "tag": tag,
            "version": version,
            "wasm_sha256": img.wasm_sha256,
            "wasm_bytes": len(wasm),
            "layer_digest": img.layer_digest,
            "config_digest": img.config_digest,
            "layout": str(args.out),
            "tar": str(args.tar) if args.tar else None,
        },
        indent=2,
    )
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(summary + "\n")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
