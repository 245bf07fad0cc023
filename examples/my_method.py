"""A kd-bench method in one file: the student's pooled features, through a learned linear projection, are
pulled towards the direction of the teacher's (1 - cosine similarity). Use it with

    python benchmark.py --plugin examples/my_method.py --methods cosine --preset smoke
    python benchmark.py --plugin examples/my_method.py --methods cosine,st --set cosine.weight=2,4

The plugin loader registers every Method subclass of this file that has a `name`; nothing else is needed.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from methods.base import Method


def cosine_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 1 - cos(f_s, f_t); 0 when the directions agree, at most 2."""
    return (1 - F.cosine_similarity(f_s.flatten(1), f_t.flatten(1), dim=1)).mean()


class CosineHint(Method):
    name = "cosine"                      # the registry key and the `method` of its runs
    display_name = "Cosine hint"         # its row in the tables and plots
    kind = "feature"
    description = "1 - cosine between projected student and teacher pooled features"
    citation = "kd-bench example"
    defaults = {"weight": 1.0}           # every key can be set: --set cosine.weight=2
    student_taps = teacher_taps = ("pool",)
    loss_fn = staticmethod(cosine_loss)

    def setup(self, s_feats, t_feats):
        # extra modules are built from one dry-run forward and trained with the student
        self.extra["proj"] = nn.Linear(s_feats["pool"].shape[1], t_feats["pool"].shape[1])

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        f_s = self.extra["proj"](s_feats["pool"].flatten(1))
        return {"cosine": self.hp["weight"] * cosine_loss(f_s, t_feats["pool"])}
