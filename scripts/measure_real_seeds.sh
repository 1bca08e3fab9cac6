#!/bin/bash
# Does the model's own reasoning beat its bare query on real data, and does stage 3 add? Over seeds,
# on one of the real premise-selection sets (issue 27):
#
#   bash scripts/measure_real_seeds.sh coq        # assets/coq-premises (make_coq_premises.py)
#   bash scripts/measure_real_seeds.sh metamath   # assets/metamath-premises (make_metamath_premises.py)
#
# 1. stage 1 once (configs/<set>-smollm2-stage1.toml, seed 42): supervised reasoning from
#    SmolLM2-135M-Instruct;
# 2. per seed (SEEDS, default "42 7 1234"): stage 2 from that model, then stage 3 from the seed's
#    stage-2 model, the configs as shipped but for run.seed and no dev evaluation at all
#    (train.eval_at_end = false: the last checkpoints are evaluated on test, so no dev-set model
#    selection either);
# 3. every seed's stage-2 and stage-3 model on the test split: bare, with its own greedy reasoning,
#    and mixed (the two unit vectors added); BM25 bare and with the gold reasoning;
# 4. a Markdown table (runs/real-seeds/<set>/table.md): per seed and mean ± sd, and per seed the
#    paired comparisons own reasoning vs bare (after stage 2, after stage 3), stage 3 vs stage 2
#    (own reasoning) and mixed vs bare / vs own reasoning: Δ nDCG@10 and a paired randomisation
#    p (100,000 seeded sign flips); on the seed-averaged per-query nDCG@10 also the per-query
#    wins / losses / ties and the queries a test would need for 80 % power;
# 5. the diagnosis of where own reasoning loses (runs/real-seeds/<set>/diagnosis.md): reasoning
#    length, names copied from the gold / the query / invented, drift from the query, with examples.
#
# BB=1 adds stage 3 with the beats_bare reward (reciprocal rank, weight W, default 0.5) from the
# same stage-2 models, evaluated bare and with own reasoning (the table then compares it).
# LONG=N adds the stage-3 models evaluated with an N-token reasoning budget (the configs say 64).
# RP=r adds the stage-2 and stage-3 models evaluated with model.repetition_penalty = r (HF's; the
# configs leave it at 1, off): the greedy reasoning then avoids tokens it has already written.
# RPT=1 (with RP) adds stage 3 trained with that penalty (its rollouts' draws) from the same
# stage-2 models, evaluated with it: bare, own reasoning, mixed.
# T1=path/to/t1-train reuses a build. Stage-1 seed fixed: it only orders the SFT batches; the
# variance that matters is stage 2's and 3's (negatives, sampling). Each model is evaluated with
# `eval --views … --latency-queries 0`: one document index for its views, per-query reports.
set -euo pipefail
cd "$(dirname "$0")/.."
SET=${1:?usage: measure_real_seeds.sh coq|metamath}
case $SET in coq|metamath) ;; *) echo "unknown set $SET (coq or metamath)" >&2; exit 2 ;; esac
C=configs/$SET-smollm2
[ -f "assets/$SET-premises/corpus.jsonl" ] || { echo "assets/$SET-premises missing: see $C-stage1.toml" >&2; exit 2; }
if [ -z "${T1:-}" ]; then
  cargo build --release
  T1=target/release/t1-train
fi
SEEDS=${SEEDS:-42 7 1234}
R=$PWD/runs/real-seeds/$SET
q() { printf '"%s"' "$1"; }
# the last checkpoint (zero-padded step numbers); none: a path that does not exist, so the run
# that reads it stops naming it (an empty one would drop model.path and train the config's model)
last() { ls -d "$1"/checkpoints/step-* 2>/dev/null | sort | tail -1 | grep . || echo "$1/checkpoints/none"; }
common=(--set run.output_dir="$(q "$R")" --set train.eval_every=0 --set train.eval_at_end=false
  --set logging.progress='"never"')
