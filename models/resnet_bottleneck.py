"""ResNet-50 in its CIFAR variant as the CRD benchmark defines it (Tian, Krishnan & Isola, ICLR 2020;
github:HobbitLong/RepDistiller `models/resnetv2.py`, `ResNet50`): `resnet50`.

Layout: the ImageNet ResNet-50 body (He et al. 2016: bottleneck blocks 1x1-3x3-1x1 with expansion 4, stages of
3, 4, 6, 3 blocks at widths 64, 128, 256, 512, outputs 256, 512, 1024, 2048) behind a CIFAR stem: one 3x3
stride-1 conv to 64 channels with BN-ReLU and no max pooling, so the stages run at 32, 16, 8, 4 pixels. The
stride sits in the 3x3 conv of a stage's first block; a block that changes shape has a 1x1-conv + BN projection
shortcut. Global average pooling and one linear layer 2048 -> classes. 23,705,252 parameters at 100 classes
(= RepDistiller's).

Initialisation as the reference: He normal (fan-out) convolutions, BN weight 1 and bias 0 (no zero-init of the
last BN of a block), the classifier PyTorch's default.

Features (models/contract.py). RepDistiller's `is_feat=True` list is [f0, f1, f2, f3, f4, f5]: f0 the stem,
f1..f4 the outputs of layer1..4 (`preact=True`: before the last block's final ReLU), f5 the pooled vector. The
contract wants `stage1` at the input resolution, `stage2` at half of it and `stage3` the last map before pooling:
  `stem_pre`, `stem`        f0: the stem's BN / its ReLU (64 x 32 x 32);
  `stage1_pre`, `stage1`    f1: layer1 (256 x 32 x 32), before / after the last block's final ReLU;
  `stage2_pre`, `stage2`    f2: layer2 (512 x 16 x 16);
  `stage3_pre`, `stage3`    f4: layer4 (2048 x 4 x 4), the last map before pooling;
  `pool`                    f5 (2048).
f3 (layer3, 1024 x 8 x 8) is inside the network but not a feature of the contract.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .resnet import init_conv_bn

EXPANSION = 4
RESNET50 = ((64, 3), (128, 4), (256, 6), (512, 3))  # (width, blocks) of each stage
STAGE_LAYERS = (0, 1, 3)  # the layers whose outputs are stage1..3


class Bottleneck(nn.Module):
    """1x1 conv-BN-ReLU, 3x3 conv(stride)-BN-ReLU, 1x1 conv-BN to 4x width, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        out_planes = EXPANSION * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        if stride == 1 and in_planes == out_planes:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_planes))

    def forward_pre(self, x):
        """The block output before its final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out)) + self.shortcut(x)

    def forward(self, x):
        return F.relu(self.forward_pre(x))


class CifarBottleneckResNet(nn.Module):
    def __init__(self, stages: tuple[tuple[int, int], ...] = RESNET50, num_classes: int = 100):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes, layers = 64, []
        for i, (planes, n) in enumerate(stages):
            blocks = []
            for b in range(n):
                blocks.append(Bottleneck(in_planes, planes, 2 if (i > 0 and b == 0) else 1))
                in_planes = EXPANSION * planes
            layers.append(nn.Sequential(*blocks))
        self.layers = nn.ModuleList(layers)
        self.linear = nn.Linear(in_planes, num_classes)
        init_conv_bn(self)

    def forward(self, x):
        feats = {}
        pre = feats["stem_pre"] = self.bn1(self.conv1(x))
        out = feats["stem"] = F.relu(pre)
        for j, layer in enumerate(self.layers):
            if j not in STAGE_LAYERS:
                out = layer(out)
                continue
            for block in layer[:-1]:
                out = block(out)
            i = STAGE_LAYERS.index(j) + 1
            pre = feats[f"stage{i}_pre"] = layer[-1].forward_pre(out)
            out = feats[f"stage{i}"] = F.relu(pre)
        pooled = feats["pool"] = out.mean((2, 3))
        return self.linear(pooled), feats


BUILDERS = {"resnet50": lambda num_classes: CifarBottleneckResNet(RESNET50, num_classes)}
