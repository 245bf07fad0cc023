"""Flow of solution procedure (Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation: Fast Optimization,
Network Minimization and Transfer Learning", CVPR 2017).

What the teacher knows is taken to be *how* it transforms features from one layer to the next, summarised by
the FSP (Gram) matrix between two layers' maps; the student first learns to reproduce these flows and is then
trained normally from that initialisation (paper, Sec. 3.2-3.3, Eqs. 1-2, two-stage procedure).

Reference conventions (AberHu/Knowledge-Distillation-Zoo `kd_losses/fsp.py` and `train_kd.py`):
* G = F1 F2^T / (H W), F1 adaptive-average-pooled to F2's spatial size when larger (the paper's layer pairs
  share a size; ResNet stages halve it);
* distance = mean over B x C1 x C2 of squared differences (not the paper's per-pair sum), averaged over the
  pairs (stem, stage1), (stage1, stage2), (stage2, stage3) of post-ReLU maps, weight 1;
* stage 1 ("init", 50 of 200 reference epochs: lr/10 for 30, lr/100 for 10, lr/1000 for 10) trains the
  student on the FSP term only (CE weighted 0); stage 2 is the ordinary 200-epoch CE-only schedule.

Differences from the reference, both from the runner building one SGD optimiser per stage:
* the reference reuses a single optimiser object, so momentum buffers carry over from the init stage into the
  main stage; here they restart at the start of the main stage;
* `CE * 0` in the reference still gives the classifier zero (not absent) gradients, so weight decay and
  momentum keep acting on it during the init stage; `train_step` reproduces that by giving every optimised
  parameter without a gradient a zero gradient in the init stage.
Stage lengths scale with the protocol's epochs (>= 1 init epoch); the main stage does no teacher forward, since
its FSP term is multiplied by 0 in the reference and so cannot change the gradients.

Student and teacher FSP matrices are compared entry by entry, so their channel counts must agree: RepDistiller's
`distiller_zoo/FSP.py` refuses others and Tian et al. run no FSP across families (their Table 2), so such pairs
are left out (runner/pairs.py).
"""
import torch
import torch.nn.functional as F

from .base import Method, Stage, main_stage, scaled

# (first epoch, lr divisor) of the reference's init schedule, in its 50 epochs out of 200 main epochs.
INIT_EPOCHS_REF, MAIN_EPOCHS_REF = 50, 200
INIT_LR_STEPS_REF = ((0, 10.0), (30, 100.0), (40, 1000.0))


def fsp_matrix(fm1: torch.Tensor, fm2: torch.Tensor) -> torch.Tensor:
    """[B, C1, C2] spatially averaged inner products between the channels of two layers."""
    if fm1.shape[2] > fm2.shape[2]:
        fm1 = F.adaptive_avg_pool2d(fm1, fm2.shape[2:])
    a = fm1.flatten(2)
    b = fm2.flatten(2)
    return torch.bmm(a, b.transpose(1, 2)) / a.shape[2]


def fsp_loss(fm_s1, fm_s2, fm_t1, fm_t2) -> torch.Tensor:
    """One layer pair: mean over B x C1 x C2 of the squared difference of student and teacher FSP matrices."""
    return F.mse_loss(fsp_matrix(fm_s1, fm_s2), fsp_matrix(fm_t1, fm_t2))


def init_stage(protocol) -> Stage:
    """The reference's student-initialisation stage, its length and lr steps scaled to `protocol.epochs`."""
    epochs = scaled(INIT_EPOCHS_REF, MAIN_EPOCHS_REF, protocol.epochs)
    steps, last = [], -1
    for start_ref, div in INIT_LR_STEPS_REF:
        start = max(last + 1, int(round(start_ref * epochs / INIT_EPOCHS_REF)))
        if start >= epochs:
            break
        steps.append((start, protocol.lr / div))
        last = start
    return Stage("init", epochs, tuple(steps), role="init")


class FSP(Method):
    name = "fsp"
    display_name = "FSP"
    kind = "relation"
    description = "two-stage: initialise the student on teacher FSP (layer-to-layer Gram) matrices, then CE only"
    citation = "Yim et al., CVPR 2017"
    defaults = {"weight": 1.0}
    student_taps = teacher_taps = ("stem", "stage1", "stage2", "stage3")
    loss_fn = staticmethod(fsp_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        return cls.loss_fn(inputs["fm_s1"], inputs["fm_s2"], inputs["fm_t1"], inputs["fm_t2"])

    def stages(self, protocol):
        return [init_stage(protocol), main_stage(protocol)]

    def losses(self, batch, info):
        logits, feats = self.student(batch.x)
        if info.stage.role != "init":
            return {"ce": F.cross_entropy(logits, batch.y)}
        t_logits, t_feats = self.teacher_forward(batch.x)
        return self.distill(logits, feats, t_logits, t_feats, batch, info)

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        taps = self.student_taps
        per_pair = [fsp_loss(s_feats[a], s_feats[b], t_feats[a], t_feats[b]) for a, b in zip(taps, taps[1:])]
        return {"fsp": self.hp["weight"] * torch.stack(per_pair).mean()}

    def train_step(self, batch, info, optimizer):
        if info.stage.role != "init":
            return super().train_step(batch, info, optimizer)
        losses = self.losses(batch, info)

        def zero_for_unreached():  # the reference's CE * 0: zero gradients, so decay and momentum still act
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)

        self.backward_step(sum(losses.values()), optimizer, before_step=zero_for_unreached)
        return {k: v.detach() for k, v in losses.items()}
