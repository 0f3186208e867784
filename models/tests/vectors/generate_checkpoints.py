#!/usr/bin/env python3
"""Writes the PyTorch checkpoint test vectors of models/tests/import.rs.

Each checkpoint is written by `torch.save` (PyTorch's own zip + pickle
format, optimiser state included where the published code saves it) from a
PyTorch module laid out as in the published code of the seed papers, and
PyTorch computes the expected logits in eval mode:

  snl_resnet18.pth.tar       SNL `resnet18_in` (BasicBlock_IN with LearnableAlpha
                             `alpha1`/`alpha2`, no stem ReLU), thresholded alphas,
                             saved as {'arch', 'state_dict', 'optimizer'} (SGD state)
  autorep_resnet18.pth.tar   AutoReP `model_ReLU_RP`: `self.model` = SNL-style
                             `resnet18_in` whose every `relu` is one shared
                             `ReLU_masked_autopoly_relay` (degree 2), so its
                             parameters appear under every block's path
  relupruner_resnet18.pth    ReLUPruner: {'model', 'masks', 'relu_count', ...},
                             shortcut `conv_sc`/`bn_sc`, masked_relu
  plain_resnet18.pth         kuangliu ResNet-18 with nn.ReLU (stem ReLU included),
                             {'net', 'acc', 'epoch'}
  stray_resnet18.pth         the plain checkpoint with one extra tensor
  checkpoints.io.safetensors `input` [N, 3, 16, 16] and `logits_<scheme>` [N, 10]

The networks are ResNet-18 at 1/16 width (channels 4, 8, 16, 32) on 16x16
inputs, so the files stay small; BN running statistics come from training-
mode passes over random batches, masks are random 0/1 with P(1) = 0.5. The
mask semantics and module names follow each paper's code as documented in
models/src/import/schemes.rs. Run with `make vectors` (needs torch and
safetensors).
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
WIDTHS = [4, 8, 16, 32]
HW = 16
CLASSES = 10
SCALE_X2 = 0.1  # AutoReP's config.scale_x2 default; not stored in its checkpoints


class LearnableAlpha(nn.Module):
    """SNL: relu(x)·α + (1 − α)·x with α of shape [1, C, H, W]."""

    def __init__(self, c, hw):
        super().__init__()
        self.alphas = nn.Parameter(torch.ones(1, c, hw, hw))

    def forward(self, x):
        a = self.alphas.expand_as(x)
        return F.relu(x) * a + (1 - a) * x


class Relay(nn.Module):
    """AutoReP's ReLU_masked_autopoly_relay (degree 2) after its first pass:
    feature i = the i-th call; out = relu(x)·m + (scale_x2·p2·x² + p1·x + p0)·(1 − m).
    In eval, its update_mask keeps m where alpha_aux agrees with it (aux = m − 0.5)."""

    def __init__(self):
        super().__init__()
        self.num_feature = 0
        self.current = 0
        self.init = True

    def add_feature(self, shape, gen):
        i = self.num_feature
        m = (torch.rand(shape, generator=gen) < 0.5).float()
        setattr(self, f"alpha_aux_{i}_0", nn.Parameter(m - 0.5))
        setattr(self, f"alpha_mask_{i}_0", nn.Parameter(m, requires_grad=False))
        c = shape[0]
        for k, (lo, hi) in enumerate([(0.0, 0.1), (0.4, 1.0), (0.0, 0.1)]):
            p = torch.empty(1, c, 1, 1).uniform_(lo, hi, generator=gen)
            setattr(self, f"poly_para_{i}_{k}", nn.Parameter(p))
        self.num_feature += 1

    def forward(self, x):
        if self.init:
            raise RuntimeError("features are created by add_feature")
        i = self.current
        self.current = (i + 1) % self.num_feature
        m = getattr(self, f"alpha_mask_{i}_0")
        p0, p1, p2 = (getattr(self, f"poly_para_{i}_{k}") for k in range(3))
        poly = SCALE_X2 * p2 * x * x + p1 * x + p0
        return F.relu(x) * m + poly * (1 - m)


class MaskedReLU(nn.Module):
    """ReLUPruner's masked_relu: relu(a·m) + a·(1 − m), m given per site."""

    def __init__(self):
        super().__init__()
        self.mask = None

    def forward(self, x):
        return F.relu(x * self.mask) + x * (1 - self.mask)


class Block(nn.Module):
    def __init__(self, cin, cout, stride, hw, style):
        super().__init__()
        self.style = style
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        if style == "snl":
            self.alpha1 = LearnableAlpha(cout, hw)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if style == "snl":
            self.alpha2 = LearnableAlpha(cout, hw)
        elif style in ("autorep", "plain"):
            self.relu = nn.ReLU()
        else:
            self.act1, self.act2 = MaskedReLU(), MaskedReLU()
        down = stride != 1 or cin != cout
        if style == "relupruner":
            if down:
                self.conv_sc = nn.Conv2d(cin, cout, 1, stride, bias=False)
                self.bn_sc = nn.BatchNorm2d(cout)
        else:
            self.shortcut = nn.Sequential()
            if down:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def acts(self):
        if self.style == "snl":
            return self.alpha1, self.alpha2
        if self.style in ("autorep", "plain"):
            return self.relu, self.relu
        return self.act1, self.act2

    def forward(self, x):
        a1, a2 = self.acts()
        out = a1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.style == "relupruner":
            sc = self.bn_sc(self.conv_sc(x)) if hasattr(self, "conv_sc") else x
        else:
            sc = self.shortcut(x)
        return a2(out + sc)


