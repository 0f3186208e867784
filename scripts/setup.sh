#!/usr/bin/env bash
# Installs what pibench needs on a Debian machine, as root. Idempotent: every
# step checks first and does nothing when the requirement is already met.
#   scripts/setup.sh          system packages for the protocol (cmake, clang, libclang for SEAL)
#   scripts/setup.sh torch    also PyTorch 2.11.0's libraries for the prune crate (tch 0.24),
#                             in a virtual environment inside the repository (.venv, ignored by git)
#
# The torch wheel is installed with --no-deps (libtorch and the CUDA runtime,
# no cuDNN): `import torch` fails there, and nothing in the build imports it.
# scripts/env.sh points tch at the wheel's folder (LIBTORCH) without Python.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
if [[ "${1:-}" == "torch" ]] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi
if ((${#need_apt[@]})); then
  echo "setup: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing: install a Rust toolchain (1.89 or newer: the VAES / AVX-512 intrinsics) first" >&2
  exit 1
fi

if [[ "${1:-}" == "torch" ]]; then
  want=2.11.0
  venv="$root/.venv"
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "setup: creating $venv (the project's own Python environment)"
    python3 -m venv "$venv"
  fi
  # Read the installed version from the wheel's files: importing torch is not
  # possible with the minimal install (no cuDNN) and must not be needed.
  have=$(shopt -s nullglob; for v in "$venv"/lib/python3*/site-packages/torch/version.py; do
    sed -n "s/^__version__ *= *'\([^'+]*\).*/\1/p" "$v"; done | head -n1)
  if [[ "$have" != "$want" ]]; then
    echo "setup: installing torch==$want into $venv (libtorch + CUDA runtime only, no cuDNN)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
      "torch==$want" nvidia-cuda-runtime nvidia-cuda-cupti
  fi
fi
