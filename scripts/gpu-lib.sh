# Shared by scripts/gpu-runs.sh and scripts/gpu-methods-short.sh (sourced):
# defaults, the machine's libtorch on LD_LIBRARY_PATH, the dataset (learnable
# synthetic CIFAR-100 from scripts/synth-cifar.py when DATA is absent), and
# `run NAME LIMIT ARGS...`: one piprune run under a time limit, its model in
# MODELS/NAME/, its JSON log in OUT/NAME.log.json.
PIPRUNE=${PIPRUNE:-target/release/piprune}
OUT=${OUT:-results/gpu}
DEV=${DEV:-cuda}
EXTRA=${EXTRA:-}
BUDGET=${BUDGET:-50000}
MODELS=${MODELS:-$OUT/models}
mkdir -p "$OUT"
t0=$(date +%s)
stamp() { echo "== [$(($(date +%s) - t0)) s] $*"; }
HAVE_TORCH=0
if TORCH_DIR=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))' 2>/dev/null); then
  export LD_LIBRARY_PATH="$TORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  HAVE_TORCH=1
fi
gpu_data() {
  if [[ -z "${DATA:-}" || ! -d "$DATA" ]]; then
    DATA="${TMPDIR:-/tmp}/pibench-synth"
    stamp "synthetic CIFAR-100 (scripts/synth-cifar.py) in $DATA"
    [[ -f "$DATA/cifar-100-binary/train.bin" ]] || python3 scripts/synth-cifar.py "$DATA" --classes 100 || exit 1
    echo "DATA IS SYNTHETIC: accuracies below are not CIFAR-100 accuracies"
  fi
}
run() { # name timeout args...
  local name=$1 limit=$2
  shift 2
  stamp "piprune $name: $*"
  mkdir -p "$MODELS/$name"
  timeout "$limit" "$PIPRUNE" "$@" --device "$DEV" --no-progress $EXTRA \
    --out "$MODELS/$name/$name.safetensors" --log "$OUT/$name.log.json"
  echo "exit $? ($name)"
}
