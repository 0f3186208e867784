#!/usr/bin/env python3
"""Trains a full-width CIFAR ResNet-18 with PyTorch and saves it with torch.save.

The fixed-point fidelity check of issue #12 needs "a ResNet-18 written by a
PyTorch script with realistic BN statistics": this is that script. The
network is the kuangliu CIFAR ResNet-18 (3x3 stem with ReLU, BasicBlocks
with 1x1-conv+BN shortcuts, 4x4 average pool, `linear`), i.e. pibench's
`resnet18` with its names, so `pibench import --from plain` reads it.
Batch-norm running statistics come from training on real images (momentum
0.1), not from a formula.

    python3 scripts/torch-resnet18.py --data DIR --dataset cifar10 \
        --steps 400 --out r18.pth --logits r18-logits.json

DIR holds CIFAR-10 (or CIFAR-100, with --dataset cifar100) binary batches.
Images are normalised with the constants of `pibench_models::data::
Dataset::normalisation` (repeated below; the test of this script compares
them). `--logits` writes PyTorch's eval-mode logits of the first
`--logit-images` test images, so the import can be checked image by image.
Runs on the CPU unless CUDA is available.
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

NORM = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out)


class ResNet18(nn.Module):
    def __init__(self, num_classes, width=64):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        cin = w[0]
        for s in range(4):
            blocks = []
            for b in range(2):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(BasicBlock(cin, w[s], stride))
                cin = w[s]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(w[3], num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, out.shape[-1]).flatten(1)
        return self.linear(out)


def read_cifar(path, label_bytes):
    raw = np.fromfile(path, dtype=np.uint8)
    rec = label_bytes + 3072
    if raw.size % rec:
        raise SystemExit(f"{path}: {raw.size} bytes is not a whole number of {rec}-byte records")
    raw = raw.reshape(-1, rec)
    return raw[:, label_bytes:].reshape(-1, 3, 32, 32), raw[:, label_bytes - 1].astype(np.int64)


def load(data, dataset):
    if dataset == "cifar10":
        train = [os.path.join(data, f"data_batch_{i}.bin") for i in range(1, 6)]
        test, lb = os.path.join(data, "test_batch.bin"), 1
    else:
        train, test, lb = [os.path.join(data, "train.bin")], os.path.join(data, "test.bin"), 2
    xs, ys = zip(*(read_cifar(p, lb) for p in train))
    return (np.concatenate(xs), np.concatenate(ys)), read_cifar(test, lb)


def normalise(x, dataset):
    mean, std = NORM[dataset]
    x = torch.from_numpy(x).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--dataset", choices=sorted(NORM), default="cifar10")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--logits")
    ap.add_argument("--logit-images", type=int, default=16)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    (xtr, ytr), (xte, yte) = load(a.data, a.dataset)
    ncls = 10 if a.dataset == "cifar10" else 100
    net = ResNet18(ncls, a.width).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.15)
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.time()
    net.train()
    for step in range(a.steps):
        idx = torch.randint(0, len(xtr), (a.batch,), generator=g).numpy()
        x = normalise(xtr[idx], a.dataset)
        # Random crop with 4-pixel zero padding (the CIFAR recipe of the seeds' code).
        x = F.pad(x, (4, 4, 4, 4))
        dx, dy = torch.randint(0, 9, (2,), generator=g).tolist()
        x = x[:, :, dy:dy + 32, dx:dx + 32].to(dev)
        y = torch.from_numpy(ytr[idx]).to(dev)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == a.steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} {time.time() - t0:7.1f} s", flush=True)
    net.eval()
    correct, n = 0, 0
    with torch.no_grad():
        for i in range(0, len(xte), 250):
            x = normalise(xte[i:i + 250], a.dataset).to(dev)
            correct += (net(x).argmax(1).cpu().numpy() == yte[i:i + 250]).sum()
            n += len(x)
    print(f"PyTorch float top-1 on {n} test images: {100.0 * correct / n:.2f} %")
    sd = {k: v.cpu() for k, v in net.state_dict().items()}
    torch.save({"state_dict": sd, "arch": "resnet18", "steps": a.steps, "top1": float(correct) / n}, a.out)
    print(f"wrote {a.out}")
    if a.logits:
        with torch.no_grad():
            x = normalise(xte[: a.logit_images], a.dataset).to(dev)
            logits = net(x).cpu().tolist()
        with open(a.logits, "w") as f:
            json.dump({"images": list(range(a.logit_images)), "logits": logits}, f)
        print(f"wrote {a.logits}")


if __name__ == "__main__":
    main()
