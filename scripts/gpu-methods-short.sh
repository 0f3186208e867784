#!/usr/bin/env bash
# Second, shorter GPU script (issue 14): AutoReP, ReLUPruner and PrivShap on
# ResNet-18 CIFAR-100 at a 50K budget, each run to its end with the shortest
# schedules that still pass through every phase (scripts/gpu-runs.sh measured
# their epoch times with longer schedules but ran out of time before the end).
# Same variables as scripts/gpu-runs.sh (PIPRUNE, DATA, OUT, MODELS, DEV, EXTRA, BUDGET).
set -u
PIPRUNE=${PIPRUNE:-target/release/piprune}
OUT=${OUT:-results/gpu}
DEV=${DEV:-cuda}
EXTRA=${EXTRA:-}
BUDGET=${BUDGET:-50000}
MODELS=${MODELS:-$OUT/models}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-methods-short.log") 2>&1
t0=$(date +%s)
stamp() { echo "== [$(($(date +%s) - t0)) s] $*"; }
nvidia-smi -L 2>/dev/null
if TORCH_DIR=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))' 2>/dev/null); then
  export LD_LIBRARY_PATH="$TORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [[ -z "${DATA:-}" || ! -d "$DATA" ]]; then
  DATA="${TMPDIR:-/tmp}/pibench-synth"
  [[ -f "$DATA/cifar-100-binary/train.bin" ]] || python3 scripts/synth-cifar.py "$DATA" --classes 100 || exit 1
  echo "DATA IS SYNTHETIC: accuracies below are not CIFAR-100 accuracies"
fi
run() { # name timeout args...
  local name=$1 limit=$2
  shift 2
  stamp "piprune $name: $*"
  mkdir -p "$MODELS/$name"
  timeout "$limit" "$PIPRUNE" "$@" --device "$DEV" --no-progress $EXTRA \
    --out "$MODELS/$name/$name.safetensors" --log "$OUT/$name.log.json"
  echo "exit $? ($name)"
}
C=(--model resnet18 --dataset cifar100 --data "$DATA" --budget "$BUDGET" --amp)
run teacher 45 --method autorep "${C[@]}" --epochs 2 --interrupt-after 2
TEACHER="$MODELS/teacher/teacher.safetensors.ckpt/teacher.safetensors"
run autorep 85 --method autorep "${C[@]}" --teacher "$TEACHER" --replace-epochs 3 --epochs 1
run relupruner 65 --method relupruner "${C[@]}" --teacher "$TEACHER" --warmup-epochs 1 --prune-epochs 3 --epochs 1
run privshap 80 --method privshap "${C[@]}" --shapley monte-carlo --mc-samples 8 --prune-epochs 1 --epochs 2
stamp done
