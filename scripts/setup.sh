#!/usr/bin/env bash
# Installs what pibench needs on a Debian machine, as root. Idempotent: every
# step checks first and does nothing when the requirement is already met.
#   scripts/setup.sh          system packages for the protocol (cmake, clang, libclang for SEAL)
#   scripts/setup.sh torch    also PyTorch 2.11.0 (CPU libraries) for the prune crate (tch 0.24)
set -euo pipefail

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
if ((${#need_apt[@]})); then
  echo "setup: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing: install a Rust toolchain (1.85 or newer) first" >&2
  exit 1
fi

if [[ "${1:-}" == "torch" ]]; then
  want=2.11.0
  have=$(python3 - <<'PY' 2>/dev/null || true
import importlib.util, os, re
spec = importlib.util.find_spec("torch")
if spec and spec.origin:
    src = open(os.path.join(os.path.dirname(spec.origin), "version.py")).read()
    print(re.search(r"__version__\s*=\s*'([^']+)'", src).group(1).split("+")[0])
PY
)
  if [[ "$have" != "$want" ]]; then
    echo "setup: installing torch==$want (libraries for tch; CUDA runtime only, no cuDNN)"
    pip install --quiet --no-deps "torch==$want" nvidia-cuda-runtime nvidia-cuda-cupti
  fi
fi
