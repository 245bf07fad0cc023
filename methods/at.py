"""Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

The student is asked to reproduce *where* the teacher's activations are large, not the activations
themselves: a channel-free spatial map can be compared across networks of different width, and normalising it
removes the overall activation scale so only the spatial distribution is transferred (paper, Sec. 3, Eq. 2).

Reference conventions (AberHu/Knowledge-Distillation-Zoo `kd_losses/at.py`), kept on purpose:
* the map is the channel *sum* of |f|^p (the paper's F_sum^p), not RepDistiller's channel mean;
* it is divided by (its L2 norm over H x W + eps), eps added to the norm rather than clamping it;
* the distance is the *mean squared* difference over B x H x W, not the paper's (unsquared) L2 norm of the
  difference summed over the batch (szagoruyko/attention-transfer#34); the weight 1000 compensates for that;
* the training script averages the three stage outputs (post-ReLU of the last block of each stage).

Across networks whose stages sit at different grids (the CRD benchmark's pairs, Tian et al. 2020), the larger
of the two maps is first average-pooled to the smaller's H x W, as RepDistiller's `distiller_zoo/AT.py`
(`at_loss`) does; channels need not agree (the map sums over them). Maps of equal size are left as they are.
"""
import torch
import torch.nn.functional as F

from .base import Method


def attention_map(fm: torch.Tensor, p: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """[B, 1, H, W] spatial attention, scale-free so that teacher and student magnitudes need not agree."""
    am = fm.abs().pow(p).sum(dim=1, keepdim=True)
    norm = torch.linalg.vector_norm(am, ord=2, dim=(2, 3), keepdim=True)
    return am / (norm + eps)


def match_spatial(fm_s: torch.Tensor, fm_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two maps at one grid: the larger adaptive-average-pooled to the smaller's H x W (RepDistiller
    `distiller_zoo/AT.py` at_loss, also its NST, VID and FT losses); unchanged, the same tensors, when equal.
    No parameters: the adapter of the losses that compare maps position by position across resolutions."""
    (h_s, w_s), (h_t, w_t) = fm_s.shape[2:], fm_t.shape[2:]
    if h_s > h_t:
        fm_s = F.adaptive_avg_pool2d(fm_s, (h_t, w_t))
    elif h_s < h_t:
        fm_t = F.adaptive_avg_pool2d(fm_t, (h_s, w_s))
    return fm_s, fm_t


def at_loss(fm_s: torch.Tensor, fm_t: torch.Tensor, p: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """One layer: mean over B x H x W of the squared difference of the normalised attention maps."""
    return F.mse_loss(attention_map(fm_s, p, eps), attention_map(fm_t, p, eps))


class AT(Method):
    name = "at"
    display_name = "AT"
    kind = "feature"
    description = "match normalised spatial attention maps (sum_c |f|^p) of the three stages"
    citation = "Zagoruyko & Komodakis, ICLR 2017"
    defaults = {"weight": 1000.0, "p": 2.0, "eps": 1e-6}
    student_taps = teacher_taps = ("stage1", "stage2", "stage3")
    loss_fn = staticmethod(at_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        return cls.loss_fn(inputs["fm_s"], inputs["fm_t"], hparams.get("p", 2.0), hparams.get("eps", 1e-6))

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        per_stage = [at_loss(*match_spatial(s_feats[k], t_feats[k]), self.hp["p"], self.hp["eps"])
                     for k in self.student_taps]
        return {"at": self.hp["weight"] * torch.stack(per_stage).mean()}
