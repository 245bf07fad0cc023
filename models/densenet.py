"""CIFAR DenseNets (Huang, Liu, van der Maaten & Weinberger, "Densely Connected Convolutional Networks", CVPR 2017).

Needed as teachers by KDFM (its pairs are DenseNet-40 -> 4-layer CNN and DenseNet-100 -> MobileNet) and as the
second architecture of OEC-KD (DenseNet-BC-100, whose compressed students scale the growth rate).

The CIFAR layout of the paper (Sec. 3 "Implementation details"): a 3x3 convolution with 16 output channels
(2k for DenseNet-BC), three dense blocks at 32x32, 16x16 and 8x8 with the same number of layers, transitions
BN-ReLU-conv1x1-avgpool2 between them (compression 0.5 for BC), and BN-ReLU-global pooling-FC at the end. A
layer is BN-ReLU-conv3x3(k); the BC bottleneck layer first reduces to 4k channels with BN-ReLU-conv1x1. No
dropout (the paper drops only without augmentation). The expected sizes are the paper's Table 2: DenseNet
(L=40, k=12) 1.0M, DenseNet (L=100, k=12) 7.0M, DenseNet-BC (L=100, k=12) 0.8M.

The network is split into the stem convolution and a `DenseBody` (blocks, transitions, final BN, classifier)
because OEC-KD shares the stem between students that differ only in their body. The classifier is called
`linear` like the ResNets' so a finished run's `model.pt` loads as a teacher.

Features, named like the ResNets' where the meaning carries over:
* `stem` (and `stem_pre`, the same tensor): the first convolution's output; a DenseNet has no activation there
  (the first BN-ReLU belongs to the first dense layer);
* `stage1_pre`, `stage2_pre`: block 1 / block 2 output after the transition's BN, before its ReLU; `stage1`,
  `stage2`: after the ReLU (the activation the transition convolves), at 32x32 and 16x16;
* `stage3_pre`: block 3 output after the final BN; `stage3`: after the final ReLU, the last feature map before
  pooling (8x8; 448 channels for DenseNet-40, 342 for DenseNet-BC-100, 1168 for DenseNet-100, all k = 12);
* `pool`: the globally pooled vector fed to `linear`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .resnet import init_conv_bn


class DenseLayer(nn.Module):
    """Adds `growth` new channels computed from everything before it (BN-ReLU-conv, optionally bottlenecked)."""

    def __init__(self, in_channels: int, growth: int, bottleneck: bool):
        super().__init__()
        self.bottleneck = bottleneck
        if bottleneck:
            inter = 4 * growth
            self.bn1 = nn.BatchNorm2d(in_channels)
            self.conv1 = nn.Conv2d(in_channels, inter, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(inter)
            self.conv2 = nn.Conv2d(inter, growth, 3, 1, 1, bias=False)
        else:
            self.bn1 = nn.BatchNorm2d(in_channels)
            self.conv1 = nn.Conv2d(in_channels, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        if self.bottleneck:
            out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1-avgpool2; `forward_parts` also returns the activation, which is the stage's feature."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward_parts(self, x):
        pre = self.bn(x)
        act = F.relu(pre)
        return pre, act, F.avg_pool2d(self.conv(act), 2)

    def forward(self, x):
        return self.forward_parts(x)[2]


def _dense_block(in_channels: int, growth: int, layers: int, bottleneck: bool) -> tuple[nn.Sequential, int]:
    mods = [DenseLayer(in_channels + i * growth, growth, bottleneck) for i in range(layers)]
    return nn.Sequential(*mods), in_channels + layers * growth


def init_dense(module: nn.Module) -> None:
    """He-normal convolutions (fan-out, as the authors' Torch code: std = sqrt(2 / (k*k*out))), BN (1, 0), FC bias 0:
    the ResNets' initialisation plus a zero classifier bias."""
    init_conv_bn(module)
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class DenseBody(nn.Module):
    """Everything of a CIFAR DenseNet after its stem: three blocks, two transitions, final BN, `linear`."""

    def __init__(self, in_channels: int, growth: int, layers_per_block: int, bottleneck: bool,
                 reduction: float, num_classes: int):
        super().__init__()
        self.growth, self.num_classes = growth, num_classes
        c = in_channels
        self.block1, c = _dense_block(c, growth, layers_per_block, bottleneck)
        out = int(math.floor(c * reduction))
        self.trans1, c = Transition(c, out), out
        self.block2, c = _dense_block(c, growth, layers_per_block, bottleneck)
        out = int(math.floor(c * reduction))
        self.trans2, c = Transition(c, out), out
        self.block3, c = _dense_block(c, growth, layers_per_block, bottleneck)
        self.bn = nn.BatchNorm2d(c)
        self.linear = nn.Linear(c, num_classes)
        self.out_channels = c
        init_dense(self)

    def forward_body(self, h):
        feats = {}
        out = self.block1(h)
        feats["stage1_pre"], feats["stage1"], out = self.trans1.forward_parts(out)
        out = self.block2(out)
        feats["stage2_pre"], feats["stage2"], out = self.trans2.forward_parts(out)
        pre = feats["stage3_pre"] = self.bn(self.block3(out))
        out = feats["stage3"] = F.relu(pre)
        pooled = feats["pool"] = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(pooled), feats

    def forward(self, h):
        return self.forward_body(h)


class DenseStem(nn.Module):
    """The first 3x3 convolution alone (no BN, no ReLU), as a module of its own for multi-branch students."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_channels, 3, 1, 1, bias=False)
        init_dense(self)

    def forward(self, x):
        h = self.conv1(x)
        return h, {"stem_pre": h, "stem": h}


class DenseNet(DenseBody):
    """DenseNet-L with growth rate k (`bc`: bottleneck layers and compression 0.5).

    `stem_channels` defaults to the paper's (16, or 2k with BC); OEC-KD's compressed DenseNet-BC students keep
    the original 2 * 12 = 24 stem channels while their growth rate shrinks. Subclassing the body keeps the
    parameter names flat (`conv1`, `block1`, ..., `linear`), the layout of the ResNets.
    """

    def __init__(self, depth: int, growth: int = 12, bc: bool = False, num_classes: int = 10,
                 stem_channels: int | None = None):
        per = 6 if bc else 3
        if (depth - 4) % per != 0 or depth < 4 + per:
            raise ValueError(f"DenseNet{'-BC' if bc else ''} depth must be {per}n+4 with n >= 1, got {depth}")
        stem = stem_channels or (2 * growth if bc else 16)
        super().__init__(stem, growth, (depth - 4) // per, bc, 0.5 if bc else 1.0, num_classes)
        self.depth, self.bc = depth, bc
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        init_dense(self.conv1)

    def forward(self, x):
        h = self.conv1(x)
        logits, feats = self.forward_body(h)
        return logits, {"stem_pre": h, "stem": h, **feats}


BUILDERS = {
    "densenet40": lambda num_classes: DenseNet(40, 12, False, num_classes),
    "densenet100": lambda num_classes: DenseNet(100, 12, False, num_classes),
    "densenet_bc40": lambda num_classes: DenseNet(40, 12, True, num_classes),
    "densenet_bc100": lambda num_classes: DenseNet(100, 12, True, num_classes),
}
