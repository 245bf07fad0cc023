"""Activation boundaries (Heo, Lee, Yun & Choi, "Knowledge Transfer via Distillation of Activation Boundaries
Formed by Hidden Neurons", AAAI 2019).

What a ReLU network computes is largely fixed by *which* neurons are active, i.e. by the boundaries that
separate activation regions. The student is therefore trained to reproduce the teacher's on/off pattern of
the pre-activations, with a hinge-like squared loss that pushes each student pre-activation beyond a margin
m on the teacher's side (paper Eq. 5, the differentiable "alternative loss"). The transfer is an
initialisation: afterwards the student is trained with cross-entropy alone (paper Sec. 4).

Reference conventions (AberHu/Knowledge-Distillation-Zoo `kd_losses/ab.py`, `train_kd.py`), kept on purpose:
* margin 2.0 (the authors' code and RepDistiller use 1.0); no connector (student and teacher widths agree);
* the loss is the *mean* over all B x C x H x W elements (RepDistiller: sum / B * 3/1000 with layer weights);
* the taps are the PRE-ReLU outputs of the last block of the three stages, averaged (/3);
* two stages: 50 of 200 epochs of initialisation (lr 0.01 for 30, 0.001 for 10, 0.0001 for 10) with the CE
  term multiplied by 0 and only weight * AB, then the normal 200-epoch schedule with CE only.

Across widths and resolutions (the CRD benchmark's pairs, Tian et al. 2020), as RepDistiller's `Connector`
(`models/util.py`, built by `train_student.py` for `--distill abound`): a stage whose student map differs from
the teacher's in channels or grid goes through a connector, ConvReg without the ReLU (convolution to the
teacher's shape, then BN), trained with the student in the initialisation stage; stages of equal shape keep
the identity, so equal-shape pairs are unchanged.
"""
import torch
import torch.nn.functional as F

from .base import Method, Stage, main_stage, scaled
from .fitnet import ConvReg


def ab_loss(fm_s: torch.Tensor, fm_t: torch.Tensor, margin: float = 2.0) -> torch.Tensor:
    """Mean of (s + m)^2 where the teacher is off but s > -m, and (s - m)^2 where it is on but s <= m."""
    teacher_on = fm_t > 0
    push_down = (fm_s + margin).pow(2) * ((fm_s > -margin) & ~teacher_on).to(fm_s.dtype)
    push_up = (fm_s - margin).pow(2) * ((fm_s <= margin) & teacher_on).to(fm_s.dtype)
    return (push_down + push_up).mean()


# The reference's initialisation stage, in its own epochs: (first epoch, lr as a fraction of the main lr).
_INIT_EPOCHS = 50
_INIT_STEPS = ((0, 0.1), (30, 0.01), (40, 0.001))


class AB(Method):
    name = "ab"
    display_name = "AB"
    kind = "feature"
    description = "transfer activation boundaries (pre-ReLU on/off pattern, margin loss) as a 2-stage init"
    citation = "Heo, Lee, Yun & Choi, AAAI 2019"
    defaults = {"weight": 10.0, "margin": 2.0}
    student_taps = teacher_taps = ("stage1_pre", "stage2_pre", "stage3_pre")
    loss_fn = staticmethod(ab_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        return cls.loss_fn(inputs["fm_s"], inputs["fm_t"], hparams["margin"])

    def setup(self, s_feats, t_feats):
        for k in self.student_taps:
            s, t = s_feats[k].shape[1:], t_feats[k].shape[1:]
            if s != t:  # RepDistiller's Connector: identity where (C, H) agree, else ConvReg without ReLU
                self.extra[k] = ConvReg(s, t, relu=False)

    def connect(self, k: str, fm_s: torch.Tensor) -> torch.Tensor:
        """The student's stage map at the teacher's shape (its connector's output), or itself where they agree."""
        return self.extra[k](fm_s) if k in self.extra else fm_s

    def stages(self, protocol) -> list[Stage]:
        """Initialisation (50/200 of the protocol's epochs, >= 1) then the protocol's main schedule."""
        n = scaled(_INIT_EPOCHS, 200, protocol.epochs)
        steps = tuple((int(round(start * n / _INIT_EPOCHS)), protocol.lr * frac) for start, frac in _INIT_STEPS)
        return [Stage("init", n, steps, role="init"), main_stage(protocol)]

    def losses(self, batch, info):
        logits, feats = self.student(batch.x)
        ce = F.cross_entropy(logits, batch.y)
        if info.stage.role != "init":
            # The reference sets lambda_kd = 0 after the initialisation: no teacher forward is needed.
            return {"ce": ce}
        _, t_feats = self.teacher_forward(batch.x)
        per_stage = [ab_loss(self.connect(k, feats[k]), t_feats[k], self.hp["margin"]) for k in self.student_taps]
        # CE * 0 as in the reference: it contributes nothing, but the classifier still gets a (zero) gradient,
        # so weight decay acts on it during the initialisation exactly as there.
        return {"ce": 0.0 * ce, "ab": self.hp["weight"] * torch.stack(per_stage).mean()}
