"""Deep mutual learning (Zhang, Xiang, Hospedales & Lu, "Deep Mutual Learning", CVPR 2018).

No pretrained teacher: two networks learn together from scratch, each fitting the labels and the other's
current posterior, so each acts as the other's (moving) teacher. As in AberHu/Knowledge-Distillation-Zoo
(`train_dml.py`): two networks, T = 1, one forward each and a synchronous update (both KL targets come from the
same forward, before either network steps).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import build_seeded

from .base import Method


def dml_loss(out1: torch.Tensor, out2: torch.Tensor) -> torch.Tensor:
    """KL(p2 || p1) summed over classes and averaged over the batch, no temperature.

    `out1` are the logits of the network being updated, `out2` those of its peer. Like the reference loss
    module, this does not detach `out2`: the caller passes `out2.detach()` so each network only learns from
    the other, never pushes it.
    """
    return F.kl_div(F.log_softmax(out1, dim=1), F.softmax(out2, dim=1), reduction="batchmean")


class DML(Method):
    name = "dml"
    display_name = "DML"
    kind = "online"
    description = "mutual learning: student and a peer trained together, each matching the other's posterior"
    citation = "Zhang et al., CVPR 2018"
    defaults = {"weight": 1.0, "peer": "resnet110"}
    needs_teacher = False
    student_taps = ("logits",)
    loss_fn = staticmethod(dml_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        return cls.loss_fn(inputs["out1"], inputs["out2"])

    def setup(self, s_feats, t_feats):
        """The peer lives in `self.extra`, so the protocol's SGD optimises it with the student (one optimiser
        with identical settings == the reference's two identical optimisers, since neither loss reaches the
        other network's parameters) and checkpoints/resume carry it. It is built from the same (arch, classes,
        seed) initialisation as the CE run of that architecture, as the reference starts both nets from the
        saved initial weights of its baselines."""

        self.extra["peer"] = build_seeded(self.hp["peer"], self.ctx.num_classes, self.ctx.seed)

    @property
    def peer(self) -> nn.Module:
        return self.extra["peer"]

    def train(self, mode: bool = True) -> None:
        """The peer is trained like the student, so it follows train/eval mode (BatchNorm) with it."""
        super().train(mode)
        self.peer.train(mode)

    def losses(self, batch, info):
        logits, _ = self.student(batch.x)
        peer_logits, _ = self.peer(batch.x)
        w = self.hp["weight"]
        return {
            "ce": F.cross_entropy(logits, batch.y),
            "kl": w * self.in_fp32(dml_loss, logits, peer_logits.detach()),
            "peer_ce": F.cross_entropy(peer_logits, batch.y),
            "peer_kl": w * self.in_fp32(dml_loss, peer_logits, logits.detach()),
        }

    def eval_model(self) -> nn.Module:
        """The result is the student's accuracy; the peer is a training partner (saved in the checkpoint only)."""
        return self.student
