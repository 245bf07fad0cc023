"""The generic checks every method passes, importable by a user's own tests (examples/test_my_method.py) and used
by the project's (tests/test_methods.py):

    from methods.testing import check_declares_itself, check_three_steps
    check_declares_itself(MyMethod)   # names, kind, description, citation, loss weight, pure loss function
    check_three_steps(MyMethod)       # builds on a small teacher/student pair; in each of its stages, its extra
                                      # modules are optimised with the student and three steps give finite,
                                      # stably named losses

A check raises AssertionError saying what is wrong. The networks are small (ResNet-8 student, ResNet-14
teacher, random weights, 16 random images), so a check takes a second or two on a CPU. The method is built as
the runner builds it (`runner.train.build_method`: one dry-run forward in eval mode, then `setup` under the
seed of (seed, "extra", name)); this module repeats those few lines because methods may not import the runner.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from core.seeding import seeded
from data import Batch
from models import build_model

from .base import KINDS, Context, Method, StepInfo, make_optimizer

NUM_CLASSES = 10
_NAME = re.compile(r"[a-z][a-z0-9_]*(\+[a-z][a-z0-9_]*)*")  # a registry key, or a combination of them


@dataclass(frozen=True)
class CheckProtocol:
    """The training settings of the checks: the fields of `runner.spec.Protocol` that methods (`stages`) and the
    optimiser read. Any object with these attributes will do (the project's tests pass a real Protocol)."""
    epochs: int = 4
    batch_size: int = 16
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4


def check_declares_itself(cls: type) -> None:
    """The class says what it is: a registry-style `name`, a `kind`, a description and a citation, a
    `display_name` of its own (the tables' row name), and, for a distillation method, its loss `weight` among its
    `defaults` and its pure loss function as `loss_fn`."""
    assert isinstance(cls, type) and issubclass(cls, Method), f"{cls!r} is not a Method subclass"
    assert isinstance(cls.name, str) and _NAME.fullmatch(cls.name), \
        f"{cls.__name__}.name {cls.name!r}: lower-case letters, digits and '_', starting with a letter"
    assert cls.kind in KINDS or all(k in KINDS for k in cls.kind.split("+")), \
        f"{cls.name}: kind {cls.kind!r} is not one of {KINDS}"
    assert cls.description and cls.citation, f"{cls.name}: give a description and a citation"
    assert cls.display_name and cls.display_name == cls.__dict__.get("display_name"), \
        f"{cls.name}: set display_name on the class, the name tables print"
    assert isinstance(cls.defaults, dict), f"{cls.name}: defaults must be a dict of hyperparameters"
    if cls.kind != "baseline":
        assert "weight" in cls.defaults or all("weight" in v for v in cls.defaults.values() if isinstance(v, dict)), \
            f"{cls.name}: every distillation method states its loss weight (defaults['weight'])"
        assert callable(cls.loss_fn) or cls.__dict__.get("components_cls"), \
            f"{cls.name}: name the pure loss function (loss_fn = staticmethod(my_loss))"


def make_pair(cls: type, hparams: dict | None = None, student: str = "resnet8", teacher: str = "resnet14",
              batch: int = 16, seed: int = 0, dataset: str = "cifar10") -> tuple[Method, Batch]:
    """`cls` built on a small random student/teacher pair as the runner builds it, and one batch of random images."""
    hp = cls.resolve_hparams(hparams or {}, dataset)
    torch.manual_seed(seed)
    s = build_model(cls.student_arch(hp, student), NUM_CLASSES)  # as the planner: the network the method trains
    t = build_model(teacher, NUM_CLASSES).eval() if cls.needs_teacher else None
    extra_teachers = {a: build_model(a, NUM_CLASSES).eval() for a in cls.teacher_archs(hp)}  # as the runner
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    y = torch.arange(batch) % NUM_CLASSES
    ctx = Context(num_classes=NUM_CLASSES, dataset=dataset, seed=seed, device=torch.device("cpu"),
                  train_labels=torch.arange(64) % NUM_CLASSES, epochs=4, generator=torch.Generator().manual_seed(1),
                  extra_teachers=extra_teachers)
    method = cls(s, t, hp, ctx)
    with torch.no_grad():
        s.eval()
        _, s_feats = s(x[:2])
        t_feats = t(x[:2])[1] if t is not None else None
    with seeded(seed, "extra", cls.name):
        method.setup(s_feats, t_feats)
    return method, Batch(x, y, torch.arange(batch))


def check_three_steps(cls: type, hparams: dict | None = None, protocol=None, **pair) -> None:
    """In each of the method's stages: the optimiser gets the student and every trainable extra module (main
    stage), and three `train_step`s return finite losses under the same names each step. `pair` goes to
    `make_pair` (student, teacher, batch, seed, dataset)."""
    method, batch = make_pair(cls, hparams, **pair)
    protocol = protocol or CheckProtocol()
    stages = method.stages(protocol)
    assert stages and all(s.epochs >= 1 for s in stages), f"{cls.name}: stages {stages} (each at least one epoch)"
    total = sum(s.epochs for s in stages)
    for stage in stages:
        params = list(method.stage_parameters(stage))
        optimizer = make_optimizer(params, protocol, stage)
        ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if stage.role == "main":
            assert all(id(p) in ids for p in method.student.parameters()), \
                f"{cls.name}: the main stage must optimise the whole student"
            trainable_extra = [p for p in method.extra.parameters() if p.requires_grad]
            assert all(id(p) in ids for p in trainable_extra), \
                f"{cls.name}: extra modules must be optimised with the student (keep them in self.extra)"
        keys = None
        method.train(True)
        for step in range(3):
            losses = method.train_step(batch, StepInfo(0, total, stage, 0, step), optimizer)
            assert losses, f"{cls.name}: a step returns its named losses"
            assert all(torch.isfinite(v).all() for v in losses.values()), f"{cls.name}: {losses}"
            keys = keys or set(losses)
            assert set(losses) == keys, f"{cls.name}: loss names are stable from step to step ({keys} then " \
                                        f"{set(losses)})"
