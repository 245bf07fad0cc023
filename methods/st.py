"""Soft targets (Hinton et al. 2015): KL(p_t || p_s) at temperature T, scaled by T^2.

Option `logit_stand` (default off; off leaves the loss and the run's recorded hyperparameters as before): z-score
both logit vectors per sample before the softmaxes (logit standardization, Sun et al. CVPR 2024), which is then
exactly the LSKD loss (`methods/lskd.py`) at temperature T. The LSKD repository runs this with T 2 and weight
9 (CE weight 0.1); `st` keeps its own T and weight unless they are set too.
"""
import torch.nn.functional as F

from .base import Method
from .lskd import standardize


def st_loss(out_s, out_t, T: float = 4.0, logit_stand: bool = False):
    """KL summed over classes, averaged over the batch, times T^2 (keeps gradients comparable across T); with
    `logit_stand` on the per-sample z-scored logits."""
    if logit_stand:
        out_s, out_t = standardize(out_s), standardize(out_t)
    return F.kl_div(F.log_softmax(out_s / T, dim=1), F.softmax(out_t / T, dim=1), reduction="batchmean") * T * T


class SoftTarget(Method):
    name = "st"
    display_name = "Soft target"
    short_name = "ST"
    kind = "response"
    description = "Hinton soft targets: T^2 KL between softened teacher and student outputs"
    citation = "Hinton et al., NeurIPS-W 2015"
    defaults = {"weight": 0.1, "T": 4.0, "logit_stand": False}
    student_taps = teacher_taps = ("logits",)
    loss_fn = staticmethod(st_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        return cls.loss_fn(inputs["out_s"], inputs["out_t"], hparams["T"])

    @classmethod
    def resolve_hparams(cls, overrides: dict, dataset: str) -> dict:
        """`logit_stand` is recorded only when on, so the runs (and run ids) of plain `st` stay what they were."""
        hp = super().resolve_hparams(overrides, dataset)
        if not hp["logit_stand"]:
            del hp["logit_stand"]
        return hp

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        return {"st": self.hp["weight"] * st_loss(s_logits, t_logits, self.hp["T"], bool(self.hp["logit_stand"]))}
