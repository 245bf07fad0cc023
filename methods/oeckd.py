"""OEC-KD: online ensemble model compression (Walawalkar, Shen & Savvides, "Online Ensemble Model Compression
using Knowledge Distillation", ECCV 2020; official code Devwalkar/BOC-KD).

Why: one training run, without any pretrained teacher, yields S = 5 networks of decreasing size that are each
better than the same network trained alone. The original network is cut after its stem; the stem is shared and
every student has its own copy of the rest, student j at width int(C * (S - j) / S) in every layer
(`models.branches`). The mean of all students' logits is an "ensemble teacher" stronger than any of them; it is
never trained directly, only through the students it distils into. Student 1, the original network, is also a
"pseudo teacher": the compressed students regress its intermediate maps.

Faithful to the paper (eqs. 1-7) and, where the paper is silent, to its code (paper-notes §2.3, §2.9):
  L = 0.7 * sum_i CE(y, z_i)
    + 0.15 * sum_{b=1..3} sum_{l=2..S} MSE(A_{b,l}(F_b^l), stopgrad(F_b^1))
    + 0.15 * sum_{i=1..S} T^2 * KL(softmax(z_T / T) || softmax(z_i / T)),   z_T = mean_i z_i (detached), T = 2
* the ensemble is the plain mean of the logits (the code's weights are uniform and never optimised);
* the pseudo teacher is in the KD sum (eq. 6 and the code) and its maps are detached in the feature term (the
  term "updates only the compressed students"); the shared stem still gets every student's gradient;
* F_b are the three stage outputs (post-ReLU for ResNets; for DenseNets the transition / final BN-ReLU
  activations), A_{b,l} a 1x1 convolution *with bias* from student l's channels to the pseudo teacher's,
  PyTorch's default initialisation, built from the shapes of one dry-run forward;
* MSE is the mean over all elements, KL `batchmean` times T^2, CE the batch mean; no CE on the ensemble.
Our choices (the paper's are not the benchmark's protocol): training follows the run's common protocol (the
`oeckd` preset gives the paper's 350 epochs); the adaptation layers are optimised with the students at the same
lr from the first step (the code's lazy build and optimiser re-creation after epoch 1 are a quirk we do not
copy); He initialisation like every ResNet of the benchmark instead of the code's Xavier-normal, and every
member starts from the initial weights of its standalone baseline run of the same seed (`setup`), so each
student is compared, paired, with the same architecture trained alone by `ce`.

Results: the run's main network (`eval_model`) is the **ensemble teacher** (the whole multi-branch net, whose
forward is the mean of logits): its accuracy and parameter count describe the same network, and its `model.pt`
holds all five students. Rows `oeckd-s1` .. `oeckd-s5` are the students (stem + branch j), `oeckd-ens` the
ensemble again, named explicitly.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import build_seeded

from .base import Method

STAGES = ("stage1", "stage2", "stage3")


def ensemble_logits(logits: list[torch.Tensor]) -> torch.Tensor:
    """The ensemble teacher: the plain mean of the students' logits."""
    return torch.stack(logits).mean(0)


def oeckd_loss(logits: list[torch.Tensor], y: torch.Tensor, pt_maps: list[torch.Tensor],
               adapted_maps: list[list[torch.Tensor]], T: float = 2.0, ce_weight: float = 0.7,
               inter_weight: float = 0.15, kd_weight: float = 0.15) -> dict[str, torch.Tensor]:
    """The three weighted terms of eq. 7.

    `logits`: the S students' logits, pseudo teacher first. `pt_maps`: the pseudo teacher's maps at the three
    stage outputs. `adapted_maps[l][b]`: compressed student l+2's map at stage b after its adaptation layer,
    shaped like `pt_maps[b]`. The pseudo teacher's maps and the ensemble distribution are detached here.
    """
    ce = sum(F.cross_entropy(z, y) for z in logits)
    inter = sum(F.mse_loss(a, pt.detach()) for maps in adapted_maps for a, pt in zip(maps, pt_maps))
    p_t = F.softmax(ensemble_logits(logits).detach() / T, dim=1)
    kd = sum(F.kl_div(F.log_softmax(z / T, dim=1), p_t, reduction="batchmean") for z in logits) * T * T
    return {"ce": ce_weight * ce, "inter": inter_weight * inter, "kd": kd_weight * kd}


