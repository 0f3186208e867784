#!/usr/bin/env python3
"""Writes a *learnable* synthetic dataset in the CIFAR-10/100 binary layout.

For throughput and timing runs where the real dataset is not on the machine
(the lent GPU machine has no network). Each class has a smooth random
template (3x4x4 normal values, bilinearly upsampled to 32x32, quantised to 16
levels over +-2 sigma); a pixel is 128 + 40*template + 48*noise with uniform
noise of unit variance (16 levels), clipped to 0..255. A ResNet learns it
within a few epochs, so accuracies are not degenerate -- but they are not
CIFAR accuracies and must never be reported as such.

    python3 scripts/synth-cifar.py OUT [--classes 100] [--train 50000] [--test 10000] [--seed 0]

Writes OUT/cifar-100-binary/{train,test}.bin (coarse label, fine label,
3072 bytes per record) or OUT/cifar-10-batches-bin/{data_batch_1..5,
test_batch}.bin. Standard library only (no numpy, no torch); about a second
per 10,000 images.
"""

import argparse
import os
import random


def template(rng):
    """3x32x32 smooth pattern: 4x4 normal grid per channel, bilinear upsampling."""
    out = []
    for _ in range(3):
        g = [[rng.gauss(0.0, 1.0) for _ in range(4)] for _ in range(4)]
        for y in range(32):
            fy = min(max((y + 0.5) / 8.0 - 0.5, 0.0), 3.0)
            y0 = min(int(fy), 2)
            wy = fy - y0
            for x in range(32):
                fx = min(max((x + 0.5) / 8.0 - 0.5, 0.0), 3.0)
                x0 = min(int(fx), 2)
                wx = fx - x0
                v = (
                    g[y0][x0] * (1 - wy) * (1 - wx)
                    + g[y0][x0 + 1] * (1 - wy) * wx
                    + g[y0 + 1][x0] * wy * (1 - wx)
                    + g[y0 + 1][x0 + 1] * wy * wx
                )
                out.append(v)
    s = (sum(v * v for v in out) / len(out)) ** 0.5 or 1.0
    # 16 levels over +-2 sigma, stored in the high nibble.
    return bytes((min(15, max(0, int((v / s + 2.0) / 4.0 * 16.0))) << 4) for v in out)


def pixel_table():
    """Byte (template level << 4 | noise level) -> pixel value."""
    table = bytearray(256)
    for b in range(256):
        t = ((b >> 4) + 0.5) / 16.0 * 4.0 - 2.0
        n = ((b & 15) + 0.5) / 16.0 * 2.0 * 3**0.5 - 3**0.5
        table[b] = min(255, max(0, round(128 + 40 * t + 48 * n)))
    return bytes(table)


def records(templates, n, classes, coarse, rng):
    table = pixel_table()
    low = int.from_bytes(b"\x0f" * 3072, "little")
    tints = [int.from_bytes(t, "little") for t in templates]
    labels, out = [], bytearray()
    for _ in range(n):
        c = rng.randrange(classes)
        noise = int.from_bytes(rng.randbytes(3072), "little") & low
        img = (tints[c] | noise).to_bytes(3072, "little").translate(table)
        if coarse:
            out += bytes((c // 5, c))
        else:
            out += bytes((c,))
        out += img
        labels.append(c)
    return bytes(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--classes", type=int, choices=[10, 100], default=100)
    ap.add_argument("--train", type=int, default=50000)
    ap.add_argument("--test", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    templates = [template(rng) for _ in range(a.classes)]
    if a.classes == 100:
        d = os.path.join(a.out, "cifar-100-binary")
        os.makedirs(d, exist_ok=True)
        for name, n in (("train.bin", a.train), ("test.bin", a.test)):
            with open(os.path.join(d, name), "wb") as f:
                f.write(records(templates, n, 100, True, rng))
    else:
        d = os.path.join(a.out, "cifar-10-batches-bin")
        os.makedirs(d, exist_ok=True)
        per = a.train // 5
        for i in range(5):
            n = per if i < 4 else a.train - 4 * per
            with open(os.path.join(d, f"data_batch_{i + 1}.bin"), "wb") as f:
                f.write(records(templates, n, 10, False, rng))
        with open(os.path.join(d, "test_batch.bin"), "wb") as f:
            f.write(records(templates, a.test, 10, False, rng))
    print(f"wrote {a.train} + {a.test} synthetic images, {a.classes} classes, to {d}")


if __name__ == "__main__":
    main()
