"""The model contract (`models/contract.py`) over EVERY registered model, the published parameter counts, and
every method's declared taps on every network it trains or distils from.

Models come from `models.MODELS` and methods from `methods.REGISTRY`: a new entry is tested without touching this
file, and a model of a family this file does not know fails until its feature names are documented here.
"""
from __future__ import annotations

import functools
import re

import pytest
import torch
import torch.nn as nn

from methods import REGISTRY, get_method
from models import MODELS, build_model, count_parameters
from models.contract import (FEATURES, LOGITS, TAP_NAMES, ModelContractError, MultiBranchModel, SingleHeadModel,
                             check_model)

NAMES = list(MODELS)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batch-2 probes gain nothing from intra-op threads, and on a busy 2-core machine the threads' spin-waits
    made this file several times slower; the previous setting is restored for the other test files."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# the documented feature names, written out here independently of models/contract.py
PLAIN = ("stem_pre", "stem", "stage1_pre", "stage1", "stage2_pre", "stage2", "stage3_pre", "stage3", "pool")
BRANCH = PLAIN[2:]
# the CRD benchmark's networks (models/contract.py): resnet<d>x4, resnet50 (in resnet\d+), wrn_<d>_<k>, vgg<d>,
# shufflev1/v2 are plain networks with the same feature names
PLAIN_FAMILIES = (r"resnet\d+(_a|_w\d+|x4)?|densenet(_bc)?\d+(_w\d+)?|mobilenet(v2)?|cnn4"
                  r"|wrn_\d+_\d+|vgg\d+|shufflev[12]")


def family(name: str) -> tuple[str, int]:
    """('plain', 1) or ('multi', number of branches), from the registered name."""
    if re.fullmatch(PLAIN_FAMILIES, name):
        return "plain", 1
    if re.fullmatch(r"oeckd_(resnet\d+|densenet_bc\d+)", name):
        return "multi", 5  # OEC-KD's S = 5 students
    m = re.fullmatch(r"ekd(\d+)_resnet\d+", name)
    if m:
        return "multi", int(m.group(1))
    raise AssertionError(f"{name!r} belongs to no documented family: document its features in "
                         "models/contract.py and in tests/test_model_contract.py")


def expected_names(name: str) -> set[str]:
    kind, n = family(name)
    if kind == "plain":
        return set(PLAIN)
    names = {"stem_pre", "stem"}
    for j in range(1, n + 1):
        names |= {f"logits_b{j}"} | {f"b{j}_{k}" for k in BRANCH}
    return names


# Parameter counts a source gives: (classes, value, decimals of millions; None = exact count)
KNOWN_COUNTS = {
    # Kang & Gwak 2020, Table 2 ("Param (MB)" = millions, 2 decimals): the paper's option-B student and teacher
    "resnet20": [(10, 0.27, 2), (100, 0.28, 2)],
    "resnet110": [(10, 1.73, 2), (100, 1.74, 2)],
    # He et al. 2016 Table 6 = akamaster/pytorch_resnet_cifar10 README (option A); exact counts of its code
    "resnet20_a": [(10, 269_722, None), (10, 0.27, 2)],
    "resnet32_a": [(10, 0.46, 2)],
    "resnet44_a": [(10, 0.66, 2)],
    "resnet56_a": [(10, 853_018, None), (10, 0.85, 2)],
    "resnet110_a": [(10, 1.7, 1)],
    # Huang et al. 2017, Table 2 (CIFAR, 1 decimal); exact counts pinned so a change of layout is noticed
    "densenet40": [(10, 1.0, 1), (10, 1_019_722, None)],
    "densenet100": [(10, 7.0, 1), (10, 6_979_642, None)],
    "densenet_bc100": [(10, 0.8, 1), (10, 769_162, None)],
    # kuangliu/pytorch-cifar's CIFAR MobileNet v1 (models/mobilenet.py docstring), our 4-layer CNN [D]
    "mobilenet": [(10, 3_217_226, None), (100, 3.31, 2)],
    "cnn4": [(10, 964_170, None)],
    # EKD's default student (README: 0.23 M at 10 classes)
    "ekd3_resnet8": [(10, 0.23, 2)],
}


