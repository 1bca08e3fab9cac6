#!/usr/bin/env python3
"""Are two runs of the same config the same run? Compares two run folders bit for bit:

    python3 scripts/compare_runs.py runs/x-a runs/x-b

- every scalar in metrics.jsonl, step by step, except wall-clock figures (time/, *_per_s,
  peak_rss_mib) — the first step and key that differ, with the relative difference;
- every logged text line (rollouts, index notes without their timing);
- the last checkpoint: every tensor of its *.safetensors (dtype, shape and bytes; the header's
  metadata map is written in a per-process order), state.json but for its config_hash (which
  covers run.name), every other file by SHA-256 — but for
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


def scalars(run):
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "scalars":
            for k, v in rec["values"].items():
                if not CLOCK.search(k):
                    out[(rec["step"], k)] = v
    return out


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
        return {}
    root = steps[-1]
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name in ("SHA256SUMS", "optimizer.mpk"):
            continue
        rel = str(p.relative_to(root))
        if p.name == "state.json":  # its config_hash names the run (run.name differs)
            state = json.loads(p.read_text())
            state.pop("config_hash", None)
            out[rel] = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
        elif p.suffix == ".safetensors":
            out.update({f"{rel}:{k}": v for k, v in tensors(p).items()})
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = Path(sys.argv[1]), Path(sys.argv[2])
    sa, sb = scalars(a), scalars(b)
    same = True
    if sa.keys() != sb.keys():
        print(f"logged keys differ: {sorted(sa.keys() ^ sb.keys())[:5]}")
        same = False
    diffs = sorted(k for k in sa.keys() & sb.keys() if sa[k] != sb[k])
    for step, key in diffs[:8]:
        x, y = sa[(step, key)], sb[(step, key)]
        rel = abs(x - y) / max(abs(x), abs(y), 1e-300)
        print(f"step {step} {key}: {x!r} vs {y!r} (relative {rel:.1e})")
    if diffs:
        same = False
        print(f"{len(diffs)} of {len(sa)} scalars differ; first at step {diffs[0][0]}")
    else:
        print(f"all {len(sa)} scalars equal bit for bit")
    ca, cb = last_checkpoint(a), last_checkpoint(b)
    bad = sorted(k for k in ca.keys() | cb.keys() if ca.get(k) != cb.get(k))
    if bad:
        same = False
        print(f"last checkpoint: {len(bad)} of {len(ca)} tensors and files differ: {bad[:6]}")
    else:
        print(f"last checkpoint: all {len(ca)} tensors and files equal")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
