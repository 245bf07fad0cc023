"""M CIFAR ResNets of one architecture fused into one inference network of grouped convolutions.

Why: an ensemble's members are small networks; evaluated one after another, each convolution is a narrow one
and a CPU or GPU spends much of its time on per-call overhead. Fused, member j owns channel group j of every
layer: the stem is one convolution with M x 16 output channels (the input is shared), every later convolution
has `groups=M`, and the classifier is one batched matrix product, so each layer is one wide call for all
members. At inference BatchNorm is an affine map, so it is folded into the convolution before it, and the
network runs channels-last, the layout CPU convolution kernels are fastest in. The result equals the members'
logits up to float rounding (tested); `bench/ensemble_inference.py` times it against a loop over the members.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .resnet import BasicBlock, CifarResNet, PadShortcut


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight,
                                bn.bias)
    return w.detach(), b.detach()


def grouped_pad_shortcut(x: torch.Tensor, members: int, pad: int) -> torch.Tensor:
    """Option A's shortcut on `members` networks side by side along the channels: stride 2, then `pad` zero
    channels on both sides of each member's own group (not of the whole tensor)."""
    b, c, h, w = x.shape
    x = x[:, :, ::2, ::2].reshape(b, members, c // members, h // 2, w // 2)
    return F.pad(x, (0, 0, 0, 0, pad, pad)).reshape(b, -1, h // 2, w // 2)


class _GroupedConv(nn.Module):
    """Member j's conv + BN, for every j, as one convolution over the concatenated channel groups."""

    def __init__(self, pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]], shared_input: bool = False):
        super().__init__()
        weights, biases = zip(*(_folded(c, bn) for c, bn in pairs))
        conv = pairs[0][0]
        self.stride, self.padding = conv.stride, conv.padding
        self.groups = 1 if shared_input else len(pairs)
        self.register_buffer("weight", torch.cat(weights).contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", torch.cat(biases))

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, groups=self.groups)


def _folded_conv(pairs, names) -> _GroupedConv:
    return _GroupedConv(pairs)


class GroupedBlock(nn.Module):
    """Block i of M CIFAR ResNets side by side along the channels. `conv(pairs, names)` builds one grouped layer
    from the members' (conv, BN) pairs, `names` being their module names in the block ("conv1", "bn1"): folded
    for inference here, trainable in bench/side_by_side.py. A padded (option A) shortcut comes back in
    `memory_format` when one is given."""

    def __init__(self, blocks: list[BasicBlock], conv, memory_format: torch.memory_format | None = None):
        super().__init__()
        self.members, self.memory_format = len(blocks), memory_format
        self.conv1 = conv([(b.conv1, b.bn1) for b in blocks], ("conv1", "bn1"))
        self.conv2 = conv([(b.conv2, b.bn2) for b in blocks], ("conv2", "bn2"))
        first = blocks[0].shortcut
        self.pad = first.pad if isinstance(first, PadShortcut) else None
        self.shortcut = (conv([(b.shortcut[0], b.shortcut[1]) for b in blocks], ("shortcut.0", "shortcut.1"))
                         if isinstance(first, nn.Sequential) else None)

    def _shortcut(self, x):
        if self.shortcut is not None:
            return self.shortcut(x)
        if self.pad is None:
            return x
        out = grouped_pad_shortcut(x, self.members, self.pad)
        return out if self.memory_format is None else out.contiguous(memory_format=self.memory_format)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self._shortcut(x))


class FusedResNetEnsemble(nn.Module):
    """(B, 3, H, W) -> (M, B, K): the logits of every member, computed by one fused network."""

    def __init__(self, members: list[CifarResNet]):
        super().__init__()
        self.members = len(members)
        self.stem = _GroupedConv([(m.conv1, m.bn1) for m in members], shared_input=True)
        self.blocks = nn.Sequential(*[GroupedBlock(list(blocks), _folded_conv, torch.channels_last)
                                      for layer in ("layer1", "layer2", "layer3")
                                      for blocks in zip(*(getattr(m, layer) for m in members))])
        self.register_buffer("fc_weight", torch.stack([m.linear.weight.detach() for m in members]))  # (M, K, C)
        self.register_buffer("fc_bias", torch.stack([m.linear.bias.detach() for m in members]))      # (M, K)

    @staticmethod
    def supports(members: list[nn.Module]) -> bool:
        return all(type(m) is CifarResNet for m in members)

    def forward(self, x):
        out = self.blocks(F.relu(self.stem(x.contiguous(memory_format=torch.channels_last))))
        pooled = out.mean((2, 3)).reshape(len(x), self.members, -1).transpose(0, 1)  # (M, B, C)
        return torch.baddbmm(self.fc_bias.unsqueeze(1), pooled, self.fc_weight.transpose(1, 2))
