"""VGG with BatchNorm for CIFAR as the CRD benchmark defines it (Tian, Krishnan & Isola, ICLR 2020;
github:HobbitLong/RepDistiller `models/vgg.py`, whose `vgg8` and `vgg13` are the `_bn` variants): `vgg13`, `vgg8`.

Layout: five blocks of 3x3 conv (with bias) - BN - ReLU layers, widths per block
  vgg13 (configuration B): (64, 64), (128, 128), (256, 256), (512, 512), (512, 512)
  vgg8  (configuration S): (64,), (128,), (256,), (512,), (512,)
with 2x2 max pooling after blocks 0, 1 and 2 (32 -> 16 -> 8 -> 4 pixels; the reference pools after block 3 only
for 64x64 inputs, so blocks 3 and 4 both run at 4x4), then global average pooling and one linear layer
512 -> classes (the fully connected layers of ImageNet VGG are removed). Parameters at 100 classes: vgg13
9,462,180; vgg8 3,965,028 (= RepDistiller's).

Initialisation as the reference: convolutions normal(0, sqrt(2 / (k * k * out))) = He normal (fan-out) with zero
bias, BN weight 1 and bias 0, classifier normal(0, 0.01) with zero bias.

Features (models/contract.py). RepDistiller's `is_feat=True` list is [f0, ..., f4, f5]: f<j> the ReLU'd output
of block j (its `preact=True` variant: the last BN of block j), f5 the pooled vector. The contract wants `stage1`
at the input resolution, `stage2` at half of it and `stage3` the last map before pooling, so:
  `stem_pre`, `stem`        the first conv-BN of block 0, before / after its ReLU (64 x 32 x 32; in vgg8 block 0
                            has a single layer, so `stem` and `stage1` are the same map);
  `stage1_pre`, `stage1`    f0: block 0's last BN / its ReLU (64 x 32 x 32);
  `stage2_pre`, `stage2`    f1: block 1 (128 x 16 x 16);
  `stage3_pre`, `stage3`    f4: block 4 (512 x 4 x 4), the last map before pooling;
  `pool`                    f5 (512).
f2 (256 x 8 x 8) and f3 (512 x 4 x 4) are inside the network but not features of the contract.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .resnet import init_conv_bn

CONFIGS = {
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
}
POOL_AFTER = (0, 1, 2)  # 2x2 max pooling after these blocks (32x32 inputs)
STAGE_BLOCKS = (0, 1, 4)  # the blocks whose outputs are stage1..3


class VGGBlock(nn.Module):
    """conv3x3-BN layers with a ReLU between them; `forward_pre` returns every layer's BN output (pre-ReLU)."""

    def __init__(self, in_planes: int, widths: tuple[int, ...]):
        super().__init__()
        self.convs, self.bns = nn.ModuleList(), nn.ModuleList()
        for planes in widths:
            self.convs.append(nn.Conv2d(in_planes, planes, 3, 1, 1))
            self.bns.append(nn.BatchNorm2d(planes))
            in_planes = planes

    def forward_pre(self, x: torch.Tensor) -> list[torch.Tensor]:
        pres = []
        for conv, bn in zip(self.convs, self.bns):
            pres.append(bn(conv(x if not pres else F.relu(pres[-1]))))
        return pres


class CifarVGG(nn.Module):
    def __init__(self, widths: tuple[tuple[int, ...], ...], num_classes: int = 100):
        super().__init__()
        self.num_classes = num_classes
        blocks, in_planes = [], 3
        for block_widths in widths:
            blocks.append(VGGBlock(in_planes, block_widths))
            in_planes = block_widths[-1]
        self.blocks = nn.ModuleList(blocks)
        self.linear = nn.Linear(in_planes, num_classes)
        init_conv_bn(self)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.linear.weight, 0.0, 0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        feats, out = {}, x
        for j, block in enumerate(self.blocks):
            if j - 1 in POOL_AFTER:
                out = F.max_pool2d(out, 2)
            pres = block.forward_pre(out)
            out = F.relu(pres[-1])
            if j == 0:
                feats["stem_pre"] = pres[0]
                feats["stem"] = out if len(pres) == 1 else F.relu(pres[0])
            if j in STAGE_BLOCKS:
                i = STAGE_BLOCKS.index(j) + 1
                feats[f"stage{i}_pre"], feats[f"stage{i}"] = pres[-1], out
        pooled = feats["pool"] = out.mean((2, 3))
        return self.linear(pooled), feats


BUILDERS = {name: (lambda num_classes, w=widths: CifarVGG(w, num_classes)) for name, widths in CONFIGS.items()}
