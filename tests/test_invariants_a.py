"""Properties the losses of at, fitnet, nst, pkt, fsp and sp must have whatever the inputs (not only on the
golden vectors): zero with a zero gradient when the student reproduces the teacher, positive otherwise, the
scale invariances their normalisations were designed for, the reference's stage aggregation and weight, and
FSP's two-stage schedule."""
from __future__ import annotations

import copy

import pytest
import torch

from data import Batch
from methods.at import AT, at_loss
from methods.base import Context, StepInfo
from methods.fitnet import FitNet, fitnet_loss
from methods.fsp import FSP, fsp_loss
from methods.nst import NST, nst_loss
from methods.pkt import PKT, pkt_loss
from methods.sp import SP, sp_loss
from models import build_model
from runner.spec import Protocol
from runner.train import make_optimizer


def _maps(shape, seed, relu=True, dtype=torch.float64):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return x.relu() if relu else x


def _call(name, s, t):
    """The pure loss of `name` on student tensors `s` and teacher tensors `t` (tuples for FSP's layer pair)."""
    fns = {"at": at_loss, "fitnet": fitnet_loss, "nst": nst_loss, "pkt": pkt_loss, "sp": sp_loss}
    if name == "fsp":
        return fsp_loss(s[0], s[1], t[0], t[1])
    return fns[name](s, t)


def _inputs(name, seed, relu=True, dtype=torch.float64):
    if name == "pkt":
        return _maps((8, 64), seed, relu, dtype)
    if name == "fsp":
        return (_maps((4, 16, 8, 8), seed, relu, dtype), _maps((4, 32, 4, 4), seed + 100, relu, dtype))
    return _maps((4, 32, 4, 4), seed, relu, dtype)


def _perturb(x, seed):
    if isinstance(x, tuple):
        return tuple(_perturb(v, seed + i) for i, v in enumerate(x))
    return x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


def _requires_grad(x):
    if isinstance(x, tuple):
        return tuple(_requires_grad(v) for v in x)
    return x.clone().requires_grad_(True)


def _leaves(x):
    return list(x) if isinstance(x, tuple) else [x]


NAMES = ["at", "fitnet", "nst", "pkt", "fsp", "sp"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "signed"])
@pytest.mark.parametrize("name", NAMES)
def test_zero_with_zero_gradient_when_student_equals_teacher(name, relu, dtype):
    t = _inputs(name, 1, relu, dtype)
    s = _requires_grad(t)
    loss = _call(name, s, t)
    assert abs(loss.item()) <= 1e-7, loss.item()
    grads = torch.autograd.grad(loss, _leaves(s))
    # a minimum: no pull on the student (PKT's eps inside the log leaves a residue of order eps / B^2)
    assert all(float(g.abs().max()) <= 1e-6 for g in grads), [float(g.abs().max()) for g in grads]


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "signed"])
@pytest.mark.parametrize("name", NAMES)
def test_positive_when_student_differs(name, relu):
    t = _inputs(name, 1, relu)
    s = _inputs(name, 2, relu)
    assert float(_call(name, s, t)) > 1e-6
    assert float(_call(name, _perturb(t, 3), t)) > 1e-6


@pytest.mark.parametrize("name", ["at", "nst", "pkt", "sp"])
def test_invariant_to_the_scale_of_the_student(name):
    """AT, NST, PKT and SP normalise what they compare, so the student's activation scale is free (the point of
    using them across architectures); FitNet and FSP are not."""
    t, s = _inputs(name, 1), _inputs(name, 2)
    base = _call(name, s, t)
    torch.testing.assert_close(_call(name, 7.0 * s, t), base, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", ["fitnet", "fsp"])
def test_not_scale_invariant(name):
    t = _inputs(name, 1)
    s = _perturb(t, 5)
    scaled = tuple(3.0 * v for v in s) if isinstance(s, tuple) else 3.0 * s
    assert float(_call(name, scaled, t)) > 2 * float(_call(name, s, t))


@pytest.mark.parametrize("name", ["pkt", "sp"])
def test_relations_allow_different_widths_and_follow_the_batch_order(name):
    """Relation losses compare B x B matrices: any student width works, and permuting the batch of both
    networks permutes rows and columns alike, leaving the loss unchanged."""
    s_shape = (8, 48) if name == "pkt" else (8, 16, 4, 4)
    t_shape = (8, 64) if name == "pkt" else (8, 64, 2, 2)
    s, t = _maps(s_shape, 1), _maps(t_shape, 2)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_call(name, s[perm], t[perm]), _call(name, s, t), rtol=1e-10, atol=1e-12)


