#!/usr/bin/env python3
"""Golden values for LaSER's alignment losses (src/loss/latent.rs; tests/losses.rs), with PyTorch.

Inputs (float64, seeded): b = 3 queries, K = 3 latent steps, d = 8, m = 6 batch documents,
ignore[b, m] (True = left out of that query's softmax), tau_s = 0.05, tau_t = 0.1.

  P(x)            = softmax(normalize(x) @ normalize(D).T / tau, masked entries removed)
  output.kl       = mean_i sum_j P_T[i,j] * (log P_T[i,j] - log P_S[i,j])   (student = latent
                    vector s = mean_k latent[:, k], teacher = explicit query vector t)
  trajectory.cos  = mean_{i,k} (1 - cos(latent[i,k], explicit[i,k]))
  trajectory.kl   = mean_{i,k} KL(P_T(explicit[i,k]) || P_S(latent[i,k]))  (same mask per query)

Gradients w.r.t. every input are recorded (no detaching: the Rust side's detach is the caller's).

Rerun:  pip install torch==2.15.0 && python3 scripts/golden_latent.py
"""
import json
import os

import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "losses")
os.makedirs(OUT, exist_ok=True)
g = torch.Generator().manual_seed(8)
b, K, d, m, tau_s, tau_t = 3, 3, 8, 6, 0.05, 0.1
latent = torch.randn(b, K, d, generator=g, dtype=torch.float64)
explicit = latent + 0.8 * torch.randn(b, K, d, generator=g, dtype=torch.float64)
teacher = torch.randn(b, d, generator=g, dtype=torch.float64)
docs = torch.randn(m, d, generator=g, dtype=torch.float64)
ignore = torch.zeros(b, m, dtype=torch.bool)
ignore[0, 3] = True
ignore[2, 1] = True
ignore[2, 4] = True


def log_p(x, tau, mask):
    s = F.normalize(x, dim=-1) @ F.normalize(docs_, dim=-1).T / tau
    return F.log_softmax(s.masked_fill(mask, float("-inf")), dim=-1)


def kl(student, teacher_, mask):
    # masked entries have probability 0 and contribute nothing (filled before use so no inf − inf)
    ls = log_p(student, tau_s, mask).masked_fill(mask, 0.0)
    lt = log_p(teacher_, tau_t, mask).masked_fill(mask, 0.0)
    pt = lt.exp().masked_fill(mask, 0.0)
    return (pt * (lt - ls)).sum() / student.shape[0]


out = {"b": b, "k": K, "d": d, "m": m, "tau_s": tau_s, "tau_t": tau_t, "torch": torch.__version__,
       "latent": latent.flatten().tolist(), "explicit": explicit.flatten().tolist(),
       "teacher": teacher.flatten().tolist(), "docs": docs.flatten().tolist(),
       "ignore": ignore.flatten().tolist()}
for name in ("output_kl", "trajectory_cosine", "trajectory_kl"):
    lat = latent.clone().requires_grad_(True)
    exp = explicit.clone().requires_grad_(True)
    tea = teacher.clone().requires_grad_(True)
    docs_ = docs.clone().requires_grad_(True)
    if name == "output_kl":
        loss = kl(lat.mean(1), tea, ignore)
    elif name == "trajectory_cosine":
        loss = (1 - F.cosine_similarity(lat, exp, dim=-1)).mean()
    else:
        mask = ignore[:, None, :].expand(b, K, m).reshape(b * K, m)
        loss = kl(lat.reshape(b * K, d), exp.reshape(b * K, d), mask)
    loss.backward()
    grad = lambda t: (t.grad if t.grad is not None else torch.zeros_like(t)).flatten().tolist()
    out[name] = {"loss": loss.item(), "grad_latent": grad(lat), "grad_explicit": grad(exp),
                 "grad_teacher": grad(tea), "grad_docs": grad(docs_)}
    print(name, loss.item())
json.dump(out, open(os.path.join(OUT, "latent.json"), "w"))
