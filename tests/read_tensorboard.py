#!/usr/bin/env python3
"""Reads a TensorBoard log folder with TensorBoard's own reader and prints what it saw as JSON.

Used by tests/tensorboard.rs. Exit 3 if the `tensorboard` package is missing.
Output: {"scalars": {tag: [[step, value], ...]}, "text": {tag: [[step, text], ...]},
         "histograms": {tag: [[step, count, min, max], ...]}, "files": n}
"""
import json
import os
import sys

try:
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util
except ImportError as e:  # pragma: no cover
    print(f"tensorboard is not installed: {e}", file=sys.stderr)
    sys.exit(3)

logdir = sys.argv[1]
acc = ea.EventAccumulator(logdir, size_guidance={ea.SCALARS: 0, ea.TENSORS: 0, ea.HISTOGRAMS: 0})
acc.Reload()
tags = acc.Tags()
out = {"scalars": {}, "text": {}, "histograms": {}, "files": len([f for f in os.listdir(logdir) if "tfevents" in f])}
for tag in tags.get("scalars", []):
    out["scalars"][tag] = [[e.step, e.value] for e in acc.Scalars(tag)]
for tag in tags.get("tensors", []):
    # Text summaries arrive as string tensors once the data_compat layer has run.
    meta = acc.SummaryMetadata(tag)
    events = acc.Tensors(tag)
    if meta.plugin_data.plugin_name == "text":
        out["text"][tag] = [[e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode("utf-8")] for e in events]
    elif meta.plugin_data.plugin_name == "scalars":
        out["scalars"][tag] = [[e.step, float(tensor_util.make_ndarray(e.tensor_proto))] for e in events]
    elif meta.plugin_data.plugin_name == "histograms":
        rows = []
        for e in events:
            arr = tensor_util.make_ndarray(e.tensor_proto)  # [buckets, 3]: left, right, count
            rows.append([e.step, float(arr[:, 2].sum()), float(arr[0, 0]), float(arr[-1, 1])])
        out["histograms"][tag] = rows
for tag in tags.get("histograms", []):
    out["histograms"][tag] = [[e.step, e.histogram_value.num, e.histogram_value.min, e.histogram_value.max] for e in acc.Histograms(tag)]
print(json.dumps(out))
