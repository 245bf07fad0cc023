"""Knowledge review (Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021).

Earlier feature methods pair each student stage with the *same* teacher stage. ReviewKD lets every teacher stage
be supervised by the student's stage at that depth *and all deeper ones*: a residual chain of attention-based
fusion (ABF) modules runs from the student's deepest feature back to its shallowest, each module mixing its own
stage with the (upsampled) fused result of the deeper levels, and the fused maps are compared with the teacher's
stages by the hierarchical context loss (HCL), an MSE on the maps plus MSEs on a small spatial pyramid of
average-pooled versions of them.

Follows the code (megvii-research/mdistiller `mdistiller/distillers/ReviewKD.py` at a08d46f, the primary
reference of the golden vectors; its `hcl_loss` and `ABF` are the same code as the authors'
dvlab-research/ReviewKD `CIFAR-100/model/reviewkd.py`), re-written here:

* levels, shallow -> deep: the student's post-ReLU `stage1`, `stage2`, `stage3` and `pool` (as [B, C, 1, 1]);
  the teacher's PRE-ReLU `stage1_pre`, `stage2_pre`, `stage3_pre` and its `pool` (the mean of the post-ReLU
  `stage3`), detached. The reference's student list also holds the stem output, but its ABF list is one shorter,
  so the stem is never used (zip truncation): it is not tapped here.
* ABF(in -> mid -> out): x = BN(conv1x1(in -> mid, no bias)); on every level but the deepest, the previous
  level's residual r is resized (nearest) to this level's spatial size, a = sigmoid(conv1x1(cat[x, r]) -> 2 maps,
  with bias), x = a0 * x + a1 * r; x is resized (nearest) to the teacher's spatial size if they differ, becomes
  the residual of the next (shallower) level, and the level's output is BN(conv3x3(mid -> out, pad 1, no bias)).
  mid = min(512, channels of the student's pooled feature) for every level (64 for ResNet-20); conv1/conv2
  weights Kaiming-uniform with a = 1, the rest PyTorch's default initialisation. The ABFs are built in `setup`
  from the features' shapes (student channels/sizes in, teacher channels/sizes out), so student and teacher
  widths (and grids) may differ; they train with the student (BatchNorm in train mode, batch statistics).
  Parameter names follow the reference `state_dict`: `abfs.<i>.conv1.0.weight`, ..., `abfs.<i>.att_conv.0.bias`,
  `abfs.0` being the deepest level (the pooled feature), which has no `att_conv`.
* HCL per level: l = mse(fs, ft) (mean over all elements); for p in (4, 2, 1), only if p < H, the next weight
  of 1/2, 1/4, 1/8 (halved for every size *used*: an 8x8 map uses 4, 2, 1 with 1/2, 1/4, 1/8, a 4x4 map 2, 1
  with 1/2, 1/4) times mse(avgpool_p(fs), avgpool_p(ft)) is added; l /= 1 + the sum of the used weights. Only H
  is inspected (square maps). The loss is the SUM over the four levels, not a mean.
* total = CE + weight * min(epoch / warm-up, 1) * HCL, with the warm-up counted in 1-based epochs as mdistiller
  (factor 1/W in the first epoch; the authors' repository counts from 0, i.e. factor 0 in the first epoch).
  The factor is per epoch, constant within it. The student's logits are left unchanged (no extra head).

Hyperparameters (`defaults`):
* `weight` 1.0: the authors' `CIFAR-100/script/reviewKD.sh` weight for ResNet-110 -> ResNet-32, the pair with
  the benchmark's teacher and the same 16/32/64 widths (0.6 for ResNet-56 -> ResNet-20; 5.0 for the wide pairs
  ResNet-32x4 -> ResNet-8x4, WRNs, ShuffleNetV1, which mdistiller's single `configs/cifar100/reviewkd.yaml`
  uses). Neither repository has a CIFAR-10 setting.
* `warmup_epochs` 20, in the reference's epochs out of its 240 (both repositories: 240 epochs, step decay at
  150/180/210; mdistiller batch 64, lr 0.05; the authors batch 128, lr 0.1). It is scaled to the protocol with
  `methods.base.scaled(20, 240, epochs)`: 17 of the benchmark's 200 epochs. 0 switches the warm-up off.
* `pool_sizes` [4, 2, 1]: the HCL pyramid (hard-coded in the reference).
* `max_mid_channel` 512: the cap of the ABF's middle width (hard-coded 512 in the reference, which reads
  cfg MAX_MID_CHANNEL = 512 but does not use it).

Code vs paper: the paper's figures describe the review over the stages; the code also fuses the pooled feature
as the deepest level, distils the teacher's PRE-ReLU stage outputs against the student's POST-ReLU ones (the
authors, ReviewKD#11: they "didn't pay much attention" to it; mdistiller's STU_PREACT=False keeps it, and
STU_PREACT=True is not offered here), never uses the stem, and sums the levels. All kept as the code does.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from .base import Method, scaled

STUDENT_LEVELS = ("stage1", "stage2", "stage3", "pool")          # post-ReLU, shallow -> deep
TEACHER_LEVELS = ("stage1_pre", "stage2_pre", "stage3_pre", "pool")  # pre-ReLU stage outputs + pooled
REF_TOTAL_EPOCHS = 240  # both references train 240 epochs


def hcl_loss(fstudent: Sequence[torch.Tensor], fteacher: Sequence[torch.Tensor],
             pool_sizes: Sequence[int] = (4, 2, 1)) -> torch.Tensor:
    """Hierarchical context loss: per level pair of equal shape [B, C, H, W], the MSE of the maps plus
    weighted MSEs of their average-pooled pyramids (sizes p < H, weights 1/2, 1/4, ... in order of use),
    normalised by the sum of the weights; summed over the levels."""
    total = None
    for fs, ft in zip(fstudent, fteacher, strict=True):
        h = fs.shape[2]
        level = F.mse_loss(fs, ft)
        w, w_sum = 1.0, 1.0
        for p in pool_sizes:
            if p >= h:
                continue
            w /= 2.0
            level = level + w * F.mse_loss(F.adaptive_avg_pool2d(fs, (p, p)), F.adaptive_avg_pool2d(ft, (p, p)))
            w_sum += w
        level = level / w_sum
        total = level if total is None else total + level
    return total


class ABF(nn.Module):
    """One attention-based fusion module; attribute names follow the reference `state_dict`."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool, bn_eps: float = 1e-5):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False),
                                   nn.BatchNorm2d(mid_channels, eps=bn_eps))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels, eps=bn_eps))
        self.att_conv = (nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1, bias=True), nn.Sigmoid())
                         if fuse else None)
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, shape: int, out_shape: int):
        """(output at the teacher's size, the fused map passed on as the next level's residual)."""
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, (shape, shape), mode="nearest")
            gates = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * gates[:, 0:1] + residual * gates[:, 1:2]
        if x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        return self.conv2(x), x


