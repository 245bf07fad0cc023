"""KDFM, paper-inspired: knowledge distillation with feature maps (after Chen, Chang, Lu & Lee, "Knowledge
Distillation with Feature Maps for Image Classification", ACCV 2018, arXiv 1812.00660).

Why: a teacher's last feature map carries more than its logits, and a student that produces the teacher's map
can use the teacher's own classifier. Two techniques make the student learn that map (the abstract's, verified):
a *shared classifier* (the teacher's pooling + FC, frozen, is the student's head, so the student's map must
mean what the teacher's means) and a *GAN* (a discriminator tells teacher maps from student maps; the student
learns to fool it). The paper's pairs are DenseNet-40 -> 4-layer CNN and DenseNet-100 -> MobileNet on CIFAR-100
(`densenet40` -> `cnn4`, `densenet100` -> `mobilenet`); any zoo pair works, the smoke runs ResNet-110 -> ResNet-20.

Everything about how is our default [D] (paper-notes §3.3-3.5; the PDF's details were not retrieved):
* teacher map f_T = the teacher's `stage3` (its last map before pooling, post-ReLU), classifier C_T = global
  average pooling + the teacher's `linear`, frozen; C_T(f_T) is exactly the teacher's logits;
* adapter: conv1x1 (C_s -> C_T, no bias) + BN on the student's `stage3`; for the feature and adversarial terms
  the adapted map is resized to the teacher's grid (bilinear up, e.g. MobileNet's 2x2 -> 8x8; average-pooled
  down), while the classifier pools the map at its own size (pooling makes the size irrelevant);
* discriminator on C_T x H x W maps: conv3x3(C_T->128)-LReLU(0.2), conv3x3(128->256, s2)-BN-LReLU,
  conv3x3(256->256, s2)-BN-LReLU, GAP, FC(1); vanilla GAN loss with logits;
* losses: L_D = BCE(D(f_T), 1) + BCE(D(f_S), 0);
  L_S = adv * BCE(D(f_S), 1) + weight * MSE(f_S, f_T) + kd * T^2 * KL(C_T(f_T)/T || C_T(f_S)/T) + ce * CE(y, C_T(f_S))
  with adv = 0.01, weight (feature maps) = 1, kd = 1, T = 4, ce = 1;
* alternation: per batch one discriminator step (Adam lr 2e-4, betas (0.5, 0.999), no weight decay), then one
  student step (the protocol's SGD on backbone + adapter); one stage, no head fine-tuning (the head is frozen).

The delivered network is the student's own architecture. At inference BN is a per-channel affine map, so
pooling(BN(conv1x1(f))) = BN(conv1x1(pooling(f))) and adapter + shared classifier fold exactly into one linear
layer C_s -> classes: `eval_model` writes that fold into the student's `linear` (which training never uses nor
updates: no loss reaches it, so it has no gradient) and returns the student. Its size, speed and `model.pt` are
then those of a plain student, loadable like any other run's; nothing of the adapter is left to count.
The discriminator is a training-only module in `extra` (so it is saved, moved and counted as extra
parameters), kept at requires_grad=False outside its own step: the student step then builds no gradient for it,
and the protocol's SGD, which takes the trainable extra parameters, never touches it. Its Adam state is part of
the method's state_dict, so a resumed run continues exactly.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Method


def kdfm_student_loss(f_s, f_t, z_s, z_t, y, d_fake, T: float = 4.0, weight: float = 1.0, adv: float = 0.01,
                      kd: float = 1.0, ce: float = 1.0) -> dict[str, torch.Tensor]:
    """The student's weighted terms. `d_fake`: the discriminator's logits on the student maps (graph kept to
    f_s); `z_s`, `z_t`: the shared classifier's outputs on the student and teacher maps."""
    kl = F.kl_div(F.log_softmax(z_s / T, dim=1), F.softmax(z_t / T, dim=1), reduction="batchmean")
    return {
        "ce": ce * F.cross_entropy(z_s, y),
        "fm": weight * F.mse_loss(f_s, f_t),
        "kd": kd * kl * T * T,
        "adv": adv * F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake)),
    }


def kdfm_discriminator_loss(d_real, d_fake) -> torch.Tensor:
    """Vanilla GAN discriminator loss on logits: teacher maps are 'real' (1), student maps 'fake' (0)."""
    return (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
            + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))


class Resize(nn.Module):
    """Bring a map to the teacher's spatial size: bilinear when smaller, average pooling when larger."""

    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = tuple(size)

    def forward(self, x):
        if tuple(x.shape[-2:]) == self.size:
            return x
        if x.shape[-2] < self.size[0]:
            return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return F.adaptive_avg_pool2d(x, self.size)


class SharedClassifierStudent(nn.Module):
    """The training-time network: student backbone -> adapter -> the teacher's pooling + `linear` (frozen).

    Returns the logits and the adapted map resized to the teacher's grid (`adapted`)."""

    def __init__(self, backbone: nn.Module, adapter: nn.Module, resize: nn.Module, linear: nn.Linear):
        super().__init__()
        self.backbone, self.adapter, self.resize, self.linear = backbone, adapter, resize, linear

    def forward(self, x):
        _, feats = self.backbone(x)
        a = self.adapter(feats["stage3"])
        pooled = F.adaptive_avg_pool2d(a, 1).flatten(1)
        return self.linear(pooled), {**feats, "adapted": self.resize(a), "pool": pooled}


