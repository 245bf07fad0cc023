"""ShuffleNet v1 and v2 for CIFAR as the CRD benchmark defines them (Tian, Krishnan & Isola, ICLR 2020;
github:HobbitLong/RepDistiller `models/ShuffleNetv1.py` `ShuffleV1`, `models/ShuffleNetv2.py` `ShuffleV2`):
`shufflev1`, `shufflev2`.

Both have a CIFAR stem of one 1x1 conv 3 -> 24 with BN-ReLU at 32x32 (no max pooling), three stages that each
halve the grid (16, 8, 4 pixels), global average pooling and one linear layer.

ShuffleV1 (Zhang et al. 2018, groups g = 3): stages of 4, 8, 4 bottleneck units with outputs 240, 480, 960. A
unit: 1x1 group conv (g groups; 1 group when it reads the 24-channel stem) to a quarter of the unit's own
output width, BN-ReLU, channel shuffle, 3x3 depthwise conv (stride 2 in a stage's first unit) - BN, 1x1 group
conv (g groups) - BN, then + identity, or, in a stage's first unit, concatenation with a 3x3 stride-2 average
pool of the input (the unit itself then produces output - input channels); then ReLU. 949,258 parameters at
100 classes (= RepDistiller's).

ShuffleV2 (Ma et al. 2018, size 1x): stages of a downsampling unit then 3, 7, 3 basic units, widths 116, 232,
464, then a 1x1 conv 464 -> 1024 with BN-ReLU before the pooling. Basic unit: split the channels in halves, keep
the first, pass the second through 1x1 conv-BN-ReLU, 3x3 depthwise conv-BN, 1x1 conv-BN-ReLU; concatenate and
shuffle (2 groups). Downsampling unit: both branches read the whole input - left 3x3 depthwise stride-2 conv-BN,
1x1 conv-BN-ReLU; right 1x1 conv-BN-ReLU, 3x3 depthwise stride-2 conv-BN, 1x1 conv-BN-ReLU - each to half the
output width; concatenate and shuffle. 1,355,528 parameters at 100 classes (= RepDistiller's).

Initialisation as the reference: PyTorch's defaults (RepDistiller's ShuffleNets set none; BN weight 1, bias 0).

Features (models/contract.py). RepDistiller's `is_feat=True` list is [f0, f1, f2, f3, f4]: f0 the stem, f1..f3
the outputs of the three stages (`preact=True`: before the last unit's final ReLU), f4 the pooled vector. The
contract wants `stage1` at the input resolution, `stage2` at half of it and `stage3` the last map before
pooling, and the stem is the only 32x32 map of a ShuffleNet, so:
  `stem_pre`, `stem`        f0: the stem's BN / its ReLU (24 x 32 x 32);
  `stage1_pre`, `stage1`    the same tensors as `stem_pre`, `stem`;
  `stage2_pre`, `stage2`    f1: stage 1 (v1 240 x 16 x 16, v2 116 x 16 x 16), before / after its last ReLU;
  `stage3_pre`, `stage3`    v1: f3, stage 3 (960 x 4 x 4); v2: the 1x1 head conv's BN / its ReLU on f3
                            (1024 x 4 x 4): the map the pooling reads (RepDistiller's f3 is stage 3's 464 x 4 x 4);
  `pool`                    the pooled vector (v1 960, v2 1024).
f2 (stage 2 at 8x8) is inside the network but not a feature of the contract. ShuffleV2's pre-activation: the
reference's f1_pre is the concatenation *before* the channel shuffle while f1 is after it; `stage2_pre` is taken
after the shuffle (a fixed channel permutation of f1_pre), so that `stage2 == relu(stage2_pre)`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

STEM_WIDTH = 24


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g * c, H, W) -> interleave the g groups of c channels."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, STEM_WIDTH, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)

    def forward(self, x):
        return self.bn1(self.conv1(x))  # pre-activation; the network applies the ReLU


def stem_features(pre: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stem is the only full-resolution map: it is also `stage1` (same tensors)."""
    out = F.relu(pre)
    return {"stem_pre": pre, "stem": out, "stage1_pre": pre, "stage1": out}


