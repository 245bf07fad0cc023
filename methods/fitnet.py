"""FitNets hints (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

The teacher's intermediate representation is a richer target than its logits; regressing the student's
'guided layer' onto the teacher's 'hint layer' passes that intermediate knowledge on (paper, Sec. 2.2, Eq. 3).

The reference (AberHu/Knowledge-Distillation-Zoo `kd_losses/fitnet.py`) simplifies the paper, and so do we:
* no regressor: ResNet-20 and ResNet-110 have the same last-stage shape (64 x 8 x 8), so the paper's
  convolutional regressor r(.) is the identity;
* no separate hint-training stage: the hint term is simply added to CE for the whole run (weight 0.1);
* the distance is the mean (not the paper's 1/2 sum) of squared differences over B x C x H x W.
"""
import torch.nn.functional as F

from .base import Method


def fitnet_loss(fm_s, fm_t):
    """Mean over all B x C x H x W elements of (f_s - f_t)^2 (the reference's `F.mse_loss`)."""
    return F.mse_loss(fm_s, fm_t)


class FitNet(Method):
    name = "fitnet"
    display_name = "FitNet"
    kind = "feature"
    description = "MSE hint between student and teacher last-stage feature maps"
    citation = "Romero et al., ICLR 2015"
    defaults = {"weight": 0.1}
    student_taps = teacher_taps = ("stage3",)
    loss_fn = staticmethod(fitnet_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        return cls.loss_fn(inputs["fm_s"], inputs["fm_t"])

    def setup(self, s_feats, t_feats):
        if s_feats["stage3"].shape[1:] != t_feats["stage3"].shape[1:]:
            raise ValueError(f"fitnet: student stage3 {tuple(s_feats['stage3'].shape[1:])} and teacher stage3 "
                             f"{tuple(t_feats['stage3'].shape[1:])} differ; the reference uses no regressor")

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        return {"fitnet": self.hp["weight"] * fitnet_loss(s_feats["stage3"], t_feats["stage3"])}
