#!/usr/bin/env python3
"""The PyTorch side of benches/backbone.rs: the same work as t1-train, on the same HF folder, with
the same shapes and thread count, one measurement per process (so the peak memory is its own).

    python3 scripts/bench_peer.py WORK DIR TOKENIZER REPS THREADS [SHAPE...]

WORK and SHAPE (all integers):
  train  BATCH SEQ                 forward+backward of teacher-forced next-token cross-entropy
                                   (no optimizer step), tokens/s
  decode ROWS PROMPT NEW           greedy `generate` with the KV cache, exactly NEW tokens per row
                                   (min_new_tokens), generated tokens/s
  grpo   B G PROMPT NEW BETA_E6 LOSS [LORA_R [CKPT]]
                                   one TRL `GRPOTrainer` optimizer step on B prompts × G rollouts:
                                   sampling at temperature 1 forced to exactly NEW tokens
                                   (generation_kwargs min_new_tokens), policy log-probs, reference
                                   log-probs (beta = BETA_E6 / 1e6), the clipped loss of loss_type
                                   LOSS (0 grpo, 1 bnpo, 2 dapo, 3 dr_grpo), backward, gradient
                                   clipping at 1.0, AdamW, gradient checkpointing off (TRL turns it
                                   on by default; t1-train does not checkpoint); seconds per step
                                   (median of steps 2..); with LORA_R > 0 the policy is a peft
                                   LoRA (r, alpha 2r, the seven projections) and the reference
                                   is the base with the adapter disabled; CKPT 1: gradient
                                   checkpointing on
  index  DOCS LEN BATCH            document encoding: base-model forward (no LM head, no grad) of
                                   DOCS sequences of LEN tokens, BATCH at a time, last-token state;
                                   documents/s

Prints one JSON object: {"value", "unit", "peak_mb" (ru_maxrss of this process), "threads",
"versions"} (on a GPU also "device_peak_mb": torch's peak reserved memory). T1_PEER_DEVICE=cuda
runs the work on the GPU (the device check, scripts/device-check.sh; each timed repetition ends
with torch.cuda.synchronize()); the default is the CPU. fp32, `sdpa` attention (transformers' default, torch's fused CPU attention; t1-train
runs its own fused attention, `model::cpu::attention`). TOKENIZER is a
tokenizer.json for folders without one (only `grpo` needs a tokenizer). Tested with torch 2.15.0,
transformers 5.23.0, trl 1.16.0, datasets 5.2.0.
"""
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


# Where the work runs: the CPU (benches/backbone.rs) or a GPU (its --device-check).
DEVICE = torch.device(os.environ.get("T1_PEER_DEVICE", "cpu"))


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(reps, fn):
    fn()
    sync()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


# transformers' default attention; T1_PEER_ATTN=eager gives the unfused tensor-op version.
ATTN = os.environ.get("T1_PEER_ATTN", "sdpa")


def load(d):
    return AutoModelForCausalLM.from_pretrained(
        d, dtype=torch.float32, attn_implementation=ATTN).to(DEVICE)


def train(d, reps, batch, seq):
    model = load(d)
    model.train()
    vocab = model.config.vocab_size
    x = torch.randint(0, vocab, (batch, seq + 1)).to(DEVICE)
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()

    def step():
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
        loss.backward()

    return batch * seq / timed(reps, step), "tokens/s"


def decode(d, reps, rows, prompt, new):
    model = load(d)
    model.eval()
    p = torch.randint(0, model.config.vocab_size, (rows, prompt)).to(DEVICE)

    def run():
        with torch.no_grad():
            out = model.generate(p, attention_mask=torch.ones_like(p), do_sample=False,
                                 max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
        assert out.shape[1] == prompt + new

    return rows * new / timed(reps, run), "tokens/s"


def index(d, reps, docs, length, batch):
    model = load(d).model  # the base model: last-layer states after the final norm, no LM head
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (docs, length)).to(DEVICE)

    def run():
        with torch.no_grad():
            for lo in range(0, docs, batch):
                h = model(input_ids=ids[lo:lo + batch]).last_hidden_state
                _ = torch.nn.functional.normalize(h[:, -1], dim=-1)

    return docs / timed(reps, run), "docs/s"


