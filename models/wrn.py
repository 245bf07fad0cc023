"""Wide ResNets WRN-d-k for CIFAR (Zagoruyko & Komodakis 2016) as the CRD benchmark defines them (Tian, Krishnan
& Isola, ICLR 2020; github:HobbitLong/RepDistiller `models/wrn.py`): `wrn_40_2`, `wrn_16_2`, `wrn_40_1`.

Layout: a 3x3 stem conv to 16 channels (no BN, no ReLU: the network is pre-activation), three stages of
n = (d - 4) / 6 pre-activation basic blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3) with widths 16k, 32k, 64k at
32, 16, 8 pixels, a final BN-ReLU, global average pooling and one linear layer. A block that changes the width
has a 1x1-conv projection shortcut (no BN) applied to the block's *activated* input; otherwise the shortcut is
the identity on the raw input. No dropout (the reference's default dropRate 0). Parameters at 100 classes:
wrn_40_2 2,255,156; wrn_16_2 703,284; wrn_40_1 569,780 (= RepDistiller's).

Initialisation as the reference: convolutions normal(0, sqrt(2 / (k * k * out))) = He normal (fan-out), BN weight
1 and bias 0, classifier bias 0 (its weight keeps PyTorch's default).

Features (models/contract.py), against RepDistiller's `is_feat=True` list [f0, f1, f2, f3, f4]:
  `stem` = `stem_pre` (one tensor)  the stem conv's output, f0 (16 x 32 x 32); no activation in the stem;
  `stage<i>_pre`                    BN(f<i>), the BN that opens the next stage's first block (stage 3: the final
                                    BN) applied to stage i's output: RepDistiller's `preact=True` f<i>;
  `stage<i>`                        relu(stage<i>_pre): the activated map the next stage (or the pooling) reads.
                                    RepDistiller's plain f<i> is the un-normalised block sum, not exposed here;
  `pool`                            f4, the average of `stage3`.
Channels of stage1..3: 16k, 32k, 64k (wrn_40_2, wrn_16_2: 32, 64, 128; wrn_40_1: 16, 32, 64) at 32, 16, 8 px.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .resnet import init_conv_bn


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3 plus a shortcut: the identity on the raw input when the width is
    kept, else a 1x1 conv (stride, no BN) on the activated input, as the reference's `convShortcut`."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        if in_planes == planes and stride != 1:
            raise ValueError("a width-keeping block has an identity shortcut and cannot change the grid")
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None if in_planes == planes else nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor, act: torch.Tensor | None = None) -> torch.Tensor:
        """`act`, if given, is relu(bn1(x)) already computed by the caller (the network taps it as a feature)."""
        a = F.relu(self.bn1(x)) if act is None else act
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + (x if self.shortcut is None else self.shortcut(a))


class WideResNet(nn.Module):
    """WRN-`depth`-`widen` for 32x32 inputs."""

    def __init__(self, depth: int, widen: int, num_classes: int = 100):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        self.depth, self.widen, self.num_classes = depth, widen, num_classes
        self.widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        in_planes, stages = 16, []
        for i, planes in enumerate(self.widths):
            blocks = []
            for b in range(n):
                blocks.append(PreActBlock(in_planes, planes, 2 if (i > 0 and b == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        for stage in (self.layer2, self.layer3):  # their first block reads the previous stage's activated map
            assert stage[0].shortcut is not None
        self.bn = nn.BatchNorm2d(in_planes)  # the final BN before pooling
        self.linear = nn.Linear(in_planes, num_classes)
        init_conv_bn(self)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        stem = self.conv1(x)
        feats = {"stem_pre": stem, "stem": stem}  # no activation in a pre-activation network's stem
        stages = (self.layer1, self.layer2, self.layer3)
        out, act = stem, None
        for i, stage in enumerate(stages, start=1):
            out = stage[0](out, act)
            for block in stage[1:]:
                out = block(out)
            # the BN-ReLU after stage i: the next stage's first block's (computed here so it can be tapped)
            bn = stages[i][0].bn1 if i < len(stages) else self.bn
            pre = feats[f"stage{i}_pre"] = bn(out)
            act = feats[f"stage{i}"] = F.relu(pre)
        pooled = feats["pool"] = act.mean((2, 3))
        return self.linear(pooled), feats


BUILDERS = {
    "wrn_40_2": lambda num_classes: WideResNet(40, 2, num_classes),
    "wrn_16_2": lambda num_classes: WideResNet(16, 2, num_classes),
    "wrn_40_1": lambda num_classes: WideResNet(40, 1, num_classes),
}
