#!/usr/bin/env python3
"""Lists every `crate::` import between the library's modules and fails on one that points
against the data flow (DESIGN §7: config -> data -> model -> rollout -> index -> rewards ->
advantage -> loss -> train -> eval/metrics/checkpoint; nothing below `train` imports `train`).

The layers, lowest first. A module may import its own layer and any lower one. The metric sinks
(TensorBoard, JSONL, console, progress bars) need nothing but files, so they sit on the ground
floor with atomic writes and checksums; eval and the run folder (with its checkpoints) are what `train`
reports through: they sit under `train` (it uses them) and never import it. `rewards` is its own crate (no burn), so it has no layer here.

    python3 scripts/import_layers.py          # prints the edges, exit 1 on an upward one
"""
import pathlib, re, sys

LAYERS = [
    ["error", "fsio", "checksums", "metrics", "dist"],
    ["config"],
    ["data"],
    ["model"],
    ["rollout"],
    ["index"],
    ["advantage"],
    ["loss"],
    ["eval", "run"],
    ["train"],
    ["commands"],
]
LAYER = {m: i for i, ms in enumerate(LAYERS) for m in ms}
root = pathlib.Path(__file__).resolve().parent.parent / "src"


def module_of(path: pathlib.Path) -> str:
    rel = path.relative_to(root).parts
    return rel[0].removesuffix(".rs")


edges, bad = {}, []
for f in sorted(root.rglob("*.rs")):
    src = module_of(f)
    if src in ("main", "lib", "bin"):
        continue
    text = f.read_text()
    # `use crate::x::…`, `crate::x::…` in paths, and grouped `use crate::{x, y::…}`
    used = set(re.findall(r"\bcrate::([a-z_0-9]+)", text))
    for group in re.findall(r"use crate::\{([^}]*)\}", text, re.S):
        used |= set(re.findall(r"(?:^|[,{\s])([a-z_0-9]+)(?=::|\s*[,}]|\s*$)", group))
    for dst in used:
        if dst == src or dst not in LAYER and dst not in ("self",):
            continue
        if dst == "self":
            continue
        edges.setdefault((src, dst), []).append(str(f.relative_to(root.parent)))
        if src not in LAYER:
            bad.append(f"{f.relative_to(root.parent)}: module '{src}' has no layer")
        elif LAYER[dst] > LAYER[src]:
            bad.append(f"{f.relative_to(root.parent)}: {src} (layer {LAYER[src]}) imports {dst} (layer {LAYER[dst]})")

for (src, dst), files in sorted(edges.items(), key=lambda e: (LAYER.get(e[0][0], 99), e[0])):
    print(f"{src:>10} -> {dst:<10} {len(set(files))} file(s)")
if bad:
    print("\nagainst the flow:")
    for b in sorted(set(bad)):
        print("  " + b)
    sys.exit(1)
print("\nno import points against the flow")
