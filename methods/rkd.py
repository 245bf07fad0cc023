"""Relational knowledge distillation (Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019).

Rather than matching each sample's embedding, the student matches the *structure* of the batch in the
teacher's embedding space: pairwise distances (normalised by their mean, so the scale of the two spaces need
not agree; paper Eqs. 4-5) and the angles formed by triplets (Eqs. 6-7), both penalised with the Huber loss.

Reference conventions (AberHu/Knowledge-Distillation-Zoo `kd_losses/rkd.py`, itself from the authors' code),
kept on purpose:
* distances from the expansion |a|^2 + |b|^2 - 2ab, clamped at eps = 1e-12 before the square root (so the
  diagonal has zero gradient), diagonal then set to 0 and the matrix divided by the mean of its positive entries;
* Huber = `F.smooth_l1_loss` with beta 1, *mean* over the B x B (distance) and B x B x B (angle) entries;
* the term weights w_dist 25 and w_angle 50 are inside the loss; the script's lambda (1.0) multiplies the sum;
* the tap is the pooled 64-d feature before the classifier.
"""
import torch
import torch.nn.functional as F

from .base import Method


def pairwise_distances(feat: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """[B, B] Euclidean distances with a zero diagonal; the clamp keeps sqrt differentiable on the diagonal."""
    sq = feat.pow(2).sum(dim=1)
    dist = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2.0 * feat @ feat.t()).clamp(min=eps)
    if not squared:
        dist = dist.sqrt()
    off_diag = 1.0 - torch.eye(feat.shape[0], dtype=dist.dtype, device=dist.device)
    return dist * off_diag


def _normalised_distances(feat: torch.Tensor, eps: float) -> torch.Tensor:
    """Distances divided by their mean over distinct pairs: the relation is scale-free (paper Eq. 5, mu)."""
    dist = pairwise_distances(feat, squared=False, eps=eps)
    return dist / dist[dist > 0].mean()


def _angles(feat: torch.Tensor) -> torch.Tensor:
    """Flattened [B*B*B] cosines of the angle at vertex i between samples j and k (paper Eq. 6)."""
    diff = F.normalize(feat.unsqueeze(0) - feat.unsqueeze(1), p=2, dim=2)   # [i, j] = unit(f_j - f_i)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def rkd_loss(feat_s: torch.Tensor, feat_t: torch.Tensor, w_dist: float = 25.0, w_angle: float = 50.0,
             eps: float = 1e-12, smooth_l1_beta: float = 1.0) -> torch.Tensor:
    """w_dist * Huber(distance potentials) + w_angle * Huber(angle potentials), each a mean over entries."""
    loss_d = F.smooth_l1_loss(_normalised_distances(feat_s, eps), _normalised_distances(feat_t, eps),
                              beta=smooth_l1_beta)
    loss_a = F.smooth_l1_loss(_angles(feat_s), _angles(feat_t), beta=smooth_l1_beta)
    return w_dist * loss_d + w_angle * loss_a


class RKD(Method):
    name = "rkd"
    display_name = "RKD"
    kind = "relation"
    description = "match mean-normalised pairwise distances and triplet angles of pooled features (Huber)"
    citation = "Park, Kim, Lu & Cho, CVPR 2019"
    defaults = {"weight": 1.0, "w_dist": 25.0, "w_angle": 50.0, "eps": 1e-12}
    student_taps = teacher_taps = ("pool",)
    loss_fn = staticmethod(rkd_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        return cls.loss_fn(inputs["feat_s"], inputs["feat_t"], hparams["w_dist"], hparams["w_angle"],
                           hparams.get("eps", 1e-12), hparams.get("smooth_l1_beta", 1.0))

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        hp = self.hp
        loss = rkd_loss(s_feats["pool"], t_feats["pool"], hp["w_dist"], hp["w_angle"], hp["eps"])
        return {"rkd": hp["weight"] * loss}
