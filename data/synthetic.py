"""A learnable CIFAR-shaped dataset made by the project itself, for smoke runs and tests.

Each class owns a smooth colour template (random 4x4x3 field, upsampled to 32x32). A sample is its class
template under a random contrast and brightness, shifted by up to 4 pixels, plus pixel noise. Classes differ by
structure, not by one pixel, so a small network learns them within an epoch or two and accuracy above chance
means something. Everything depends on a fixed seed: the same call gives the same bytes on every machine.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SEED = 20201012  # fixed: the synthetic data is part of the benchmark definition, not of a run


def _make(templates: torch.Tensor, n: int, gen: torch.Generator):
    num_classes = templates.shape[0]
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=gen)]
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=gen)
    brightness = 0.3 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    x = templates[labels] * contrast + brightness
    shifts = torch.randint(-4, 5, (n, 2), generator=gen)
    x = torch.stack([torch.roll(img, (int(dy), int(dx)), dims=(1, 2)) for img, (dy, dx) in zip(x, shifts)])
    x = x + 0.5 * torch.randn(x.shape, generator=gen)
    images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return images, labels


def make_splits(num_classes: int, train_size: int, test_size: int):
    """((train images, labels), (test images, labels)), as the on-disk readers return them."""
    gen = torch.Generator().manual_seed(SEED + num_classes)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=gen) * 2 - 1
    templates = F.interpolate(coarse, size=32, mode="bicubic", align_corners=False).clamp(-1, 1)
    train = _make(templates, train_size, gen)
    return train, _make(templates, test_size, gen)
