"""The `Method` contract: one distillation method = its pure loss function + this wiring.

A method declares its names (`name` = registry key, `display_name`, `citation`), its hyperparameters
(`defaults`, the loss weight included), the features it taps, its pure loss (`loss_fn`, which the golden tests
check through `reference_call`), its extra trainable modules (built from the feature shapes of one dry-run
forward, kept in `self.extra`, optimised with the student under the protocol's SGD), its stages, and returns a
dict of named, already weighted losses. The runner sums them, back-propagates and steps. Methods with their own
update rule override `train_step`; nothing method-specific lives in the runner. What a loss reads besides the
features comes with every batch (`Batch.idx` for CRD) or is computed by the method itself (Sobolev's input
gradients, in its own `losses`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.errors import UserError
from data.loader import Batch

KINDS = ("baseline", "response", "feature", "relation", "online", "ensemble")


@dataclass(frozen=True)
class Stage:
    """A span of epochs with its own learning-rate steps and optimiser settings.

    `lr_steps` are (first epoch within the stage, lr) pairs; `optimizer` overrides the protocol's SGD settings
    (e.g. FT's paraphraser pre-training: no Nesterov, weight decay 1e-4); `role` tells the method what the stage
    is for ('main', 'init', 'pretrain', ...).
    """

    name: str
    epochs: int
    lr_steps: tuple[tuple[int, float], ...]
    role: str = "main"
    optimizer: tuple[tuple[str, object], ...] = ()

    def lr_at(self, stage_epoch: int) -> float:
        lr = self.lr_steps[0][1]
        for start, value in self.lr_steps:
            if stage_epoch >= start:
                lr = value
        return lr


@dataclass
class StepInfo:
    """Where training is: global epoch (0-based), total epochs over all stages, the stage and its epoch."""

    epoch: int
    total_epochs: int
    stage: Stage
    stage_epoch: int
    step: int = 0


_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """How a run's training steps compute (`Protocol.precision`, runner/spec.py). One per run: its gradient
    scaler's state is the run's and is checkpointed.

    fp32: nothing changes (no autocast, no scaler: the step is the one the paper trained with). bf16 / fp16: the
    runner enters `torch.autocast(device, dtype)` around every training step and evaluation; fp16 scales the loss
    with `torch.amp.GradScaler` (dynamic scale, steps with inf/NaN gradients skipped). `Method.backward_step` is the
    one place that back-propagates and steps, so the scaler logic lives here and nowhere else."""

    def __init__(self, name: str = "fp32", device: str | torch.device = "cpu"):
        if name not in _DTYPES:
            raise ValueError(f"unknown precision {name!r}; known: {', '.join(_DTYPES)}")
        self.name = name
        self.device_type = torch.device(device).type
        self.dtype = _DTYPES[name]
        self.scaler = torch.amp.GradScaler(self.device_type) if name == "fp16" else None

    @property
    def reduced(self) -> bool:
        """Whether anything runs in reduced precision (bf16, fp16)."""
        return self.dtype is not None

    def autocast(self):
        """The context of a training step or an evaluation: autocast to this precision's dtype (fp32: none)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def full(self):
        """A region computed in fp32 inside a step under autocast (losses, back-propagation)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, enabled=False)

    def state_dict(self) -> dict | None:
        """What a resumed run needs: the scaler's scale and growth tracker (None without a scaler)."""
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if (state is None) != (self.scaler is None):
            raise ValueError(f"gradient scaler state {'missing' if state is None else 'given'} for a "
                             f"{self.name} run")
        if state is not None:
            if not isinstance(state, dict) or not isinstance(state.get("scale"), (int, float)) or \
                    not state["scale"] > 0 or not isinstance(state.get("_growth_tracker"), int):
                raise ValueError("gradient scaler state is malformed")
            self.scaler.load_state_dict(state)


FP32 = Precision()  # the default of a Context built by hand (tests, tools): no autocast, no scaler


def to_fp32(value):
    """`value` with every bf16/fp16 tensor in it (also inside dicts, lists and tuples) as float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in (torch.bfloat16, torch.float16) else value
    if isinstance(value, dict):
        return {k: to_fp32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_fp32(v) for v in value)
    return value


@dataclass
class Context:
    """What a method may know about the run beyond the networks."""

    num_classes: int
    dataset: str
    seed: int
    device: torch.device
    train_labels: torch.Tensor  # labels of the training split, indexed by Batch.idx (CRD's negatives)
    epochs: int                 # the protocol's main-stage epochs: stage lengths scale with it
    generator: torch.Generator | None = None  # the method's own randomness, seeded from (seed, method)
    extra_teachers: dict = field(default_factory=dict)  # arch -> frozen model, for `teacher_archs` (EKD)
    precision: Precision = FP32  # the run's (runner/train.py); `Method.backward_step` applies its scaler


def make_optimizer(params, protocol, stage: Stage) -> torch.optim.Optimizer:
    """The SGD of one stage: the protocol's settings, the stage's first learning rate and its own overrides. The
    one place it is made, for the runner (runner/train.py) and the method checks (methods/testing.py)."""
    settings = dict(lr=stage.lr_at(0), momentum=protocol.momentum, nesterov=protocol.nesterov,
                    weight_decay=protocol.weight_decay)
    settings.update(dict(stage.optimizer))
    return torch.optim.SGD(params, **settings)


def main_stage(protocol) -> Stage:
    """The paper's schedule: lr divided by 10 once 50% and once 75% of the epochs are done.

    Epoch i (0-based) starts after i/E of training, so a drop 'at 50%' applies from the first epoch with
    i >= 0.5 E: epochs 100 and 150 of 200, as the reference; short runs never skip a step (2 epochs: 0.1, 0.01).
    """
    e = protocol.epochs
    steps = [(0, protocol.lr)]
    for frac_start, div in ((0.5, 10), (0.75, 100)):
        steps.append((max(1, math.ceil(e * frac_start)), protocol.lr / div))
    return Stage("main", e, tuple(steps))


def scaled(epochs_ref: int, ref_total: int, protocol_epochs: int) -> int:
    """A stage length given in the reference's epochs (out of `ref_total`), scaled to the protocol, >= 1."""
    return max(1, int(round(epochs_ref * protocol_epochs / ref_total)))


class _Fallback:
    """A class attribute that reads another one until a subclass sets it (`display_name` -> `name`)."""

    def __init__(self, attr: str):
        self.attr = attr

    def __get__(self, obj, owner=None):
        return getattr(owner if owner is not None else type(obj), self.attr)


class Method:
    name: str = ""           # the registry key, also the `method` of its runs
    kind: str = ""
    description: str = ""
    citation: str = ""       # short reference of the method's paper: "Zagoruyko & Komodakis, ICLR 2017"
    display_name: str = _Fallback("name")           # the row name in tables and plots: "Soft target", "AT"
    short_name: str = _Fallback("display_name")     # inside an ensemble's name: "Ens-ST-FitNet"
    defaults: dict = {"weight": 1.0}
    needs_teacher: bool = True
    student_taps: tuple[str, ...] = ()
    teacher_taps: tuple[str, ...] = ()
    loss_fn = None  # the pure loss function of tensors (a staticmethod on subclasses), checked by the golden tests
    # why `--compile` (torch.compile of the student's forward) cannot serve this method, or None: it can
    no_compile: str | None = None

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict) -> torch.Tensor:
        """`cls.loss_fn` on one case of the golden vectors (../shared/golden/<name>.pt): `inputs` are tensors
        under the reference implementation's argument names, `hparams` its settings. Methods without golden
        vectors (the baseline and the systems beyond the paper's 20) do not define it."""
        raise NotImplementedError(f"{cls.name}: no golden vectors, so no reference_call")

    def __init__(self, student: nn.Module, teacher: nn.Module | None, hparams: dict, ctx: Context):
        unknown = set(hparams) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.name}: unknown hyperparameters {sorted(unknown)}; "
                             f"known: {sorted(self.defaults)}")
        self.hp = {**self.defaults, **hparams}
        self.student, self.teacher, self.ctx = student, teacher, ctx
        self.extra = nn.ModuleDict()
        if self.teacher is not None:
            self.teacher.eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def student_arch(cls, hparams: dict, student: str) -> str:
        """The network this method trains, given the benchmark's student (e.g. OEC-KD turns `resnet20` into its
        multi-branch version). Most methods train the student as it is."""
        return student

    @classmethod
    def teacher_archs(cls, hparams: dict) -> list[str]:
        """Architectures of additional pretrained teachers this method needs (planned as CE teacher runs of the
        same data and seed, loaded into `ctx.extra_teachers`). Most methods need none."""
        return []

    @classmethod
    def baseline_archs(cls, hparams: dict, student: str) -> list[str]:
        """Networks to train alone with CE beside this method, so each network it delivers has its own baseline
        row (OEC-KD's narrower students). The benchmark's student baseline is always planned anyway."""
        return []

    @classmethod
    def resolve_hparams(cls, overrides: dict, dataset: str) -> dict:
        """The full hyperparameters of a run (they go into the run id). Override for per-dataset defaults."""
        unknown = set(overrides) - set(cls.defaults)
        if unknown:
            raise UserError(f"{cls.name}: unknown hyperparameters {sorted(unknown)}; known: {sorted(cls.defaults)}")
        return {**cls.defaults, **overrides}

    def setup(self, s_feats: dict, t_feats: dict | None) -> None:
        """Build `self.extra` from the features of one dry-run forward (shapes only matter)."""

    def stages(self, protocol) -> list[Stage]:
        return [main_stage(protocol)]

    def stage_parameters(self, stage: Stage) -> Iterable[nn.Parameter]:
        """Parameters the optimiser of `stage` updates: by default the student and the extra modules."""
        return [p for m in (self.student, self.extra) for p in m.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> None:
        self.student.train(mode)
        self.extra.train(mode)
        if self.teacher is not None:
            self.teacher.eval()

    # ---- training -----------------------------------------------------------------------------------------
    # A cohort (runner/cohort.py) trains several runs over one batch stream and sets this to a per-batch cache
    # of the teacher's forward: called with (method, x), it returns the teacher's (no_grad, eval) output on `x`
    # when `x` is the batch it holds, else None. A separate run has none.
    teacher_cache = None

    def teacher_forward(self, x):
        if self.teacher_cache is not None:
            out = self.teacher_cache(self, x)
            if out is not None:
                return out
        with torch.no_grad():
            return self.teacher(x)

    def losses(self, batch: Batch, info: StepInfo) -> dict[str, torch.Tensor]:
        """Weighted losses of one batch: CE on the student plus the method's distillation terms (`distill`,
        computed in fp32 under autocast: see `in_fp32`)."""
        logits, feats = self.student(batch.x)
        out = {"ce": F.cross_entropy(logits, batch.y)}
        if self.needs_teacher:
            t_logits, t_feats = self.teacher_forward(batch.x)
            out.update(self.in_fp32(self.distill, logits, feats, t_logits, t_feats, batch, info))
        return out

    def in_fp32(self, fn, *args, **kwargs):
        """`fn(*args, **kwargs)`; in a step under autocast (bf16, fp16), computed with autocast off on float32
        copies of the tensors among the arguments (also inside dicts, lists, tuples). The networks run in reduced
        precision; the losses (softmax over logits, Gram matrices, norms, memory banks) and the small extra modules
        inside them stay in fp32, where reduced precision would lose them. fp32: a plain call."""
        precision = self.ctx.precision
        if not precision.reduced:
            return fn(*args, **kwargs)
        with precision.full():
            return fn(*to_fp32(args), **to_fp32(kwargs))

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch: Batch, info: StepInfo) -> dict:
        return {}

    def train_step(self, batch: Batch, info: StepInfo, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """One update. Returns the detached losses; the runner checks their epoch sums for NaN/inf (one device
        sync per epoch, not per step) and fails the run before anything of that epoch is saved."""
        losses = self.losses(batch, info)
        self.backward_step(sum(losses.values()), optimizer)
        return {k: v.detach() for k, v in losses.items()}

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      before_step: Callable[[], None] | None = None, last: bool = True) -> None:
        """Zero the gradients of `optimizer`'s parameters, back-propagate `loss` and step: the one place that does
        so, for `train_step` and every override of it (call it once per optimiser, e.g. KDFM's discriminator and
        student). fp32: exactly `zero_grad; backward; step`. Under autocast the backward pass runs with autocast
        off (its ops follow their forward's dtypes), and fp16 goes through the run's gradient scaler: scaled
        loss, unscaled gradients checked for inf/NaN (the step is skipped if any), scale updated.
        `before_step` runs between the backward pass and the step (e.g. to give unreached parameters zero
        gradients). A step with several optimisers passes `last=False` to all calls but its last: the scale is
        updated once per training step, after every optimiser has stepped (torch.amp's pattern)."""
        optimizer.zero_grad(set_to_none=True)
        precision = self.ctx.precision
        if not precision.reduced:
            loss.backward()
            if before_step is not None:
                before_step()
            optimizer.step()
            return
        scaler = precision.scaler
        with precision.full():
            (loss if scaler is None else scaler.scale(loss)).backward()
        if before_step is not None:
            before_step()
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            if last:
                scaler.update()

    # ---- what is evaluated and saved ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything of the method that a resumed run needs besides the student (extend for extra state)."""
        return {"extra": self.extra.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.extra.load_state_dict(state["extra"])

    def eval_model(self) -> nn.Module:
        """The network whose accuracy is the method's result (the student by default)."""
        return self.student

    def member_models(self) -> dict[str, nn.Module]:
        """Further networks a run delivers and the tables show as rows of their own, named `<method>-<key>`
        (OEC-KD's students, a multi-branch student's branches). Evaluated every epoch like the main one."""
        return {}

    def member_arch(self, key: str) -> str | None:
        """The standalone architecture a member equals, if any (it names the member's row); None: the run's."""
        return None
