"""EKD, paper-inspired: ensemble knowledge distillation into a multi-branch student (after Asif, Tang & Harrer,
"Ensemble Knowledge Distillation for Learning Improved and Efficient Networks", ECAI 2020, arXiv 1909.08097).

Why: a compact student with parallel branches, each branch taught by a *different* high-capacity teacher,
learns heterogeneous features (diverse solutions); averaging the branches couples them and lowers the variance
of the final prediction. Only the abstract of the paper was verified (paper-notes §1.1): the multi-branch
student, one teacher per branch, labels for every branch and the ensemble of branches as the output are the
paper's; everything below marked [D] is our default, chosen where the source was not read, to be replaced
once the PDF is (paper-notes §1.7 lists what to check).

  L = sum_i [ CE(y, z_i) + weight * T^2 * KL(softmax(t_i / T) || softmax(z_i / T)) ] + ens_ce * CE(y, z_E)
      (+ hint_weight * sum_i MSE(A_i(h_i), g_i))        z_E = mean_i z_i,  t_i = logits of teacher i (frozen)

Defaults [D]:
* student: a shared stem conv3x3(16)-BN-ReLU and N = 1 + len(teachers) = 3 parallel ResNet-8 branches (`branch`:
  widths 16/32/64, one BasicBlock per stage, option-B shortcuts, GAP + FC), registered as `ekd3_resnet8`
  (0.23 M parameters at 10 classes, close to one ResNet-20). The benchmark's `--student` does not change it;
* teachers: branch 1 learns from the benchmark's teacher (`--teacher`, ResNet-110 by default, or a published
  `--teacher-checkpoint`), branches 2.. from `teachers` = ["resnet56", "densenet40"]: two depths of one family
  and one other family (DenseNet-40, k = 12), since the point is knowledge that differs per branch. Those are
  CE runs of the same data and seed, planned automatically (`teacher_archs`). Branch i learns from teacher i
  only;
* knowledge = soft logits only: KL at T = 4, weight 1, times T^2; the feature hint (branch i's pooled vector
  through a linear adapter onto teacher i's) exists but is off (hint_weight 0);
* ensemble = plain mean of the branch logits, with one CE term (ens_ce 1) and no KD on it;
* training: one stage under the benchmark's common protocol; teachers trained on the same data.
Results: the main network is the whole student (output z_E); rows `ekd-b1` .. `ekd-bN` are stem + branch i.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.errors import UserError
from .base import Method


def ekd_loss(branch_logits: list[torch.Tensor], teacher_logits: list[torch.Tensor], y: torch.Tensor,
             T: float = 4.0, weight: float = 1.0, ens_ce: float = 1.0) -> dict[str, torch.Tensor]:
    """Per-branch CE and KD from that branch's own teacher, and CE on the mean of the branch logits."""
    out = {}
    for i, (z, t) in enumerate(zip(branch_logits, teacher_logits), start=1):
        out[f"ce_b{i}"] = F.cross_entropy(z, y)
        kl = F.kl_div(F.log_softmax(z / T, dim=1), F.softmax(t / T, dim=1), reduction="batchmean")
        out[f"kd_b{i}"] = weight * kl * T * T
    out["ce_ens"] = ens_ce * F.cross_entropy(torch.stack(branch_logits).mean(0), y)
    return out


