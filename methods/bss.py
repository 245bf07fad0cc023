"""Boundary supporting samples (Heo, Lee, Yun & Choi, "Knowledge Distillation with Adversarial Samples
Supporting Decision Boundary", AAAI 2019).

Soft targets on training images say little about where the teacher's decision boundary lies. BSS pushes
correctly classified images towards the teacher's boundary with an iterative attack on the teacher, and
distils the teacher's (softened) outputs on those boundary-supporting samples, so the student learns the
boundary itself. Follows AberHu/Knowledge-Distillation-Zoo (`train_bss.py`, `kd_losses/bss.py`, itself adapted
from bhheo/BSS_distillation):

- only samples that both the student and the teacher classify correctly are attacked; if there are more than
  `attack_size`, those where the two posteriors disagree most on the non-target classes are kept;
- the attack class is drawn from the teacher's posterior restricted to its non-top-1 classes;
- each attack step moves the image along the normalised gradient of (p_c - p_y) by alpha * (p_y - p_c + eps),
  stops for a sample once the teacher's prediction leaves the target, and clamps to [-2.5, 2.5];
- the loss is KL(p_t || p_s) at temperature T **without** the T^2 factor (commented out in the reference);
- its weight is 0 during a warm-up (reference: epochs 1..10 of 200) and then decays linearly,
  weight * max(1 - 1.25 * (epoch - 1) / epochs, 0) with 1-based epochs: the last 20 % of training is CE only.
  No attack is run while the weight is 0 (the reference skips it too).

BatchNorm: the attack only runs the teacher (in eval mode); the student is not called during the attack, so
the attack cannot move the student's BatchNorm statistics. The student's forward on the attacked samples,
which is part of the loss, is a training forward (train mode), as in the reference, whose whole loop runs
under `snet.train()`: this forward normalises with the statistics of the attacked batch and updates the running
statistics, exactly like the reference.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.seeding import method_generator

from .base import Method, scaled


def bss_loss(attacked_out_s: torch.Tensor, attacked_out_t: torch.Tensor, T: float = 3.0) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)), summed over classes, averaged over the attacked samples; no T^2."""
    return F.kl_div(F.log_softmax(attacked_out_s / T, dim=1), F.softmax(attacked_out_t / T, dim=1),
                    reduction="batchmean")


# ---- the schedule -----------------------------------------------------------------------------------------------
WARMUP_REF, TOTAL_REF = 10, 200  # reference: no BSS in epochs 1..10 of 200


def bss_weight(weight: float, epoch: int, total_epochs: int) -> float:
    """The BSS weight at 0-based global `epoch`: 0 in the warm-up (scaled from 10 of 200 epochs), then a linear
    decay in the reference's 1-based epoch, reaching 0 at 80 % of training."""
    e = epoch + 1
    if e <= scaled(WARMUP_REF, TOTAL_REF, total_epochs):
        return 0.0
    return weight * max(1.0 - 1.25 * (e - 1) / total_epochs, 0.0)


# ---- sample and class selection, the attack ---------------------------------------------------------------------
def select_samples(s_logits: torch.Tensor, t_logits: torch.Tensor, target: torch.Tensor,
                   attack_size: int) -> torch.Tensor:
    """Indices of the samples to attack: classified correctly by both networks; if too many, the `attack_size`
    with the largest sum over non-target classes of (p_t - p_s)^2 (where the student most needs the boundary)."""
    ok = (s_logits.argmax(1) == target) & (t_logits.argmax(1) == target)
    idx = ok.nonzero().flatten()
    if idx.numel() > attack_size:
        diff = (F.softmax(t_logits[idx], 1) - F.softmax(s_logits[idx], 1)) ** 2
        score = diff.sum(1) - diff.gather(1, target[idx].unsqueeze(1)).squeeze(1)
        idx = idx[score.argsort(descending=True)[:attack_size]]
    return idx