@torch.no_grad()
def fold_head(conv: nn.Conv2d, bn: nn.BatchNorm2d, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the single linear layer equal to pooling -> conv1x1 -> BN (inference) -> `linear`."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w_adapt = conv.weight.flatten(1) * scale[:, None]           # C_T x C_s
    b_adapt = bn.bias - bn.running_mean * scale                  # C_T
    return linear.weight @ w_adapt, linear.weight @ b_adapt + linear.bias


def discriminator(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, 128, 3, 1, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(128, 256, 3, 2, 1, bias=False), nn.BatchNorm2d(256), nn.LeakyReLU(0.2),
        nn.Conv2d(256, 256, 3, 2, 1, bias=False), nn.BatchNorm2d(256), nn.LeakyReLU(0.2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 1))


def _classifier(teacher: nn.Module) -> nn.Linear:
    """The teacher's `linear`, looking through wrappers such as `Renormalize` (a published teacher)."""
    m = teacher
    while not isinstance(getattr(m, "linear", None), nn.Linear) and hasattr(m, "model"):
        m = m.model
    if not isinstance(getattr(m, "linear", None), nn.Linear):
        raise ValueError(f"kdfm: the teacher {type(teacher).__name__} has no `linear` classifier to share")
    return m.linear


class KDFM(Method):
    name = "kdfm"
    display_name = "KDFM"
    kind = "feature"
    description = ("paper-inspired: student's adapted last map fed to the teacher's frozen classifier, "
                   "matched to the teacher's map by MSE and a GAN discriminator, plus KD and CE")
    citation = "Chen, Chang, Lu & Lee, ACCV 2018 (arXiv 1812.00660)"
    defaults = {"weight": 1.0, "adv": 0.01, "kd": 1.0, "ce": 1.0, "T": 4.0,
                "d_lr": 2e-4, "d_beta1": 0.5, "d_beta2": 0.999}
    student_taps = ("stage3",)
    teacher_taps = ("stage3", "pool", "logits")
    loss_fn = staticmethod(kdfm_student_loss)

    def setup(self, s_feats, t_feats):
        f_s, f_t = s_feats["stage3"], t_feats["stage3"]
        # the shared classifier is pooling + linear only if the teacher's own head is exactly that
        if not torch.allclose(t_feats["pool"], f_t.mean((2, 3)), atol=1e-5):
            raise ValueError("kdfm: the teacher's `pool` is not the global average of its `stage3`; its "
                             "classifier cannot be shared as pooling + linear")
        c_s, c_t = f_s.shape[1], f_t.shape[1]
        head = getattr(self.student, "linear", None)
        if not isinstance(head, nn.Linear) or head.in_features != c_s:
            raise ValueError(f"kdfm: the student needs a `linear` classifier on its pooled stage3 ({c_s} features) "
                             "to receive the folded shared classifier")
        self.extra["adapter"] = nn.Sequential(nn.Conv2d(c_s, c_t, 1, bias=False), nn.BatchNorm2d(c_t))
        nn.init.kaiming_normal_(self.extra["adapter"][0].weight, mode="fan_out", nonlinearity="relu")
        disc = self.extra["disc"] = discriminator(c_t)
        disc.requires_grad_(False)
        self.d_opt = torch.optim.Adam(disc.parameters(), lr=self.hp["d_lr"],
                                      betas=(self.hp["d_beta1"], self.hp["d_beta2"]))
        self.net = SharedClassifierStudent(self.student, self.extra["adapter"], Resize(f_t.shape[-2:]),
                                           _classifier(self.teacher))

    def train_step(self, batch, info, optimizer):
        with torch.no_grad():
            z_t, t_feats = self.teacher(batch.x)
        f_t = t_feats["stage3"]
        z_s, s_feats = self.net(batch.x)
        f_s = s_feats["adapted"]
        disc = self.extra["disc"]
        # 1. discriminator step on detached student maps
        disc.requires_grad_(True)
        d_loss = self.in_fp32(kdfm_discriminator_loss, disc(f_t), disc(f_s.detach()))
        self.backward_step(d_loss, self.d_opt, last=False)  # one scale update per step, after the student's
        disc.requires_grad_(False)
        # 2. student step against the updated discriminator
        hp = self.hp
        losses = self.in_fp32(kdfm_student_loss, f_s, f_t, z_s, z_t, batch.y, disc(f_s), hp["T"], hp["weight"],
                              hp["adv"], hp["kd"], hp["ce"])
        self.backward_step(sum(losses.values()), optimizer)
        return {**{k: v.detach() for k, v in losses.items()}, "disc": d_loss.detach()}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "d_opt": self.d_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.d_opt.load_state_dict(state["d_opt"])

    def eval_model(self) -> nn.Module:
        """The student, its `linear` set to the exact fold of adapter + shared classifier (see the docstring)."""
        conv, bn = self.extra["adapter"]
        weight, bias = fold_head(conv, bn, self.net.linear)
        with torch.no_grad():
            self.student.linear.weight.copy_(weight)
            self.student.linear.bias.copy_(bias)
        return self.student
