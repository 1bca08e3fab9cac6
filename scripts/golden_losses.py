#!/usr/bin/env python3
"""Golden values for the stage-1/2 losses (tests/losses.rs), computed with PyTorch formulas.

- sft.json: logits [2, 6, 11], labels with -100 on prompt/padding positions;
  loss = F.cross_entropy(logits.view(-1, V), labels.view(-1), ignore_index=-100).
- info_nce.json: queries [4, 16], docs [4 * 3, 16] (positive of query i at row 3i, then two hard
  negatives), tau = 0.05; loss = F.cross_entropy(q̂ @ d̂.T / tau, arange(4) * 3) and the symmetric
  variant + F.cross_entropy((q̂ @ d̂.T / tau)[:, ::3].T, arange(4)); gradients w.r.t. the raw
  queries and docs for both.

Rerun:  pip install torch==2.15.0 && python3 scripts/golden_losses.py
"""
import json
import os

import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "losses")
os.makedirs(OUT, exist_ok=True)
g = torch.Generator().manual_seed(20261122)

# SFT
logits = torch.randn(2, 6, 11, generator=g, dtype=torch.float64) * 3
labels = torch.randint(0, 11, (2, 6), generator=g)
labels[0, :2] = -100  # prompt
labels[1, :4] = -100  # longer prompt
labels[1, 5] = -100   # padding
loss = F.cross_entropy(logits.view(-1, 11), labels.view(-1), ignore_index=-100)
json.dump({"logits": logits.flatten().tolist(), "shape": [2, 6, 11], "labels": labels.flatten().tolist(),
           "loss": loss.item(), "torch": torch.__version__}, open(os.path.join(OUT, "sft.json"), "w"))

# InfoNCE
n, grp, d, tau = 4, 3, 16, 0.05
q = torch.randn(n, d, generator=g, dtype=torch.float64)
docs = torch.randn(n * grp, d, generator=g, dtype=torch.float64)
docs[::grp] = q + 3.0 * docs[::grp]  # positives near their queries (most, not all, ranked first)
out = {"n": n, "group": grp, "d": d, "tau": tau, "queries": q.flatten().tolist(), "docs": docs.flatten().tolist(),
       "torch": torch.__version__}
for sym in (False, True):
    qq = q.clone().requires_grad_(True)
    dd = docs.clone().requires_grad_(True)
    s = F.normalize(qq, dim=1) @ F.normalize(dd, dim=1).T / tau
    l = F.cross_entropy(s, torch.arange(n) * grp)
    if sym:
        l = l + F.cross_entropy(s[:, ::grp].T, torch.arange(n))
    l.backward()
    key = "symmetric" if sym else "one_way"
    out[key] = {"loss": l.item(), "grad_queries": qq.grad.flatten().tolist(), "grad_docs": dd.grad.flatten().tolist()}
cos = F.normalize(q, dim=1) @ F.normalize(docs, dim=1).T
out["accuracy"] = (cos.argmax(1) == torch.arange(n) * grp).double().mean().item()
pos = cos[torch.arange(n), torch.arange(n) * grp]
mask = torch.ones_like(cos, dtype=torch.bool)
mask[torch.arange(n), torch.arange(n) * grp] = False
out["pos_sim"], out["neg_sim"] = pos.mean().item(), cos[mask].mean().item()
json.dump(out, open(os.path.join(OUT, "info_nce.json"), "w"))
print("wrote", OUT, out["accuracy"], out["one_way"]["loss"], out["symmetric"]["loss"])
