"""Sobolev / Jacobian matching (Czarnecki et al., "Sobolev Training for Neural Networks", NeurIPS 2017;
Srinivas & Fleuret, "Knowledge Transfer with Jacobian Matching", ICML 2018).

Matching outputs only pins the student down at the training points; matching the input gradients also makes it
take the teacher's local slope there. As in AberHu/Knowledge-Distillation-Zoo (`kd_losses/sobolev.py`), only one
row of the Jacobian is matched, the input gradient of the target-class logit, and both gradients are
L2-normalised per sample first so that the loss compares directions, not the (architecture-dependent) scale.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Method


def sobolev_loss(grad_s: torch.Tensor, grad_t: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the per-sample L2-normalised input gradients (mean over B x 3 x H x W).

    The teacher's gradient is a constant target (detached), as in the reference. `F.normalize` keeps the
    reference's 1e-12 floor on the norm, so an all-zero gradient yields zeros instead of NaN.
    """
    flat_s = F.normalize(grad_s.flatten(1), p=2, dim=1)
    flat_t = F.normalize(grad_t.flatten(1), p=2, dim=1)
    return F.mse_loss(flat_s, flat_t.detach())


def target_input_grad(logits: torch.Tensor, x: torch.Tensor, target: torch.Tensor, create_graph: bool):
    """d logits[b, target_b] / d x for every sample b (one backward pass over the summed target logits)."""
    picked = logits.gather(1, target.view(-1, 1)).sum()
    return torch.autograd.grad(picked, x, create_graph=create_graph)[0]


class Sobolev(Method):
    name = "sobolev"
    display_name = "Sobolev"
    kind = "response"
    description = "match the normalised input gradients of the target-class logit (Jacobian matching)"
    citation = "Czarnecki et al., NeurIPS 2017; Srinivas & Fleuret, ICML 2018"
    defaults = {"weight": 20.0}
    student_taps = teacher_taps = ("logits",)
    loss_fn = staticmethod(sobolev_loss)
    no_compile = "it back-propagates twice through the student, which torch.compile does not support"

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        """The golden vectors give the input gradients themselves (the reference's linear-surrogate convention:
        d out[target] / d img == grad_x), so `target` is not needed to evaluate the loss."""
        return cls.loss_fn(inputs["grad_s"], inputs["grad_t"])

    def losses(self, batch, info):
        """CE plus the Jacobian term. The student's input gradient keeps its graph (double back-propagation
        trains the student through it); the teacher's is a detached target, so unlike the reference (which also
        builds the teacher's graph with create_graph=True) no second-order graph is kept for it: same value
        and same student gradients, less memory."""
        with torch.enable_grad():
            x = batch.x.detach().requires_grad_(True)
            logits, _ = self.student(x)
            grad_s = target_input_grad(logits, x, batch.y, create_graph=True)

            x_t = batch.x.detach().requires_grad_(True)
            t_logits, _ = self.teacher(x_t)
            grad_t = target_input_grad(t_logits, x_t, batch.y, create_graph=False)
        return {"ce": F.cross_entropy(logits, batch.y),
                "sobolev": self.hp["weight"] * sobolev_loss(grad_s, grad_t.detach())}
