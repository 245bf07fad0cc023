"""Model registry: a name maps to a constructor taking `num_classes`.

`resnet<depth>` is the reference code's option-B ResNet (1x1 conv + BN projection shortcuts);
`resnet<depth>_a` is He et al.'s option A (zero-padding shortcuts), the layout of published CIFAR checkpoints.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from core.seeding import seeded

from .resnet import CifarResNet

MODELS: dict[str, Callable[[int], nn.Module]] = {}


def register(name: str, builder: Callable[[int], nn.Module]) -> None:
    if name in MODELS:
        raise ValueError(f"model {name!r} registered twice")
    MODELS[name] = builder


for _depth in (8, 14, 20, 32, 44, 56, 110):
    register(f"resnet{_depth}", lambda num_classes, d=_depth: CifarResNet(d, num_classes, shortcut="B"))
    register(f"resnet{_depth}_a", lambda num_classes, d=_depth: CifarResNet(d, num_classes, shortcut="A"))


class UnknownModelError(ValueError):
    pass


def build_model(name: str, num_classes: int) -> nn.Module:
    try:
        builder = MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
    return builder(num_classes)


def build_seeded(name: str, num_classes: int, seed: int) -> nn.Module:
    """Same (name, classes, seed) -> same initial weights, whichever method or process builds them: every
    student of a seed starts where its CE baseline starts, so the comparison between methods is paired."""
    with seeded(seed, "init", name, num_classes):
        return build_model(name, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# other systems of the project (KDFM, OEC-KD, EKD): DenseNets, the CIFAR MobileNet, a 4-layer CNN, OEC-KD's
# compressed students (`resnet110_w80`, ...) and the multi-branch students (`oeckd_resnet20`, `ekd3_resnet8`, ...)
from . import branches as _branches, cnn4 as _cnn4, densenet as _densenet, mobilenet as _mobilenet  # noqa: E402

for _module in (_densenet, _mobilenet, _cnn4, _branches):
    for _name, _builder in _module.BUILDERS.items():
        register(_name, _builder)

# the CIFAR networks of the CRD benchmark (Tian et al., ICLR 2020; RepDistiller): its resnet20/32/56/110 are the
# option-B `resnet<depth>` above
from . import resnet_bottleneck as _resnet_bottleneck, resnet_x4 as _resnet_x4, shufflenet as _shufflenet  # noqa: E402
from . import mobilenetv2 as _mobilenetv2, vgg as _vgg, wrn as _wrn  # noqa: E402

for _module in (_wrn, _resnet_x4, _vgg, _shufflenet, _resnet_bottleneck):
    for _name, _builder in _module.BUILDERS.items():
        register(_name, _builder)
register("mobilenetv2", _mobilenetv2.mobilenetv2)
