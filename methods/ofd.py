"""Overhaul of feature distillation (Heo, Kim, Yun, Park, Kwak & Choi, "A Comprehensive Overhaul of Feature
Distillation", ICCV 2019).

The paper distils *before* the ReLU: negative teacher responses carry information (how strongly a neuron is
off) that post-ReLU maps erase, but their exact values do not matter to the teacher's next layer. So the teacher
map is clipped from below at a per-channel margin m (Eq. 2, the expected negative response), the student map goes
through a connector (1x1 conv + BN, Sec. 3.3), and the partial L2 distance (Eq. 3) ignores positions where
the teacher is non-positive and the student is already below it: there, being "more negative" is harmless.

Reference conventions (AberHu/Knowledge-Distillation-Zoo `kd_losses/ofd.py`, `train_kd.py`), kept on purpose:
* the margin is computed from the *current batch* (mean of the teacher's negative pre-ReLU values per channel
  over B x H x W, 0 for a channel with none), not from the teacher's BN statistics as in the paper;
* the distance is the *mean* over B x C x H x W, with none of the paper's 2^-(n-i) stage weights or /1000;
* connector conv1x1 (C_s -> C_t, no bias) + BatchNorm2d, Kaiming-normal (fan_out) conv, BN (1, 0); it is in
  train mode while the student trains (batch statistics) and optimised with it;
* the three stages' pre-ReLU outputs are averaged (/3); the teacher stays in eval mode.

Across networks: the connector maps the student's channels to the teacher's, as the authors' code
(clovaai/overhaul-distillation `distiller.py`, `build_feature_connector`), which has no spatial adapter (its
pairs share every stage's grid) and which RepDistiller does not run; so pairs whose grids differ are left out
(runner/pairs.py) and `setup` refuses them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call

from .base import Method

STAGES = ("stage1_pre", "stage2_pre", "stage3_pre")


def ofd_margin(fm_t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """[1, C, 1, 1] per-channel mean of the negative teacher responses (the batch estimate of E[t | t < 0]).

    eps only guards channels without negative values (margin 0 there). The reference counts in float32, which
    drops the eps for any count >= 1; counting in the input's dtype changes values by < 1e-6 relative."""
    neg = (fm_t < 0).to(fm_t.dtype)
    dims = (0, *range(2, fm_t.dim()))
    return (fm_t * neg).sum(dim=dims, keepdim=True) / (neg.sum(dim=dims, keepdim=True) + eps)


def ofd_mask(conn_s: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 where the position counts, 0 where teacher target <= 0 and the student is already <= it (Eq. 3)."""
    return ~((conn_s <= target) & (target <= 0))


def ofd_loss(conn_s: torch.Tensor, fm_t: torch.Tensor, margin_eps: float = 1e-6) -> torch.Tensor:
    """Partial L2 between the connector output and the margin-clipped teacher map, averaged over all elements."""
    target = torch.maximum(fm_t, ofd_margin(fm_t, margin_eps))
    mask = ofd_mask(conn_s, target).to(conn_s.dtype)
    return ((conn_s - target) ** 2 * mask).mean()


class OFDConnector(nn.Module):
    """Student-to-teacher connector of one stage; names follow the reference `state_dict` (`connector.0/1.*`)."""

    def __init__(self, in_channels: int, out_channels: int, bn_eps: float = 1e-5):
        super().__init__()
        self.connector = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                       nn.BatchNorm2d(out_channels, eps=bn_eps))
        nn.init.kaiming_normal_(self.connector[0].weight, mode="fan_out", nonlinearity="relu")
        nn.init.ones_(self.connector[1].weight)
        nn.init.zeros_(self.connector[1].bias)

    def forward(self, fm_s: torch.Tensor) -> torch.Tensor:
        return self.connector(fm_s)


class OFD(Method):
    name = "ofd"
    display_name = "OFD"
    kind = "feature"
    description = "pre-ReLU feature distillation: margin-clipped teacher, 1x1 conv+BN connector, partial L2"
    citation = "Heo et al., ICCV 2019"
    defaults = {"weight": 0.5, "margin_eps": 1e-6, "bn_eps": 1e-5}
    student_taps = teacher_taps = STAGES
    loss_fn = staticmethod(ofd_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        margin_eps = hparams.get("margin_eps", 1e-6)
        if hparams.get("variant") == "post_connector":
            return cls.loss_fn(inputs["conn_s"], inputs["fm_t"], margin_eps)
        fm_s = inputs["fm_s"]
        with torch.device("meta"):  # structure only: parameters come from the inputs, no RNG is consumed
            module = OFDConnector(hparams["in_channels"], hparams["out_channels"], hparams.get("bn_eps", 1e-5))
        module.train(hparams.get("bn_mode", "train") == "train")  # train: batch mean and biased batch variance
        tensors = {k: inputs[k] for k, _ in module.named_parameters()}
        c = hparams["out_channels"]  # fresh running statistics, as in a just-built reference module
        tensors.update({"connector.1.running_mean": fm_s.new_zeros(c), "connector.1.running_var": fm_s.new_ones(c),
                        "connector.1.num_batches_tracked": torch.zeros((), dtype=torch.long, device=fm_s.device)})
        conn_s = functional_call(module, tensors, (fm_s,))
        return cls.loss_fn(conn_s, inputs["fm_t"], margin_eps)

    def setup(self, s_feats, t_feats):
        for k in STAGES:
            s, t = s_feats[k].shape, t_feats[k].shape
            if s[2:] != t[2:]:
                raise ValueError(f"ofd: {k} maps differ in spatial size (student {tuple(s[2:])}, teacher "
                                 f"{tuple(t[2:])}); the reference's 1x1 connector (clovaai/overhaul-distillation) "
                                 "needs equal sizes")
            self.extra[k] = OFDConnector(s[1], t[1], self.hp["bn_eps"])

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        per_stage = [ofd_loss(self.extra[k](s_feats[k]), t_feats[k].detach(), self.hp["margin_eps"])
                     for k in STAGES]
        return {"ofd": self.hp["weight"] * torch.stack(per_stage).mean()}
