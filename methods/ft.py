"""Factor transfer (Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer",
NeurIPS 2018).

The teacher's last feature map is too rich for a small student to copy directly, so a *paraphraser* (a
convolutional autoencoder) is first trained, unsupervised, to reconstruct it; its bottleneck output, the
"teacher factor", is an easier-to-digest summary. The student then learns, through a *translator* with the
same encoder shape, to produce a factor that matches the teacher's after L2 normalisation (paper Eq. 3, p = 1).

Reference conventions (AberHu/Knowledge-Distillation-Zoo `kd_losses/ft.py`, `train_ft.py`, `network.py`),
kept on purpose:
* factor = flattened [B, C*H*W] map L2-normalised by `F.normalize` (eps 1e-12), compared with `F.l1_loss`,
  i.e. the *mean* absolute difference (the paper's per-sample L1 norm divided by C*H*W; the weight 200
  compensates). RepDistiller instead normalises mean_c(factor^2), an attention map of the factor;
* paraphraser encoder conv3x3 (C->C) - conv3x3 (C->kC) - conv3x3 (kC->kC), decoder three ConvTranspose2d
  mirrors, each followed by [BN] and LeakyReLU(0.1); BN only on CIFAR-10 (convolutions have a bias without
  it); translator = the encoder on the student's map; k = 0.5;
* Conv2d weights Kaiming-normal (fan_out), biases 0, BN (1, 0); the ConvTranspose2d layers keep PyTorch's
  default initialisation (the reference's init loop only matches `nn.Conv2d`);
* stage 1: the paraphraser alone reconstructs the teacher's stage-3 (post-ReLU) map with MSE for 30 epochs at a
  constant lr of 0.1 * the main lr, momentum 0.9, no Nesterov, weight decay 1e-4; then it is frozen (eval mode,
  no gradients) and the student + translator are trained with CE + weight * FT.

Across widths and resolutions (the CRD benchmark's pairs, Tian et al. 2020), as RepDistiller
(`models/util.py` Paraphraser/Translator, `distiller_zoo/FT.py` factor_loss): the translator already maps the
student's channels to the teacher factor's int(k * C_t); when the two factors sit at different grids the larger
is average-pooled to the smaller's H x W before they are compared. Factors of equal size are left as they are.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .at import match_spatial
from .base import Method, Stage, main_stage, scaled


def ft_loss(factor_s: torch.Tensor, factor_t: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the per-sample L2-normalised, flattened factors."""
    unit_s = F.normalize(factor_s.reshape(factor_s.shape[0], -1), p=2, dim=1)
    unit_t = F.normalize(factor_t.reshape(factor_t.shape[0], -1), p=2, dim=1)
    return F.l1_loss(unit_s, unit_t)


def _block(layer: nn.Module, channels: int, use_bn: bool) -> list[nn.Module]:
    return [layer, nn.BatchNorm2d(channels) if use_bn else nn.Identity(), nn.LeakyReLU(0.1)]


def _encoder(in_channels: int, factor_channels: int, use_bn: bool) -> nn.Sequential:
    """Three 3x3 convolutions down to the factor's channels (paper Sec. 3.1: same spatial size)."""
    bias = not use_bn
    return nn.Sequential(
        *_block(nn.Conv2d(in_channels, in_channels, 3, 1, 1, bias=bias), in_channels, use_bn),
        *_block(nn.Conv2d(in_channels, factor_channels, 3, 1, 1, bias=bias), factor_channels, use_bn),
        *_block(nn.Conv2d(factor_channels, factor_channels, 3, 1, 1, bias=bias), factor_channels, use_bn))


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if type(m) is nn.Conv2d:  # not ConvTranspose2d: the reference leaves those at PyTorch's default
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Paraphraser(nn.Module):
    """Autoencoder of the teacher's map; the encoder output is the teacher factor."""

    def __init__(self, in_channels: int, k: float, use_bn: bool):
        super().__init__()
        fc = int(in_channels * k)
        bias = not use_bn
        self.encoder = _encoder(in_channels, fc, use_bn)
        self.decoder = nn.Sequential(
            *_block(nn.ConvTranspose2d(fc, fc, 3, 1, 1, bias=bias), fc, use_bn),
            *_block(nn.ConvTranspose2d(fc, in_channels, 3, 1, 1, bias=bias), in_channels, use_bn),
            *_block(nn.ConvTranspose2d(in_channels, in_channels, 3, 1, 1, bias=bias), in_channels, use_bn))
        _init(self)

    def forward(self, x):
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """Maps the student's map to a factor of the teacher factor's shape."""

    def __init__(self, in_channels_s: int, in_channels_t: int, k: float, use_bn: bool):
        super().__init__()
        self.encoder = _encoder(in_channels_s, int(in_channels_t * k), use_bn)
        _init(self)

    def forward(self, x):
        return self.encoder(x)


