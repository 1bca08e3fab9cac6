#!/usr/bin/env python3
"""Loads folders that t1-train saved with transformers and compares logits with the fixtures.

  T1_ROUNDTRIP_OUT=/tmp/rt cargo test --test backbone_parity saved_model
  python3 scripts/check_hf_roundtrip.py /tmp/rt

Needs torch + transformers (not installed by CI, whose test compares the saved tensors byte for
byte with the files transformers wrote instead).
"""
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

root = sys.argv[1]
fixtures = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "backbone")
worst_all = 0.0
for name in sorted(os.listdir(root)):
    model = AutoModelForCausalLM.from_pretrained(os.path.join(root, name), attn_implementation="eager").float().eval()
    e = load_file(os.path.join(fixtures, name, "expected.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=e["input_ids"], attention_mask=e["attention_mask"], position_ids=e["position_ids"]).logits
    real = e["attention_mask"].bool()
    worst = (logits - e["logits"]).abs()[real].max().item()
    worst_all = max(worst_all, worst)
    print(f"{name}: transformers on the t1-train folder vs fixture: max |dlogit| = {worst:.2e}")
sys.exit(0 if worst_all <= 1e-4 else 1)
