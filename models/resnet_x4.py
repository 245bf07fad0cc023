"""The 4x-wide CIFAR ResNets of the CRD benchmark (Tian, Krishnan & Isola, ICLR 2020; github:HobbitLong/
RepDistiller `models/resnet.py`: `resnet32x4`, `resnet8x4`, filters [32, 64, 128, 256]).

RepDistiller's CIFAR ResNet is the project's option-B `CifarResNet` (BasicBlocks, 1x1-conv + BN projection
wherever the shape changes, He-normal fan-out init): its resnet20/32/56/110 (filters [16, 16, 32, 64]) are the
registered `resnet20`..`resnet110` parameter for parameter (278,324 / 472,756 / 861,620 / 1,736,564 at 100
classes). The x4 variants differ in one point `CifarResNet` cannot express: the stem conv has 32 channels while
the stages have 64, 128, 256, so the first block of stage 1 also gets a projection shortcut (32 -> 64). That is
`ScaledResNet` (models/branches.py: stage widths and stem width set separately, the same module names and
features as `CifarResNet`). Parameters at 100 classes: resnet32x4 7,433,860; resnet8x4 1,233,540
(= RepDistiller's).

Features (models/contract.py), as RepDistiller's `is_feat=True` list [f0, f1, f2, f3, f4]: `stem` f0 (32 x 32 x
32), `stage1..3` f1..f3 (64 x 32 x 32, 128 x 16 x 16, 256 x 8 x 8) with `_pre` = its `preact=True` features
(the last block's sum before the ReLU), `pool` f4 (256).
"""
from __future__ import annotations

from .branches import ScaledResNet

X4_STEM, X4_WIDTHS = 32, (64, 128, 256)


def resnet_x4(depth: int, num_classes: int) -> ScaledResNet:
    return ScaledResNet(depth, X4_WIDTHS, num_classes, stem_width=X4_STEM)


BUILDERS = {f"resnet{d}x4": (lambda num_classes, d=d: resnet_x4(d, num_classes)) for d in (32, 8)}
