"""MobileNet (v1; Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", 2017), in its common CIFAR adaptation: KDFM's student for the DenseNet-100 teacher.

Variant chosen: the CIFAR MobileNet of kuangliu/pytorch-cifar (`models/mobilenet.py`), the one most CIFAR
distillation code uses: the ImageNet network's 13 depthwise-separable blocks with widths
64, 128/2, 128, 256/2, 256, 512/2, 5 x 512, 1024/2, 1024 (x/2 = stride 2), but a stride-1 3x3 stem with 32
channels, so a 32x32 input ends at 1024 x 2 x 2; then 2x2 average pooling and one linear layer. No width
multiplier (alpha = 1). 3,217,226 parameters for 10 classes (3.31 M for 100): under half of DenseNet-100 k=12
(7.0 M), which is what KDFM's abstract claims for its MobileNet student.

Features, named like the ResNets' where the meaning carries over: `stem` (32 x 32 x 32), `stage1` (64 x 32 x 32,
end of the full-resolution part), `stage2` (128 x 16 x 16), `stage3` (1024 x 2 x 2, the last feature map before
pooling), their `_pre` twins (after BN, before ReLU) and `pool`. The network has no 8 x 8 stage like the ResNets'
`stage3`; KDFM's adapter resizes the map to the teacher's grid.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .resnet import init_conv_bn

# (out channels, stride) of the 13 depthwise-separable blocks
CFG = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
       (512, 1), (1024, 2), (1024, 1))


class SeparableBlock(nn.Module):
    """Depthwise 3x3 conv-BN-ReLU, then pointwise 1x1 conv-BN-ReLU; `forward_pre` stops before the last ReLU."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, in_planes, 3, stride, 1, groups=in_planes, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv2 = nn.Conv2d(in_planes, out_planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)

    def forward_pre(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x):
        return F.relu(self.forward_pre(x))


class CifarMobileNet(nn.Module):
    # the block index ending each named stage: stage1 = block 0 (32x32), stage2 = block 2 (16x16), stage3 = last
    STAGE_ENDS = {0: "stage1", 2: "stage2", len(CFG) - 1: "stage3"}

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, in_planes = [], 32
        for out_planes, stride in CFG:
            blocks.append(SeparableBlock(in_planes, out_planes, stride))
            in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(in_planes, num_classes)
        init_conv_bn(self)

    def forward(self, x):
        feats = {}
        pre = feats["stem_pre"] = self.bn1(self.conv1(x))
        out = feats["stem"] = F.relu(pre)
        for i, block in enumerate(self.layers):
            name = self.STAGE_ENDS.get(i)
            if name is None:
                out = block(out)
                continue
            pre = feats[f"{name}_pre"] = block.forward_pre(out)
            out = feats[name] = F.relu(pre)
        # the reference pools with avg_pool2d(out, 2) over the 2x2 map: a global average at 32x32 inputs
        pooled = feats["pool"] = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(pooled), feats


BUILDERS = {"mobilenet": lambda num_classes: CifarMobileNet(num_classes)}
