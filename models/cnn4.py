"""A 4-layer CNN: KDFM's student for the DenseNet-40 teacher (Chen et al., ACCV 2018).

The paper's layer widths were not retrieved (paper-notes §3.3, a [D] default): four conv3x3-BN-ReLU layers
64 -> 128 -> 256 -> 256, a 2x2 max-pool after the second and the third, so the last map is 256 x 8 x 8, on the
same 8x8 grid as the DenseNets' and ResNets' last stage (KDFM's adapter then needs no resizing). The notes
sketch the fourth layer at the teacher's width (448 for DenseNet-40); we keep it at 256 so the student stays
smaller than that teacher (0.96 M vs 1.02 M parameters, 10 classes) and let KDFM's 1x1 adapter map 256 -> 448.
Global average pooling and one linear layer classify.

Features, named like the ResNets' resolutions: `stem` (64 x 32 x 32), `stage1` (128 x 32 x 32, before the first
pool), `stage2` (256 x 16 x 16, before the second pool), `stage3` (256 x 8 x 8, the last map before pooling),
their `_pre` twins (after BN, before ReLU) and `pool`.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .resnet import init_conv_bn

WIDTHS = (64, 128, 256, 256)


class CNN4(nn.Module):
    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int, int] = WIDTHS):
        super().__init__()
        self.num_classes = num_classes
        chans = (3, *widths)
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, 1, 1, bias=False) for i in range(4))
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in widths)
        self.linear = nn.Linear(widths[-1], num_classes)
        init_conv_bn(self)

    def forward(self, x):
        feats, out = {}, x
        for i, name in enumerate(("stem", "stage1", "stage2", "stage3")):
            if i in (2, 3):  # max-pool after layers 2 and 3: 32 -> 16 -> 8
                out = F.max_pool2d(out, 2)
            pre = feats[f"{name}_pre"] = self.bns[i](self.convs[i](out))
            out = feats[name] = F.relu(pre)
        pooled = feats["pool"] = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(pooled), feats


BUILDERS = {"cnn4": lambda num_classes: CNN4(num_classes)}
