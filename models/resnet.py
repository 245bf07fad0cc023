"""CIFAR ResNets of depth 6n+2 (He et al. 2016, section 4.2), as used by the paper's reference code.

Module names follow akamaster/pytorch_resnet_cifar10 (`conv1`, `bn1`, `layer1..3`, `linear`) so that its
published checkpoints load by stripping the `module.` prefix. Every forward returns the logits and the named
features that distillation methods tap; the ReLUs are not in-place, so the pre-activations survive.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def init_conv_bn(module: nn.Module) -> None:
    """The reference code's initialisation: He-normal (fan-out) convolutions, BatchNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class PadShortcut(nn.Module):
    """Option A: parameter-free downsampling by striding and zero-padding the new channels."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(planes)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward_pre(self, x):
        """Return the block output before its final ReLU (the 'pre-activation' feature)."""
        out = _relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)) + self.shortcut(x)

    def forward(self, x):
        return _relu(self.forward_pre(x))


def _relu(x):
    """ReLU of a temporary: in place when no graph is recorded (a frozen teacher's forward), which saves one
    activation-sized allocation per ReLU and gives the same values; out of place when training, where autograd
    keeps the input."""
    return F.relu(x, inplace=not torch.is_grad_enabled())


class CifarResNet(nn.Module):
    """ResNet-(6n+2) with stage widths `widths` (16, 32, 64 by default)."""

    def __init__(self, depth: int, num_classes: int = 10, shortcut: str = "B",
                 widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        self.depth, self.shortcut_option, self.num_classes = depth, shortcut, num_classes
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for b in range(n):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(widths[-1], num_classes)
        init_conv_bn(self)

    def forward(self, x):
        feats = {}
        stem_pre = self.bn1(self.conv1(x))
        feats["stem_pre"] = stem_pre
        out = feats["stem"] = F.relu(stem_pre)
        for i, stage in enumerate((self.layer1, self.layer2, self.layer3), start=1):
            for block in stage[:-1]:
                out = block(out)
            pre = stage[-1].forward_pre(out)
            feats[f"stage{i}_pre"] = pre
            out = feats[f"stage{i}"] = F.relu(pre)
        pooled = feats["pool"] = out.mean((2, 3))  # global average pool; vmap-friendly (ensembles)
        return self.linear(pooled), feats
