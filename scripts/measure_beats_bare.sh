#!/bin/bash
# Does the `beats_bare` reward change what stage 3 learns? On the embedded default, over seeds:
#
# 1. stage 1 → stage 2 once (configs/tiny-stage1.toml, tiny-stage2.toml as shipped, seed 42);
# 2. stage 3 from that stage-2 model, STEPS steps (default 100), seeds 42, 7, 1234, twice each:
#    the shipped rewards (reciprocal_rank + 0.1 format) and the same plus beats_bare
#    (reciprocal rank, weight W, default 0.5);
# 3. every run's last checkpoint and the stage-2 model evaluated on the test split with the model's
#    own greedy reasoning (and the stage-2 model bare);
# 4. a Markdown table: per seed and variant, test nDCG@10, the rollouts' beats_bare_frac over the
#    first and last 10 steps, and each variant against the shipped one on the same queries
#    (Δ nDCG@10, wins/losses/ties, a paired randomisation p-value: 100,000 seeded sign flips).
#
# Usage: bash scripts/measure_beats_bare.sh   (CPU; T1=path/to/t1-train to reuse a build;
#        STEPS=300 for the shipped length)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${T1:-}" ]; then
  cargo build --release
  T1=target/release/t1-train
fi
STEPS=${STEPS:-100}
W=${W:-0.5}
R=$PWD/runs/beats-bare
q() { printf '"%s"' "$1"; }
[ -d "$R/stage1/best" ] || "$T1" stage1 --config configs/tiny-stage1.toml \
  --set run.output_dir="$(q "$R")" --set run.name=stage1
[ -d "$R/stage2/best" ] || "$T1" stage2 --config configs/tiny-stage2.toml \
  --set run.output_dir="$(q "$R")" --set run.name=stage2 --set model.path="$(q "$R/stage1/best")"
base='[{name="reciprocal_rank",weight=1.0},{name="format",weight=0.1}]'
bb="[{name=\"reciprocal_rank\",weight=1.0},{name=\"format\",weight=0.1},{name=\"beats_bare\",metric=\"reciprocal_rank\",weight=$W}]"
last() { ls -d "$1"/checkpoints/step-* | sort | tail -1; }
for s in 42 7 1234; do
  for v in base bb; do
    n=s3-$v-seed$s
    rewards=$base; [ $v = bb ] && rewards=$bb
    [ -f "$R/$n/done" ] || { rm -rf "${R:?}/$n"; "$T1" stage3 --config configs/tiny-stage3.toml \
      --set run.output_dir="$(q "$R")" --set run.name=$n --set model.path="$(q "$R/stage2/best")" \
      --set run.seed=$s --set train.steps="$STEPS" --set train.save_every="$STEPS" \
      --set train.eval_every=0 --set "stage3.rewards=$rewards" && touch "$R/$n/done"; }
    [ -f "$R/eval-$n/eval/test.json" ] || "$T1" eval --config configs/tiny-stage3.toml \
      --set run.output_dir="$(q "$R")" --set run.name=eval-$n --set model.path="$(q "$(last "$R/$n")")" \
      --set eval.query_view='"generated"' > /dev/null
  done
done
for v in generated bare; do
  [ -f "$R/eval-stage2-$v/eval/test.json" ] || "$T1" eval --config configs/tiny-stage3.toml \
    --set run.output_dir="$(q "$R")" --set run.name=eval-stage2-$v --set model.path="$(q "$R/stage2/best")" \
    --set eval.query_view="\"$v\"" > /dev/null
done
python3 - "$R" <<'PY'
import json, random, statistics as st, sys
R = sys.argv[1]
def per_query(n):
    j = json.load(open(f"{R}/{n}/eval/test.json"))
    return {q: m["ndcg_at_10"] for q, m in j["per_query"].items()}
def curve(n, tag):
    v = {}
    for line in open(f"{R}/{n}/metrics.jsonl"):
        d = json.loads(line)
        x = d.get("values", {}).get(tag)
        if x is not None:
            v[d["step"]] = x
    s = sorted(v)
    return st.mean(v[k] for k in s[:10]), st.mean(v[k] for k in s[-10:])
def paired(a, b, draws=100_000, seed=0):
    d = [a[q] - b[q] for q in sorted(a)]
    obs = abs(sum(d))
    rng = random.Random(seed)
    hits = sum(abs(sum(x if rng.random() < 0.5 else -x for x in d)) >= obs - 1e-12 for _ in range(draws))
    w = sum(x > 0 for x in d); l = sum(x < 0 for x in d)
    return sum(d) / len(d), w, l, len(d) - w - l, (hits + 1) / (draws + 1)
s2g, s2b = per_query("eval-stage2-generated"), per_query("eval-stage2-bare")
m = lambda x: sum(x.values()) / len(x)
print(f"stage 2 model, test nDCG@10: bare {m(s2b):.4f}, own greedy reasoning {m(s2g):.4f} ({len(s2g)} queries)\n")
print("| seed | rewards | test nDCG@10 | beats_bare_frac (first → last 10 steps) | Δ vs shipped | wins / losses / ties | p |")
print("|---|---|---|---|---|---|---|")
means = {"base": [], "bb": []}
for s in (42, 7, 1234):
    a = per_query(f"eval-s3-base-seed{s}")
    for v in ("base", "bb"):
        n = f"s3-{v}-seed{s}"
        b = per_query(f"eval-{n}")
        means[v].append(m(b))
        f0, f1 = curve(n, "stage3/beats_bare_frac")
        label = "shipped" if v == "base" else "shipped + beats_bare"
        if v == "base":
            cmp = "— | — | —"
        else:
            d, w, l, t, p = paired(b, a)
            cmp = f"{d:+.4f} | {w} / {l} / {t} | {p:.4f}"
        print(f"| {s} | {label} | {m(b):.4f} | {f0:.3f} → {f1:.3f} | {cmp} |")
for v, label in (("base", "shipped"), ("bb", "shipped + beats_bare")):
    print(f"| mean | {label} | {st.mean(means[v]):.4f} ± {st.stdev(means[v]):.4f} | | | | |")
PY
