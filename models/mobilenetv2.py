"""MobileNetV2 (Sandler et al. 2018) for CIFAR as the CRD benchmark defines it (Tian, Krishnan & Isola,
ICLR 2020; github:HobbitLong/RepDistiller `models/mobilenetv2.py`, `mobile_half`): width multiplier 0.5,
expansion 6. Built by `mobilenetv2(num_classes)`; NOT registered in `models.MODELS` (see below).

Layout: a 3x3 stride-2 conv to 16 channels with BN-ReLU (the reference keeps the ImageNet stride, so a 32x32
input is at 16x16 from the first layer on), seven groups of inverted-residual blocks (t, c, n, s) = expansion,
output channels, blocks, first stride:
  (1, 8, 1, 1), (6, 12, 2, 1), (6, 16, 3, 2), (6, 32, 4, 2), (6, 48, 3, 1), (6, 80, 3, 2), (6, 160, 1, 1)
(the ImageNet widths 16, 24, 32, 64, 96, 160, 320 halved), grids 16, 16, 8, 4, 4, 2, 2; then a 1x1 conv 160 ->
1280 with BN-ReLU (1280 is not scaled below width 1), global average pooling over the 2x2 map and one linear
layer 1280 -> classes. A block: 1x1 expansion conv-BN-ReLU (present even at t = 1, as in the reference), 3x3
depthwise conv(stride)-BN-ReLU, 1x1 projection conv-BN (linear bottleneck), + input when stride 1 and the
width is kept. 812,836 parameters at 100 classes (= RepDistiller's `mobile_half`).

Initialisation as the reference: convolutions normal(0, sqrt(2 / (k * k * out))) = He normal (fan-out), BN
weight 1 and bias 0, classifier normal(0, 0.01) with zero bias.

Features. RepDistiller's `is_feat=True` list is [f0, ..., f5]: f0 the stem, f1, f2, f3, f4 the outputs of block
groups 1, 2, 4, 6 (linear bottlenecks: no ReLU; its `preact` flag changes nothing here), f5 the pooled vector.
Named like the rest of the zoo (the same rule as the contract: stage1 = last map at the first grid, stage2 =
last map at half of it, stage3 = the map the pooling reads):
  `stem_pre`, `stem`        f0: the stem's BN / its ReLU (16 x 16 x 16);
  `stage1_pre`, `stage1`    f1 (12 x 16 x 16) / its ReLU;
  `stage2_pre`, `stage2`    f2 (16 x 8 x 8) / its ReLU;
  `stage3_pre`, `stage3`    the 1x1 head conv's BN / its ReLU (1280 x 2 x 2), read by the pooling;
  `pool`                    f5 (1280).
Why it is not registered: `models.contract.check_model` requires `stage1` at the input resolution (32x32) and
`stage2` at half of it (16x16), and this network has no 32x32 map at all (stage grids 16, 8, 2). Everything
else of the contract holds (tests/test_crd_zoo.py checks that the grid rule is the only violation).
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .resnet import init_conv_bn

# (expansion t, output channels c at width 1, blocks n, first stride s), the ImageNet table
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))
STAGE_GROUPS = (1, 2)  # the block groups ending stage1 and stage2; stage3 is the head conv


class InvertedResidual(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_planes * expansion
        self.residual = stride == 1 and in_planes == out_planes
        self.conv1 = nn.Conv2d(in_planes, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + x if self.residual else out


class CifarMobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 100, width: float = 0.5, expansion: int = 6):
        super().__init__()
        self.num_classes = num_classes
        in_planes = int(32 * width)
        self.conv1 = nn.Conv2d(3, in_planes, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        groups = []
        for t, c, n, s in SETTINGS:
            planes, blocks = int(c * width), []
            for b in range(n):
                blocks.append(InvertedResidual(in_planes, planes, s if b == 0 else 1, expansion if t > 1 else 1))
                in_planes = planes
            groups.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(groups)
        head = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = nn.Conv2d(in_planes, head, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head)
        self.linear = nn.Linear(head, num_classes)
        init_conv_bn(self)
        nn.init.normal_(self.linear.weight, 0.0, 0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        feats = {}
        pre = feats["stem_pre"] = self.bn1(self.conv1(x))
        out = feats["stem"] = F.relu(pre)
        for j, group in enumerate(self.blocks):
            out = group(out)
            if j in STAGE_GROUPS:  # a linear bottleneck: the block output is the `_pre` map
                i = STAGE_GROUPS.index(j) + 1
                feats[f"stage{i}_pre"], feats[f"stage{i}"] = out, F.relu(out)
        pre = feats["stage3_pre"] = self.bn2(self.conv2(out))
        out = feats["stage3"] = F.relu(pre)
        pooled = feats["pool"] = out.mean((2, 3))
        return self.linear(pooled), feats


def mobilenetv2(num_classes: int) -> CifarMobileNetV2:
    """RepDistiller's `mobile_half`: MobileNetV2 at width 0.5, expansion 6."""
    return CifarMobileNetV2(num_classes, width=0.5, expansion=6)
