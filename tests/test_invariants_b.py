"""Properties of ft, rkd, ab, cc, irg that the golden vectors do not show: what makes each loss vanish, AB's
margin semantics, FT's two phases (only the paraphraser learns first, then it is frozen, also after a resume)
and how the extra stages scale with the protocol's epochs."""
from __future__ import annotations

import copy

import pytest
import torch

from data import Batch
from methods.ab import ab_loss
from methods.base import Context, StepInfo
from methods.cc import cc_loss
from methods.irg import irg_loss
from methods.rkd import rkd_loss
from models import build_model
from runner.spec import Protocol
from runner.train import build_method, make_optimizer

NUM_CLASSES = 10


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _pair(name, dataset="cifar10", epochs=2, batch=8, seed=0):
    torch.manual_seed(seed)
    student, teacher = build_model("resnet8", NUM_CLASSES), build_model("resnet8", NUM_CLASSES).eval()
    x = torch.randn(batch, 3, 16, 16, generator=_gen(seed))
    ctx = Context(num_classes=NUM_CLASSES, dataset=dataset, seed=seed, device=torch.device("cpu"),
                  train_labels=torch.arange(32) % NUM_CLASSES, epochs=epochs, generator=_gen(1))
    method = build_method(name, {}, student, teacher, ctx, x[:2])
    return method, Batch(x, torch.arange(batch) % NUM_CLASSES, torch.arange(batch))


def _step(method, batch, stage, total=3):
    optimizer = make_optimizer(list(method.stage_parameters(stage)), Protocol(epochs=2, batch_size=8), stage)
    method.train(True)
    return method.train_step(batch, StepInfo(0, total, stage, 0), optimizer), optimizer


# ---- relation losses: zero exactly when the student reproduces the teacher ----------------------------------
def test_rkd_cc_zero_iff_equal():
    f = torch.randn(8, 64, generator=_gen())
    g = torch.randn(8, 64, generator=_gen(1))
    for loss in (rkd_loss, cc_loss):
        assert float(loss(f, f.clone())) == pytest.approx(0.0, abs=1e-10)
        assert float(loss(g, f)) > 0
    # RKD is scale-invariant in distances and angles: a scaled copy of the teacher costs nothing.
    assert float(rkd_loss(3.0 * f, f)) == pytest.approx(0.0, abs=1e-6)


def test_irg_zero_iff_equal():
    r = lambda *shape, s: torch.rand(*shape, generator=_gen(s))
    t = (r(8, 32, 4, 4, s=0), r(8, 64, 2, 2, s=1), r(8, 64, s=2), torch.randn(8, 10, generator=_gen(3)))
    s = tuple(v.clone() for v in t)
    assert float(irg_loss(*s, *t)) == pytest.approx(0.0, abs=1e-10)
    for i in range(4):  # each of vertex, edges (maps and feature) and transformation contributes
        moved = list(s)
        moved[i] = moved[i] + torch.rand(moved[i].shape, generator=_gen(10 + i))
        assert float(irg_loss(*moved, *t)) > 0, i


# ---- AB: the margin loss -----------------------------------------------------------------------------------
def test_ab_margin_semantics():
    m = 2.0
    t = torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0, 0.5])
    # beyond the margin on the teacher's side (s <= -m where t <= 0, s >= m where t > 0): no loss
    s_ok = torch.tensor([-2.0, -5.0, -3.0, 2.0, 7.0, 2.5])
    assert float(ab_loss(s_ok, t, m)) == 0.0
    # inside the margin: (s + m)^2 where the teacher is off, (s - m)^2 where it is on; mean over elements
    s = torch.tensor([-1.0, 0.0, 1.0, 1.0, -1.0, 2.0])
    expected = torch.tensor([1.0, 4.0, 9.0, 1.0, 9.0, 0.0]).mean()
    assert float(ab_loss(s, t, m)) == pytest.approx(float(expected))
    # gradient pushes a wrong-side student towards the margin and is zero once it is beyond
    s = torch.tensor([0.5, 3.0], requires_grad=True)
    ab_loss(s, torch.tensor([-1.0, 1.0]), m).backward()
    assert s.grad[0] > 0 and s.grad[1] == 0