# ---- wiring: the Method classes -----------------------------------------------------------------------------
CLASSES = {"at": AT, "fitnet": FitNet, "nst": NST, "pkt": PKT, "fsp": FSP, "sp": SP}
WEIGHTS = {"at": 1000.0, "fitnet": 0.1, "nst": 10.0, "pkt": 10000.0, "fsp": 1.0, "sp": 3000.0}


def _method(name, teacher_is_student=False):
    torch.manual_seed(0)
    student = build_model("resnet8", 10)
    teacher = copy.deepcopy(student) if teacher_is_student else build_model("resnet8", 10)
    ctx = Context(num_classes=10, dataset="cifar10", seed=0, device=torch.device("cpu"),
                  train_labels=torch.arange(8) % 10, epochs=2)
    method = CLASSES[name](student, teacher, {}, ctx)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return method, Batch(x, torch.arange(4), torch.arange(4))


def _info(method, role="main"):
    stages = method.stages(Protocol(epochs=2))
    stage = next(s for s in stages if s.role == role)
    return StepInfo(0, sum(s.epochs for s in stages), stage, 0)


@pytest.mark.parametrize("name", NAMES)
def test_reference_weight_and_stage_mean(name):
    cls = CLASSES[name]
    assert cls.defaults["weight"] == WEIGHTS[name]
    method, batch = _method(name)
    with torch.no_grad():
        _, s_feats = method.student(batch.x)
        _, t_feats = method.teacher(batch.x)
    info = _info(method, "init" if name == "fsp" else "main")
    out = method.distill(None, s_feats, None, t_feats, batch, info)
    assert list(out) == [name]
    taps = cls.student_taps
    if name == "fsp":
        terms = [fsp_loss(s_feats[a], s_feats[b], t_feats[a], t_feats[b]) for a, b in zip(taps, taps[1:])]
    else:
        terms = [_call(name, s_feats[k], t_feats[k]) for k in taps]
    expected = WEIGHTS[name] * sum(terms) / len(terms)
    torch.testing.assert_close(out[name], expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_method_loss_vanishes_for_a_copy_of_the_teacher(name):
    method, batch = _method(name, teacher_is_student=True)
    method.train(False)  # BatchNorm on running statistics in both networks: identical features
    role = "init" if name == "fsp" else "main"
    with torch.no_grad():
        losses = method.losses(batch, _info(method, role))
    assert abs(float(losses[name])) <= 1e-7 * WEIGHTS[name], losses


# ---- FSP's two stages ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("epochs,init_epochs", [(200, 50), (2, 1), (20, 5)])
def test_fsp_stage_lengths_scale(epochs, init_epochs):
    method, _ = _method("fsp")
    init, main = method.stages(Protocol(epochs=epochs, lr=0.1))
    assert (init.role, main.role) == ("init", "main")
    assert (init.epochs, main.epochs) == (init_epochs, epochs)
    assert init.lr_at(0) == pytest.approx(0.01)
    if epochs == 200:
        assert init.lr_steps == ((0, pytest.approx(0.01)), (30, pytest.approx(0.001)), (40, pytest.approx(0.0001)))
    assert all(0 <= start < init.epochs for start, _ in init.lr_steps)


def test_fsp_losses_per_stage_and_no_teacher_in_main():
    method, batch = _method("fsp")
    method.train(True)
    assert set(method.losses(batch, _info(method, "init"))) == {"fsp"}

    def no_teacher(x):
        raise AssertionError("the main stage must not run the teacher")
    method.teacher_forward = no_teacher
    assert set(method.losses(batch, _info(method, "main"))) == {"ce"}


def test_fsp_init_step_keeps_weight_decay_on_the_classifier():
    """The reference's CE * 0 leaves the classifier with zero gradients, so weight decay still shrinks it."""
    method, batch = _method("fsp")
    info = _info(method, "init")
    protocol = Protocol(epochs=2, weight_decay=5e-4)
    optimizer = make_optimizer(method.stage_parameters(info.stage), protocol, info.stage)
    before = method.student.linear.weight.detach().clone()
    method.train(True)
    method.train_step(batch, info, optimizer)
    assert method.student.linear.weight.grad is not None
    assert float(method.student.linear.weight.grad.abs().max()) == 0.0
    # first SGD step with Nesterov momentum m on a zero gradient: p <- p - lr * (1 + m) * wd * p
    assert protocol.nesterov
    shrink = 1 - info.stage.lr_at(0) * (1 + protocol.momentum) * protocol.weight_decay
    torch.testing.assert_close(method.student.linear.weight.detach(), before * shrink, rtol=1e-6, atol=0)
    assert not torch.equal(method.student.linear.weight.detach(), before)
