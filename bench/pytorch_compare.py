#!/usr/bin/env python3
"""Training-throughput reference for `piprune` (same network, same step).

Trains the kuangliu-style CIFAR ResNet-18 that `piprune` builds (3x3 stem,
BasicBlocks, 1x1 projection shortcuts, global average pool, `linear`) with
the same step: SGD (momentum 0.9, weight decay 5e-4; Nesterov with
--nesterov, as piprune's --nesterov), batch 128, random crop with 4-pixel
padding and horizontal flip done on the device, cross-entropy, optional
autocast (--amp: fp16 with GradScaler on CUDA, bf16 on CPU — piprune's --amp
casts the same way). Prints images per second as JSON, to
compare with the `images_per_second` of piprune's JSON log (run piprune with
the same --batch-size, --width-multiplier and --amp).

    python3 bench/pytorch_compare.py --device cuda --steps 200 [--amp] [--data DIR]

With --data DIR it reads CIFAR-10/100 binary like piprune; otherwise it uses
random images (throughput does not depend on pixel values).
"""

import argparse
import json
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks, widths, stem, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        layers, cin = [], stem
        for s, (n, w) in enumerate(zip(blocks, widths)):
            for b in range(n):
                layers.append(Block(cin, w, 2 if s > 0 and b == 0 else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(cin, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def load_cifar(data, classes):
    if classes == 10:
        root = os.path.join(data, "cifar-10-batches-bin")
        root = root if os.path.isdir(root) else data
        files, skip, idx = [os.path.join(root, f"data_batch_{i}.bin") for i in range(1, 6)], 1, 0
    else:
        root = os.path.join(data, "cifar-100-binary")
        root = root if os.path.isdir(root) else data
        files, skip, idx = [os.path.join(root, "train.bin")], 2, 1
    raw = b"".join(open(f, "rb").read() for f in files)
    rec = skip + 3072
    t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, rec)
    return t[:, skip:].reshape(-1, 3, 32, 32).clone(), t[:, idx].long().clone()


def augment(x):
    b, _, h, w = x.shape
    p = F.pad(x, (4, 4, 4, 4)).permute(0, 2, 3, 1)
    dy = torch.randint(0, 9, (b, 1, 1), device=x.device)
    dx = torch.randint(0, 9, (b, 1, 1), device=x.device)
    flip = torch.rand(b, 1, 1, device=x.device) < 0.5
    rows = dy + torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    cols = dx + torch.where(flip, w - 1 - cols, cols)
    n = torch.arange(b, device=x.device).view(b, 1, 1)
    return p[n, rows, cols].permute(0, 3, 1, 2).contiguous()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--width-multiplier", type=float, default=1.0)
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--nesterov", action="store_true")
    ap.add_argument("--data")
    a = ap.parse_args()
    dev = torch.device(a.device)
    wm = lambda c: max(1, round(c * a.width_multiplier))
    net = ResNet([2, 2, 2, 2], [wm(64), wm(128), wm(256), wm(512)], wm(64), a.classes).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=a.nesterov, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(enabled=a.amp and dev.type == "cuda")
    if a.data:
        images, labels = load_cifar(a.data, a.classes)
    else:
        images = torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8)
        labels = torch.randint(0, a.classes, (50000,))
    mean = torch.tensor([0.5071, 0.4865, 0.4409], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.2673, 0.2564, 0.2762], device=dev).view(1, 3, 1, 1)
    net.train()

    def step(i):
        idx = torch.randint(0, images.shape[0], (a.batch_size,))
        x = images[idx].to(dev).float() / 255.0
        x = (augment(x) - mean) / std
        y = labels[idx].to(dev)
        amp_dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=a.amp):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.item()  # piprune also reads the loss every step

    for i in range(a.warmup):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(a.steps):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(json.dumps({
        "torch": torch.__version__,
        "device": str(dev),
        "amp": a.amp,
        "batch_size": a.batch_size,
        "steps": a.steps,
        "seconds": dt,
        "images_per_second": a.steps * a.batch_size / dt,
    }))


if __name__ == "__main__":
    main()
