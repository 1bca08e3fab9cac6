#!/usr/bin/env python3
"""The PyTorch/transformers side of benches/backbone.rs: same HF folder, same shapes, same threads.

    python3 scripts/bench_backbone.py DIR TRAIN_BATCH TRAIN_SEQ DECODE_BATCH PROMPT NEW_TOKENS REPS THREADS

Prints {"train": tokens/s, "decode": tokens/s} on stdout. `train` is one forward+backward of
teacher-forced next-token cross-entropy over TRAIN_BATCH x TRAIN_SEQ tokens (no optimizer step),
`decode` is greedy `generate` with the KV cache, DECODE_BATCH rows x NEW_TOKENS tokens, prompts of
PROMPT random tokens. Median of REPS runs after one warm-up, fp32, eager attention as t1-train has
no fused kernel on CPU either. Needs torch and transformers (tested with torch 2.15.0, transformers 5.23.0).
"""
import json
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def timed(reps, fn):
    fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main():
    d = sys.argv[1]
    tb, ts, db, prompt, new, reps, threads = map(int, sys.argv[2:9])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    vocab = model.config.vocab_size
    x = torch.randint(0, vocab, (tb, ts + 1))
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()

    def train():
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
        loss.backward()

    model.train()
    train_s = timed(reps, train)
    model.eval()
    p = torch.randint(0, vocab, (db, prompt))

    def decode():
        with torch.no_grad():
            out = model.generate(p, attention_mask=torch.ones_like(p), do_sample=False,
                                 max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
        assert out.shape[1] == prompt + new

    decode_s = timed(reps, decode)
    print(json.dumps({"train": tb * ts / train_s, "decode": db * new / decode_s}))


if __name__ == "__main__":
    main()