class ResNet18(nn.Module):
    def __init__(self, style):
        super().__init__()
        self.style = style
        self.conv1 = nn.Conv2d(3, WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        cin, hw = WIDTHS[0], HW
        for s, w in enumerate(WIDTHS):
            blocks = []
            for b in range(2):
                stride = 2 if s > 0 and b == 0 else 1
                hw //= stride
                blocks.append(Block(cin, w, stride, hw, style))
                cin = w
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(cin, CLASSES)

    def forward(self, x):
        out = self.bn1(self.conv1(x))
        if self.style == "plain":
            out = F.relu(out)
        for s in range(4):
            out = getattr(self, f"layer{s + 1}")(out)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))

    def site_shapes(self):
        shapes, hw = [], HW
        for s, w in enumerate(WIDTHS):
            for b in range(2):
                if s > 0 and b == 0:
                    hw //= 2
                shapes += [(w, hw, hw), (w, hw, hw)]
        return shapes


def trained_like(model, gen):
    """Random weights, BN statistics from training-mode passes, random BN affine."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.6, 1.4, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
                m.momentum = None  # cumulative average over the passes
        model.train()
        for _ in range(8):
            model(torch.randn(16, 3, HW, HW, generator=gen))
    model.eval()


def base_weights(seed):
    """One set of weights (plain names), shared by every scheme's network."""
    torch.manual_seed(seed)
    net = ResNet18("plain")
    trained_like(net, torch.Generator().manual_seed(seed))
    return {k: v for k, v in net.state_dict().items()}


def load_base(model, base, rename=lambda k: k):
    own = model.state_dict()
    for k, v in base.items():
        k2 = rename(k)
        if k2 in own:
            own[k2].copy_(v)
    return model


def main():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 3, HW, HW, generator=gen)
    base = base_weights(11)
    io = {"input": x.contiguous()}

    # SNL
    snl = load_base(ResNet18("snl"), base)
    with torch.no_grad():
        for m in snl.modules():
            if isinstance(m, LearnableAlpha):
                m.alphas.copy_((torch.rand(m.alphas.shape, generator=gen) < 0.5).float())
    snl.eval()
    alphas = {k: v.clone() for k, v in snl.state_dict().items() if k.endswith(".alphas")}
    opt = torch.optim.SGD(snl.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    loss = snl(torch.randn(2, 3, HW, HW, generator=gen)).square().mean()
    loss.backward()
    opt.step()  # optimiser state exists, as in SNL's saved checkpoints
    opt.zero_grad()
    snl = load_base(snl, base)  # the step moved the weights and alphas; restore them
    with torch.no_grad():
        for k, v in snl.state_dict().items():
            if k in alphas:
                v.copy_(alphas[k])
    with torch.no_grad():
        io["logits_snl"] = snl(x)
    torch.save({"arch": "resnet18_in", "state_dict": snl.state_dict(), "optimizer": opt.state_dict()},
               os.path.join(HERE, "snl_resnet18.pth.tar"))

    # AutoReP: model_ReLU_RP wraps the network as `model`; replace_relu puts one relay at every nn.ReLU.
    inner = load_base(ResNet18("autorep"), base)
    relay = Relay()
    for shape in inner.site_shapes():
        relay.add_feature(shape, gen)
    relay.init = False
    for m in inner.modules():
        if isinstance(m, Block):
            m.relu = relay
    wrapper = nn.Module()
    wrapper.model = inner
    inner.eval()
    with torch.no_grad():
        io["logits_autorep"] = inner(x)
    assert relay.current == 0
    torch.save({"state_dict": wrapper.state_dict(), "epoch": 150, "best_prec1": 0.5},
               os.path.join(HERE, "autorep_resnet18.pth.tar"))

    # ReLUPruner
    rp = load_base(ResNet18("relupruner"), base,
                   lambda k: k.replace(".shortcut.0.", ".conv_sc.").replace(".shortcut.1.", ".bn_sc."))
    masks = [(torch.rand(s, generator=gen) < 0.5).float() for s in rp.site_shapes()]
    acts = [a for m in rp.modules() if isinstance(m, Block) for a in m.acts()]
    for a, m in zip(acts, masks):
        a.mask = m
    rp.eval()
    with torch.no_grad():
        io["logits_relupruner"] = rp(x)
    torch.save({"format_version": 1, "model": rp.state_dict(), "masks": masks,
                "relu_count": int(sum(m.sum().item() for m in masks)), "epoch": 3},
               os.path.join(HERE, "relupruner_resnet18.pth"))

    # Plain (kuangliu, e.g. a teacher)
    plain = load_base(ResNet18("plain"), base)
    plain.eval()
    with torch.no_grad():
        io["logits_plain"] = plain(x)
    torch.save({"net": plain.state_dict(), "acc": 91.5, "epoch": 199}, os.path.join(HERE, "plain_resnet18.pth"))
    sd = plain.state_dict()
    sd["layer2.0.extra_scale"] = torch.ones(8)
    torch.save({"net": sd, "acc": 91.5, "epoch": 199}, os.path.join(HERE, "stray_resnet18.pth"))

    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(HERE, "checkpoints.io.safetensors"))
    for k, v in io.items():
        print(k, tuple(v.shape))


if __name__ == "__main__":
    main()
