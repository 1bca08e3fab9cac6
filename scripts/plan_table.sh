#!/usr/bin/env bash
# docs/lora.md's "What fits" table: `t1-train plan` for Qwen3-0.6B / 4B / 8B (docs/plan/*.json) on
# a stage-3 config of T1's shape (8 queries × G = 8 rollouts, 64 query + 256 reasoning tokens,
# 256-token documents), under each memory option ("8 rollouts per micro-batch": 1 query × G 8
# per micro-batch, grad_accum 8), planned for a GPU backend (`--gpu`: burn's generic ops'
# activations, native half-precision matmuls). Usage: scripts/plan_table.sh [path/to/t1-train]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/t1-train}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/stage3.toml" <<TOML
[run]
name = "plan"
output_dir = "$tmp/runs"
[data]
dataset = "$PWD/curricula/default/data"
[model]
preset = "tiny"
tokenizer = "$PWD/curricula/default/tokenizer.json"
max_query_tokens = 64
max_reasoning_tokens = 256
max_doc_tokens = 256
[train]
batch_size = 8
[stage3]
group_size = 8
beta = 0.04
[[stage3.rewards]]
name = "reciprocal_rank"
TOML
options=(
  "full f32, β = 0.04 (reference copy)|"
  "full f32 + checkpointing, 8 rollouts per micro-batch|--set train.gradient_checkpointing=true --set train.batch_size=1 --set train.grad_accum=8"
  "LoRA r16|--set lora.enabled=true"
  "LoRA r16 + checkpointing|--set lora.enabled=true --set train.gradient_checkpointing=true"
  "LoRA r16 + checkpointing, 8 rollouts per micro-batch|--set lora.enabled=true --set train.gradient_checkpointing=true --set train.batch_size=1 --set train.grad_accum=8"
  "LoRA r16 + checkpointing + bf16 base, 8 rollouts per micro-batch|--set lora.enabled=true --set lora.base_dtype=\"bf16\" --set train.gradient_checkpointing=true --set train.batch_size=1 --set train.grad_accum=8"
)
gib() { python3 -c "import json,sys; p=json.load(open(sys.argv[1])); print(f'{p[\"peak\"]/2**30:.1f}')" "$1"; }
echo "| model | option | predicted peak GiB | fits 80 GB | fits 141 GB |"
echo "|---|---|---|---|---|"
for m in 0.6b 4b 8b; do
  for o in "${options[@]}"; do
    label=${o%%|*}; sets=${o#*|}
    # shellcheck disable=SC2086
    "$bin" plan --gpu --config "$tmp/stage3.toml" --arch "docs/plan/qwen3-$m.json" --json $sets > "$tmp/p.json" 2>/dev/null
    g=$(gib "$tmp/p.json")
    fit() { python3 -c "print('yes' if $g * 2**30 <= $1 * 1e9 * 0.95 else 'no')"; }
    echo "| Qwen3-$m | $label | $g | $(fit 80) | $(fit 141) |"
  done
done
