"""Invariants of the later logit methods dkd, dist and lskd (and the `logit_stand` option of st and dkd) that the
golden vectors cannot see: their value when the student reproduces the teacher, DKD's warm-up schedule, the
invariance logit standardization was designed for, and their registration (on request, set "modern").

When student logits equal teacher logits: DKD and LSKD are 0 with a zero gradient (both are sums of KL
divergences). DIST is NOT zero by construction: the reference adds eps = 1e-8 to |a||b| in its cosine, so at
equality each Pearson term is |a|^2 / (|a|^2 + eps) < 1 and the loss is
tau^2 * (beta * mean_i eps/(|a_i|^2+eps) + gamma * mean_c eps/(|a_c|^2+eps)) > 0 (a = centred softened
predictions of a sample / of a class over the batch), with a small non-zero gradient towards a sharper student;
with eps = 0 it is 0 with a zero gradient."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import shared_path
from data import Batch
from methods import ON_REQUEST, default_methods, get_method, method_names
from methods.base import Context, StepInfo, main_stage, scaled
from methods.dist import dist_loss
from methods.dkd import DKD, dkd_loss, dkd_warmup
from methods.lskd import LSKD, lskd_loss, standardize
from methods.registry import SETS
from methods.st import SoftTarget, st_loss
from models import build_model
from runner.spec import Protocol
from runner.train import build_method

NUM_CLASSES = 10
MODERN = ("dkd", "dist", "lskd")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread is fastest (conftest)


def logits(batch=8, classes=100, seed=0, scale=3.0, dtype=torch.float64):
    return scale * torch.randn(batch, classes, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def labels(batch=8, classes=100, seed=1):
    return torch.randint(classes, (batch,), generator=torch.Generator().manual_seed(seed))


def pure(name, z_s, z_t, y, **hp):
    if name == "dkd":
        return dkd_loss(z_s, z_t, y, **hp)
    if name == "dist":
        return dist_loss(z_s, z_t, **hp)
    return lskd_loss(z_s, z_t, **hp)


def value_and_grad(name, z_s, z_t, y, **hp):
    z_s = z_s.clone().requires_grad_(True)
    loss = pure(name, z_s, z_t, y, **hp)
    (grad,) = torch.autograd.grad(loss, z_s)
    return loss.detach(), grad


# ---- registration -------------------------------------------------------------------------------------------
def test_registered_on_request_and_in_the_modern_set():
    names = method_names()
    assert names.index("dml") < names.index("dkd") < names.index("dist") < names.index("lskd")
    assert set(MODERN) <= set(ON_REQUEST) and not set(MODERN) & set(default_methods()), "not part of --all"
    assert SETS["modern"][:3] == MODERN
    assert all(m in names for s in SETS.values() for m in s), "a set names registered methods only"
    for name in MODERN:
        cls = get_method(name)
        assert cls.kind == "response" and cls.student_taps == cls.teacher_taps == ("logits",)
        shared_path("golden", f"{name}.pt")  # so tests/test_golden.py checks it


# ---- student == teacher -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,hp", [("dkd", {}), ("dkd", {"beta": 8.0}), ("dkd", {"logit_stand": True}),
                                     ("lskd", {}), ("lskd", {"T": 2.0}), ("lskd", {"logit_stand": False})])
def test_zero_with_zero_gradient_when_student_equals_teacher(name, hp, dtype):
    z, y = logits(dtype=dtype), labels()
    loss, grad = value_and_grad(name, z, z.clone(), y, **hp)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert abs(float(loss)) < tol and float(grad.abs().max()) < tol
    other, _ = value_and_grad(name, z + logits(seed=5, scale=1.0, dtype=dtype), z, y, **hp)
    assert float(other) > 100 * tol


@pytest.mark.parametrize("classes", [10, 100])
def test_dist_at_equality_is_the_eps_term_and_zero_without_eps(classes):
    z = logits(classes=classes)
    beta, gamma, tau, eps = 1.0, 2.0, 4.0, 1e-8
    loss, grad = value_and_grad("dist", z, z.clone(), None, beta=beta, gamma=gamma, tau=tau, eps=eps)
    y = torch.softmax(z / tau, dim=1)
    rows = (y - y.mean(1, keepdim=True)).pow(2).sum(1)
    cols = (y - y.mean(0, keepdim=True)).pow(2).sum(0)
    closed = tau ** 2 * (beta * (eps / (rows + eps)).mean() + gamma * (eps / (cols + eps)).mean())
    assert float(loss) > 0
    torch.testing.assert_close(loss, closed, rtol=1e-9, atol=0)
    perturbed, _ = value_and_grad("dist", z + logits(classes=classes, seed=5, scale=1.0), z, None,
                                  beta=beta, gamma=gamma, tau=tau, eps=eps)
    assert float(loss) < float(perturbed) / 100
    loss0, grad0 = value_and_grad("dist", z, z.clone(), None, beta=beta, gamma=gamma, tau=tau, eps=0.0)
    assert abs(float(loss0)) < 1e-12 and float(grad0.abs().max()) < 1e-12


def _tiny_pair(name, hparams=None, epochs=4):
    """A method on a resnet8 student that is an exact copy of its teacher (both in eval mode: same function)."""
    torch.manual_seed(0)
    teacher = build_model("resnet8", NUM_CLASSES)
    student = copy.deepcopy(teacher)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    ctx = Context(num_classes=NUM_CLASSES, dataset="cifar10", seed=0, device=torch.device("cpu"),
                  train_labels=torch.arange(64) % NUM_CLASSES, epochs=epochs,
                  generator=torch.Generator().manual_seed(1))
    hp = get_method(name).resolve_hparams(hparams or {}, "cifar10")
    method = build_method(name, hp, student, teacher, ctx, x[:2])
    method.train(False)
    return method, Batch(x, torch.arange(8) % NUM_CLASSES, torch.arange(8))


def _perturb(student):
    """Make the student differ from its teacher (random, so that the logits change differently per class)."""
    w = student.linear.weight
    w.data.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(7)))


def _info(epoch, total=4):
    return StepInfo(epoch, total, main_stage(Protocol(epochs=total, batch_size=8)), epoch)


@pytest.mark.parametrize("name", MODERN)
def test_method_term_for_a_copy_of_the_teacher(name):
    method, batch = _tiny_pair(name)
    losses = method.losses(batch, _info(3))
    assert set(losses) == {"ce", name}
    term = losses[name].detach().double()
    if name == "dist":  # the eps term only (see the module docstring), weighted
        with torch.no_grad():
            z = method.teacher(batch.x)[0].double()
        eps_term = dist_loss(z, z, 1.0, 1.0, 4.0)
        assert float(term) > 0
        torch.testing.assert_close(term, 2.0 * eps_term, rtol=1e-3, atol=1e-5)
    else:  # float32 networks: log(softmax) vs log_softmax rounding, times T^2
        assert abs(float(term)) < 1e-5


def test_ce_weights_follow_the_references():
    method, batch = _tiny_pair("lskd")
    with torch.no_grad():
        ce = F.cross_entropy(method.student(batch.x)[0], batch.y)
    got = method.losses(batch, _info(0))["ce"]
    torch.testing.assert_close(got.detach(), 0.1 * ce)
    assert (LSKD.defaults["ce_weight"], DKD.defaults["ce_weight"], get_method("dist").defaults["ce_weight"]) \
        == (0.1, 1.0, 1.0)


# ---- DKD warm-up --------------------------------------------------------------------------------------------
def test_dkd_warmup_factor():
    # the reference: 240 epochs, factor min(e / 20, 1) with e counted from 1
    assert dkd_warmup(0, 240) == 1 / 20 and dkd_warmup(18, 240) == 19 / 20
    assert dkd_warmup(19, 240) == 1.0 and dkd_warmup(239, 240) == 1.0
    # the benchmark's 200 epochs: 20 of 240 -> round(16.67) = 17 epochs
    w = scaled(20, 240, 200)
    assert w == 17
    assert dkd_warmup(0, 200) == 1 / 17 and dkd_warmup(15, 200) == 16 / 17
    assert dkd_warmup(16, 200) == 1.0 and all(dkd_warmup(e, 200) == 1.0 for e in (17, 100, 199))
    # short runs keep at least one warm-up epoch (factor 1 from the first); warmup 0 switches it off
    assert dkd_warmup(0, 4) == 1.0 and dkd_warmup(0, 200, warmup=0) == 1.0
    assert dkd_warmup(0, 200, warmup=40) == 1 / 33


def test_dkd_method_applies_the_warmup_to_its_term():
    method, batch = _tiny_pair("dkd", epochs=200)
    _perturb(method.student)
    with torch.no_grad():
        s, t = method.student(batch.x)[0], method.teacher(batch.x)[0]
    raw = dkd_loss(s, t, batch.y, 1.0, 2.0, 4.0)
    assert float(raw) > 0
    for epoch, factor in ((0, 1 / 17), (8, 9 / 17), (16, 1.0), (150, 1.0)):
        term = method.losses(batch, _info(epoch, total=200))["dkd"]
        torch.testing.assert_close(term.detach(), factor * raw, rtol=1e-5, atol=1e-7)


def test_dkd_masking_equals_the_papers_renormalised_nckd():
    """The reference's -1000 target offset equals the paper's NCKD over the C-1 non-target classes."""
    z_s, z_t, y = logits(seed=2), logits(seed=3), labels()
    T, alpha, beta = 4.0, 1.0, 8.0
    keep = ~F.one_hot(y, 100).bool()
    p_s, p_t = torch.softmax(z_s / T, 1), torch.softmax(z_t / T, 1)
    b_s = torch.stack([p_s[keep == 0], p_s[keep].view(8, 99).sum(1)], 1)
    b_t = torch.stack([p_t[keep == 0], p_t[keep].view(8, 99).sum(1)], 1)
    tckd = (b_t * (b_t.log() - b_s.log())).sum() / 8
    q_s = torch.log_softmax(z_s[keep].view(8, 99) / T, 1)
    q_t = torch.log_softmax(z_t[keep].view(8, 99) / T, 1)
    nckd = (q_t.exp() * (q_t - q_s)).sum() / 8
    torch.testing.assert_close(dkd_loss(z_s, z_t, y, alpha, beta, T), T * T * (alpha * tckd + beta * nckd),
                               rtol=1e-12, atol=0)


def test_dkd_stays_finite_where_the_target_probability_rounds_to_one():
    """The reference's torch.log of summed probabilities gives -inf here in float32; the log-sum-exp does not."""
    z_t = torch.zeros(2, 10)
    z_s = torch.zeros(2, 10, requires_grad=True)
    y = torch.tensor([0, 3])
    big = z_s + 400.0 * F.one_hot(y, 10)
    loss = dkd_loss(big, z_t, y, 1.0, 8.0, 4.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z_s.grad).all()