class FT(Method):
    name = "ft"
    display_name = "FT"
    kind = "feature"
    description = "paraphraser pre-trained on the teacher's stage-3 map; student translator matches its factor (L1)"
    citation = "Kim, Park & Kwak, NeurIPS 2018"
    defaults = {"weight": 200.0, "k": 0.5}
    student_taps = teacher_taps = ("stage3",)
    loss_fn = staticmethod(ft_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        return cls.loss_fn(inputs["factor_s"], inputs["factor_t"])

    def __init__(self, student, teacher, hparams, ctx):
        super().__init__(student, teacher, hparams, ctx)
        self._frozen = False

    def setup(self, s_feats, t_feats):
        use_bn = self.ctx.dataset == "cifar10"  # reference: `use_bn = data_name == 'cifar10'`
        c_s, c_t = s_feats["stage3"].shape[1], t_feats["stage3"].shape[1]
        self.extra["paraphraser"] = Paraphraser(c_t, self.hp["k"], use_bn)
        self.extra["translator"] = Translator(c_s, c_t, self.hp["k"], use_bn)

    # ---- stages -------------------------------------------------------------------------------------------
    def stages(self, protocol) -> list[Stage]:
        """Paraphraser pre-training (30 reference epochs, scaled to the protocol, >= 1), then the main stage."""
        pretrain = Stage("pretrain", scaled(30, 200, protocol.epochs), ((0, protocol.lr * 0.1),),
                         role="pretrain", optimizer=(("nesterov", False), ("weight_decay", 1e-4)))
        return [pretrain, main_stage(protocol)]

    def _set_frozen(self, frozen: bool) -> None:
        """Freezing is decided by the stage, not saved: a resumed run re-applies it when its stage starts."""
        self._frozen = frozen
        para = self.extra["paraphraser"]
        for p in para.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            para.eval()

    def stage_parameters(self, stage: Stage):
        if stage.role == "pretrain":
            self._set_frozen(False)
            return list(self.extra["paraphraser"].parameters())
        self._set_frozen(True)
        return super().stage_parameters(stage)

    def train(self, mode: bool = True) -> None:
        super().train(mode)
        if self._frozen:
            self.extra["paraphraser"].eval()

    # ---- losses -------------------------------------------------------------------------------------------
    def losses(self, batch, info):
        if info.stage.role == "pretrain":
            # Only the paraphraser learns here; the student is not even run (its BN statistics stay put).
            _, t_feats = self.teacher_forward(batch.x)
            target = t_feats["stage3"]
            _, recon = self.extra["paraphraser"](target)
            return {"para": F.mse_loss(recon, target)}
        if not self._frozen:  # a caller that skipped stage_parameters: the teacher factor must stay fixed
            self._set_frozen(True)
        return super().losses(batch, info)

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        with torch.no_grad():
            factor_t = self.extra["paraphraser"].encoder(t_feats["stage3"])
        factor_s = self.extra["translator"](s_feats["stage3"])
        return {"ft": self.hp["weight"] * ft_loss(*match_spatial(factor_s, factor_t))}
