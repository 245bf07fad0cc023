"""Correlation congruence (Peng, Jin, Liu, Li, Wu, Liu, Zhou & Zhang, "Correlation Congruence for Knowledge
Distillation", ICCV 2019).

Besides instance-level agreement, the student should reproduce the *correlation between instances* of the
teacher: a kernel matrix over the batch (paper Sec. 3.3, Eq. 6). The paper's Gaussian RBF kernel is
approximated by its P-order Taylor series so it reduces to powers of the cosine similarity (Eq. 9):
exp(-gamma |a - b|^2) = exp(-2 gamma) exp(2 gamma a.b) for unit vectors.

Reference conventions (AberHu/Knowledge-Distillation-Zoo `kd_losses/cc.py`), kept on purpose:
* features L2-normalised with `F.normalize` (eps 1e-12 clamp on the norm), no embedding layer;
* no instance-congruence term and no class-aware (CUR/SUR) batch sampler: only the correlation term;
* the matrices are compared with `F.mse_loss` (mean over B x B), hence the large weight 100.
RepDistiller's `Correlation` is a different loss (consecutive-sample |difference| products, RepDistiller#15).
"""
import math

import torch
import torch.nn.functional as F

from .base import Method


def correlation_matrix(feat: torch.Tensor, gamma: float = 0.4, P_order: int = 2) -> torch.Tensor:
    """[B, B] Taylor-expanded Gaussian-RBF kernel of the L2-normalised features."""
    unit = F.normalize(feat, p=2, dim=-1)
    sim = unit @ unit.t()
    corr = torch.zeros_like(sim)
    for p in range(int(P_order) + 1):
        coeff = math.exp(-2.0 * gamma) * (2.0 * gamma) ** p / math.factorial(p)
        corr = corr + coeff * sim.pow(p)
    return corr


def cc_loss(feat_s: torch.Tensor, feat_t: torch.Tensor, gamma: float = 0.4, P_order: int = 2) -> torch.Tensor:
    """Mean squared difference of the student's and the teacher's batch correlation matrices."""
    return F.mse_loss(correlation_matrix(feat_s, gamma, P_order), correlation_matrix(feat_t, gamma, P_order))


class CC(Method):
    name = "cc"
    display_name = "CC"
    kind = "relation"
    description = "match batch correlation matrices (P-order Taylor Gaussian RBF) of pooled features"
    citation = "Peng et al., ICCV 2019"
    defaults = {"weight": 100.0, "gamma": 0.4, "P_order": 2}
    student_taps = teacher_taps = ("pool",)
    loss_fn = staticmethod(cc_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        return cls.loss_fn(inputs["feat_s"], inputs["feat_t"], hparams["gamma"], hparams["P_order"])

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        loss = cc_loss(s_feats["pool"], t_feats["pool"], self.hp["gamma"], self.hp["P_order"])
        return {"cc": self.hp["weight"] * loss}
