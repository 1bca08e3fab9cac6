#!/bin/bash
# Is stage 3 one run per seed? Two stage-3 runs of the same config at once (they share the cores,
# so rayon steals work at other points in each), then scripts/compare_runs.py on them: every
# logged scalar bit for bit and every tensor of the last checkpoint.
#
#   T1=target/release/t1-train STEPS=4 bash scripts/check_stage3_repro.sh
#
# The config is configs/metamath-smollm2-stage3.toml from SmolLM2-135M-Instruct itself (no
# stage 1 or 2 needed: python3 scripts/fetch_smollm2.py and scripts/make_metamath_premises.py
# first); its clipping (max_grad_norm 1) is on at every step there. ≈ 12 min for 4 steps on
# 2 cores. Exit 0 when the two runs agree.
set -euo pipefail
cd "$(dirname "$0")/.."
T1=${T1:-target/release/t1-train}
STEPS=${STEPS:-4}
R=$PWD/runs/repro-check
for f in assets/smollm2-135m-instruct/config.json assets/metamath-premises/corpus.jsonl; do
  [ -f "$f" ] || { echo "$f missing: see the comment at the top of this script" >&2; exit 2; }
done
rm -rf "$R"
mkdir -p "$R"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT  # a failed run does not leave the other running
for r in a b; do
  "$T1" stage3 --config configs/metamath-smollm2-stage3.toml --set run.output_dir="\"$R\"" \
    --set run.name="\"run-$r\"" --set model.path="\"$PWD/assets/smollm2-135m-instruct\"" \
    --set train.steps="$STEPS" --set train.save_every="$STEPS" --set train.eval_every=0 \
    --set train.eval_at_end=false --set logging.progress='"never"' > "$R/run-$r.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do
  wait "$p" || { echo "a stage-3 run failed: see $R/run-*.log" >&2; exit 1; }
done
python3 scripts/compare_runs.py "$R/run-a" "$R/run-b"
