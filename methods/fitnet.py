"""FitNets hints (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).

The teacher's intermediate representation is a richer target than its logits; regressing the student's
'guided layer' onto the teacher's 'hint layer' passes that intermediate knowledge on (paper, Sec. 2.2, Eq. 3).

The reference (AberHu/Knowledge-Distillation-Zoo `kd_losses/fitnet.py`) simplifies the paper, and so do we:
* no regressor where the maps already agree: ResNet-20 and ResNet-110 have the same last-stage shape
  (64 x 8 x 8), so the paper's convolutional regressor r(.) is the identity;
* no separate hint-training stage: the hint term is simply added to CE for the whole run (weight 0.1);
* the distance is the mean (not the paper's 1/2 sum) of squared differences over B x C x H x W.

Where the student's and the teacher's stage-3 maps differ (the CRD benchmark's pairs, Tian et al. 2020), the
student's map goes through RepDistiller's regressor (`models/util.py` ConvReg, built by `train_student.py`
for `--distill hint`): one convolution to the teacher's channels and grid, then BN and ReLU, trained with the
student. The tap stays this project's stage3 (RepDistiller's default `--hint_layer 2` is the second stage);
RepDistiller also puts a 1x1 ConvReg on maps of equal shape, which we do not, so equal-shape runs are unchanged.
"""
import torch.nn as nn
import torch.nn.functional as F

from .base import Method


def fitnet_loss(fm_s, fm_t):
    """Mean over all B x C x H x W elements of (f_s - f_t)^2 (the reference's `F.mse_loss`)."""
    return F.mse_loss(fm_s, fm_t)


def regressor_fits(s_shape, t_shape) -> bool:
    """Whether ConvReg has a convolution from a (C, H, W) student map to the teacher's grid: the student's is
    at least as large, or exactly half (RepDistiller raises for any other smaller grid)."""
    return s_shape[1] >= t_shape[1] or 2 * s_shape[1] == t_shape[1]


class ConvReg(nn.Module):
    """A student map regressed to the teacher's (C, H, W), after RepDistiller `models/util.py` ConvReg.

    The convolution by grid: half the student's -> 3x3 stride 2; twice it -> 4x4 stride-2 transposed; smaller
    otherwise -> a valid (1 + H_s - H_t) x (1 + W_s - W_t) convolution (1x1 on equal grids); then BN, and ReLU
    unless `relu` is False (AB's connector). PyTorch's default initialisation and biases, as the reference."""

    def __init__(self, s_shape, t_shape, relu: bool = True):
        super().__init__()
        (c_s, h_s, w_s), (c_t, h_t, w_t) = tuple(s_shape), tuple(t_shape)
        if h_s == 2 * h_t:
            self.conv = nn.Conv2d(c_s, c_t, 3, stride=2, padding=1)
        elif 2 * h_s == h_t:
            self.conv = nn.ConvTranspose2d(c_s, c_t, 4, stride=2, padding=1)
        elif h_s >= h_t:
            self.conv = nn.Conv2d(c_s, c_t, (1 + h_s - h_t, 1 + w_s - w_t))
        else:
            raise ValueError(f"no regressor from a {h_s}x{w_s} student map to a {h_t}x{w_t} teacher map "
                             "(RepDistiller's ConvReg handles a larger, equal or half-size student grid only)")
        self.bn = nn.BatchNorm2d(c_t)
        self.relu = relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


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
        s, t = s_feats["stage3"].shape[1:], t_feats["stage3"].shape[1:]
        if s != t:  # only then: equal-shape pairs keep the reference's identity regressor
            self.extra["regressor"] = ConvReg(s, t)

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        fm_s = s_feats["stage3"]
        if "regressor" in self.extra:
            fm_s = self.extra["regressor"](fm_s)
        return {"fitnet": self.hp["weight"] * fitnet_loss(fm_s, t_feats["stage3"])}
