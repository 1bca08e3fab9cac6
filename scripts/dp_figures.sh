#!/usr/bin/env bash
# Data-parallel figures on this machine (issue 23): each stage on the tiny preset, the same global
# batch as one worker × 2 threads and as two workers × 1 thread (`--workers 2`: the launcher gives
# each worker cores / workers threads), wall time of the whole command (start-up, set-up and the
# exchange included; no dev evaluation). Prints one line per stage with both times and the ratio.
#
#   scripts/dp_figures.sh target/release/t1-train
set -euo pipefail
bin=$(realpath "$1")
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
config() { # name, extra toml
  cat > "$out/$1.toml" <<TOML
[run]
name = "$1"
output_dir = "$out/runs"
seed = 7
[data]
dataset = "$root/curricula/default/data"
[model]
preset = "tiny"
tokenizer = "$root/curricula/default/tokenizer.json"
max_query_tokens = 32
max_reasoning_tokens = 32
max_doc_tokens = 48
[train]
steps = ${STEPS:-60}
batch_size = 4
lr = 1e-3
warmup_steps = 2
eval_every = 0
save_every = 1000
eval_batch_size = 64
[logging]
progress = "never"
tensorboard = false
$2
TOML
}
secs() { local t0=$(date +%s.%N); "$@" > /dev/null 2> "$out/err" || { cat "$out/err" >&2; exit 1; }; python3 -c "print($(date +%s.%N) - $t0)"; }
compare() { # stage, name, one-worker sets, two-worker sets
  local stage=$1 name=$2 one=$3 two=$4 port=$5
  local a b
  # shellcheck disable=SC2086
  a=$(RAYON_NUM_THREADS=2 secs "$bin" "$stage" --config "$out/$name.toml" $one --set "run.name=\"$name-one\"")
  # shellcheck disable=SC2086
  b=$(secs "$bin" "$stage" --config "$out/$name.toml" $two --set "run.name=\"$name-two\"" --workers 2 --coordinator "127.0.0.1:$port")
  printf '%-7s one worker x 2 threads %6.1f s   two workers x 1 thread %6.1f s   %.2fx\n' "$stage" "$a" "$b" "$(python3 -c "print($a / $b)")"
}
config s1 ""
config s2 $'[stage2]\ngroup_size = 3\nsft_weight = 0.1'
config lat $'[latent]\nsteps = 2\ngroup_size = 3\ntrajectory = "kl"'
config s3 $'[stage3]\ngroup_size = 4\nbeta = 0.04\nrefresh_every = 5\nmask_truncated = false\n[[stage3.rewards]]\nname = "reciprocal_rank"'
echo "tiny preset, ${STEPS:-60} steps each, $(nproc) cores, $(date -u +%F)"
compare stage1 s1 "--set train.grad_accum=2" "--set train.grad_accum=1" 29810
compare stage2 s2 "--set train.batch_size=8" "--set train.batch_size=4" 29820
compare latent lat "--set train.batch_size=8" "--set train.batch_size=4" 29830
compare stage3 s3 "--set train.batch_size=2 --set train.grad_accum=2" "--set train.batch_size=2 --set train.grad_accum=1" 29840