def tokenizer_for(d, tok_file):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    if os.path.exists(os.path.join(d, "tokenizer.json")):
        tok = AutoTokenizer.from_pretrained(d)
    else:
        tok = PreTrainedTokenizerFast(tokenizer_file=tok_file, eos_token="<|endoftext|>")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def prompts_of_length(tok, n, length, seed=0):
    """n distinct prompt texts that TRL's tokenizer call turns into exactly `length` ids each:
    words that are single tokens with a leading space, joined."""
    rng = random.Random(seed)
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]
    words = []
    for i in rng.sample(range(len(tok)), min(len(tok), 4000)):
        w = tok.decode([i])
        if len(w) > 2 and w.startswith(" ") and w[1:].isalpha() and enc(w) == [i]:
            words.append(w)
    assert len(words) >= 50, f"only {len(words)} single-token words"
    out = []
    while len(out) < n:
        text = "".join(rng.choice(words) for _ in range(length))
        if len(enc(text)) == length:
            out.append(text)
    return out


def grpo(d, tok_file, reps, b, g, prompt, new, beta_e6, loss, lora_rank=0, checkpointing=0):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = tokenizer_for(d, tok_file)
    steps = reps + 1
    prompts = prompts_of_length(tok, b * steps, prompt)
    dataset = Dataset.from_dict({"prompt": prompts})
    lengths = []

    def reward(prompts, completions, completion_ids, **kw):
        lengths.extend(len(c) for c in completion_ids)
        return [random.random() for _ in completions]

    class Clock(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t)

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, use_cpu=DEVICE.type == "cpu", bf16=False, fp16=False, report_to="none",
            per_device_train_batch_size=b * g, num_generations=g, gradient_accumulation_steps=1,
            num_iterations=1, max_steps=steps, max_completion_length=new,
            generation_kwargs={"min_new_tokens": new}, temperature=1.0, top_p=1.0, top_k=0,
            beta=beta_e6 / 1e6, loss_type=["grpo", "bnpo", "dapo", "dr_grpo"][loss],
            learning_rate=1e-6, max_grad_norm=1.0, logging_steps=10**6, save_strategy="no",
            dataloader_num_workers=0, seed=0, disable_dropout=True,
            gradient_checkpointing=bool(checkpointing),
            model_init_kwargs={"dtype": "float32", "attn_implementation": ATTN},
        )
        peft_config = None
        if lora_rank > 0:
            # the bench's LoRA: r, alpha = 2r, all seven projections (TRL's reference is then
            # the base with the adapter disabled, no second model)
            from peft import LoraConfig
            peft_config = LoraConfig(
                r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                "down_proj"])
        trainer = GRPOTrainer(model=d, reward_funcs=reward, args=args, train_dataset=dataset,
                              processing_class=tok, callbacks=[clock], peft_config=peft_config)
        trainer.train()
    assert lengths and all(n == new for n in lengths), f"completion lengths {set(lengths)}"
    assert len(clock.times) == steps
    return statistics.median(clock.times[1:]), "s/step"


def main():
    work, d, tok_file = sys.argv[1:4]
    reps, threads, *shape = map(int, sys.argv[4:])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    random.seed(0)
    if work == "train":
        value, unit = train(d, reps, *shape)
    elif work == "decode":
        value, unit = decode(d, reps, *shape)
    elif work == "index":
        value, unit = index(d, reps, *shape)
    elif work == "grpo":
        value, unit = grpo(d, tok_file, reps, *shape)
    else:
        sys.exit(f"unknown work {work!r}: train, decode, grpo, index")
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "attention": ATTN}
    if work == "grpo":
        import trl
        versions["trl"] = trl.__version__
        if len(shape) > 6:
            import peft
            versions["peft"] = peft.__version__
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out = {"value": value, "unit": unit, "peak_mb": peak, "threads": threads,
           "versions": versions}
    if DEVICE.type == "cuda":
        out["device_peak_mb"] = torch.cuda.max_memory_reserved() / 2**20
        versions["device"] = torch.cuda.get_device_name()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
