#!/usr/bin/env bash
# Short seeded stage-3 runs on the tiny preset whose rollouts, losses and final weights a
# refactor must leave byte-identical (issue 25: "behaviour unchanged").
#
#   scripts/grpo_identity.sh BIN OUT      # BIN: a t1-train binary; OUT: a new folder
#   diff -r OUT_before/digest OUT_after/digest
#
# Three runs: dapo with β > 0, μ = 2, an index refresh and the auxiliary InfoNCE; grpo with
# β = 0 and a script reward; bnpo with β > 0 and mask_truncated. Each writes OUT/digest/<run>.txt:
# every rollouts.jsonl line, every metrics.jsonl record without its clock- and memory-dependent
# keys (time/, _per_s, peak_rss), and the SHA-256 of every tensor of the last checkpoint (needs numpy + safetensors).
set -euo pipefail
bin=$(realpath "$1"); out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out/cfg" "$out/digest"
run() { # name, extra toml
  local name=$1 extra=$2
  cat > "$out/cfg/$name.toml" <<TOML
[run]
name = "$name"
output_dir = "$out/runs"
seed = 11

[data]
dataset = "$root/curricula/default/data"

[model]
preset = "tiny"
tokenizer = "$root/curricula/default/tokenizer.json"
max_query_tokens = 32
max_reasoning_tokens = 12
max_doc_tokens = 48

[train]
steps = 4
batch_size = 3
lr = 3e-3
warmup_steps = 1
eval_every = 2
save_every = 4
eval_batch_size = 64

[logging]
progress = "never"
tensorboard = false

$extra
TOML
  "$bin" stage3 --config "$out/cfg/$name.toml" > "$out/$name.log" 2>&1
  local dir="$out/runs/$name"
  {
    cat "$dir/rollouts.jsonl"
    last=$(ls -d "$dir"/checkpoints/step-* | sort -V | tail -1)
    python3 - "$dir/metrics.jsonl" "$last" <<'PY'
import hashlib, json, pathlib, sys
from safetensors.numpy import load_file
clock = ("time/", "_per_s", "peak_rss")
for line in open(sys.argv[1]):
    r = json.loads(line)
    if isinstance(r.get("values"), dict):
        r["values"] = {k: v for k, v in r["values"].items() if not any(s in k for s in clock)}
    print(json.dumps(r, sort_keys=True))
# the tensors themselves (burn writes the header's metadata in no fixed order)
for f in sorted(pathlib.Path(sys.argv[2]).glob("*.safetensors")):
    for name, t in sorted(load_file(str(f)).items()):
        print(f.name, name, t.dtype, t.shape, hashlib.sha256(t.tobytes()).hexdigest())
PY
  } > "$out/digest/$name.txt"
  echo "$name: $(wc -l < "$out/digest/$name.txt") digest lines"
}
run dapo '[stage3]
group_size = 3
iterations = 2
beta = 0.04
loss_type = "dapo"
mask_truncated = false
refresh_every = 2
aux_infonce_weight = 0.1

[[stage3.rewards]]
name = "reciprocal_rank"

[[stage3.rewards]]
name = "format"
weight = 0.1'
run grpo "[stage3]
group_size = 2
iterations = 1
beta = 0.0
loss_type = \"grpo\"
mask_truncated = false
scale_rewards = \"group\"

[[stage3.rewards]]
name = \"reciprocal_rank\"

[[stage3.rewards]]
name = \"script\"
path = \"$root/rewards/scripts/top3_bonus.rhai\"
weight = 0.5"
run bnpo '[stage3]
group_size = 2
iterations = 1
beta = 0.04
loss_type = "bnpo"
mask_truncated = true
epsilon_high = 0.28

[[stage3.rewards]]
name = "reciprocal_rank"'
