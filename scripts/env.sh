# Sourced by the Makefile's recipes (and by hand: `source scripts/env.sh`).
# Points tch/torch-sys at the torch wheel in the project's .venv (installed by
# `scripts/setup.sh torch`) WITHOUT running Python: LIBTORCH is the wheel's
# folder, LIBTORCH_CXX11_ABI=1 (PyTorch 2.x wheels use the C++11 ABI).
# LIBTORCH_USE_PYTORCH is unset on purpose: it makes torch-sys `import torch`,
# which fails with the minimal install. piprune gets an rpath to $LIBTORCH/lib
# at link time (prune/build.rs), so it runs from any shell.
_pibench_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
unset LIBTORCH_USE_PYTORCH
for _pibench_t in "$_pibench_root"/.venv/lib/python3*/site-packages/torch; do
  if [[ -f "$_pibench_t/lib/libtorch_cpu.so" ]]; then
    export LIBTORCH="$_pibench_t"
    export LIBTORCH_CXX11_ABI=1
  fi
done
unset _pibench_t _pibench_root
