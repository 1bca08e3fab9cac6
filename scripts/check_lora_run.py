#!/usr/bin/env python3
"""A LoRA stage's adapter folder read by peft gives the model `t1-train merge` writes.

    python3 scripts/check_lora_run.py runs/<name>/best MERGED_DIR

ADAPTER_DIR is what a `[lora]` stage writes (best/ or a checkpoint): adapter_config.json,
adapter_model.safetensors, tokenizer.json. MERGED_DIR is `t1-train merge --model ADAPTER_DIR --out
MERGED_DIR`. The base is read from adapter_config.json's base_model_name_or_path, grown to the
tokenizer's vocabulary when it is smaller (the T1 tokens), the adapter applied with
peft.PeftModel.from_pretrained, and its logits on a fixed batch (the T1 token ids among the
inputs) compared with transformers' logits of MERGED_DIR. Exits 1 when they differ by more than
1e-4. Checked with torch 2.15.0, transformers 5.23.0, peft 0.21.2.
"""

import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


def main() -> int:
    adapter, merged = Path(sys.argv[1]), Path(sys.argv[2])
    config = json.loads((adapter / "adapter_config.json").read_text())
    base_dir = adapter / config["base_model_name_or_path"]
    tok = Tokenizer.from_file(str(adapter / "tokenizer.json"))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if base.get_input_embeddings().weight.shape[0] < vocab:
        base.resize_token_embeddings(vocab, mean_resizing=False)
    model = PeftModel.from_pretrained(base, adapter).eval()
    reference = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    t1 = [tok.token_to_id(t) for t in ("<think>", "</think>", "<emb_token>")]
    ids = [(i * 7 + 3) % vocab for i in range(24)]
    ids[:3] = t1
    ids[-3:] = t1
    batch = torch.tensor(ids).reshape(2, 12)
    with torch.no_grad():
        a = model(batch).logits
        b = reference(batch).logits
    diff = (a - b).abs().max().item()
    trainable = config.get("trainable_token_indices")
    print(
        f"peft on {base_dir.name} + {adapter} vs merged {merged}: max |Δlogit| {diff:.2e} "
        f"(r={config['r']}, alpha={config['lora_alpha']}, {len(config['target_modules'])} targets, "
        f"trainable tokens {trainable}; torch {torch.__version__})"
    )
    return 0 if diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
