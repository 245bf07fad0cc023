"""Top-k accuracy over a whole split."""
from __future__ import annotations

import torch

from models.frozen import inference_form

TOPK = (1, 2, 3, 4, 5)


@torch.inference_mode()
def predict_logits(model, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits and labels of `loader`, in its order (model put in eval mode by the caller)."""
    logits, labels = [], []
    for batch in loader:
        out = model(batch.x)
        logits.append((out[0] if isinstance(out, tuple) else out).float())
        labels.append(batch.y)
    return torch.cat(logits), torch.cat(labels)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=TOPK) -> dict[str, float]:
    """Percent of samples whose label is among the k highest scores, for each k (k capped at the classes)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = (top == labels[:, None]).cumsum(1).clamp(max=1).sum(0).float() * 100.0 / len(labels)
    return {f"top{k}": round(float(hits[min(k, kmax) - 1]), 4) for k in ks}


def evaluate(model, loader) -> dict[str, float]:
    """Top-k accuracy of `model` in eval mode, computed on its inference form (`models.frozen.inference_form`:
    BatchNorm folded, a copy; `model` is left as it was)."""
    model = inference_form(model)
    was_training = model.training
    model.eval()
    try:
        return topk_accuracy(*predict_logits(model, loader))
    finally:
        model.train(was_training)


CHANCE_FACTOR = 1.5


def at_chance(top1: float, num_classes: int) -> bool:
    """A finished run whose top-1 is within 1.5x of guessing (100/classes %) learned nothing: its number is
    marked wherever it is shown, never presented as a plain result."""
    return top1 <= CHANCE_FACTOR * 100.0 / num_classes
