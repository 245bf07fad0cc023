"""Soft targets (Hinton et al. 2015): KL(p_t || p_s) at temperature T, scaled by T^2."""
import torch.nn.functional as F

from .base import Method


def st_loss(out_s, out_t, T: float = 4.0):
    """KL summed over classes, averaged over the batch, times T^2 (keeps gradients comparable across T)."""
    return F.kl_div(F.log_softmax(out_s / T, dim=1), F.softmax(out_t / T, dim=1), reduction="batchmean") * T * T


class SoftTarget(Method):
    name = "st"
    display_name = "Soft target"
    short_name = "ST"
    kind = "response"
    description = "Hinton soft targets: T^2 KL between softened teacher and student outputs"
    citation = "Hinton et al., NeurIPS-W 2015"
    defaults = {"weight": 0.1, "T": 4.0}
    student_taps = teacher_taps = ("logits",)
    loss_fn = staticmethod(st_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        return cls.loss_fn(inputs["out_s"], inputs["out_t"], hparams["T"])

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        return {"st": self.hp["weight"] * st_loss(s_logits, t_logits, self.hp["T"])}
