"""Neuron selectivity transfer (Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity
Transfer", arXiv 1707.01219, 2017).

Each channel's spatial response pattern is treated as a sample from a distribution; matching the student's
distribution of such patterns to the teacher's by (squared) Maximum Mean Discrepancy transfers which regions
each neuron is selective to, without requiring channel-to-channel correspondence (paper, Sec. 3.2-3.3, Eq. 4).

As the reference (AberHu/Knowledge-Distillation-Zoo `kd_losses/nst.py`) only the polynomial kernel
k(x, y) = (x^T y + c)^d with d = 2, c = 0 is used (the paper's best CIFAR kernel), on channel maps L2-normalised
over H x W; each kernel term is a mean over B x C x C, on the last stage's post-ReLU output, weight 10.

Across resolutions (the CRD benchmark's pairs, Tian et al. 2020) the larger map is first average-pooled to the
smaller's H x W, as RepDistiller's `distiller_zoo/NST.py` (`nst_loss`); channel counts may differ (the MMD
compares two sets of channel maps). Maps of equal size are left as they are.
"""
import torch
import torch.nn.functional as F

from .at import match_spatial
from .base import Method


def _poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B, C_a, C_b] matrix of (a_i . b_j)^2 between the normalised channel maps of each sample."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2)


def nst_loss(fm_s: torch.Tensor, fm_t: torch.Tensor) -> torch.Tensor:
    """Squared MMD with the d=2, c=0 polynomial kernel between the sets of channel maps of student and teacher.

    The teacher-teacher term has no gradient for the student; it is kept so the loss is an MMD (zero when the
    two sets coincide), as in the reference.
    """
    s = F.normalize(fm_s.flatten(2), p=2, dim=2)
    t = F.normalize(fm_t.flatten(2), p=2, dim=2)
    return _poly_kernel(t, t).mean() + _poly_kernel(s, s).mean() - 2 * _poly_kernel(s, t).mean()


class NST(Method):
    name = "nst"
    display_name = "NST"
    kind = "feature"
    description = "MMD (polynomial kernel) between distributions of last-stage channel activation patterns"
    citation = "Huang & Wang, arXiv 1707.01219, 2017"
    defaults = {"weight": 10.0}
    student_taps = teacher_taps = ("stage3",)
    loss_fn = staticmethod(nst_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        return cls.loss_fn(inputs["fm_s"], inputs["fm_t"])

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        return {"nst": self.hp["weight"] * nst_loss(*match_spatial(s_feats["stage3"], t_feats["stage3"]))}
