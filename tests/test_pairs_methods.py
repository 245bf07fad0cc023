"""Every method on every pair of the CRD benchmark (runner/pairs.py): what `exclusions` keeps builds as the runner
builds it and trains; what it leaves out for its shapes fails; the shape adapters of FitNet, AB, AT, NST, VID
and FT (after RepDistiller) appear only where the pair's shapes differ, so equal-shape runs stay as they were.

Cost: 13 pairs x ~25 methods on a CPU, ResNet-50 and VGG-13 among the teachers. Each teacher is built once per
pair (a module-scoped fixture) and its forward on the batch computed once, handed to every method through
`Method.teacher_cache` as a cohort does (runner/cohort.py); students are copied from one template per
architecture; 4 images. A method without a teacher (DML) runs on the first pair of each student only: the
teacher is all that differs between those pairs. The teachers' BatchNorm statistics are set from the batch
(a random network in eval mode has stage-3 activations of 1e8 in ResNet-110; a trained one does not).
FT's paraphraser pre-training is not stepped (see `_train`).
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.seeding import seeded
from data import Batch
from methods import REGISTRY, get_method
from methods.at import at_loss, match_spatial
from methods.base import Context, StepInfo
from methods.fitnet import fitnet_loss
from methods.ft import ft_loss
from methods.nst import nst_loss
from methods.base import make_optimizer
from methods.testing import CheckProtocol
from methods.vid import vid_loss
from models import build_model
from runner.pairs import CRD_PAIRS, PRE, STAGES, exclusions, feature_shapes

ALL = [m for m in REGISTRY if m != "ce"]
SHAPE_BOUND = {"fsp", "ofd", "afd", "irg"}  # left out for their shapes: built anyway, they fail
ADAPTED = ("fitnet", "ab", "at", "nst", "vid", "ft")
BATCH = 4
FIRST_PAIR_OF = {}  # student -> the first pair training it: where the teacher-free methods run
for _pair in CRD_PAIRS:
    FIRST_PAIR_OF.setdefault(_pair[1], _pair)


pytestmark = pytest.mark.usefixtures("one_thread")  # small batches: threads only add overhead (conftest)


def _calibrated(arch: str, x: torch.Tensor) -> nn.Module:
    """A random `arch` in eval mode whose BatchNorm statistics are those of `x` (one forward, cumulative
    averages), so its features have the scale of a trained network's."""
    torch.manual_seed(0)
    net = build_model(arch, 100)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    with torch.no_grad():
        net.train()(x)
    for bn in bns:
        bn.momentum = 0.1
    return net.eval()


class PairKit:
    """What every method of one pair shares: the batch, the teacher and its output on the batch, and a
    template student per architecture."""

    def __init__(self, pair):
        self.pair = pair
        self.x = torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        self.y = torch.arange(BATCH)
        self.teacher = _calibrated(pair[0], self.x)
        with torch.no_grad():
            self.t_out = self.teacher(self.x)
        self._students = {}

    def student(self, arch: str) -> tuple[nn.Module, dict]:
        """A fresh copy of the template `arch` and the features of its dry run on the runner's 2-image probe
        (eval mode: the copy would give the same)."""
        if arch not in self._students:
            torch.manual_seed(1)
            net = build_model(arch, 100).eval()
            with torch.no_grad():
                self._students[arch] = net, net(self.x[:2])[1]
        net, feats = self._students[arch]
        return copy.deepcopy(net), feats

    def cache(self, method, x):
        """`Method.teacher_cache`: the teacher's output when asked for this batch (a cohort's rule)."""
        return self.t_out if x is self.x else None


