"""Model registry: a name maps to a constructor taking `num_classes`.

`resnet<depth>` is the reference code's option-B ResNet (1x1 conv + BN projection shortcuts);
`resnet<depth>_a` is He et al.'s option A (zero-padding shortcuts), the layout of published CIFAR checkpoints.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