class ReviewFusion(nn.Module):
    """The ABF chain over the student's levels. `in_channels`/`out_channels` are shallow -> deep (last = pooled
    feature), `shapes`/`out_shapes` (student / teacher spatial sizes) deep -> shallow, as in the reference cfg.
    `abfs[0]` is the deepest level (no fusion)."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int], shapes: Sequence[int],
                 out_shapes: Sequence[int], max_mid_channel: int = 512, bn_eps: float = 1e-5):
        super().__init__()
        n = len(in_channels)
        if not (len(out_channels) == len(shapes) == len(out_shapes) == n):
            raise ValueError(f"reviewkd: {n} student levels but {len(out_channels)} teacher channels, "
                             f"{len(shapes)} shapes, {len(out_shapes)} out_shapes")
        mid = min(max_mid_channel, in_channels[-1])
        self.shapes, self.out_shapes = [int(s) for s in shapes], [int(s) for s in out_shapes]
        self.abfs = nn.ModuleList(ABF(in_channels[i], mid, out_channels[i], fuse=i < n - 1, bn_eps=bn_eps)
                                  for i in reversed(range(n)))

    def forward(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Student levels shallow -> deep (4-D) -> fused outputs shallow -> deep, at the teacher's shapes."""
        deep_first = list(levels)[::-1]
        outputs, residual = [], None
        for x, abf, shape, out_shape in zip(deep_first, self.abfs, self.shapes, self.out_shapes, strict=True):
            out, residual = abf(x, residual, shape, out_shape)
            outputs.append(out)
        return outputs[::-1]


def _as_map(f: torch.Tensor) -> torch.Tensor:
    """[B, C] pooled features as [B, C, 1, 1] maps; 4-D maps as they are."""
    return f[:, :, None, None] if f.dim() == 2 else f


