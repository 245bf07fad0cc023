"""Variational information distillation (Ahn, Hu, Damianou, Lawrence & Dai, "Variational Information
Distillation for Knowledge Transfer", CVPR 2019).

Maximising the mutual information I(t; s) between teacher and student features is intractable, so the paper
maximises its variational lower bound H(t) - E[-log q(t | s)] (Eq. 2-4): the student must *predict* the
teacher's feature under a Gaussian q(t | s) = N(mu(s), sigma^2). mu is a small regressor on the student's map,
sigma^2 a learned per-channel variance (Eq. 5, the heteroscedastic variance of Eq. 4 reduced to one value per
channel), so channels the student cannot explain get a large variance and stop dominating the loss. H(t) does
not depend on the student and is dropped: the loss is the Gaussian negative log-likelihood without 0.5 log 2pi.

Reference conventions (AberHu/Knowledge-Distillation-Zoo `kd_losses/vid.py`, `train_kd.py`), kept on purpose:
* regressor conv1x1 (C_s -> mid) - ReLU - conv1x1 (mid -> mid) - ReLU - conv1x1 (mid -> C_t), no bias and
  *no BatchNorm* (the reference comments it out), mid = int(sf * C_t); conv weights Kaiming-normal (fan_out),
  as the reference initialises its OFD/AFD modules (the golden vectors give the weights, so they do not check
  the initialisation);
* sigma^2 = softplus(alpha) + eps with eps 1e-6 (RepDistiller: 1e-5) and alpha initialised so that
  sigma^2 = init_var (5.0) at the start;
* the loss is the *mean* over B x C x H x W (not a per-sample sum), one module per stage on the post-ReLU
  outputs of the three stages, averaged (/3); the modules are optimised with the student (weight decay
  included, also on alpha).

Across resolutions (the CRD benchmark's pairs, Tian et al. 2020), as RepDistiller's `distiller_zoo/VID.py`
(`VIDLoss.forward`): the larger of the student's input and the teacher's target is average-pooled to the
smaller's H x W before the regressor; the regressor's 1x1 convolutions already map the student's channels to
the teacher's (RepDistiller's `VIDLoss(C_s, C_t, C_t)` in `train_student.py`, our mid = sf * C_t with sf = 1).
Maps of equal size are left as they are.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from .at import match_spatial
from .base import Method

STAGES = ("stage1", "stage2", "stage3")


def vid_variance(alpha: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-channel variance, kept strictly positive by the softplus and eps so log(var) never diverges.

    The reference writes log(1 + exp(alpha)); softplus is the same function (to < 1e-8 absolute for
    |alpha| < 20) without the overflow of exp for large alpha."""
    return F.softplus(alpha) + eps


def vid_loss(pred_mean: torch.Tensor, fm_t: torch.Tensor, alpha: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood (without the constant) of the teacher map under N(mu, sigma^2)."""
    var = vid_variance(alpha, eps).view(1, -1, *([1] * (pred_mean.dim() - 2)))
    return (0.5 * (torch.log(var) + (pred_mean - fm_t) ** 2 / var)).mean()


def alpha_for_variance(init_var: float, eps: float = 1e-6) -> float:
    """The softplus inverse: the alpha whose variance is `init_var` (the reference's initial value)."""
    return math.log(math.expm1(init_var - eps))


class VIDModule(nn.Module):
    """The mean regressor mu(s) and the per-channel variance parameter of one stage.

    Attribute names follow the reference `state_dict` (`regressor.0.weight`, ..., `alpha`)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, init_var: float = 5.0,
                 eps: float = 1e-6):
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, 1, bias=False))
        self.alpha = nn.Parameter(torch.full((out_channels,), alpha_for_variance(init_var, eps)))
        for m in self.regressor:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, fm_s: torch.Tensor) -> torch.Tensor:
        """The predicted mean of the teacher's map."""
        return self.regressor(fm_s)


class VID(Method):
    name = "vid"
    display_name = "VID"
    kind = "feature"
    description = "student predicts the teacher's stage maps under a Gaussian with learned per-channel variance"
    citation = "Ahn et al., CVPR 2019"
    defaults = {"weight": 1.0, "sf": 1.0, "init_var": 5.0, "eps": 1e-6}
    student_taps = teacher_taps = STAGES
    loss_fn = staticmethod(vid_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        eps = hparams.get("eps", 1e-6)
        if hparams.get("variant") == "post_regressor":
            return cls.loss_fn(inputs["pred_mean"], inputs["fm_t"], inputs["alpha"], eps)
        with torch.device("meta"):  # structure only: the parameters come from the inputs, no RNG is consumed
            module = VIDModule(hparams["in_channels"], hparams["mid_channels"], hparams["out_channels"],
                               hparams.get("init_var", 5.0), eps)
        params = {k: inputs[k] for k, _ in module.named_parameters()}
        pred_mean = functional_call(module, params, (inputs["fm_s"],))
        return cls.loss_fn(pred_mean, inputs["fm_t"], inputs["alpha"], eps)

    def setup(self, s_feats, t_feats):
        for k in STAGES:
            s, t = s_feats[k].shape, t_feats[k].shape
            self.extra[k] = VIDModule(s[1], int(self.hp["sf"] * t[1]), t[1], self.hp["init_var"], self.hp["eps"])

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        per_stage = []
        for k in STAGES:
            module = self.extra[k]
            fm_s, fm_t = match_spatial(s_feats[k], t_feats[k].detach())
            per_stage.append(vid_loss(module(fm_s), fm_t, module.alpha, self.hp["eps"]))
        return {"vid": self.hp["weight"] * torch.stack(per_stage).mean()}
