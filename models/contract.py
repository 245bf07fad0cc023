"""The model contract: what every network of the zoo (`models.MODELS`) provides, and a check of it.

Every consumer of a model relies on this and on nothing else: the runner (training, `evaluate`, `save_model`),
the distillation methods (`methods/*.py`: their `student_taps` / `teacher_taps` name the features below),
`models.pretrained.load_teacher`, `models.fused.FusedResNetEnsemble`, the vmap'ed ensembles
(`runner/ensemble.py`) and KDFM's shared classifier (`methods/kdfm.py`).

A model (`Model`)
-----------------
* is built by its registry entry from `num_classes` alone (`build_model(name, num_classes)`), deterministically
  under a seed (`build_seeded`), and keeps that number as its attribute `num_classes`;
* `forward(x)`, x of shape (B, 3, 32, 32), returns `(logits, features)`: logits (B, num_classes) and a dict of
  named tensors, each with the batch as first dimension, computed in the autograd graph (the methods
  back-propagate through them; nothing is detached) and with no in-place activation, so a `_pre` tensor
  survives its ReLU (`check_model(..., graph=True)` probes the graph). The tap name `logits` (`LOGITS`) means
  the first return value, never a dict key;
* its parameter names are stable: a `state_dict` saved by `runner.train.save_model` loads into a fresh
  `build_model(arch, num_classes)` (that is how `load_teacher` reads a finished run).

A single-head model (`SingleHeadModel`): every plain network (ResNets of both shortcut options, the OEC-KD
width-scaled ResNets and DenseNets, DenseNets, MobileNet, CNN4, the CRD networks below). Its features are exactly
`FEATURES`:

  `stem_pre`, `stem`            the stem's output before / after its activation. DenseNets and the
                                pre-activation WRNs have no activation in the stem (the first BN-ReLU belongs
                                to the first layer), so there `stem` *is* `stem_pre`; everywhere else
                                `stem == relu(stem_pre)`;
  `stage1_pre`..`stage3_pre`    the output of each of the three stages before its last ReLU (ResNets: last
                                block before the ReLU; DenseNets: transition / final BN; MobileNet, CNN4: BN;
                                WRNs: the BN that follows the stage);
  `stage1`..`stage3`            the same after that ReLU, `stage<i> == relu(stage<i>_pre)`, 4-D maps whose grids
                                shrink or stay from stage1 to stage3: usually `stage1` at the input resolution
                                (32x32), `stage2` at half (16x16), `stage3` the last map before pooling (8x8;
                                MobileNet 2x2; VGG, ResNet-50, ShuffleNets 4x4; MobileNetV2 16, 8, 2);
  `pool`                        (B, C) = the global average of `stage3`, the classifier's input.

  and its classifier is the attribute `linear`, an `nn.Linear(C, num_classes)` with `logits == linear(pool)`:
  `load_teacher` reads the number of classes of a checkpoint from `linear.weight`, the fused ensemble stacks
  the members' `linear`, KDFM shares the teacher's `linear` (on the global average of its `stage3`) and folds
  its adapter into the student's `linear`.

The CIFAR networks of the CRD benchmark (Tian, Krishnan & Isola, ICLR 2020; HobbitLong/RepDistiller `models/`)
map onto these names as follows (f0, f1, ... = RepDistiller's `is_feat=True` feature list, `_pre` = its
`preact=True` list; details in each model file). Where a body has other than three stages: `stage1` = the last
32x32 map, `stage2` = the last 16x16 map, `stage3` = the map the pooling reads;
RepDistiller maps between those are inside the network but are not features:
  `resnet20/32/56/110`          RepDistiller's resnets are these option-B ResNets: stem f0, stage<i> f<i>;
  `resnet32x4`, `resnet8x4`     (models/resnet_x4.py) likewise: stem f0 (32 ch), stage1..3 f1..f3 (64, 128, 256);
  `wrn_40_2/16_2/40_1`          (models/wrn.py) stem = stem_pre = f0 (the stem conv); stage<i>_pre = BN(f<i>), the
                                BN after stage i (its preact f<i>); stage<i> its ReLU; 16k, 32k, 64k channels;
  `vgg13`, `vgg8`               (models/vgg.py) stem = block 0's first conv-BN(-ReLU); stage1 f0 (block 0, 64),
                                stage2 f1 (block 1, 128), stage3 f4 (block 4, 512 x 4 x 4); f2, f3 not features;
  `resnet50`                    (models/resnet_bottleneck.py) stem f0 (64); stage1 f1 (layer1, 256), stage2 f2
                                (layer2, 512), stage3 f4 (layer4, 2048 x 4 x 4); f3 (layer3) not a feature;
  `shufflev1`, `shufflev2`      (models/shufflenet.py) stem f0 (24 x 32 x 32), the only 32x32 map, so stage1 is
                                the stem (same tensors); stage2 f1 (240 / 116 x 16 x 16); stage3 v1 f3 (960 x 4 x
                                4), v2 the head conv 464 -> 1024 after f3 (1024 x 4 x 4); f2 not a feature;
  `mobilenetv2` (`mobile_half`) (models/mobilenetv2.py) its stem has stride 2, so no map is at 32x32: stage1
                                f1 (12 x 16 x 16), stage2 f2 (16 x 8 x 8), stage3 the 1x1 head conv (1280 x 2 x 2).

A multi-branch model (`MultiBranchModel`: OEC-KD's `oeckd_*`, EKD's `ekd<n>_*`): a shared stem and parallel
branches whose logits are averaged. It has no `linear` of its own; instead
* `branches`: an `nn.ModuleList`, each branch with its own `linear` (in `state_dict` as
  `branches.<j>.linear.weight`, which `load_teacher` also recognises) and `num_classes`;
* `forward_branches(x)` -> `(stem_features, [(logits_j, branch_features_j), ...])`, the stem features named
  `STEM_FEATURES`, each branch's `BRANCH_FEATURES`; `forward(x)` returns the mean of the branch logits and the
  features `multi_branch_features(n)`: the stem's, `logits_b<j>` and every branch's under a `b<j>_` prefix
  (1-based), since no single map stands for the ensemble;
* `member(j)`: stem + branch j as a network of its own (sharing the weights) whose `forward` returns the logits
  of branch j and the features `FEATURES` (a view: its `num_classes` and `linear` are those of `branches[j]`,
  it has no attributes of its own).
A method that trains a multi-branch model taps each branch (through `forward_branches`): its declared taps
name per-branch features (`stage3`, `pool`, `logits`), not the prefixed ones.

Wrappers are not zoo models: `models.pretrained.Renormalize` (a published teacher under another input
normalisation) forwards `num_classes` and `forward` but keeps the classifier at `.model.linear`; KDFM looks
through it (`methods.kdfm._classifier`), and `check_model` reports it as having no `linear`.

Taps (`TAP_NAMES`): `student_taps` / `teacher_taps` of a method are `logits` or names of `FEATURES`.

`check_model(model, num_classes)` runs one probe forward (batch 2, 3x32x32, eval mode, no gradient; for a
multi-branch model also `forward_branches` and the last member view) and raises `ModelContractError`
listing everything that does not hold.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F

LOGITS = "logits"
STAGES = ("stage1", "stage2", "stage3")
STEM_FEATURES = ("stem_pre", "stem")
BRANCH_FEATURES = ("stage1_pre", "stage1", "stage2_pre", "stage2", "stage3_pre", "stage3", "pool")
FEATURES = STEM_FEATURES + BRANCH_FEATURES
# what a method may declare in `student_taps` / `teacher_taps`: the first return value and the features of one
# network (for a multi-branch model, of each branch with the stem, as `forward_branches` gives them)
TAP_NAMES = frozenset(FEATURES) | {LOGITS}


def multi_branch_features(n_branches: int) -> tuple[str, ...]:
    """The feature names of a multi-branch model's `forward`: the stem's, then per branch j (1-based)
    `logits_b<j>` and `b<j>_<name>` for every name of `BRANCH_FEATURES`."""
    names = list(STEM_FEATURES)
    for j in range(1, n_branches + 1):
        names += [f"logits_b{j}"] + [f"b{j}_{k}" for k in BRANCH_FEATURES]
    return tuple(names)


@runtime_checkable
class Model(Protocol):
    """Every model of the zoo: `num_classes`, and `forward(x) -> (logits, features)`."""

    num_classes: int

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


@runtime_checkable
class SingleHeadModel(Model, Protocol):
    """A plain network: features `FEATURES`, classifier `linear` on `pool`."""

    linear: nn.Linear


@runtime_checkable
class MultiBranchModel(Model, Protocol):
    """A shared stem and parallel branches (OEC-KD, EKD): see the module docstring."""

    branches: nn.ModuleList

    def forward_branches(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor],
                                                         list[tuple[torch.Tensor, dict[str, torch.Tensor]]]]: ...

    def member(self, j: int) -> nn.Module: ...


class ModelContractError(ValueError):
    """A model does not provide what the contract of `models.contract` says every model provides."""


def is_multi_branch(model: nn.Module) -> bool:
    return isinstance(model, MultiBranchModel)


def expected_features(model: nn.Module) -> tuple[str, ...]:
    """The feature names `model.forward` must return."""
    if is_multi_branch(model):
        return multi_branch_features(len(model.branches))
    return FEATURES


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def _check_features(feats, names, batch: int, size: int, where: str, problems: list[str],
                    relations: bool = True) -> None:
    """Names and shapes of the features, and (`relations`) how the features of one network (a plain model, a
    branch with its stem, a member view) relate: ReLU twins, stage grids, `pool` = mean of `stage3`."""
    start = len(problems)
    if not isinstance(feats, dict):
        problems.append(f"{where}: features are a {type(feats).__name__}, not a dict of named tensors")
        return
    missing = [k for k in names if k not in feats]
    extra = [k for k in feats if k not in names]
    if missing:
        problems.append(f"{where}: features {missing} are missing")
    if extra:
        problems.append(f"{where}: undocumented features {extra} (document them in models/contract.py)")
    for k, v in feats.items():
        want = 2 if k.endswith("pool") or k.startswith("logits_b") else 4
        if not isinstance(v, torch.Tensor):
            problems.append(f"{where}: feature {k!r} is a {type(v).__name__}, not a tensor")
        elif v.dim() != want or v.shape[0] != batch:
            problems.append(f"{where}: feature {k!r} has shape {tuple(v.shape)}, expected "
                            + (f"(B={batch}, C)" if want == 2 else f"(B={batch}, C, H, W)"))
        elif not torch.isfinite(v).all():
            problems.append(f"{where}: feature {k!r} has non-finite values")
    if not relations or len(problems) > start:
        return
    for s in STAGES:
        if not _close(feats[s], F.relu(feats[f"{s}_pre"])):
            problems.append(f"{where}: {s} is not relu({s}_pre)")
    stem, stem_pre = feats["stem"], feats["stem_pre"]
    if stem is not stem_pre and not _close(stem, F.relu(stem_pre)):
        problems.append(f"{where}: stem is neither relu(stem_pre) nor stem_pre itself (a stem without activation)")
    if not any((feats[f"{s}_pre"] < 0).any() for s in STAGES):
        problems.append(f"{where}: no stage<i>_pre holds a negative value: did an in-place ReLU overwrite them?")
    h1, h2, h3 = (feats[s].shape[-1] for s in STAGES)
    if not size >= h1 >= h2 >= h3:
        problems.append(f"{where}: stage grids {h1}, {h2}, {h3} for a {size}x{size} input; expected them to "
                        f"shrink or stay, from at most {size}")
    if not _close(feats["pool"], feats["stage3"].mean((2, 3))):
        problems.append(f"{where}: pool is not the global average of stage3")


def _check_head(model, pool, logits, num_classes, where, problems) -> None:
    head = getattr(model, "linear", None)
    if not isinstance(head, nn.Linear):
        problems.append(f"{where}: no classifier `linear` (an nn.Linear), found {type(head).__name__}")
        return
    if head.out_features != num_classes:
        problems.append(f"{where}: linear has {head.out_features} outputs, expected {num_classes}")
    elif pool is not None and head.in_features != pool.shape[1]:
        problems.append(f"{where}: linear takes {head.in_features} inputs but pool has {pool.shape[1]}")
    elif pool is not None and not _close(head(pool), logits):
        problems.append(f"{where}: logits are not linear(pool)")


def _check_logits(logits, batch, num_classes, where, problems) -> bool:
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (batch, num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        problems.append(f"{where}: logits {shape}, expected ({batch}, {num_classes})")
        return False
    if not torch.isfinite(logits).all():
        problems.append(f"{where}: logits are not finite")
    return True


def _unpack(out, where, problems):
    if not (isinstance(out, tuple) and len(out) == 2):
        problems.append(f"{where}: forward returned {type(out).__name__}, expected a (logits, features) tuple")
        return None, None
    return out


def check_model(model: nn.Module, num_classes: int, *, batch: int = 2, size: int = 32, name: str | None = None,
                graph: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Check `model` against the contract with one probe forward (eval mode, no gradient; the model's mode is
    restored afterwards). `graph=True` runs the forward with autograd on and also checks that the logits and
    every feature are in the graph (nothing detached). Returns the probe's `(logits, features)`, detached;
    raises `ModelContractError` naming every violation."""
    where = name or type(model).__name__
    problems: list[str] = []
    if getattr(model, "num_classes", None) != num_classes:
        problems.append(f"{where}: num_classes is {getattr(model, 'num_classes', None)!r}, expected {num_classes}")
    n_params = sum(p.numel() for p in model.parameters())
    if n_params <= 0:
        problems.append(f"{where}: has no parameters")
    bad = [k for k, t in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        problems.append(f"{where}: non-finite values in {bad[:5]}")
    multi = is_multi_branch(model)
    if not multi and not isinstance(model, SingleHeadModel):
        problems.append(f"{where}: neither a single-head model (with `linear`) nor a multi-branch model "
                        "(with `branches`, `forward_branches`, `member`)")
    try:
        p = next(model.parameters())
        device, dtype = p.device, p.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    was_training = model.training
    model.eval()
    try:
        graph = graph and any(p.requires_grad for p in model.parameters())
        with torch.enable_grad() if graph else torch.no_grad():
            logits, feats = _unpack(model(x), where, problems)
        with torch.no_grad():
            if logits is not None and graph:
                for k, v in {LOGITS: logits, **(feats if isinstance(feats, dict) else {})}.items():
                    if isinstance(v, torch.Tensor) and not v.requires_grad:
                        problems.append(f"{where}: {k!r} is not in the autograd graph (detached?)")
                logits = logits.detach() if isinstance(logits, torch.Tensor) else logits
                if isinstance(feats, dict):
                    detached = {}  # keep identities: DenseNet's `stem` is its `stem_pre`
                    feats = {k: detached.setdefault(id(v), v.detach()) if isinstance(v, torch.Tensor) else v
                             for k, v in feats.items()}
            if logits is not None:
                _check_logits(logits, batch, num_classes, where, problems)
                _check_features(feats, expected_features(model), batch, size, where, problems,
                                relations=not multi)
                if not multi and not problems:
                    _check_head(model, feats["pool"], logits, num_classes, where, problems)
                if multi and not problems:
                    _check_multi_branch(model, x, logits, feats, num_classes, batch, size, where, problems)
    finally:
        model.train(was_training)
    if problems:
        raise ModelContractError(f"{where} violates the model contract (models/contract.py):\n  - "
                                 + "\n  - ".join(problems))
    return logits, feats


def _check_multi_branch(model, x, logits, feats, num_classes, batch, size, where, problems) -> None:
    """Each branch (with the shared stem) and each member view is a network of the contract; the model's
    logits are the mean of the branches'."""
    stem_feats, outs = model.forward_branches(x)
    if len(outs) != len(model.branches):
        problems.append(f"{where}: forward_branches gave {len(outs)} outputs for {len(model.branches)} branches")
        return
    for j, ((z, bf), branch) in enumerate(zip(outs, model.branches), start=1):
        w, start = f"{where} branch {j}", len(problems)
        if not _check_logits(z, batch, num_classes, w, problems):
            continue
        if getattr(branch, "num_classes", None) != num_classes:
            problems.append(f"{w}: num_classes is {getattr(branch, 'num_classes', None)!r}, expected {num_classes}")
        _check_features({**stem_feats, **bf}, FEATURES, batch, size, w, problems)
        if len(problems) > start:
            continue
        _check_head(branch, bf["pool"], z, num_classes, w, problems)
        if not _close(feats[f"logits_b{j}"], z):
            problems.append(f"{where}: logits_b{j} differs from branch {j}'s logits")
        if j != len(outs):
            continue  # member views are all of one class: the last (the smallest branch) keeps the probe cheap
        m_where = f"{where} member({j - 1})"
        m_logits, m_feats = _unpack(model.member(j - 1)(x), m_where, problems)
        if m_logits is not None:
            if not _close(m_logits, z):
                problems.append(f"{m_where}: does not compute branch {j}'s logits")
            _check_features(m_feats, FEATURES, batch, size, m_where, problems)
    if not problems and not _close(logits, torch.stack([z for z, _ in outs]).mean(0)):
        problems.append(f"{where}: logits are not the mean of the branch logits")
