"""Multi-branch students: one shared stem, several parallel branches, an ensemble of their logits.

Two systems of the project train such a network:
* OEC-KD (Walawalkar, Shen & Savvides, ECCV 2020): the original network is cut after its stem; branch j
  (j = 0..S-1) repeats everything after the stem with every layer's width int(C * (S - j) / S), at full depth.
  Branch 0 with the stem *is* the original network (the "pseudo teacher"); the others are compressed copies.
  Each stem + branch is a model the run delivers; the mean of all branches' logits is the "ensemble teacher".
  CIFAR ResNet (S = 5): stage widths (16,32,64), (12,25,51), (9,19,38), (6,12,25), (3,6,12), the stem keeping
  its 16 channels; DenseNet-BC-100 k=12: growth 12, 9, 7, 4, 2, the stem conv keeping 2 * 12 = 24 channels.
* EKD (Asif, Tang & Harrer, 2020; paper-inspired): N identical branches on one stem, one per teacher.

Each compressed OEC-KD student is also registered as a plain model (`resnet110_w80`: ResNet-110 at 80 % width
in every stage, stem kept at 16 channels; `densenet_bc100_w60`: growth 7, stem 24) so that `ce` can train it
alone: the paper's baselines. `w<p>` is the width rule int(C * p / 100), i.e. OEC-KD students 2..5 of S = 5 are
w80, w60, w40, w20. Their parameter names are those of the full-width model, which is why a standalone student
and a branch of the multi-branch net can exchange weights (`MultiBranchNet.load_member`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .densenet import DenseBody, DenseNet, DenseStem
from .resnet import BasicBlock, init_conv_bn

RESNET_WIDTHS = (16, 32, 64)
OEC_STUDENTS = 5                     # S of OEC-KD, the paper's chosen trade-off
OEC_PERCENTS = (100, 80, 60, 40, 20)  # (S - j) / S for S = 5
DENSE_GROWTH = 12


def scaled(channels: int, percent: int) -> int:
    """OEC-KD's width rule int(C * (S - j) / S), written with an integer percentage (exact, no float rounding)."""
    return channels * percent // 100




