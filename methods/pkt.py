"""Probabilistic knowledge transfer (Passalis & Tefas, "Learning Deep Representations with Probabilistic
Knowledge Transfer", ECCV 2018).

Instead of matching features, the student matches the teacher's *conditional probability* of one sample
being the neighbour of another, estimated with a kernel over the batch; this transfers the geometry of the
feature space and works for any feature dimensions (paper, Sec. 3, Eqs. 7-10; cosine kernel, Eq. 13).

Reference conventions (AberHu/Knowledge-Distillation-Zoo `kd_losses/pkt.py`, `PKTCosSim`):
* features L2-normalised with eps added to the norm (1e-6; RepDistiller uses 1e-7, ~5e-6 relative change);
* cosine similarities are mapped to [0, 1] with (c + 1) / 2 and normalised per row (self-pairs included);
* the divergence is the *mean* over all B x B entries of p_t log((p_t + eps) / (p_s + eps)), i.e. the
  paper's per-row KL summed over rows divided by B^2, hence the large weight 10000;
* the tap is the pooled 64-d feature before the classifier.
"""
import torch

from .base import Method


def _conditional_probs(feat: torch.Tensor, eps: float) -> torch.Tensor:
    """Row-stochastic [B, B] matrix of cosine-kernel affinities."""
    unit = feat / (torch.linalg.vector_norm(feat, ord=2, dim=1, keepdim=True) + eps)
    sim = (unit @ unit.t() + 1.0) / 2.0
    return sim / sim.sum(dim=1, keepdim=True)


def pkt_loss(feat_s: torch.Tensor, feat_t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean over B x B of p_t * log((p_t + eps) / (p_s + eps)) with cosine-kernel conditional probabilities."""
    p_s = _conditional_probs(feat_s, eps)
    p_t = _conditional_probs(feat_t, eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


class PKT(Method):
    name = "pkt"
    display_name = "PKT"
    kind = "relation"
    description = "match cosine-kernel conditional probability distributions of pooled features over the batch"
    citation = "Passalis & Tefas, ECCV 2018"
    defaults = {"weight": 10000.0, "eps": 1e-6}
    student_taps = teacher_taps = ("pool",)
    loss_fn = staticmethod(pkt_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        return cls.loss_fn(inputs["feat_s"], inputs["feat_t"], hparams.get("eps", 1e-6))

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        return {"pkt": self.hp["weight"] * pkt_loss(s_feats["pool"], t_feats["pool"], self.hp["eps"])}