@pytest.fixture(scope="module", params=CRD_PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def kit(request):
    return PairKit(request.param)


def _build(kit: PairKit, name: str):
    """`name` built as `runner.train.build_method` builds it (`setup` on the features of the runner's 2-image probe
    in eval mode, under the seed of (seed, "extra", name)), the features taken from the pair's one teacher forward
    and the template student's dry run (`methods.testing.make_pair` repeats these lines too)."""
    cls = get_method(name)
    hp = cls.resolve_hparams({}, "cifar100")
    student, s_feats = kit.student(cls.student_arch(hp, kit.pair[1]))
    ctx = Context(num_classes=100, dataset="cifar100", seed=0, device=torch.device("cpu"),
                  train_labels=torch.arange(64) % 100, epochs=2, generator=torch.Generator().manual_seed(1))
    m = cls(student, kit.teacher if cls.needs_teacher else None, hp, ctx)
    t_feats = {k: v[:2] for k, v in kit.t_out[1].items()} if cls.needs_teacher else None
    with seeded(ctx.seed, "extra", name):
        m.setup(s_feats, t_feats)
    m.teacher_cache = kit.cache
    return m


def _train(m, kit: PairKit) -> list[dict]:
    """One step in each stage that trains the student, with the stage's own SGD, as the runner. (FT's paraphraser
    pre-training reads the teacher alone: it is the same on every pair of a teacher, and on ResNet-50 its 2048-
    channel autoencoder is the costliest step of all.)"""
    protocol = CheckProtocol(epochs=2, batch_size=BATCH)
    stages = m.stages(protocol)
    student = {id(p) for p in m.student.parameters()}
    out = []
    for stage in stages:
        params = list(m.stage_parameters(stage))
        if not any(id(p) in student for p in params):
            continue
        optimizer = make_optimizer(params, protocol, stage)
        m.train(True)
        out.append(m.train_step(Batch(kit.x, kit.y, kit.y), StepInfo(0, sum(s.epochs for s in stages), stage, 0, 0),
                                optimizer))
    return out


def _adapters(name: str, pair) -> set[str]:
    """The extra modules an adapted method must hold on `pair`: its adapters only where the shapes differ."""
    s, t = feature_shapes(pair[1]), feature_shapes(pair[0])
    return {"fitnet": {"regressor"} if s["stage3"] != t["stage3"] else set(),
            "ab": {k for k in PRE if s[k] != t[k]},
            "vid": set(STAGES), "ft": {"paraphraser", "translator"}, "at": set(), "nst": set()}[name]


def test_every_kept_method_trains_a_step(kit):
    """Every method `exclusions` keeps on the pair: built, one step in each stage that trains the student with a
    real optimiser, finite losses, a changed student, adapters where (and only where) shapes differ; the
    shape-bound methods it leaves out fail when built and trained anyway."""
    left_out = exclusions(kit.pair, ALL)
    failures = []
    for name in ALL:
        if name in left_out:
            if name in SHAPE_BOUND:  # the reason is a real one
                try:
                    with warnings.catch_warnings():  # FSP's mse_loss warns of the shapes before it fails
                        warnings.simplefilter("ignore")
                        _train(_build(kit, name), kit)
                    failures.append(f"{name}: left out ({left_out[name]}) but trains")
                except (RuntimeError, ValueError):
                    pass
            continue
        if not get_method(name).needs_teacher and FIRST_PAIR_OF[kit.pair[1]] != kit.pair:
            continue
        try:
            m = _build(kit, name)
            before = [p.detach().clone() for p in m.student.parameters()]
            steps = _train(m, kit)
            bad = {k: float(v) for losses in steps for k, v in losses.items() if not torch.isfinite(v).all()}
            if not steps or not all(steps) or bad:
                failures.append(f"{name}: losses {steps}")
            if all(torch.equal(a, b) for a, b in zip(before, m.student.parameters())):
                failures.append(f"{name}: the student did not change")
            want = _adapters(name, kit.pair) if name in ADAPTED else None
            if want is not None and set(m.extra) != want:
                failures.append(f"{name}: extra modules {sorted(m.extra)}, expected {sorted(want)}")
        except Exception as e:  # collected, so one run names every method that fails on the pair
            failures.append(f"{name}: {type(e).__name__}: {e}")
    assert not failures, f"{kit.pair}:\n" + "\n".join(failures)


# --- equal shapes: nothing changes --------------------------------------------------------------------------

def _feats(arch: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(2, *shape, generator=g).relu() for k, shape in feature_shapes(arch).items()}


def _setup(name: str, pair):
    """The method built on random features of the pair's shapes (no networks: only `setup` reads them)."""
    s_feats, t_feats = _feats(pair[1], 0), _feats(pair[0], 1)
    m = get_method(name)(nn.Identity(), nn.Identity(), {}, Context(
        num_classes=100, dataset="cifar100", seed=0, device=torch.device("cpu"), train_labels=torch.zeros(1),
        epochs=2))
    torch.manual_seed(0)
    m.setup(s_feats, t_feats)
    return m, s_feats, t_feats


@pytest.mark.parametrize("name", ADAPTED)
def test_no_adapter_and_the_same_loss_on_equal_shapes(name):
    """On the paper's resnet110 -> resnet20 (every tap of equal shape) the adapted methods build the modules they
    built before and no more, and their loss is the pure loss on the raw features: Table 1 runs are untouched."""
    m, s, t = _setup(name, ("resnet110", "resnet20"))
    assert set(m.extra) == {"vid": set(STAGES), "ft": {"paraphraser", "translator"}}.get(name, set())
    info = None
    if name == "fitnet":
        got, want = m.distill(None, s, None, t, None, info)["fitnet"], 0.1 * fitnet_loss(s["stage3"], t["stage3"])
    elif name == "ab":
        assert all(m.connect(k, s[k]) is s[k] for k in PRE)
        return
    elif name == "at":
        got = m.distill(None, s, None, t, None, info)["at"]
        want = 1000 * torch.stack([at_loss(s[k], t[k]) for k in STAGES]).mean()
    elif name == "nst":
        got, want = m.distill(None, s, None, t, None, info)["nst"], 10 * nst_loss(s["stage3"], t["stage3"])
    elif name == "vid":
        got = m.distill(None, s, None, t, None, info)["vid"]
        want = torch.stack([vid_loss(m.extra[k](s[k]), t[k], m.extra[k].alpha) for k in STAGES]).mean()
    else:
        got = m.distill(None, s, None, t, None, info)["ft"]
        with torch.no_grad():
            factor_t = m.extra["paraphraser"].encoder(t["stage3"])
        want = 200 * ft_loss(m.extra["translator"](s["stage3"]), factor_t)
    assert torch.equal(got, want)


def test_match_spatial_pools_the_larger_map_and_leaves_equal_ones():
    big, small = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)
    s, t = match_spatial(big, small)
    assert t is small and torch.allclose(s, F.avg_pool2d(big, 2))
    s, t = match_spatial(small, big)
    assert s is small and torch.allclose(t, F.avg_pool2d(big, 2))
    other = torch.randn(2, 7, 4, 4)
    s, t = match_spatial(small, other)
    assert s is small and t is other


@pytest.mark.parametrize("pair", [("wrn_40_2", "wrn_40_1"), ("vgg13", "mobilenetv2"), ("resnet32x4", "shufflev1")],
                         ids=lambda p: f"{p[0]}-{p[1]}")
def test_adapters_reach_the_teachers_shape(pair):
    """Where shapes differ, FitNet's regressor and AB's connectors (RepDistiller's ConvReg) give the teacher's
    (C, H, W) and the pooled losses compare maps of one grid."""
    m, s, t = _setup("fitnet", pair)
    assert m.extra["regressor"](s["stage3"]).shape == t["stage3"].shape
    assert torch.isfinite(m.distill(None, s, None, t, None, None)["fitnet"])
    m, s, t = _setup("ab", pair)
    assert set(m.extra) and all(m.connect(k, s[k]).shape == t[k].shape for k in PRE)
    for name in ("at", "nst", "vid", "ft"):
        m, s, t = _setup(name, pair)
        assert torch.isfinite(m.distill(None, s, None, t, None, None)[name]), name