def test_known_counts_name_registered_models():
    assert set(KNOWN_COUNTS) <= set(MODELS)


def heads(model: nn.Module) -> list[nn.Module]:
    return list(model.branches) if isinstance(model, MultiBranchModel) else [model]


# feature names seen by the contract probes, reused by the taps test below (one forward per architecture)
SEEN: dict[str, frozenset[str]] = {}


def check_counts(name: str, model: nn.Module, classes: int) -> None:
    n_params = count_parameters(model)
    assert 0 < n_params < float("inf")
    for c, value, decimals in KNOWN_COUNTS.get(name, []):
        if c == classes:
            got = n_params if decimals is None else round(n_params / 1e6, decimals)
            assert got == value, f"{name} at {classes} classes: {n_params:,} parameters, a source gives {value}"


def check_contract(name: str, classes: int) -> None:
    model = build_model(name, classes)
    kind, n = family(name)
    assert isinstance(model, MultiBranchModel if kind == "multi" else SingleHeadModel), type(model).__name__
    if kind == "multi":
        assert len(model.branches) == n
    logits, feats = check_model(model, classes, name=name, graph=True)  # raises naming what is wrong
    assert tuple(logits.shape) == (2, classes)
    assert set(feats) == expected_names(name)
    for k, v in feats.items():
        assert v.dim() == (2 if k.endswith("pool") or k.startswith("logits_b") else 4), (k, tuple(v.shape))
    for head in heads(model):  # the classifier accessor
        assert isinstance(head.linear, nn.Linear) and head.linear.out_features == classes
    assert all(torch.isfinite(p).all() for p in model.parameters())
    check_counts(name, model, classes)
    SEEN[name] = frozenset(feats)


@pytest.mark.parametrize("name", NAMES)
def test_contract_10_classes(name):
    check_contract(name, 10)


@pytest.mark.parametrize("name", NAMES)
def test_contract_100_classes(name):
    """Probed at 100 classes where cheap (single networks under 1 M parameters); for the others, where 100
    classes changes only the classifiers, checked without a forward: every `linear` grows by 90 rows."""
    big = build_model(name, 100)
    if family(name)[0] == "plain" and count_parameters(big) < 1_000_000:
        check_contract(name, 100)
        return
    small = build_model(name, 10)
    assert big.num_classes == 100
    assert all(h.num_classes == 100 and h.linear.out_features == 100 for h in heads(big))
    grow = sum(90 * (h.linear.in_features + 1) for h in heads(big))
    assert count_parameters(big) - count_parameters(small) == grow
    check_counts(name, big, 100)


def test_check_model_names_what_is_wrong():
    model = build_model("resnet8", 10)
    with pytest.raises(ModelContractError, match="num_classes is 10, expected 100"):
        check_model(model, 100)

    class Bad(nn.Module):  # features missing, an in-place ReLU, no classifier
        num_classes = 10

        def __init__(self):
            super().__init__()
            self.net = build_model("resnet8", 10)

        def forward(self, x):
            logits, feats = self.net(x)
            feats = {k: v for k, v in feats.items() if k != "stage2_pre"}
            feats["stage3_pre"] = feats["stage3"]
            return logits, feats

    with pytest.raises(ModelContractError) as err:
        check_model(Bad(), 10)
    text = str(err.value)
    assert "['stage2_pre'] are missing" in text and "`linear`" in text

    class Detached(nn.Module):  # a feature cut from the graph: a method would distil into nothing
        num_classes = 10

        def __init__(self):
            super().__init__()
            self.net = build_model("resnet8", 10)
            self.linear = self.net.linear

        def forward(self, x):
            logits, feats = self.net(x)
            return logits, {**feats, "stage2": feats["stage2"].detach()}

    check_model(Detached(), 10)  # without `graph` the probe runs under no_grad and cannot tell
    with pytest.raises(ModelContractError, match="'stage2' is not in the autograd graph"):
        check_model(Detached(), 10, graph=True)
    model.train()
    check_model(model, 10, graph=True)
    assert model.training, "check_model restores the model's mode"