train() { # stage config name model seed [more --set arguments]
  local steps
  steps=$(sed -n 's/^steps = \([0-9]*\).*/\1/p' "$2" | head -1)
  [ -f "$R/$3/done" ] && return
  rm -rf "${R:?}/$3"
  "$T1" "$1" --config "$2" "${common[@]}" --set run.name="$(q "$3")" --set run.seed="$5" \
    --set train.save_every="$steps" ${4:+--set model.path="$(q "$4")"} "${@:6}" > "$R/$3.log" 2>&1
  touch "$R/$3/done"
}
ev() { # name model view: BM25 (no model needed beyond its tokenizer)
  [ -f "$R/$1/eval/test.json" ] && return
  "$T1" eval --config "$C-stage3.toml" "${common[@]}" --set run.name="$(q "$1")" \
    --set model.path="$(q "$2")" --set eval.query_view="\"$3\"" --set eval.retriever='"bm25"' \
    > "$R/$1.log" 2>&1
}
evd() { # name model views [more --set arguments]: dense, one document index for all views, no timing
  [ -f "$R/$1/eval/views.json" ] && return
  "$T1" eval --config "$C-stage3.toml" "${common[@]}" --set run.name="$(q "$1")" \
    --set model.path="$(q "$2")" --set eval.retriever='"dense"' --views "$3" --latency-queries 0 \
    "${@:4}" > "$R/$1.log" 2>&1
}
mkdir -p "$R"
train stage1 "$C-stage1.toml" s1 "" 42
ev eval-bm25-bare "$(last "$R/s1")" bare
ev eval-bm25-gold "$(last "$R/s1")" gold_reasoning
rewards="[{name=\"reciprocal_rank\",weight=1.0},{name=\"format\",weight=0.1},{name=\"beats_bare\",metric=\"reciprocal_rank\",weight=${W:-0.5}}]"
for s in $SEEDS; do # a seed's runs all finish before the next seed starts
  train stage2 "$C-stage2.toml" "s2-seed$s" "$(last "$R/s1")" "$s"
  train stage3 "$C-stage3.toml" "s3-seed$s" "$(last "$R/s2-seed$s")" "$s"
  for st in s2 s3; do evd "eval-$st-seed$s" "$(last "$R/$st-seed$s")" bare,generated,mixed; done
  if [ -n "${RP:-}" ]; then # issue 27 item 3: the reasoning with a repetition penalty
    for st in s2 s3; do
      evd "eval-${st}rp-seed$s" "$(last "$R/$st-seed$s")" generated,mixed \
        --set model.repetition_penalty="$RP"
    done
    if [ "${RPT:-0}" = 1 ]; then # stage 3 trained with it too (its rollouts), evaluated with it
      train stage3 "$C-stage3.toml" "s3rpt-seed$s" "$(last "$R/s2-seed$s")" "$s" \
        --set model.repetition_penalty="$RP"
      evd "eval-s3rpt-seed$s" "$(last "$R/s3rpt-seed$s")" bare,generated,mixed \
        --set model.repetition_penalty="$RP"
    fi
  fi
  if [ "${BB:-0}" = 1 ]; then # issue 27 item 3: stage 3 with the beats_bare reward added (weight W)
    train stage3 "$C-stage3.toml" "s3bb-seed$s" "$(last "$R/s2-seed$s")" "$s" --set "stage3.rewards=$rewards"
    evd "eval-s3bb-seed$s" "$(last "$R/s3bb-seed$s")" bare,generated
  fi
  if [ -n "${LONG:-}" ]; then # issue 27 item 3: the stage-3 models with a longer reasoning budget
    evd "eval-s3long-seed$s" "$(last "$R/s3-seed$s")" bare,generated,mixed \
      --set model.max_reasoning_tokens="$LONG"  # at evaluation (LONG tokens instead of the config's 64)
  fi
done
python3 scripts/real_seeds_table.py "$R" $SEEDS
