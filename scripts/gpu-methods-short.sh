#!/usr/bin/env bash
# Second, shorter GPU script (issue 14): AutoReP, ReLUPruner and PrivShap on
# ResNet-18 CIFAR-100 at a 50K budget, each run to its end with the shortest
# schedules that still pass through every phase (scripts/gpu-runs.sh measured
# their epoch times with longer schedules but ran out of time before the end).
# Same variables as scripts/gpu-runs.sh (PIPRUNE, DATA, OUT, MODELS, DEV, EXTRA, BUDGET).
set -u
source "$(dirname "$0")/gpu-lib.sh"
exec > >(tee -a "$OUT/gpu-methods-short.log") 2>&1
nvidia-smi -L 2>/dev/null
gpu_data
C=(--model resnet18 --dataset cifar100 --data "$DATA" --budget "$BUDGET" --amp)
run teacher 45 --method autorep "${C[@]}" --epochs 2 --interrupt-after 2
TEACHER="$MODELS/teacher/teacher.safetensors.ckpt/teacher.safetensors"
run autorep 85 --method autorep "${C[@]}" --teacher "$TEACHER" --replace-epochs 3 --epochs 1
run relupruner 65 --method relupruner "${C[@]}" --teacher "$TEACHER" --warmup-epochs 1 --prune-epochs 3 --epochs 1
run privshap 80 --method privshap "${C[@]}" --shapley monte-carlo --mc-samples 8 --prune-epochs 1 --epochs 2
stamp done