def sample_attack_class(t_logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One class per row, drawn with probability proportional to the teacher's softmax over its non-top-1 classes
    (inverse-CDF sampling with one uniform draw per row from `generator`, as the reference does with torch.rand).
    If rounding leaves the draw above the cumulative sum, the reference's fallback (the teacher's 2nd class) holds."""
    scores, classes = F.softmax(t_logits, 1).sort(dim=1, descending=True)
    scores, classes = scores[:, 1:], classes[:, 1:]
    u = torch.rand(scores.shape[0], generator=generator).to(device=scores.device, dtype=scores.dtype)
    threshold = (scores.sum(1) * u).unsqueeze(1)
    pos = (scores.cumsum(1) < threshold).sum(1)
    pos = torch.where(pos >= scores.shape[1], torch.zeros_like(pos), pos)
    return classes.gather(1, pos.unsqueeze(1)).squeeze(1)


def bss_attack(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attack_class: torch.Tensor,
               step_alpha: float = 0.3, num_steps: int = 10, eps: float = 1e-4, bound: float = 2.5) -> torch.Tensor:
    """Iteratively push `x` from `target` towards `attack_class` across `model`'s decision boundary.

    Step: x += alpha * (p_y - p_c + eps) * g / ||g||, g = d(p_c - p_y)/dx per sample, so steps shrink as the two
    probabilities meet; a sample stops moving as soon as the model no longer predicts `target`; all samples are
    clamped to [-bound, bound] after each step; stops early when no sample is left. `model` is used as given
    (the caller keeps the teacher in eval mode). Returns detached images.

    Deviation (degenerate case only): the gradient norm is floored at 1e-12, so a sample with an exactly zero
    gradient does not move, where the reference would produce NaN.
    """
    adv = x.detach().clone()
    for _ in range(num_steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            out = model(adv)[0]
            p = F.softmax(out.float(), dim=1)  # under autocast the logits are bf16/fp16: probabilities in fp32
            p_y = p.gather(1, target.unsqueeze(1)).squeeze(1)
            p_c = p.gather(1, attack_class.unsqueeze(1)).squeeze(1)
            grad = torch.autograd.grad((p_c - p_y).sum(), adv)[0]
        active = out.argmax(1) == target
        if not bool(active.any()):
            break
        with torch.no_grad():
            size = step_alpha * active.to(p.dtype) * (p_y - p_c + eps)
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
            shape = (-1,) + (1,) * (grad.dim() - 1)
            adv = (adv + (size / norm).view(shape) * grad).clamp(-bound, bound)
    return adv.detach()


class BSS(Method):
    name = "bss"
    display_name = "BSS"
    kind = "response"
    description = "distil the teacher on adversarial samples pushed to its decision boundary"
    citation = "Heo et al., AAAI 2019"
    defaults = {"weight": 2.0, "T": 3.0, "attack_size": 32, "step_alpha": 0.3, "num_steps": 10,
                "attack_eps": 1e-4, "bound": 2.5}
    student_taps = teacher_taps = ("logits",)
    loss_fn = staticmethod(bss_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        return cls.loss_fn(inputs["attacked_out_s"], inputs["attacked_out_t"], hparams["T"])

    def __init__(self, student, teacher, hparams, ctx):
        super().__init__(student, teacher, hparams, ctx)
        if ctx.generator is None:
            # The attack class is random; without a runner-provided generator, own one (seeded from the run) so
            # the global RNG is never touched. Stored on ctx so a runner checkpoints it like its own.
            ctx.generator = method_generator(ctx.seed, self.name)

    def weight_at(self, info) -> float:
        return bss_weight(self.hp["weight"], info.epoch, info.total_epochs)

    def attack_batch(self, x, y, s_logits, t_logits):
        """(attacked images, their indices in the batch); images is None when no sample qualifies."""
        s_logits, t_logits = s_logits.detach().float(), t_logits.detach().float()  # fp32 under autocast too
        with torch.no_grad():
            idx = select_samples(s_logits, t_logits, y, int(self.hp["attack_size"]))
        if idx.numel() == 0:
            return None, idx
        attack_class = sample_attack_class(t_logits[idx], self.ctx.generator)
        adv = bss_attack(self.teacher, x[idx], y[idx], attack_class, self.hp["step_alpha"],
                         int(self.hp["num_steps"]), self.hp["attack_eps"], self.hp["bound"])
        return adv, idx

    def losses(self, batch, info):
        logits, _ = self.student(batch.x)
        t_logits, _ = self.teacher_forward(batch.x)
        out = {"ce": F.cross_entropy(logits, batch.y), "bss": logits.new_zeros(())}
        weight = self.weight_at(info)
        if weight > 0:
            adv, _ = self.attack_batch(batch.x, batch.y, logits, t_logits)
            if adv is not None:
                adv_s, _ = self.student(adv)
                adv_t, _ = self.teacher_forward(adv)
                out["bss"] = weight * self.in_fp32(bss_loss, adv_s, adv_t, self.hp["T"])
        return out
