#!/usr/bin/env python3
"""Regenerates the PyTorch test vectors of models/tests/pytorch_vectors.rs.

For each small network (seeded weights, randomised batch-norm statistics,
eval mode) it writes, next to this script:
  <name>.safetensors         the state dict (PyTorch names; masks and
                             polynomial coefficients as <site>.mask / <site>.poly)
  <name>.io.safetensors      `input` [N, C, H, W] and the expected `logits` [N, classes]

The module layouts follow the CIFAR code of SNL/AutoReP (kuangliu ResNet,
xternalz WRN, kuangliu VGG with average pools) and pibench's site names.
Run with `make vectors` (needs torch and safetensors).
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))


class Site(nn.Module):
    """Per-element ReLU mask; replaced elements: identity or per-channel a2 x^2 + a1 x + a0."""

    def __init__(self, shape, poly=False):
        super().__init__()
        self.register_buffer("mask", torch.ones(shape))
        if poly:
            self.register_buffer("poly", torch.zeros(3, shape[0]))
        else:
            self.poly = None

    def forward(self, x):
        if self.poly is None:
            repl = x
        else:
            a2, a1, a0 = (p.view(1, -1, 1, 1) for p in self.poly)
            repl = a2 * x * x + a1 * x + a0
        return self.mask * F.relu(x) + (1 - self.mask) * repl


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, hw, poly):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = Site((cout, hw, hw), poly)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = Site((cout, hw, hw), poly)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return self.relu2(out)


class ResNet(nn.Module):
    def __init__(self, stem, blocks, widths, hw, classes, poly=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu0 = Site((stem, hw, hw), poly)
        cin = stem
        for s, (nb, w) in enumerate(zip(blocks, widths)):
            layers = []
            for b in range(nb):
                stride = 2 if s > 0 and b == 0 else 1
                hw = hw // stride
                layers.append(BasicBlock(cin, w, stride, hw, poly))
                cin = w
            setattr(self, f"layer{s + 1}", nn.Sequential(*layers))
        self.nstages = len(blocks)
        self.linear = nn.Linear(cin, classes)

    def forward(self, x):
        out = self.relu0(self.bn1(self.conv1(x)))
        for s in range(self.nstages):
            out = getattr(self, f"layer{s + 1}")(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class WideBlock(nn.Module):
    def __init__(self, cin, cout, stride, hw_in, hw_out):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = Site((cin, hw_in, hw_in))
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = Site((cout, hw_out, hw_out))
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout and stride == 1
        if not self.equal:
            self.convShortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        o = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(o))))
        return out + (x if self.equal else self.convShortcut(o))


class Stage(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.layer = nn.Sequential(*blocks)

    def forward(self, x):
        return self.layer(x)


class WRN(nn.Module):
    def __init__(self, depth, stem, widths, hw, classes):
        super().__init__()
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        cin = stem
        for s, w in enumerate(widths):
            blocks = []
            for b in range(n):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(WideBlock(cin, w, stride, hw, hw // stride))
                hw //= stride
                cin = w
            setattr(self, f"block{s + 1}", Stage(blocks))
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu = Site((cin, hw, hw))
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class VGG(nn.Module):
    def __init__(self, convs, widths, hw, classes):
        super().__init__()
        layers, cin = [], 3
        for s, (n, w) in enumerate(zip(convs, widths)):
            for _ in range(n):
                layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), Site((w, hw, hw))]
                cin = w
            if s + 1 == len(convs):
                layers.append(nn.AdaptiveAvgPool2d(1))
            else:
                layers.append(nn.AvgPool2d(2, 2))
                hw //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def randomise(model, gen, masks):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.6, 1.4, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
                m.running_mean.uniform_(-0.2, 0.2, generator=gen)
                m.running_var.uniform_(0.6, 1.6, generator=gen)
            if isinstance(m, Site) and masks:
                m.mask.copy_((torch.rand(m.mask.shape, generator=gen) < 0.7).float())
                if m.poly is not None:
                    c = m.poly.shape[1]
                    m.poly[0].uniform_(0.05, 0.2, generator=gen)
                    m.poly[1].uniform_(0.3, 0.7, generator=gen)
                    m.poly[2].uniform_(-0.1, 0.1, generator=gen)
                    assert m.poly.shape == (3, c)


def emit(name, model, hw, seed, masks=False, n=4):
    gen = torch.Generator().manual_seed(seed)
    randomise(model, gen, masks)
    model.eval()
    x = torch.randn(n, 3, hw, hw, generator=gen)
    with torch.no_grad():
        logits = model(x)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(HERE, f"{name}.safetensors"))
    save_file({"input": x.contiguous(), "logits": logits.contiguous()}, os.path.join(HERE, f"{name}.io.safetensors"))
    print(f"{name}: {sum(v.numel() for v in state.values())} values, logits {tuple(logits.shape)}")


def main():
    torch.manual_seed(0)
    emit("resnet_small", ResNet(8, [1, 1], [8, 16], 8, 10), 8, 1)
    emit("resnet18_tiny", ResNet(4, [2, 2, 2, 2], [4, 8, 16, 32], 16, 10), 16, 2)
    emit("resnet_masked_poly", ResNet(8, [1, 1], [8, 16], 8, 10, poly=True), 8, 3, masks=True)
    emit("wrn10_tiny", WRN(10, 4, [8, 8, 16], 8, 10), 8, 4)
    emit("vgg_tiny", VGG([1, 2], [8, 16], 8, 10), 8, 5, masks=True)


if __name__ == "__main__":
    main()