def reviewkd_warmup(epoch: int, total_epochs: int, warmup_ref: float) -> float:
    """min(epoch / W, 1) with 1-based epochs (mdistiller), W = `warmup_ref` reference epochs (of 240) scaled to
    `total_epochs`; `epoch` is the runner's 0-based epoch."""
    if warmup_ref <= 0:
        return 1.0
    w = scaled(warmup_ref, REF_TOTAL_EPOCHS, total_epochs)
    return min((epoch + 1) / w, 1.0)


class ReviewKD(Method):
    name = "reviewkd"
    display_name = "ReviewKD"
    kind = "feature"
    description = ("knowledge review: attention-fused student stages (deep to shallow) matched to the teacher's "
                   "pre-ReLU stages by a pyramid-pooled MSE")
    citation = "Chen et al., CVPR 2021"
    defaults = {"weight": 1.0, "warmup_epochs": 20, "pool_sizes": [4, 2, 1], "max_mid_channel": 512}
    student_taps = STUDENT_LEVELS
    teacher_taps = TEACHER_LEVELS
    loss_fn = staticmethod(hcl_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        pool_sizes = tuple(hparams.get("pool_sizes", (4, 2, 1)))
        n_t = sum(1 for k in inputs if k.startswith("fm_t"))
        teacher = [_as_map(inputs[f"fm_t{i}"]) for i in range(n_t)]
        if hparams.get("variant", "default") == "default":
            student = [inputs[f"fm_s{i}"] for i in range(n_t)]
            return cls.loss_fn(student, teacher, pool_sizes)
        if hparams["variant"] != "with_abf":
            raise NotImplementedError(f"reviewkd: variant {hparams['variant']!r}")
        if hparams.get("stu_preact", False):
            raise NotImplementedError("reviewkd: STU_PREACT=True is not supported")
        levels = [inputs["feats_s1"], inputs["feats_s2"], inputs["feats_s3"], _as_map(inputs["pooled_s"])]
        in_ch = list(hparams["in_channels"])
        # the reference hard-codes min(512, in_channels[-1]) and ignores max_mid_channel
        if "mid_channels" in hparams and hparams["mid_channels"] != min(512, in_ch[-1]):
            raise NotImplementedError(f"reviewkd: mid_channels {hparams['mid_channels']} != min(512, in[-1])")
        bn_eps = hparams.get("bn_eps", 1e-5)
        with torch.device("meta"):  # structure only: the parameters come from the inputs, no RNG is consumed
            fusion = ReviewFusion(in_ch, hparams["out_channels"], hparams["shapes"], hparams["out_shapes"],
                                  512, bn_eps)
        fusion.train(hparams.get("bn_mode", "train") == "train")
        ref = levels[0]
        tensors = {k: inputs[k] for k, _ in fusion.named_parameters()}
        for k, b in fusion.named_buffers():  # fresh running statistics, as in a just-built reference module
            if k.endswith("num_batches_tracked"):
                tensors[k] = torch.zeros((), dtype=torch.long, device=ref.device)
            else:
                fill = 1.0 if k.endswith("running_var") else 0.0
                tensors[k] = torch.full(b.shape, fill, dtype=ref.dtype, device=ref.device)
        fused = functional_call(fusion, tensors, (levels,))
        return cls.loss_fn(fused, teacher, pool_sizes)

    def setup(self, s_feats, t_feats):
        s = [_as_map(s_feats[k]).shape for k in STUDENT_LEVELS]
        t = [_as_map(t_feats[k]).shape for k in TEACHER_LEVELS]
        self.extra["fusion"] = ReviewFusion(
            in_channels=[x[1] for x in s], out_channels=[x[1] for x in t],
            shapes=[x[-1] for x in s][::-1], out_shapes=[x[-1] for x in t][::-1],
            max_mid_channel=self.hp["max_mid_channel"])

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        fused = self.extra["fusion"]([_as_map(s_feats[k]) for k in STUDENT_LEVELS])
        targets = [_as_map(t_feats[k]).detach() for k in TEACHER_LEVELS]
        loss = hcl_loss(fused, targets, tuple(self.hp["pool_sizes"]))
        factor = reviewkd_warmup(info.epoch, info.total_epochs, self.hp["warmup_epochs"])
        return {"reviewkd": self.hp["weight"] * factor * loss}