class ResNetStem(nn.Module):
    """conv3x3(3 -> width)-BN-ReLU: the common base of OEC-KD's ResNet students and of EKD's branches."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.out_channels = width
        init_conv_bn(self)

    def forward(self, x):
        pre = self.bn1(self.conv1(x))
        out = F.relu(pre)
        return out, {"stem_pre": pre, "stem": out}


class ResNetBranch(nn.Module):
    """The three stages of a CIFAR ResNet-(6n+2) and its classifier, fed by a stem of `in_planes` channels.

    Option-B BasicBlocks (the reference code's, and OEC-KD's): a 1x1-conv + BN projection wherever the shape
    changes, which includes the first block when the branch is narrower than the stem.
    """

    def __init__(self, depth: int, in_planes: int, widths: tuple[int, int, int], num_classes: int,
                 shortcut: str = "B"):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.depth, self.widths, self.num_classes = depth, tuple(widths), num_classes
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(in_planes, planes, 2 if (i > 0 and b == 0) else 1, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(widths[-1], num_classes)
        init_conv_bn(self)

    def forward_body(self, h):
        feats, out = {}, h
        for i, stage in enumerate((self.layer1, self.layer2, self.layer3), start=1):
            for block in stage[:-1]:
                out = block(out)
            pre = feats[f"stage{i}_pre"] = stage[-1].forward_pre(out)
            out = feats[f"stage{i}"] = F.relu(pre)
        pooled = feats["pool"] = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(pooled), feats

    def forward(self, h):
        return self.forward_body(h)


class ScaledResNet(ResNetBranch):
    """A standalone ResNet whose stages have `widths` but whose stem keeps `stem_width` channels.

    With widths (16, 32, 64) it is `CifarResNet` (option B) parameter for parameter, same names; narrower, it is
    an OEC-KD compressed student trained alone (the paper's baseline: base + branch j).
    """

    def __init__(self, depth: int, widths: tuple[int, int, int], num_classes: int = 10, stem_width: int = 16):
        super().__init__(depth, stem_width, widths, num_classes)
        self.conv1 = nn.Conv2d(3, stem_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        init_conv_bn(self.conv1)
        init_conv_bn(self.bn1)

    def forward(self, x):
        pre = self.bn1(self.conv1(x))
        out = F.relu(pre)
        logits, feats = self.forward_body(out)
        return logits, {"stem_pre": pre, "stem": out, **feats}


class MemberView(nn.Module):
    """Stem + one branch as a network of its own, sharing the weights of the multi-branch net (no copy).

    What a run evaluates and counts for one member: `count_parameters` sees exactly the stem and that branch.
    """

    def __init__(self, stem: nn.Module, branch: nn.Module):
        super().__init__()
        self.stem, self.branch = stem, branch

    def forward(self, x):
        h, feats = self.stem(x)
        logits, bf = self.branch(h)
        return logits, {**feats, **bf}


class MultiBranchNet(nn.Module):
    """A shared stem and parallel branches; `forward` returns the plain mean of the branches' logits.

    `forward_branches` gives the stem features and every branch's (logits, features) from one stem pass: what
    the training losses need. `forward` is the ensemble (OEC-KD's "ensemble teacher", EKD's output); its
    features are the stem's plus each branch's under a `b<j>_` prefix (1-based) and `logits_b<j>`, since no
    single map stands for the ensemble. `member_archs` (OEC-KD) names the standalone model equivalent to each
    stem + branch, so a run can start every member from its baseline's initial weights.
    """

    def __init__(self, stem: nn.Module, branches: list[nn.Module], member_archs: list[str] | None = None):
        super().__init__()
        self.stem = stem
        self.branches = nn.ModuleList(branches)
        self.member_archs = list(member_archs) if member_archs else None
        self.num_classes = branches[0].num_classes

    def forward_branches(self, x):
        h, stem_feats = self.stem(x)
        return stem_feats, [branch(h) for branch in self.branches]

    def forward(self, x):
        stem_feats, outs = self.forward_branches(x)
        feats = dict(stem_feats)
        for j, (logits, bf) in enumerate(outs, start=1):
            feats[f"logits_b{j}"] = logits
            feats.update({f"b{j}_{k}": v for k, v in bf.items()})
        return torch.stack([o[0] for o in outs]).mean(0), feats

    def member(self, j: int) -> MemberView:
        """Stem + branch j (0-based) as a network sharing these weights."""
        return MemberView(self.stem, self.branches[j])

    @torch.no_grad()
    def load_member(self, j: int, standalone: nn.Module, stem: bool) -> None:
        """Copy a standalone model's weights into branch j (and into the stem if `stem`).

        The standalone model's parameters split by name: the stem's names (`conv1`, `bn1`) and the branch's
        (everything else); a mismatch raises, never loads half a model."""
        state = standalone.state_dict()
        stem_keys = set(self.stem.state_dict())
        branch_state = {k: v for k, v in state.items() if k not in stem_keys}
        self.branches[j].load_state_dict(branch_state, strict=True)
        if stem:
            self.stem.load_state_dict({k: state[k] for k in stem_keys}, strict=True)


# ---- builders -----------------------------------------------------------------------------------------------
def scaled_resnet(depth: int, percent: int, num_classes: int) -> ScaledResNet:
    return ScaledResNet(depth, tuple(scaled(c, percent) for c in RESNET_WIDTHS), num_classes)


def scaled_densenet_bc(depth: int, percent: int, num_classes: int) -> DenseNet:
    return DenseNet(depth, scaled(DENSE_GROWTH, percent), True, num_classes, stem_channels=2 * DENSE_GROWTH)


def oeckd_member_archs(base: str) -> list[str]:
    """The standalone networks equal to the OEC-KD students of `base` (`resnet20` -> resnet20, resnet20_w80, ..)."""
    return [base if p == 100 else f"{base}_w{p}" for p in OEC_PERCENTS]


def oeckd_resnet(depth: int, num_classes: int) -> MultiBranchNet:
    branches = [ResNetBranch(depth, RESNET_WIDTHS[0], tuple(scaled(c, p) for c in RESNET_WIDTHS), num_classes)
                for p in OEC_PERCENTS]
    return MultiBranchNet(ResNetStem(RESNET_WIDTHS[0]), branches, oeckd_member_archs(f"resnet{depth}"))


def oeckd_densenet_bc(depth: int, num_classes: int) -> MultiBranchNet:
    stem = 2 * DENSE_GROWTH
    n = (depth - 4) // 6
    branches = [DenseBody(stem, scaled(DENSE_GROWTH, p), n, True, 0.5, num_classes) for p in OEC_PERCENTS]
    return MultiBranchNet(DenseStem(stem), branches, oeckd_member_archs(f"densenet_bc{depth}"))


def ekd_resnet(depth: int, n_branches: int, num_classes: int) -> MultiBranchNet:
    """EKD's default student [D]: a ResNet stem (16 ch) and `n_branches` full-width ResNet-`depth` branches."""
    branches = [ResNetBranch(depth, RESNET_WIDTHS[0], RESNET_WIDTHS, num_classes) for _ in range(n_branches)]
    return MultiBranchNet(ResNetStem(RESNET_WIDTHS[0]), branches)


RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)
EKD_BRANCHES = (2, 3, 4, 5)
EKD_DEPTHS = (8, 14, 20)

BUILDERS: dict = {}
for _d in RESNET_DEPTHS:
    for _p in OEC_PERCENTS[1:]:
        BUILDERS[f"resnet{_d}_w{_p}"] = lambda num_classes, d=_d, p=_p: scaled_resnet(d, p, num_classes)
    BUILDERS[f"oeckd_resnet{_d}"] = lambda num_classes, d=_d: oeckd_resnet(d, num_classes)
for _p in OEC_PERCENTS[1:]:
    BUILDERS[f"densenet_bc100_w{_p}"] = lambda num_classes, p=_p: scaled_densenet_bc(100, p, num_classes)
BUILDERS["oeckd_densenet_bc100"] = lambda num_classes: oeckd_densenet_bc(100, num_classes)
for _n in EKD_BRANCHES:
    for _d in EKD_DEPTHS:
        BUILDERS[f"ekd{_n}_resnet{_d}"] = lambda num_classes, d=_d, n=_n: ekd_resnet(d, n, num_classes)