class EKD(Method):
    name = "ekd"
    display_name = "EKD"
    kind = "ensemble"
    description = ("paper-inspired: multi-branch student (stem + 3 ResNet-8 branches), branch i distilled "
                   "(CE + KD, T=4) from teacher i (the benchmark's, resnet56, densenet40), output = mean logits")
    citation = "Asif, Tang & Harrer, ECAI 2020 (arXiv 1909.08097)"
    defaults = {"weight": 1.0, "T": 4.0, "teachers": ["resnet56", "densenet40"], "branch": "resnet8",
                "ens_ce": 1.0, "hint_weight": 0.0}
    student_taps = ("logits", "pool")
    teacher_taps = ("logits", "pool")
    loss_fn = staticmethod(ekd_loss)

    @classmethod
    def resolve_hparams(cls, overrides: dict, dataset: str) -> dict:
        hp = super().resolve_hparams(overrides, dataset)
        teachers = hp["teachers"]
        if not isinstance(teachers, list) or not teachers or not all(isinstance(t, str) for t in teachers):
            raise UserError(f"ekd: 'teachers' must be a list of architecture names (the teachers of branches 2..; "
                            f"branch 1 has the benchmark's teacher), got {teachers!r}")
        return hp

    @classmethod
    def teacher_archs(cls, hparams: dict) -> list[str]:
        return list(hparams["teachers"])

    @classmethod
    def student_arch(cls, hparams: dict, student: str) -> str:
        """N = len(teachers) branches of `branch` on one stem, e.g. `ekd3_resnet8`; the benchmark student is
        not used (the multi-branch student is the method's own architecture)."""
        return f"ekd{1 + len(hparams['teachers'])}_{hparams['branch']}"

    def __init__(self, student, teacher, hparams, ctx):
        super().__init__(student, teacher, hparams, ctx)
        missing = [a for a in self.hp["teachers"] if a not in ctx.extra_teachers]
        if missing:
            raise ValueError(f"ekd: teachers {missing} are not loaded (ctx.extra_teachers has "
                             f"{sorted(ctx.extra_teachers)}); the planner adds them through `teacher_archs`")
        if teacher is None:
            raise ValueError("ekd: branch 1 learns from the benchmark's teacher, and none was given")
        self.teachers = [self.teacher] + [ctx.extra_teachers[a] for a in self.hp["teachers"]]
        for t in self.teachers:
            t.eval()
            for p in t.parameters():
                p.requires_grad_(False)
        self._members = None

    def setup(self, s_feats, t_feats):
        from models.branches import MultiBranchNet

        net = self.student
        if not isinstance(net, MultiBranchNet) or len(net.branches) != len(self.teachers):
            raise ValueError(f"ekd needs a multi-branch student with one branch per teacher "
                             f"({len(self.teachers)}), got {type(net).__name__}: plan it through `student_arch`")
        if self.hp["hint_weight"] > 0:
            with torch.no_grad():  # the teachers' pooled widths, from one forward of a dummy batch
                x = torch.zeros(2, 3, 32, 32, device=self.ctx.device)
                dims = [t(x)[1]["pool"].shape[1] for t in self.teachers]
            self.extra["hint"] = nn.ModuleList(
                nn.Linear(s_feats[f"b{i + 1}_pool"].shape[1], d) for i, d in enumerate(dims))

    def train(self, mode: bool = True) -> None:
        super().train(mode)
        for t in self.teachers:
            t.eval()

    def losses(self, batch, info):
        _, outs = self.student.forward_branches(batch.x)
        with torch.no_grad():
            t_outs = [t(batch.x) for t in self.teachers]
        out = self.in_fp32(ekd_loss, [z for z, _ in outs], [t for t, _ in t_outs], batch.y, self.hp["T"],
                           self.hp["weight"], self.hp["ens_ce"])
        if self.hp["hint_weight"] > 0:
            hint = sum(self.in_fp32(lambda a, f, tf: F.mse_loss(a(f), tf), a, f["pool"], tf["pool"])
                       for a, (_, f), (_, tf) in zip(self.extra["hint"], outs, t_outs))
            out["hint"] = self.hp["hint_weight"] * hint
        return out

    def eval_model(self) -> nn.Module:
        """The whole student: its output is the mean of the branch logits."""
        return self.student

    def member_models(self) -> dict[str, nn.Module]:
        if self._members is None:
            self._members = {f"b{j + 1}": self.student.member(j) for j in range(len(self.student.branches))}
        return self._members

    def member_arch(self, key: str) -> str | None:
        """Stem + one branch is a plain `branch` network (ResNet-8 by default), parameter for parameter."""
        return self.hp["branch"]
