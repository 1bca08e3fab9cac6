#!/usr/bin/env python3
"""Logit-parity fixtures for t1-train's decoder (tests/backbone_parity.rs), made by HF transformers.

For each tiny random config (qwen3, qwen2, llama; tied and untied; Llama-3 RoPE scaling; biases),
writes tests/fixtures/backbone/<name>/ with config.json + model.safetensors (save_pretrained) and
expected.safetensors holding input_ids [3, 8], attention_mask [3, 8] (row 0 full, row 1 right-
padded, row 2 left-padded), position_ids (cumsum(mask) - 1, clamped, as generate() does) and the
float32 logits transformers computes for them. Every parameter, norms included, is perturbed so
a wrong key map or a missing transpose cannot hide behind an init of ones or zeros.

Rerun:  pip install torch==2.15.0 transformers==5.23.0 safetensors && python3 scripts/golden_backbone.py
"""
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "backbone")
common = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6)
variants = {
    "qwen3_tied": Qwen3Config(**common, head_dim=16, tie_word_embeddings=True, rope_theta=1000000.0),
    "qwen3_untied": Qwen3Config(**common, head_dim=8, tie_word_embeddings=False, attention_bias=True),
    "qwen2_tied": Qwen2Config(**common, tie_word_embeddings=True, rope_theta=10000.0),
    "qwen2_untied": Qwen2Config(**common, tie_word_embeddings=False),
    "llama_tied_rope_llama3": LlamaConfig(**common, tie_word_embeddings=True, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16}),
    "llama_untied_bias": LlamaConfig(**common, tie_word_embeddings=False, attention_bias=True, mlp_bias=True),
}

ids = torch.tensor([
    [5, 17, 33, 2, 91, 40, 7, 64],
    [12, 3, 88, 45, 9, 0, 0, 0],
    [0, 0, 0, 71, 26, 50, 8, 19],
])
mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [0] * 3 + [1] * 5])
pos = (mask.cumsum(-1) - 1).clamp(min=0)

for name, cfg in variants.items():
    torch.manual_seed(sum(map(ord, name)))
    cfg.torch_dtype = torch.float32
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    d = os.path.join(OUT, name)
    model.save_pretrained(d, safe_serialization=True)
    save_file({"input_ids": ids.to(torch.int64), "attention_mask": mask.to(torch.int64),
               "position_ids": pos.to(torch.int64), "logits": logits.float().contiguous()},
              os.path.join(d, "expected.safetensors"))
    for junk in ("generation_config.json",):
        p = os.path.join(d, junk)
        if os.path.exists(p):
            os.remove(p)
    print(f"{name}: {sum(p.numel() for p in model.parameters())} params, logits {tuple(logits.shape)}")

# The same qwen3_tied weights, (a) saved in shards with an index, (b) saved in bf16: expected
# logits are transformers' when it loads the bf16 folder in fp32 (what t1-train does too).
base = os.path.join(OUT, "qwen3_tied")
model = AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager").float().eval()
model.save_pretrained(os.path.join(OUT, "qwen3_tied_sharded"), safe_serialization=True, max_shard_size="20KB")
with open(os.path.join(base, "expected.safetensors"), "rb") as f:
    expected_bytes = f.read()
with open(os.path.join(OUT, "qwen3_tied_sharded", "expected.safetensors"), "wb") as f:
    f.write(expected_bytes)
bf = AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager").to(torch.bfloat16)
bf.save_pretrained(os.path.join(OUT, "qwen3_tied_bf16"), safe_serialization=True)
# transformers loading the bf16 folder in fp32 (upcasts weights, recomputes RoPE in fp32). Not
# bf.float(): that would keep the RoPE inv_freq buffer rounded to bf16.
bf32 = AutoModelForCausalLM.from_pretrained(os.path.join(OUT, "qwen3_tied_bf16"), dtype=torch.float32,
                                            attn_implementation="eager").eval()
with torch.no_grad():
    logits = bf32(input_ids=ids, attention_mask=mask, position_ids=pos).logits
save_file({"input_ids": ids.to(torch.int64), "attention_mask": mask.to(torch.int64),
           "position_ids": pos.to(torch.int64), "logits": logits.float().contiguous()},
          os.path.join(OUT, "qwen3_tied_bf16", "expected.safetensors"))
for d in ("qwen3_tied_sharded", "qwen3_tied_bf16"):
    p = os.path.join(OUT, d, "generation_config.json")
    if os.path.exists(p):
        os.remove(p)
print("shards:", sorted(f for f in os.listdir(os.path.join(OUT, "qwen3_tied_sharded")) if f.endswith(".safetensors")))

with open(os.path.join(OUT, "VERSIONS"), "w") as f:
    f.write(f"python {sys.version.split()[0]}\ntorch {torch.__version__}\ntransformers {transformers.__version__}\n")
