#!/usr/bin/env python3
"""The sans-IO core's layering rule (`make lint`): a module of src/sansio/
imports only from its own folder and from folders of lower layers; the
three top folders (sync, serve, pick) never import each other. Test code
(from a file's first `#[cfg(test)]`, and src/sansio/tests/) is exempt."""
import pathlib
import re
import sys

LAYERS = {"util": 0, "model": 1, "config": 2, "registry": 3, "shared": 4, "sync": 5, "serve": 5, "pick": 5}
ROOT = pathlib.Path(__file__).resolve().parent.parent / "src" / "sansio"
PATH = re.compile(r"crate::sansio::(\w+)")

bad = []
for f in sorted(ROOT.rglob("*.rs")):
    rel = f.relative_to(ROOT)
    if len(rel.parts) == 1 or rel.parts[0] == "tests":
        continue  # the core's root module and its cross-module tests
    own = rel.parts[0]
    if own not in LAYERS:
        bad.append(f"{rel}: folder {own!r} has no layer in scripts/check_layers.py")
        continue
    code = f.read_text().split("#[cfg(test)]", 1)[0]
    for n, line in enumerate(code.splitlines(), 1):
        if line.lstrip().startswith("//"):
            continue
        for used in PATH.findall(line):
            if used == own:
                continue
            if used not in LAYERS:
                bad.append(f"{rel}:{n}: uses unknown folder {used!r}")
            elif LAYERS[used] >= LAYERS[own]:
                bad.append(f"{rel}:{n}: {own} (layer {LAYERS[own]}) must not import {used} (layer {LAYERS[used]})")
if bad:
    print("src/sansio layering broken (see src/sansio/mod.rs):", *bad, sep="\n  ")
    sys.exit(1)
print(f"src/sansio layering ok ({len(LAYERS)} folders)")
