"""A trained teacher made faster for what a distillation run does with it: the same forward, thousands of times,
with weights that never change.

Two rewrites, both exact up to float rounding (the last bits of the logits; what a change of convolution
algorithm also does) and both measured by `bench/step_time.py` on the paper's ResNet-110 at batch 128 on a
2-core CPU (no_grad forward: 0.62 s as built, 0.55 s folded, 0.38 s folded and channels-last):
* every BatchNorm that follows a convolution is folded into it (in eval mode BN is a fixed per-channel affine
  map, so conv-then-BN is one convolution with a bias): half the passes over the activations go;
* on the CPU the forward runs in channels-last memory format, which oneDNN's convolutions prefer; the features
  handed to the methods are made contiguous again, so every method sees the layout it always saw.
Only the CIFAR ResNets (the paper's teachers) are rewritten; other networks are returned unchanged. Gradients
still flow to the input (Sobolev's Jacobian, BSS's attack): only the teacher's own parameters are frozen.
The rewrite changes no run id: like the device's kernels, it moves results by float rounding only, and a
cohort and a separate run get the same rewritten teacher, so they stay identical to each other.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .resnet import CifarResNet


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv followed by eval-mode `bn`, as one convolution with a bias (computed in float64)."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).to(conv.weight.device)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        fused.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
        fused.bias.copy_(((bias - bn.running_mean.double()) * scale + bn.bias.double()).to(conv.weight.dtype))
    return fused


def fold_batchnorm_(net: CifarResNet) -> None:
    """Fold, in place, every (conv, BN) pair of a CIFAR ResNet: the stem, both of each block, the projection
    shortcuts. The BNs become identities."""
    net.conv1, net.bn1 = _fold(net.conv1, net.bn1), nn.Identity()
    for stage in (net.layer1, net.layer2, net.layer3):
        for block in stage:
            block.conv1, block.bn1 = _fold(block.conv1, block.bn1), nn.Identity()
            block.conv2, block.bn2 = _fold(block.conv2, block.bn2), nn.Identity()
            if isinstance(block.shortcut, nn.Sequential):
                block.shortcut = nn.Sequential(_fold(block.shortcut[0], block.shortcut[1]))


class FrozenTeacher(nn.Module):
    """`model` (maybe wrapped, e.g. by `Renormalize`) run in channels-last; its features returned contiguous.
    The wrapped network stays reachable as `.model` (KDFM shares the teacher's classifier)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x):
        logits, feats = self.model(x.contiguous(memory_format=torch.channels_last))
        return logits, {k: v.contiguous() for k, v in feats.items()}


def frozen_teacher(model: nn.Module, device: torch.device) -> nn.Module:
    """The teacher of a distillation run, rewritten for speed where that is known to pay (see the module
    docstring); `model` must be in eval mode and is changed in place."""
    inner = _resnet_inside(model)
    if inner is None or inner.training:
        return model
    fold_batchnorm_(inner)
    return FrozenTeacher(model) if torch.device(device).type == "cpu" else model


def _resnet_inside(model: nn.Module) -> CifarResNet | None:
    inner = model
    while not isinstance(inner, CifarResNet) and isinstance(getattr(inner, "model", None), nn.Module):
        inner = inner.model
    return inner if isinstance(inner, CifarResNet) else None


def inference_form(model: nn.Module) -> nn.Module:
    """The network as it is evaluated and timed: for a CIFAR ResNet (maybe wrapped), an eval-mode copy rewritten
    as above (BatchNorm folded; channels-last on the CPU), the form it would be deployed in, and the form the
    ensembles are timed in, so single networks and ensembles compare in Table 2; any other network as it is.
    `model` itself is never changed. Exact to float rounding, like the teacher's rewrite."""
    if _resnet_inside(model) is None:
        return model
    device = next(model.parameters()).device
    compiled = getattr(model, "_compiled_call_impl", None)  # nn.Module.compile's wrapper is not copied
    twin = copy.deepcopy(model, memo={id(compiled): None} if compiled is not None else None).eval()
    return frozen_teacher(twin, device)
