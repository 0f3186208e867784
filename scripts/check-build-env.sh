#!/usr/bin/env bash
# Part of `make test` (run through the Makefile's ENV): checks that the build
# finds libtorch without Python and that the guard against `import torch` is
# armed, then proves the guard works on torch-sys's own build script.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
fail() { echo "check-build-env: FAIL: $*" >&2; exit 1; }

[[ -z "${LIBTORCH_USE_PYTORCH:-}" ]] || fail "LIBTORCH_USE_PYTORCH is set; torch-sys would import torch"
[[ -n "${LIBTORCH:-}" && -f "$LIBTORCH/lib/libtorch_cpu.so" ]] ||
  fail "LIBTORCH (${LIBTORCH:-unset}) does not hold lib/libtorch_cpu.so; run scripts/setup.sh torch"
case "$LIBTORCH" in "$root"/.venv/*) ;; *) fail "LIBTORCH=$LIBTORCH is not the project's .venv" ;; esac
[[ "${LIBTORCH_CXX11_ABI:-}" == 1 ]] || fail "LIBTORCH_CXX11_ABI must be 1"

# The guard: `import torch` must fail in every interpreter a build may start.
for py in python3 "$root/.venv/bin/python"; do
  if out=$("$py" -c 'import torch' 2>&1); then
    fail "'$py -c \"import torch\"' succeeded under the guard (PYTHONPATH=${PYTHONPATH:-unset})"
  fi
  grep -q "pibench: the build tried to" <<<"$out" || fail "$py: unexpected error: $out"
done

# torch-sys's build script with LIBTORCH_USE_PYTORCH=1 must now fail on the
# guard (it stops before compiling any C++, so this takes seconds once its
# build dependencies are compiled in the scratch folder).
scratch="$root/target/check-build-env"
mkdir -p "$root/target" # a fresh clone has no target/ yet
if LIBTORCH_USE_PYTORCH=1 CARGO_TARGET_DIR="$scratch" cargo build -q -p torch-sys >"$scratch.log" 2>&1; then
  fail "torch-sys built with LIBTORCH_USE_PYTORCH=1: the guard did not stop 'import torch'"
fi
grep -q "pibench: the build tried to" "$scratch.log" ||
  fail "torch-sys failed for another reason than the guard: see $scratch.log"
echo "check-build-env: ok (LIBTORCH=$LIBTORCH, no Python needed; the guard stops 'import torch')"
