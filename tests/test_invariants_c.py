"""Invariants of sobolev, bss and dml that the golden vectors cannot see: the parts that are not pure functions
of tensors (input gradients, the BSS attack and weight schedule, the DML peer), on tiny networks."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from data import Batch
from methods.base import Context, StepInfo, main_stage
from methods.bss import bss_attack, bss_loss, bss_weight, sample_attack_class, select_samples
from methods.dml import dml_loss
from models import build_seeded, build_model
from runner.spec import Protocol
from runner.train import build_method, make_optimizer

NUM_CLASSES = 10


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread is fastest (conftest)


def context(seed=0, epochs=4):
    return Context(num_classes=NUM_CLASSES, dataset="cifar10", seed=seed, device=torch.device("cpu"),
                   train_labels=torch.arange(64) % NUM_CLASSES, epochs=epochs,
                   generator=torch.Generator().manual_seed(1))


def make(name, student, teacher, x, hparams=None, epochs=4):
    return build_method(name, {**hparams} if hparams else {}, student, teacher, context(epochs=epochs), x[:2])


def inputs(batch=8, size=16, seed=123):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def calibrate_bn(net: nn.Module, x: torch.Tensor) -> None:
    """Set the running statistics of every BatchNorm to those of batch `x`, so that the network in eval mode
    computes (up to the biased/unbiased variance) what it computes in train mode on `x`."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 1.0
    net.train()
    with torch.no_grad():
        net(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    net.eval()


def info_at(epoch, total=4):
    return StepInfo(epoch, total, main_stage(Protocol(epochs=total, batch_size=8)), epoch)


# ---- Sobolev ------------------------------------------------------------------------------------------------
def test_sobolev_zero_when_student_is_teacher():
    torch.manual_seed(0)
    net = build_model("resnet8", NUM_CLASSES)
    x = inputs()
    method = make("sobolev", net, copy.deepcopy(net), x)
    method.train(False)  # same BatchNorm mode for both, so the two networks compute the same function
    y = torch.arange(8) % NUM_CLASSES
    losses = method.losses(Batch(x, y, torch.arange(8)), info_at(0))
    assert set(losses) == {"ce", "sobolev"}
    assert float(losses["sobolev"].detach()) < 1e-12


def test_sobolev_term_trains_the_student_through_its_input_gradient():
    torch.manual_seed(0)
    student, teacher = build_model("resnet8", NUM_CLASSES), build_model("resnet8", NUM_CLASSES)
    x = inputs()
    method = make("sobolev", student, teacher, x)
    method.train(True)
    y = torch.arange(8) % NUM_CLASSES
    term = method.losses(Batch(x, y, torch.arange(8)), info_at(0))["sobolev"]
    assert float(term.detach()) > 0
    grads = torch.autograd.grad(term, [student.conv1.weight, student.linear.weight])
    assert all(g.abs().sum() > 0 for g in grads), "double back-propagation must reach the student's weights"
    assert all(p.grad is None for p in teacher.parameters())


# ---- BSS ----------------------------------------------------------------------------------------------------
def test_bss_kl_zero_on_identical_logits():
    z = torch.randn(8, NUM_CLASSES, generator=torch.Generator().manual_seed(0))
    assert abs(float(bss_loss(z, z.clone(), 3.0))) < 1e-7


def test_bss_weight_schedule():
    # reference: 200 epochs, warm-up = epochs 1..10, then 2 * (1 - 1.25 (e - 1) / 200)
    assert all(bss_weight(2.0, e, 200) == 0.0 for e in range(10))
    assert bss_weight(2.0, 10, 200) == pytest.approx(2.0 * (1 - 1.25 * 10 / 200))
    values = [bss_weight(2.0, e, 200) for e in range(10, 160)]
    assert all(v > 0 for v in values) and all(a > b for a, b in zip(values, values[1:]))
    for total in (4, 10, 20, 30, 200):
        for e in range(total):
            if e >= 0.8 * total:
                assert bss_weight(2.0, e, total) == 0.0, (e, total)
    # the warm-up scales with the protocol (>= 1 epoch): 30 epochs -> round(1.5) = 2 epochs
    assert [bss_weight(1.0, e, 30) > 0 for e in range(3)] == [False, False, True]
    assert bss_weight(1.0, 0, 4) == 0.0 and bss_weight(1.0, 1, 4) > 0


class LinearNet(nn.Module):
    """A confident linear classifier: its decision boundaries are within reach of ten attack steps."""

    def __init__(self, dim, scale=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        w = torch.randn(NUM_CLASSES, dim, generator=g)
        self.weight = nn.Parameter(w * scale / w.std(), requires_grad=False)

    def forward(self, x):
        return x.flatten(1) @ self.weight.t(), {}


def test_bss_attack_flips_the_teacher_and_skips_misclassified():
    net = LinearNet(3 * 8 * 8)
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(123)) * 4 - 2
    with torch.no_grad():
        logits = net(x)[0]
    pred = logits.argmax(1)
    y = pred.clone()
    y[::3] = (pred[::3] + 1) % NUM_CLASSES          # every third sample is misclassified
    idx = select_samples(logits, logits, y, attack_size=32)
    wrong = set(range(0, 16, 3))
    assert len(idx) == 16 - len(wrong) and not set(idx.tolist()) & wrong
    attack_class = sample_attack_class(logits[idx], torch.Generator().manual_seed(0))
    assert (attack_class != y[idx]).all()
    adv = bss_attack(net, x[idx], y[idx], attack_class)
    with torch.no_grad():
        flipped = net(adv)[0].argmax(1) != y[idx]
    assert flipped.sum() >= 1
    # a sample stops moving once the teacher flips: more steps leave flipped samples where they were
    longer = bss_attack(net, x[idx], y[idx], attack_class, num_steps=20)
    torch.testing.assert_close(longer[flipped], adv[flipped], rtol=0, atol=0)
    assert adv.abs().max() <= 2.5


def test_bss_selection_keeps_the_largest_disagreement():
    g = torch.Generator().manual_seed(3)
    t = torch.randn(40, NUM_CLASSES, generator=g)
    y = t.argmax(1)
    s = t + 0.5 * torch.randn(40, NUM_CLASSES, generator=g)
    s.scatter_(1, y[:, None], 100.0)                   # the student is right on all of them
    idx = select_samples(s, t, y, attack_size=32)
    assert len(idx) == 32
    diff = (F.softmax(t, 1) - F.softmax(s, 1)) ** 2
    score = diff.sum(1) - diff.gather(1, y[:, None]).squeeze(1)
    assert set(idx.tolist()) == set(score.topk(32).indices.tolist())


def test_bss_attack_class_follows_teacher_posterior():
    t = torch.tensor([[5.0, 2.0, 0.0] + [-30.0] * 7]).repeat(4000, 1)
    cls = sample_attack_class(t, torch.Generator().manual_seed(0))
    assert set(cls.unique().tolist()) <= {1, 2}        # never the top-1 class
    p1 = torch.tensor(2.0).exp() / (torch.tensor(2.0).exp() + 1)
    assert abs((cls == 1).float().mean() - p1) < 0.03


def bss_pair():
    torch.manual_seed(0)
    student = build_model("resnet8", NUM_CLASSES)
    x = inputs(batch=8, size=16)
    teacher = copy.deepcopy(student)
    calibrate_bn(teacher, x)                            # teacher (eval) agrees with the student (train) on x
    method = make("bss", student, teacher, x)
    method.train(True)
    with torch.no_grad():
        y = teacher(x)[0].argmax(1)
    return method, Batch(x, y, torch.arange(8))


def test_bss_attack_leaves_student_batchnorm_untouched():
    method, batch = bss_pair()
    logits, _ = method.student(batch.x)
    t_logits, _ = method.teacher_forward(batch.x)
    before = {k: v.clone() for k, v in method.student.state_dict().items()}
    adv, idx = method.attack_batch(batch.x, batch.y, logits, t_logits)
    assert adv is not None and len(idx) > 0
    after = method.student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not method.teacher.training
    # the attack moves the samples towards the attack class: the teacher's margin shrinks
    with torch.no_grad():
        p0, p1 = F.softmax(t_logits[idx], 1), F.softmax(method.teacher(adv)[0], 1)
    y = batch.y[idx]
    assert (p1.gather(1, y[:, None]) < p0.gather(1, y[:, None])).all()


def test_bss_step_keeps_global_rng_and_loss_names():
    method, batch = bss_pair()
    protocol = Protocol(epochs=4, batch_size=8)
    stage = main_stage(protocol)
    optimizer = make_optimizer(list(method.stage_parameters(stage)), protocol, stage)
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    gen = method.ctx.generator.get_state()
    on = method.train_step(batch, info_at(1), optimizer)          # after the warm-up: attack and KL
    assert set(on) == {"ce", "bss"} and float(on["bss"]) > 0
    assert torch.equal(torch.get_rng_state(), rng), "the attack must draw from the method's own generator"
    assert not torch.equal(method.ctx.generator.get_state(), gen)
    gen = method.ctx.generator.get_state()
    warm = method.train_step(batch, info_at(0), optimizer)        # warm-up: weight 0, no attack
    assert set(warm) == {"ce", "bss"} and float(warm["bss"]) == 0.0
    assert torch.equal(method.ctx.generator.get_state(), gen)
    late = method.train_step(batch, info_at(4, total=5), optimizer)  # >= 80 %: CE only
    assert float(late["bss"]) == 0.0


# ---- DML ----------------------------------------------------------------------------------------------------
def test_dml_kl_zero_on_identical_logits():
    z = torch.randn(8, NUM_CLASSES, generator=torch.Generator().manual_seed(0))
    assert abs(float(dml_loss(z, z.clone()))) < 1e-7


def test_dml_peer_is_trained_and_follows_mode():
    torch.manual_seed(0)
    x = inputs(batch=8, size=16)
    student = build_model("resnet8", NUM_CLASSES)
    method = make("dml", student, None, x, {"peer": "resnet8"})
    peer = method.extra["peer"]
    fresh = build_seeded("resnet8", NUM_CLASSES, 0)
    assert all(torch.equal(a, b) for a, b in zip(peer.state_dict().values(), fresh.state_dict().values())), \
        "the peer starts from the CE run's initial weights of its (arch, seed)"
    protocol = Protocol(epochs=4, batch_size=8)
    stage = main_stage(protocol)
    optimizer = make_optimizer(list(method.stage_parameters(stage)), protocol, stage)
    method.train(True)
    assert peer.training
    before = [p.detach().clone() for p in peer.parameters()]
    s_before = [p.detach().clone() for p in student.parameters()]
    y = torch.arange(8) % NUM_CLASSES
    losses = method.train_step(Batch(x, y, torch.arange(8)), info_at(0), optimizer)
    assert set(losses) == {"ce", "kl", "peer_ce", "peer_kl"}
    assert any(not torch.equal(a, b) for a, b in zip(before, peer.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(s_before, student.parameters()))
    method.train(False)
    assert not peer.training and not student.training
    assert method.eval_model() is student
    assert any(k.startswith("peer.") for k in method.state_dict()["extra"])