# ---- ShuffleNet v1 --------------------------------------------------------------------------------------------
V1_WIDTHS, V1_UNITS, V1_GROUPS = (240, 480, 960), (4, 8, 4), 3


class ShuffleV1Unit(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        self.g1 = 1 if in_planes == STEM_WIDTH else groups
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward_pre(self, x):
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1)
        return out + x

    def forward(self, x):
        return F.relu(self.forward_pre(x))


class ShuffleNetV1(nn.Module):
    def __init__(self, num_classes: int = 100, widths=V1_WIDTHS, units=V1_UNITS, groups: int = V1_GROUPS):
        super().__init__()
        self.num_classes = num_classes
        self.stem = ShuffleStem()
        in_planes, stages = STEM_WIDTH, []
        for planes, n in zip(widths, units):
            blocks = []
            for b in range(n):
                # a stage's first unit concatenates its (pooled) input: it produces planes - in_planes channels
                blocks.append(ShuffleV1Unit(in_planes, planes - (in_planes if b == 0 else 0), 2 if b == 0 else 1,
                                            groups))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        feats = stem_features(self.stem(x))
        out = feats["stem"]
        for name, stage in (("stage2", self.layer1), (None, self.layer2), ("stage3", self.layer3)):
            if name is None:
                out = stage(out)
                continue
            for block in stage[:-1]:
                out = block(out)
            pre = feats[f"{name}_pre"] = stage[-1].forward_pre(out)
            out = feats[name] = F.relu(pre)
        pooled = feats["pool"] = out.mean((2, 3))
        return self.linear(pooled), feats


# ---- ShuffleNet v2 --------------------------------------------------------------------------------------------
V2_WIDTHS, V2_UNITS, V2_HEAD = (116, 232, 464), (3, 7, 3), 1024


class ShuffleV2Unit(nn.Module):
    """The basic unit: the first half of the channels passes, the second goes through the branch."""

    def __init__(self, planes: int):
        super().__init__()
        half = planes // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def _branch_pre(self, x):
        x1, x2 = x.chunk(2, dim=1)
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))
        return x1, self.bn3(self.conv3(out))

    def forward_pre(self, x):
        """The shuffled concatenation before the branch's last ReLU; `x1` is itself post-ReLU, so
        relu(forward_pre(x)) == forward(x)."""
        x1, pre = self._branch_pre(x)
        return channel_shuffle(torch.cat([x1, pre], 1), 2)

    def forward(self, x):
        x1, pre = self._branch_pre(x)
        return channel_shuffle(torch.cat([x1, F.relu(pre)], 1), 2)


class ShuffleV2Down(nn.Module):
    """The downsampling unit: two stride-2 branches on the whole input, each to half the output width."""

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        mid = out_planes // 2
        self.conv1 = nn.Conv2d(in_planes, in_planes, 3, 2, 1, groups=in_planes, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv2 = nn.Conv2d(in_planes, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_planes, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int = 100, widths=V2_WIDTHS, units=V2_UNITS, head: int = V2_HEAD):
        super().__init__()
        self.num_classes = num_classes
        self.stem = ShuffleStem()
        in_planes, stages = STEM_WIDTH, []
        for planes, n in zip(widths, units):
            stages.append(nn.Sequential(ShuffleV2Down(in_planes, planes), *(ShuffleV2Unit(planes) for _ in range(n))))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(in_planes, head, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head)
        self.linear = nn.Linear(head, num_classes)

    def forward(self, x):
        feats = stem_features(self.stem(x))
        out = feats["stem"]
        for block in self.layer1[:-1]:
            out = block(out)
        pre = feats["stage2_pre"] = self.layer1[-1].forward_pre(out)
        out = feats["stage2"] = F.relu(pre)
        out = self.layer3(self.layer2(out))
        pre = feats["stage3_pre"] = self.bn2(self.conv2(out))
        out = feats["stage3"] = F.relu(pre)
        pooled = feats["pool"] = out.mean((2, 3))
        return self.linear(pooled), feats


BUILDERS = {
    "shufflev1": lambda num_classes: ShuffleNetV1(num_classes),
    "shufflev2": lambda num_classes: ShuffleNetV2(num_classes),
}
