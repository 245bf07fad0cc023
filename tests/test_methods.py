"""Every registered method builds on a small teacher/student pair, optimises its extra modules with the student,
and takes three finite training steps with a stable set of loss names, in each of its stages."""
from __future__ import annotations

import pytest
import torch

from data import Batch
from methods import get_method, method_names
from methods.base import KINDS, Context, StepInfo
from models import build_model
from runner.spec import Protocol
from runner.train import build_method, make_optimizer

NUM_CLASSES = 10


def make_pair(name: str, hparams: dict | None = None, student="resnet8", teacher="resnet14", batch=16, seed=0):
    cls = get_method(name)
    hp = cls.resolve_hparams(hparams or {}, "cifar10")
    torch.manual_seed(seed)
    s = build_model(cls.student_arch(hp, student), NUM_CLASSES)  # as the planner: the network the method trains
    t = build_model(teacher, NUM_CLASSES).eval() if cls.needs_teacher else None
    extra_teachers = {a: build_model(a, NUM_CLASSES).eval() for a in cls.teacher_archs(hp)}  # as the runner
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    y = torch.arange(batch) % NUM_CLASSES
    labels = torch.arange(64) % NUM_CLASSES
    ctx = Context(num_classes=NUM_CLASSES, dataset="cifar10", seed=seed, device=torch.device("cpu"),
                  train_labels=labels, epochs=4, generator=torch.Generator().manual_seed(1),
                  extra_teachers=extra_teachers)
    method = build_method(name, hp, s, t, ctx, x[:2])
    return method, Batch(x, y, torch.arange(batch))


@pytest.mark.parametrize("name", method_names(include_baseline=True))
def test_method_declares_itself(name):
    cls = get_method(name)
    assert cls.name == name
    assert cls.kind in KINDS
    assert cls.description and cls.citation
    assert cls.display_name and cls.display_name == cls.__dict__.get("display_name"), "the name tables print"
    if name != "ce":
        assert "weight" in cls.defaults, "every distillation method states its loss weight"
        assert callable(cls.loss_fn), "every distillation method names its pure loss function"


@pytest.mark.parametrize("name", method_names(include_baseline=True))
def test_three_steps_per_stage(name):
    method, batch = make_pair(name)
    protocol = Protocol(epochs=4, batch_size=16)
    stages = method.stages(protocol)
    assert stages and all(s.epochs >= 1 for s in stages)
    total = sum(s.epochs for s in stages)
    for stage in stages:
        params = list(method.stage_parameters(stage))
        optimizer = make_optimizer(params, protocol, stage)
        ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if stage.role == "main":
            assert all(id(p) in ids for p in method.student.parameters())
            trainable_extra = [p for p in method.extra.parameters() if p.requires_grad]
            assert all(id(p) in ids for p in trainable_extra), "extra modules must be optimised with the student"
        keys = None
        method.train(True)
        for step in range(3):
            losses = method.train_step(batch, StepInfo(0, total, stage, 0, step), optimizer)
            assert losses, "a step returns its named losses"
            assert all(torch.isfinite(v).all() for v in losses.values()), losses
            keys = keys or set(losses)
            assert set(losses) == keys, "loss names are stable from step to step"
