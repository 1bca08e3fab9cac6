#!/usr/bin/env python3
"""SmolLM2-135M fixtures for tests/smollm2.rs, made by HF transformers from the converted folder.

First checks that scripts/fetch_smollm2.py's torch-free conversion is the same model that
transformers builds straight from the GGUF (`from_pretrained(dir, gguf_file=...)`): every tensor
identical, and the tokenizer gives the same ids. Then writes tests/fixtures/smollm2/:

- expected.safetensors: `input_ids` [1, s] of "The capital of France is", the float32 `logits`
  [1, s, 49152] transformers computes for them, `logits_f64` (the same forward in float64,
  rounded to float32 at the end: the exact answer up to one float32 rounding), `greedy` [16] (16 greedy tokens of
  `generate(do_sample=False)`), and the chat-template ids of the query view's user turn.
- expected.json: the same prompt and greedy continuation as text, and the rendered chat template.

Rerun:
    python3 scripts/fetch_smollm2.py
    pip install torch==2.15.0 transformers==5.23.0 accelerate gguf==0.19.0 safetensors && python3 scripts/golden_smollm2.py
"""
import copy
import importlib.metadata
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "assets" / "smollm2-135m-instruct"
OUT = ROOT / "tests" / "fixtures" / "smollm2"
PROMPT = "The capital of France is"
# The query view's user turn (t1_train::model::tokenizer::QUERY_INSTRUCTION + a query).
QUERY_TURN = ("Reason about what a relevant document would contain, then summarise it.\n"
              "Query: which river flows through Paris?")

sys.path.insert(0, str(ROOT / "scripts"))
import fetch_smollm2  # noqa: E402

torch.manual_seed(0)
if not (FOLDER / "model.safetensors").exists():
    sys.exit(f"{FOLDER} is missing: run python3 scripts/fetch_smollm2.py first")

# 1. The conversion equals transformers' own GGUF loading.
with tempfile.TemporaryDirectory() as tmp:
    gguf = fetch_smollm2.download_gguf(Path(tmp))
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                               dtype=torch.float32)
    ref_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
ours = load_file(str(FOLDER / "model.safetensors"))
ref_sd = {k: v for k, v in ref.state_dict().items()}
if ref.config.tie_word_embeddings:
    ref_sd.pop("lm_head.weight", None)
assert set(ours) == set(ref_sd), set(ours) ^ set(ref_sd)
worst = max((ours[k] - ref_sd[k]).abs().max().item() for k in ours)
assert worst == 0.0, f"converted weights differ from transformers' GGUF load by {worst}"
tok = AutoTokenizer.from_pretrained(str(FOLDER))
for text in [PROMPT, QUERY_TURN, "Ünïcode, digits 12345, and  spaces\n\tend", "<|im_start|>user\nhi<|im_end|>"]:
    assert tok(text)["input_ids"] == ref_tok(text)["input_ids"], text
print(f"conversion check: {len(ours)} tensors identical, tokenizer ids identical")

# 2. Fixtures from the converted folder.
model = AutoModelForCausalLM.from_pretrained(str(FOLDER), dtype=torch.float32).eval()
ids = torch.tensor([tok(PROMPT)["input_ids"]])
with torch.no_grad():
    logits = model(input_ids=ids).logits.float()
    # The same forward in float64, rounded to float32 at the end: the reference both float32
    # computations (transformers' above, t1-train's in the test) are measured against.
    exact = copy.deepcopy(model).double()(input_ids=ids).logits.float()
    greedy = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                            max_new_tokens=16, min_new_tokens=16)[0, ids.shape[1]:]
chat = tok.apply_chat_template([{"role": "user", "content": QUERY_TURN}], tokenize=False,
                               add_generation_prompt=True)
chat_ids = torch.tensor(tok(chat)["input_ids"])
OUT.mkdir(parents=True, exist_ok=True)
print(f"transformers float32 vs float64 logits: max abs {(logits - exact).abs().max().item():.3e}")
save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous(),
           "logits_f64": exact.contiguous(), "greedy": greedy.contiguous(),
           "chat_ids": chat_ids.contiguous()}, str(OUT / "expected.safetensors"))
(OUT / "expected.json").write_text(json.dumps({
    "prompt": PROMPT,
    "greedy_text": tok.decode(greedy),
    "query_turn": QUERY_TURN,
    "chat": chat,
}, indent=2, ensure_ascii=False) + "\n")
(OUT / "VERSIONS").write_text(
    f"torch {torch.__version__}\ntransformers {transformers.__version__}\n"
    f"gguf {importlib.metadata.version('gguf')}\naccelerate {importlib.metadata.version('accelerate')}\n"
    f"model {fetch_smollm2.PACKAGE} ({fetch_smollm2.GGUF_IN_WHEEL}, sha256 {fetch_smollm2.GGUF_SHA256})\n")
print(f"greedy continuation: {tok.decode(greedy)!r}")
print(f"wrote {OUT}")
