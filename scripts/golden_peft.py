#!/usr/bin/env python3
"""PEFT LoRA fixtures for t1-train's adapter I/O (tests/lora.rs), made by transformers + peft.

For two base fixtures of tests/fixtures/backbone/ (scripts/golden_backbone.py), builds a PEFT
LoRA adapter, perturbs every lora_A and lora_B (a fresh lora_B is zero and would hide a wrong
key or transpose), saves it with PeftModel.save_pretrained to tests/fixtures/peft/<name>/
(adapter_config.json + adapter_model.safetensors) and writes expected.safetensors: the logits
the PeftModel computes on the base fixture's input_ids / attention_mask / position_ids.

  qwen3_tied_r4:           r = 4, lora_alpha = 8, all seven projections
  llama_untied_bias_rs2:   r = 2, lora_alpha = 16, use_rslora, q_proj / v_proj / down_proj
  qwen3_tied_tokens:       r = 2, lora_alpha = 4, q/v/o/up_proj, trainable_token_indices = [3, 90, 95]
                           (list form: embedding rows; the tied head follows them)
  qwen3_untied_tokens:     r = 2, lora_alpha = 4, k/gate/down_proj, trainable_token_indices =
                           {embed_tokens: [95, 3, 50], lm_head: [95, 3, 50]} (the untied head's rows too)

  python3 scripts/golden_peft.py                 # rewrite the fixtures
  python3 scripts/golden_peft.py --check BASE DIR  # PeftModel.from_pretrained(BASE, DIR) (e.g. an
                                                 # adapter t1-train saved): its logits against
                                                 # DIR/expected.safetensors, max |diff| printed

Rerun:  pip install torch==2.15.0 transformers==5.23.0 peft==0.21.2 safetensors && python3 scripts/golden_peft.py
"""
import json
import os
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
VARIANTS = {
    "qwen3_tied_r4": ("qwen3_tied", dict(r=4, lora_alpha=8, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])),
    "llama_untied_bias_rs2": ("llama_untied_bias", dict(r=2, lora_alpha=16, use_rslora=True,
                                                        target_modules=["q_proj", "v_proj", "down_proj"])),
    "qwen3_tied_tokens": ("qwen3_tied", dict(r=2, lora_alpha=4, target_modules=[
        "q_proj", "v_proj", "o_proj", "up_proj"], trainable_token_indices=[3, 90, 95])),
    "qwen3_untied_tokens": ("qwen3_untied", dict(r=2, lora_alpha=4, target_modules=[
        "k_proj", "gate_proj", "down_proj"], trainable_token_indices={
            "embed_tokens": [95, 3, 50], "lm_head": [95, 3, 50]})),
}


def base(name):
    d = os.path.join(ROOT, "backbone", name)
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    return m, load_file(os.path.join(d, "expected.safetensors"))


def logits(model, inputs):
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                     position_ids=inputs["position_ids"]).logits.float().contiguous()


def make():
    for name, (base_name, kw) in VARIANTS.items():
        torch.manual_seed(sum(map(ord, name)))
        model, inputs = base(base_name)
        model = get_peft_model(model, LoraConfig(lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", **kw))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn_like(p) * 0.2)
                elif "trainable_tokens_delta" in n:  # full rows (PEFT stores values, not deltas)
                    p.copy_(torch.randn_like(p))
        out = os.path.join(ROOT, "peft", name)
        model.save_pretrained(out)
        cfg_path = os.path.join(out, "adapter_config.json")
        cfg = json.load(open(cfg_path))
        cfg["base_model_name_or_path"] = f"tests/fixtures/backbone/{base_name}"  # not this machine's path
        json.dump(cfg, open(cfg_path, "w"), indent=2, sort_keys=True)
        lg = logits(model, inputs)
        base_lg = logits(model.get_base_model().__class__.from_pretrained(
            os.path.join(ROOT, "backbone", base_name), dtype=torch.float32,
            attn_implementation="eager").eval(), inputs)
        save_file({"logits": lg}, os.path.join(out, "expected.safetensors"))
        readme = os.path.join(out, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        print(f"{name}: on {base_name}, {kw}, logits {tuple(lg.shape)}, "
              f"max |adapted - base| {(lg - base_lg).abs().max():.3f}")


def check(base_dir, adapter_dir):
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager").eval()
    inputs = load_file(os.path.join(base_dir, "expected.safetensors"))
    model = PeftModel.from_pretrained(model, adapter_dir).eval()
    want = load_file(os.path.join(adapter_dir, "expected.safetensors"))["logits"]
    d = (logits(model, inputs) - want).abs().max().item()
    print(f"PeftModel.from_pretrained({base_dir}, {adapter_dir}): max |logits - expected| = {d:.2e}")
    sys.exit(0 if d <= 1e-4 else 1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--check"]:
        check(sys.argv[2], sys.argv[3])
    else:
        make()