# ---- logit standardization ------------------------------------------------------------------------------------
def test_standardize_matches_the_reference_formula():
    z = logits()
    mean = z.sum(1, keepdim=True) / z.shape[1]
    std = ((z - mean).pow(2).sum(1, keepdim=True) / (z.shape[1] - 1)).sqrt()  # unbiased, as torch.std
    torch.testing.assert_close(standardize(z), (z - mean) / (1e-7 + std), rtol=1e-12, atol=0)


@pytest.mark.parametrize("classes", [10, 100])
def test_lskd_invariant_to_a_per_sample_affine_change_of_the_student(classes):
    z_s, z_t = logits(classes=classes, seed=2), logits(classes=classes, seed=3)
    g = torch.Generator().manual_seed(4)
    a = 0.2 + 5 * torch.rand(8, 1, generator=g, dtype=torch.float64)  # per-sample positive scale
    b = 20 * torch.randn(8, 1, generator=g, dtype=torch.float64)      # per-sample shift
    base, grad = value_and_grad("lskd", z_s, z_t, None, T=2.0)
    moved, grad_moved = value_and_grad("lskd", a * z_s + b, z_t, None, T=2.0)
    # exact up to the reference's eps 1e-7 added to the standard deviation (~3 here)
    torch.testing.assert_close(moved, base, rtol=1e-6, atol=0)
    # the gradient w.r.t. the moved logits is the original one divided by the sample's scale (chain rule)
    torch.testing.assert_close(grad_moved, grad / a, rtol=1e-6, atol=1e-6 * float((grad / a).abs().max()))
    # the teacher's logits too; plain KD is not invariant
    torch.testing.assert_close(lskd_loss(z_s, 3 * z_t - 7, T=2.0), base, rtol=1e-6, atol=0)
    assert abs(float(st_loss(a * z_s + b, z_t, 2.0)) - float(st_loss(z_s, z_t, 2.0))) > 1e-2