def test_ab_stages_and_losses():
    method, batch = _pair("ab")
    init, main = method.stages(Protocol(epochs=2))
    losses, _ = _step(method, batch, init)
    assert set(losses) == {"ce", "ab"} and float(losses["ce"]) == 0.0 and float(losses["ab"]) > 0
    losses, _ = _step(method, batch, main)
    assert set(losses) == {"ce"}


# ---- FT: pre-training touches only the paraphraser, then it is frozen ---------------------------------------
def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_ft_pretrain_updates_only_paraphraser():
    method, batch = _pair("ft")
    pretrain, main = method.stages(Protocol(epochs=2))
    assert pretrain.role == "pretrain" and dict(pretrain.optimizer) == {"nesterov": False, "weight_decay": 1e-4}
    student, para, trans = _state(method.student), _state(method.extra["paraphraser"]), \
        _state(method.extra["translator"])
    losses, optimizer = _step(method, batch, pretrain)
    assert set(losses) == {"para"}
    ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert ids == {id(p) for p in method.extra["paraphraser"].parameters()}
    assert _same(student, _state(method.student)), "the student (weights and BN statistics) must not move"
    assert _same(trans, _state(method.extra["translator"]))
    assert not _same(para, _state(method.extra["paraphraser"]))


def _assert_frozen(method, optimizer):
    para = method.extra["paraphraser"]
    assert all(not p.requires_grad for p in para.parameters())
    assert not para.training, "the paraphraser stays in eval mode (BN statistics fixed) in the main stage"
    ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not ids & {id(p) for p in para.parameters()}
    assert {id(p) for p in method.extra["translator"].parameters()} <= ids


def test_ft_paraphraser_frozen_after_switch_and_resume():
    method, batch = _pair("ft")
    pretrain, main = method.stages(Protocol(epochs=2))
    _step(method, batch, pretrain)
    para = _state(method.extra["paraphraser"])
    losses, optimizer = _step(method, batch, main)
    assert set(losses) == {"ce", "ft"}
    _assert_frozen(method, optimizer)
    assert _same(para, _state(method.extra["paraphraser"])), "a frozen paraphraser does not change"

    # a resumed run rebuilds the method (fresh modules, requires_grad True) and loads the saved state
    resumed, _ = _pair("ft")
    resumed.student.load_state_dict(copy.deepcopy(method.student.state_dict()))
    resumed.load_state_dict(copy.deepcopy(method.state_dict()))
    _, optimizer = _step(resumed, batch, main)
    _assert_frozen(resumed, optimizer)
    assert _same(para, _state(resumed.extra["paraphraser"]))


def test_ft_batchnorm_only_on_cifar10():
    bn = lambda m: any(isinstance(x, torch.nn.BatchNorm2d) for x in m.extra.modules())
    assert bn(_pair("ft", "cifar10")[0]) and not bn(_pair("ft", "cifar100")[0])


# ---- stage lengths ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,first", [("ft", 30), ("ab", 50)])
def test_stage_lengths_scale(name, first):
    method, _ = _pair(name)
    assert [s.epochs for s in method.stages(Protocol(epochs=200))] == [first, 200]
    assert [s.epochs for s in method.stages(Protocol(epochs=2))] == [1, 2]


def test_stage_learning_rates():
    ft, _ = _pair("ft")
    pre = ft.stages(Protocol(epochs=200))[0]
    assert [pre.lr_at(e) for e in (0, 29)] == pytest.approx([0.01, 0.01])
    ab, _ = _pair("ab")
    init = ab.stages(Protocol(epochs=200))[0]
    assert [init.lr_at(e) for e in (0, 29, 30, 39, 40, 49)] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4])
    assert ab.stages(Protocol(epochs=2))[0].lr_at(0) == pytest.approx(1e-2)
