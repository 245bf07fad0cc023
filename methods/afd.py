"""Attention-based feature distillation (Wang, Lan, Zhang, Sun, Chen & Liu, "Pay Attention to Features,
Transfer Learn Faster CNNs" (AFDS), ICLR 2020), in the form of AberHu/Knowledge-Distillation-Zoo.

Not every teacher channel is equally worth imitating: AFDS learns, per sample, how much each channel of the
teacher's map should be transferred (its attentive feature distillation, Sec. 3.2) and weighs a per-channel
feature distance by that attention. The reference README finds the paper's attention unstable and replaces it
with a squeeze-and-excitation block on the teacher's globally pooled map; the resulting weights are a sigmoid,
renormalised to sum to 1 over channels.

Reference conventions (`kd_losses/afd.py`, `train_kd.py`), kept on purpose:
* attention = conv1x1 (C -> int(C * att_f), bias) - ReLU - conv1x1 (-> C, bias) on GAP(teacher map),
  Kaiming-normal (fan_out) weights and zero biases; rho = sigmoid(.) / sum_c sigmoid(.);
* each channel map is divided by (its L2 norm over H x W + 1e-6), so only the spatial pattern is compared;
* loss = mean over the batch of sum_c rho_c * mean_{H,W} (s - t)^2, on the post-ReLU outputs of the three
  stages, averaged (/3); teacher and student have the same channels (no connector);
* the attention modules are optimised *with the student on the same loss*, so they are free to lower the weight
  of channels that are hard to match (the reference does exactly this; the paper's regularisation is absent).

The reference compares maps of equal shape only (no connector; RepDistiller has no AFD), so pairs whose stage
maps differ are left out (runner/pairs.py) and `setup` refuses them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from .base import Method

STAGES = ("stage1", "stage2", "stage3")


def afd_channel_weights(att_logits: torch.Tensor) -> torch.Tensor:
    """[B, C] channel weights summing to 1 per sample (sigmoid gates, renormalised)."""
    gate = torch.sigmoid(att_logits.flatten(1))
    return gate / gate.sum(dim=1, keepdim=True)


def _unit_maps(fm: torch.Tensor, eps: float) -> torch.Tensor:
    """Each channel map scaled to (almost) unit L2 norm over H x W; eps keeps all-zero (dead) channels at 0."""
    return fm / (torch.linalg.vector_norm(fm, ord=2, dim=(2, 3), keepdim=True) + eps)


def afd_loss(fm_s: torch.Tensor, fm_t: torch.Tensor, att_logits: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Attention-weighted per-channel distance of the normalised maps, summed over channels, mean over batch.

    `att_logits` is the attention module's output on GAP(fm_t), before the sigmoid ([B, C] or [B, C, 1, 1])."""
    rho = afd_channel_weights(att_logits)
    dist = (_unit_maps(fm_s, eps) - _unit_maps(fm_t, eps)).pow(2).mean(dim=(2, 3))
    return (rho * dist).sum(dim=1).mean()


class AFDAttention(nn.Module):
    """SE-style channel attention of one stage; names follow the reference `state_dict` (`attention.0/2.*`)."""

    def __init__(self, channels: int, att_f: float = 1.0):
        super().__init__()
        mid = int(channels * att_f)
        self.attention = nn.Sequential(nn.Conv2d(channels, mid, 1, bias=True), nn.ReLU(),
                                       nn.Conv2d(mid, channels, 1, bias=True))
        for m in self.attention:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, fm_t: torch.Tensor) -> torch.Tensor:
        """[B, C, 1, 1] attention logits from the teacher's globally average-pooled map."""
        return self.attention(F.adaptive_avg_pool2d(fm_t, 1))


class AFD(Method):
    name = "afd"
    display_name = "AFD"
    kind = "feature"
    description = "SE attention on the teacher's pooled map weighs per-channel distances of normalised stage maps"
    citation = "Wang et al., ICLR 2020"
    defaults = {"weight": 500.0, "att_f": 1.0, "eps": 1e-6}
    student_taps = teacher_taps = STAGES
    loss_fn = staticmethod(afd_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        eps = hparams.get("eps", 1e-6)
        if hparams.get("variant") == "post_attention":
            return cls.loss_fn(inputs["fm_s"], inputs["fm_t"], inputs["att_logits"], eps)
        with torch.device("meta"):  # structure only: parameters come from the inputs, no RNG is consumed
            module = AFDAttention(hparams["in_channels"], hparams.get("att_f", 1.0))
        params = {k: inputs[k] for k, _ in module.named_parameters()}
        att_logits = functional_call(module, params, (inputs["fm_t"],))
        return cls.loss_fn(inputs["fm_s"], inputs["fm_t"], att_logits, eps)

    def setup(self, s_feats, t_feats):
        for k in STAGES:
            s, t = s_feats[k].shape, t_feats[k].shape
            if s[1:] != t[1:]:
                raise ValueError(f"afd: {k} maps differ (student {tuple(s[1:])}, teacher {tuple(t[1:])}); "
                                 "the reference compares maps of equal shape, without a connector")
            self.extra[k] = AFDAttention(t[1], self.hp["att_f"])

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        per_stage = []
        for k in STAGES:
            fm_t = t_feats[k].detach()
            per_stage.append(afd_loss(s_feats[k], fm_t, self.extra[k](fm_t), self.hp["eps"]))
        return {"afd": self.hp["weight"] * torch.stack(per_stage).mean()}