@pytest.mark.parametrize("T", [2.0, 4.0])
def test_st_logit_stand_is_the_lskd_formula(T):
    z_s, z_t = logits(seed=2), logits(seed=3)
    want = lskd_loss(z_s, z_t, T)
    torch.testing.assert_close(st_loss(z_s, z_t, T, logit_stand=True), want, rtol=1e-12, atol=0)
    torch.testing.assert_close(st_loss(z_s, z_t, T, logit_stand=True), st_loss(standardize(z_s), standardize(z_t), T),
                               rtol=1e-12, atol=0)
    assert abs(float(st_loss(z_s, z_t, T)) - float(want)) > 1e-3, "off by default, and the option changes the loss"
    # wired through the method: the term is weight * LSKD's loss
    method, batch = _tiny_pair("st", {"logit_stand": True})
    _perturb(method.student)
    with torch.no_grad():
        s, t = method.student(batch.x)[0], method.teacher(batch.x)[0]
    term = method.losses(batch, _info(0))["st"].detach()
    torch.testing.assert_close(term, 0.1 * lskd_loss(s, t, 4.0), rtol=1e-5, atol=1e-8)


def test_logit_stand_defaults_off_and_plain_st_runs_are_unchanged():
    assert SoftTarget.defaults["logit_stand"] is False and DKD.defaults["logit_stand"] is False
    assert SoftTarget.resolve_hparams({}, "cifar10") == {"weight": 0.1, "T": 4.0}, "run ids of plain st kept"
    assert SoftTarget.resolve_hparams({"logit_stand": True}, "cifar10")["logit_stand"] is True
    z_s, z_t, y = logits(seed=2), logits(seed=3), labels()
    torch.testing.assert_close(dkd_loss(z_s, z_t, y, logit_stand=True),
                               dkd_loss(standardize(z_s), standardize(z_t), y), rtol=1e-12, atol=0)


def test_defaults_are_the_reference_settings():
    assert DKD.defaults == {"weight": 1.0, "ce_weight": 1.0, "alpha": 1.0, "beta": 2.0, "T": 4.0, "warmup": 20,
                            "logit_stand": False}
    assert get_method("dist").defaults == {"weight": 2.0, "ce_weight": 1.0, "beta": 1.0, "gamma": 1.0, "tau": 4.0}
    assert LSKD.defaults == {"weight": 12.0, "T": 4.0, "ce_weight": 0.1}
    assert math.isclose(scaled(DKD.defaults["warmup"], 240, 200), 17)
