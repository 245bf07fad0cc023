"""Logits regression (Ba & Caruana 2014): mean squared error between student and teacher logits."""
import torch.nn.functional as F

from .base import Method


def logits_loss(out_s, out_t):
    """Mean over all B x K entries of (z_s - z_t)^2, as the reference's `F.mse_loss`."""
    return F.mse_loss(out_s, out_t)


class Logits(Method):
    name = "logits"
    display_name = "Logits"
    kind = "response"
    description = "MSE between student and teacher logits"
    citation = "Ba & Caruana, NeurIPS 2014"
    defaults = {"weight": 0.1}
    student_taps = teacher_taps = ("logits",)
    loss_fn = staticmethod(logits_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        """The loss under the reference's argument names (for the golden vectors of ../shared/golden)."""
        return cls.loss_fn(inputs["out_s"], inputs["out_t"])

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        return {"logits": self.hp["weight"] * logits_loss(s_logits, t_logits)}
