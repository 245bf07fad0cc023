"""Instance relationship graph (Liu, Cao, Li, Yuan, Hu, Li & Duan, "Knowledge Distillation via Instance
Relationship Graph", CVPR 2019).

The teacher's knowledge is a graph over the batch: vertices are the instances' features (here the logits),
edges their pairwise distances in several layers, and a *transformation* term describes how each instance
moves from one layer to the next (paper Sec. 3, Eqs. 3-7). Matching edges and transformations transfers the
geometry of the teacher's feature spaces rather than the features themselves.

Reference conventions (AberHu/Knowledge-Distillation-Zoo `kd_losses/irg.py`, "one-to-one mode" only),
kept on purpose:
* vertex = `F.mse_loss` of the logits; edges = squared Euclidean distance matrices (expansion formula,
  clamped at eps, diagonal 0) of the pooled feature, stage-2 and stage-3 maps, each divided by its maximum,
  compared with `F.mse_loss` and averaged over the three;
* transformation = per-instance squared distance between the stage-2 map (adaptive-avg-pooled to stage 3's
  H x W) and the stage-3 map with adjacent channel pairs averaged (64 -> 32), divided by its maximum, MSE;
* the term weights (0.1, 5, 5) are inside the loss; the script's lambda (1.0) multiplies the total.

The transformation needs, in each network, a stage-2 map that pools and a stage-3 map that pairs its channels
to one size (ResNet-like widths doubling per stage); networks without that (VGG, MobileNetV2, ShuffleNets, the
ResNet-50) are left out (runner/pairs.py). RepDistiller has no IRG to follow there.
"""
import torch
import torch.nn.functional as F

from .base import Method


def edge_matrix(x: torch.Tensor, squared: bool = True, eps: float = 1e-12) -> torch.Tensor:
    """[B, B] max-normalised distances between the flattened instances: the graph's edges."""
    x = x.reshape(x.shape[0], -1)
    sq = x.pow(2).sum(dim=1)
    dist = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2.0 * x @ x.t()).clamp(min=eps)
    if not squared:
        dist = dist.sqrt()
    dist = dist * (1.0 - torch.eye(x.shape[0], dtype=dist.dtype, device=dist.device))
    return dist / dist.max()


def transformation(fm1: torch.Tensor, fm2: torch.Tensor, squared: bool = True, eps: float = 1e-12):
    """[B] max-normalised distance each instance travels from `fm1` to the later map `fm2`."""
    if fm1.shape[2] > fm2.shape[2]:
        fm1 = F.adaptive_avg_pool2d(fm1, fm2.shape[2:])
    if fm1.shape[1] < fm2.shape[1]:
        fm2 = 0.5 * (fm2[:, 0::2] + fm2[:, 1::2])
    dist = (fm1.reshape(fm1.shape[0], -1) - fm2.reshape(fm2.shape[0], -1)).pow(2).sum(dim=-1).clamp(min=eps)
    if not squared:
        dist = dist.sqrt()
    return dist / dist.max()


def irg_loss(fm_s1, fm_s2, feat_s, out_s, fm_t1, fm_t2, feat_t, out_t, w_irg_vert: float = 0.1,
             w_irg_edge: float = 5.0, w_irg_tran: float = 5.0, squared: bool = True, eps: float = 1e-12):
    """w_vert * vertex + w_edge * mean of three edge MSEs + w_tran * transformation MSE."""
    vert = F.mse_loss(out_s, out_t)
    edge = sum(F.mse_loss(edge_matrix(s, squared, eps), edge_matrix(t, squared, eps))
               for s, t in ((feat_s, feat_t), (fm_s1, fm_t1), (fm_s2, fm_t2))) / 3.0
    tran = F.mse_loss(transformation(fm_s1, fm_s2, squared, eps), transformation(fm_t1, fm_t2, squared, eps))
    return w_irg_vert * vert + w_irg_edge * edge + w_irg_tran * tran


class IRG(Method):
    name = "irg"
    display_name = "IRG"
    kind = "relation"
    description = "match instance-relationship graphs: logits, pairwise-distance edges, stage2->stage3 moves"
    citation = "Liu et al., CVPR 2019"
    defaults = {"weight": 1.0, "w_irg_vert": 0.1, "w_irg_edge": 5.0, "w_irg_tran": 5.0, "eps": 1e-12}
    student_taps = teacher_taps = ("stage2", "stage3", "pool", "logits")
    loss_fn = staticmethod(irg_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        names = ("fm_s1", "fm_s2", "feat_s", "out_s", "fm_t1", "fm_t2", "feat_t", "out_t")
        return cls.loss_fn(*(inputs[n] for n in names), hparams["w_irg_vert"], hparams["w_irg_edge"],
                           hparams["w_irg_tran"], hparams.get("squared", True), hparams.get("eps", 1e-12))

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        hp = self.hp
        loss = irg_loss(s_feats["stage2"], s_feats["stage3"], s_feats["pool"], s_logits,
                        t_feats["stage2"], t_feats["stage3"], t_feats["pool"], t_logits,
                        hp["w_irg_vert"], hp["w_irg_edge"], hp["w_irg_tran"], True, hp["eps"])
        return {"irg": hp["weight"] * loss}