def test_contract_constants_are_the_documented_names():
    assert FEATURES == PLAIN
    assert TAP_NAMES == set(PLAIN) | {LOGITS}


# ---- every method's declared taps exist on every network it trains or distils from --------------------------
STUDENT, TEACHER = "resnet20", "resnet110"  # the benchmark's pair (Kang & Gwak)
# Other (student, teacher) pairs a method states it supports (no method declares this in code; from their
# docstrings): OEC-KD compresses any CIFAR ResNet depth and DenseNet-BC-100 (paper Table 1), KDFM's paper pairs.
OTHER_PAIRS = {
    "oeckd": [("resnet110", None), ("densenet_bc100", None)],
    "kdfm": [("cnn4", "densenet40"), ("mobilenet", "densenet100")],
}


@functools.cache
def tappable(arch: str) -> frozenset[str]:
    """The names a method can tap on `arch`: `logits` and the features of one network; for a multi-branch
    model, those of each branch with the stem (methods read them through `forward_branches`): the stem's names
    and the `b<j>_` names present for every branch j. From the contract probe's features when it ran."""
    if arch not in SEEN:
        with torch.no_grad():
            SEEN[arch] = frozenset(build_model(arch, 10).eval()(torch.randn(2, 3, 32, 32))[1])
    names = SEEN[arch]
    per_branch = {}
    for k in names:
        m = re.fullmatch(r"b(\d+)_(.+)", k)
        if m:
            per_branch.setdefault(m.group(1), set()).add(m.group(2))
    if per_branch:  # a multi-branch model
        return frozenset(set.intersection(*per_branch.values()) | {k for k in names if k.startswith("stem")}
                         | {LOGITS})
    return names | {LOGITS}


def method_networks(name: str) -> tuple[list[str], list[str]]:
    """(students, teachers): every network `name` trains and every network it distils from."""
    cls = get_method(name)
    hp = cls.resolve_hparams({}, "cifar10")
    pairs = [(STUDENT, TEACHER if cls.needs_teacher else None)] + OTHER_PAIRS.get(name, [])
    students = [cls.student_arch(hp, s) for s, _ in pairs]
    if "peer" in hp:  # DML trains a peer beside the student, tapped the same way
        students.append(hp["peer"])
    teachers = [t for _, t in pairs if t] + list(cls.teacher_archs(hp))
    return list(dict.fromkeys(students)), list(dict.fromkeys(teachers))


@pytest.mark.parametrize("name", list(REGISTRY))
def test_declared_taps_exist_on_every_network_the_method_uses(name):
    cls = get_method(name)
    students, teachers = method_networks(name)
    hp = cls.resolve_hparams({}, "cifar10")
    for arch in students + teachers + list(cls.baseline_archs(hp, STUDENT)):
        assert arch in MODELS, f"{name} plans {arch!r}, which is not a registered model"
    assert set(cls.student_taps) <= TAP_NAMES and set(cls.teacher_taps) <= TAP_NAMES, "taps outside the contract"
    if not cls.needs_teacher:
        assert not cls.teacher_taps, f"{name} needs no teacher but declares teacher taps {cls.teacher_taps}"
    elif cls.kind != "baseline":
        assert cls.teacher_taps, f"{name} distils from a teacher but declares no teacher tap"
    for arch in students:
        missing = set(cls.student_taps) - tappable(arch)
        assert not missing, f"{name}: student {arch} has no {sorted(missing)}"
    for arch in teachers:
        missing = set(cls.teacher_taps) - tappable(arch)
        assert not missing, f"{name}: teacher {arch} has no {sorted(missing)}"