class OECKD(Method):
    name = "oeckd"
    display_name = "OEC-KD"
    kind = "online"
    description = ("online ensemble compression: 5 students of decreasing width on one stem, each distilled from "
                   "the mean of all logits; compressed students regress the full-width one's maps")
    citation = "Walawalkar, Shen & Savvides, ECCV 2020"
    # weight = gamma (KD term); ce_weight = alpha, inter_weight = beta (paper Tables 7-9); T (Table 9)
    defaults = {"weight": 0.15, "ce_weight": 0.7, "inter_weight": 0.15, "T": 2.0}
    needs_teacher = False
    student_taps = ("stage1", "stage2", "stage3", "logits")
    loss_fn = staticmethod(oeckd_loss)

    @classmethod
    def student_arch(cls, hparams: dict, student: str) -> str:
        """`resnet20` -> `oeckd_resnet20` (any CIFAR ResNet depth), `densenet_bc100` -> `oeckd_densenet_bc100`."""
        return f"oeckd_{student}"

    @classmethod
    def baseline_archs(cls, hparams: dict, student: str) -> list[str]:
        """The five students as standalone networks, each trained alone with CE: the paper's baselines."""
        from models.branches import oeckd_member_archs

        return oeckd_member_archs(student)

    def setup(self, s_feats, t_feats):
        from models.branches import MultiBranchNet

        net = self.student
        if not isinstance(net, MultiBranchNet) or not net.member_archs:
            raise ValueError(f"oeckd trains an OEC-KD multi-branch student (e.g. oeckd_resnet20), got "
                             f"{type(net).__name__}: plan it through `student_arch`")
        # paired comparison: member j starts where its `ce` baseline run starts (the stem from student 1's)
        for j, arch in enumerate(net.member_archs):
            net.load_member(j, build_seeded(arch, self.ctx.num_classes, self.ctx.seed), stem=(j == 0))
        n = len(net.branches)
        adapt = nn.ModuleDict()
        for l in range(2, n + 1):
            for stage in STAGES:
                c_in, c_pt = s_feats[f"b{l}_{stage}"].shape[1], s_feats[f"b1_{stage}"].shape[1]
                adapt[f"s{l}_{stage}"] = nn.Conv2d(c_in, c_pt, 1, bias=True)
        self.extra["adapt"] = adapt
        self._members = None

    def losses(self, batch, info):
        _, outs = self.student.forward_branches(batch.x)
        logits = [z for z, _ in outs]
        pt_maps = [outs[0][1][s] for s in STAGES]
        adapt = self.extra["adapt"]
        adapted = [[adapt[f"s{l}_{s}"](outs[l - 1][1][s]) for s in STAGES] for l in range(2, len(outs) + 1)]
        hp = self.hp
        return self.in_fp32(oeckd_loss, logits, batch.y, pt_maps, adapted, hp["T"], hp["ce_weight"],
                            hp["inter_weight"], hp["weight"])

    def eval_model(self) -> nn.Module:
        """The ensemble teacher (the whole multi-branch net): see the module docstring for why not student 1."""
        return self.student

    def member_models(self) -> dict[str, nn.Module]:
        if getattr(self, "_members", None) is None:
            net = self.student
            self._members = {f"s{j + 1}": net.member(j) for j in range(len(net.branches))}
            self._members["ens"] = net
        return self._members

    def member_arch(self, key: str) -> str | None:
        return self.student.member_archs[int(key[1:]) - 1] if key.startswith("s") else None
