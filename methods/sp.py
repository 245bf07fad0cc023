"""Similarity-preserving knowledge distillation (Tung & Mori, ICCV 2019).

Inputs that the teacher maps to similar activations should also be mapped to similar activations by the
student; comparing the B x B similarity matrices of a mini-batch transfers that pairwise structure without
needing the student's feature space to look like the teacher's (paper, Sec. 3, Eqs. 1-4).

Reference conventions (AberHu/Knowledge-Distillation-Zoo `kd_losses/sp.py`): G = F F^T of the flattened maps,
rows L2-normalised (F.normalize, eps 1e-12), distance = mean over the B^2 entries of the squared difference
(equal to the paper's ||.||_F^2 / b^2); the script averages the three stages (post-ReLU) with weight 3000
(the paper's gamma). RepDistiller applies SP to the last stage only.
"""
import torch
import torch.nn.functional as F

from .base import Method


def similarity_matrix(fm: torch.Tensor) -> torch.Tensor:
    """Row-normalised [B, B] Gram matrix of the flattened activations."""
    flat = fm.flatten(1)
    return F.normalize(flat @ flat.t(), p=2, dim=1)


def sp_loss(fm_s: torch.Tensor, fm_t: torch.Tensor) -> torch.Tensor:
    """One layer: mean over B x B of the squared difference of the normalised similarity matrices."""
    return F.mse_loss(similarity_matrix(fm_s), similarity_matrix(fm_t))


class SP(Method):
    name = "sp"
    display_name = "SP"
    kind = "relation"
    description = "match row-normalised batch similarity (Gram) matrices of the three stages"
    citation = "Tung & Mori, ICCV 2019"
    defaults = {"weight": 3000.0}
    student_taps = teacher_taps = ("stage1", "stage2", "stage3")
    loss_fn = staticmethod(sp_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        return cls.loss_fn(inputs["fm_s"], inputs["fm_t"])

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        per_stage = [sp_loss(s_feats[k], t_feats[k]) for k in self.student_taps]
        return {"sp": self.hp["weight"] * torch.stack(per_stage).mean()}
