#!/bin/bash
# Multi-seed evidence for stage 3 on the embedded default (docs/training.md, "Stage 3" table).
#
# 1. the default curriculum once: stage 1 → stage 2 → stage 3 (seed 42), with its report;
# 2. stage 3 again from the same stage-2 model with seeds 7 and 1234;
# 3. every stage-3 run and the stage-2 model (best dev checkpoints) evaluated with greedy reasoning on
#    dev, test and the training queries;
# 4. a Markdown table: rollout reward and hit@10 (mean of the first and last 10 steps), dev, test and
#    train nDCG@10, and the mean over seeds;
# 5. docs/training.md's "Stages 1 and 2" rows: the stage-1 model with its own reasoning, the stage-2 model
#    with the bare query, its own reasoning and the gold reasoning, on dev and test.
#
# Usage: bash scripts/measure_stage3_seeds.sh   (CPU, ≈ 40 min on 2 cores; T1=path/to/t1-train to reuse a build)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${T1:-}" ]; then
  cargo build --release
  T1=target/release/t1-train
fi
R=runs/default-curriculum
"$T1" curriculum curricula/default.toml
for s in 7 1234; do
  n=stage3-seed$s
  if [ ! -d "$R/$n/checkpoints/step-000300" ]; then
    resume=""; [ -d "$R/$n/checkpoints" ] && resume="--resume"
    "$T1" stage3 --config configs/tiny-stage3.toml $resume --set run.output_dir="\"$PWD/$R\"" \
      --set run.name=$n --set model.path="\"$PWD/$R/stage2/best\"" --set run.seed=$s
  fi
done
# measure NAME MODEL VIEW SPLIT: greedy/bare/gold-reasoning dense eval into runs/measure-NAME-SPLIT
measure() {
  local out=runs/measure-$1-$4
  [ -f "$out/eval/$4.json" ] || "$T1" eval --config configs/tiny-stage3.toml \
    --set model.path="\"$PWD/$R/$2/best\"" --set eval.query_view="\"$3\"" \
    --set eval.split=$4 --set run.name=measure-$1-$4 > /dev/null
}
for n in stage2 stage3 stage3-seed7 stage3-seed1234; do
  for split in dev test train; do measure $n $n generated $split; done
done
for split in dev test; do
  measure stage1 stage1 generated $split
  measure stage2-bare stage2 bare $split
  measure stage2-gold stage2 gold_reasoning $split
done
python3 - "$R" <<'PY'
import json, sys, statistics as st
R = sys.argv[1]
def ndcg(n, split):
    return json.load(open(f"runs/measure-{n}-{split}/eval/{split}.json"))["mean"]["ndcg_at_10"]
def curve(n, tag):
    v = {}
    for line in open(f"{R}/{n}/metrics.jsonl"):
        d = json.loads(line)
        x = d.get("values", {}).get(tag)
        if x is not None:
            v[d["step"]] = x
    steps = sorted(v)
    return st.mean(v[s] for s in steps[:10]), st.mean(v[s] for s in steps[-10:])
print("| run | rollout reward (first → last 10 steps) | rollout hit@10 | dev nDCG@10 | test nDCG@10 | train nDCG@10 |")
print("|---|---|---|---|---|---|")
print(f"| stage-2 model (start) | — | — | {ndcg('stage2','dev'):.3f} | {ndcg('stage2','test'):.3f} | {ndcg('stage2','train'):.3f} |")
rows = []
for seed, n in [(42, "stage3"), (7, "stage3-seed7"), (1234, "stage3-seed1234")]:
    r0, r1 = curve(n, "stage3/reward"); h0, h1 = curve(n, "stage3/hit@10")
    d, t, tr = ndcg(n, "dev"), ndcg(n, "test"), ndcg(n, "train")
    rows.append((r0, r1, h0, h1, d, t, tr))
    print(f"| stage 3, seed {seed} | {r0:.3f} → {r1:.3f} | {h0:.2f} → {h1:.2f} | {d:.3f} | {t:.3f} | {tr:.3f} |")
m = [st.mean(c) for c in zip(*rows)]
print(f"| **stage 3, mean of 3 seeds** | {m[0]:.3f} → {m[1]:.3f} | {m[2]:.2f} → {m[3]:.2f} | {m[4]:.3f} | {m[5]:.3f} | {m[6]:.3f} |")
print()
print("| model | query view | dev nDCG@10 | test nDCG@10 | test Recall@10 | test MRR@10 |")
print("|---|---|---|---|---|---|")
def mean(n, split):
    return json.load(open(f"runs/measure-{n}-{split}/eval/{split}.json"))["mean"]
for n, label, view in [("stage1", "stage 1 only", "own reasoning"),
                       ("stage2-bare", "stage 1 → stage 2", "bare query"),
                       ("stage2", "**stage 1 → stage 2**", "**own reasoning (T1)**"),
                       ("stage2-gold", "stage 1 → stage 2", "gold reasoning (upper bound)")]:
    d, t = mean(n, "dev"), mean(n, "test")
    print(f"| {label} | {view} | {d['ndcg_at_10']:.3f} | {t['ndcg_at_10']:.3f} | {t['recall_at_10']:.3f} | {t['mrr_at_10']:.3f} |")
PY
