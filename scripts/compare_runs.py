#!/usr/bin/env python3
"""Are two runs of the same config the same run? Compares two run folders bit for bit:

    python3 scripts/compare_runs.py runs/x-a runs/x-b

- every scalar in metrics.jsonl, step by step, except wall-clock figures (time/, *_per_s,
  peak_rss_mib) — the first step and key that differ, with the relative difference;
- every logged text line (rollouts; the index note without its timing);
- the last checkpoint: every tensor of its *.safetensors (dtype, shape and bytes; the header's
  metadata map is written in a per-process order), state.json but for its config_hash (which
  covers run.name) and a LoRA run's base_fingerprint (sums compared with a tolerance on resume), every other file by SHA-256 — but for
  SHA256SUMS (of those bytes) and optimizer.mpk (a hash map, also written in a per-process
  order; equal weights after equal steps on equal scalars stand for it).

Exit 0 when they agree, 1 when not (the first differences printed). Standard library only.
"""
import hashlib
import json
import re
import struct
import sys
from pathlib import Path

CLOCK = re.compile(r"(^|/)time/|_per_s$|peak_rss_mib$")
# the index note's wall clock: "2765 documents encoded in 106.1 s (26 documents/s)"
TIMING = re.compile(r" in [0-9.]+ s \([0-9.]+ documents/s\)")


def records(run):
    """(step, key) → its values in order, and the text lines, from a run's metrics.jsonl."""
    values, texts = {}, []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "scalars":
            for k, v in rec["values"].items():
                if not CLOCK.search(k):
                    values.setdefault((rec["step"], k), []).append(v)
        elif rec.get("kind") == "text":
            texts.append((rec["step"], rec["tag"], TIMING.sub("", rec["text"])))
    return values, texts


def tensors(path):
    """name → SHA-256 of (dtype, shape, bytes) for every tensor of a safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return {
        name: hashlib.sha256(
            f"{t['dtype']}{t['shape']}".encode() + data[t["data_offsets"][0]:t["data_offsets"][1]]
        ).hexdigest()
        for name, t in header.items()
        if name != "__metadata__"
    }


def last_checkpoint(run):
    steps = sorted((run / "checkpoints").glob("step-*"))
    if not steps:
        return None, {}
    root = steps[-1]
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name in ("SHA256SUMS", "optimizer.mpk"):
            continue
        rel = str(p.relative_to(root))
        if p.name == "state.json":  # its config_hash names the run (run.name differs)
            state = json.loads(p.read_text())
            state.pop("config_hash", None)
            state.pop("base_fingerprint", None)  # LoRA: tolerance-compared, parallel sums
            out[rel] = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
        elif p.suffix == ".safetensors":
            out.update({f"{rel}:{k}": v for k, v in tensors(p).items()})
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return root.name, out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = Path(sys.argv[1]), Path(sys.argv[2])
    (sa, ta), (sb, tb) = records(a), records(b)
    same = True
    if not sa or not sb:
        print(f"no scalars logged in {a if not sa else b}")
        same = False
    if sa.keys() != sb.keys():
        print(f"logged keys differ: {sorted(sa.keys() ^ sb.keys())[:5]}")
        same = False
    diffs = sorted(k for k in sa.keys() & sb.keys() if sa[k] != sb[k])
    for step, key in diffs[:8]:
        x, y = sa[(step, key)], sb[(step, key)]
        nums = all(isinstance(v, (int, float)) for v in x + y) and len(x) == len(y)
        rel = max((abs(u - v) / max(abs(u), abs(v), 1e-300) for u, v in zip(x, y)), default=0)
        print(f"step {step} {key}: {x!r} vs {y!r}" + (f" (relative {rel:.1e})" if nums else ""))
    if diffs:
        same = False
        print(f"{len(diffs)} of {len(sa)} scalars differ; first at step {diffs[0][0]}")
    else:
        print(f"all {len(sa.keys() & sb.keys())} scalars both runs logged equal bit for bit")
    if ta != tb:
        same = False
        first = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
        print(f"text lines differ ({len(ta)} vs {len(tb)}), first at line {first + 1}")
    else:
        print(f"all {len(ta)} text lines equal")
    (na, ca), (nb, cb) = last_checkpoint(a), last_checkpoint(b)
    bad = sorted(k for k in ca.keys() | cb.keys() if ca.get(k) != cb.get(k))
    if na is None or na != nb:
        same = False
        print(f"last checkpoints: {na} vs {nb}")
    elif bad:
        same = False
        print(f"last checkpoint: {len(bad)} of {len(ca)} tensors and files differ: {bad[:6]}")
    else:
        print(f"last checkpoint {na}: all {len(ca)} tensors and files equal")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
