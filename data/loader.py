"""Device-resident CIFAR batches: the whole split lives as uint8 on the training device and every batch is
cropped, flipped and normalised in one gather, with no worker processes and no PIL.

Sample order and augmentation come from a generator seeded by (seed, epoch) alone, drawn on the CPU and only
then moved to the device, so every method (and a resumed run, and a GPU run) sees the same stream.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from .datasets import Split


@dataclass
class Batch:
    x: torch.Tensor    # float (B, 3, 32, 32), normalised
    y: torch.Tensor    # int64 (B,)
    idx: torch.Tensor  # int64 (B,): position of each sample in the training split


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, epoch, salt)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7919 + salt) % (2 ** 63))


class _Normalizer:
    def __init__(self, mean, std, device):
        std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, device=device).view(1, 3, 1, 1) / std_t

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, H, W) float, normalised."""
        x = images_u8.permute(0, 3, 1, 2).float()
        return torch.addcmul(self.shift, x, self.scale)


class TrainLoader:
    """Shuffled, augmented batches of one split (random crop 32 with `padding`, horizontal flip).

    The split is padded once, at construction; a batch is then one `index_select` of pixels from the padded
    images (crop offsets and flips folded into the indices), which is several times faster than per-sample
    crops or multi-dimensional advanced indexing.
    """

    def __init__(self, split: Split, batch_size: int, mean, std, seed: int, device="cpu",
                 padding: int = 4, pad_mode: str = "zeros", flip: bool = True):
        if pad_mode not in ("zeros", "reflect"):
            raise ValueError(f"pad_mode must be 'zeros' or 'reflect', got {pad_mode!r}")
        self.device = torch.device(device)
        self.labels = split.labels.to(self.device)
        self.batch_size, self.seed, self.padding, self.flip = batch_size, seed, padding, flip
        self.side = 32 + 2 * padding
        self.pixels = _pad(split.images, padding, pad_mode).to(self.device).view(-1, 3)
        self.normalize = _Normalizer(mean, std, self.device)
        self.arange = torch.arange(32, device=self.device)

    def __len__(self):
        n, b = len(self.labels), self.batch_size
        # a final batch of one sample would break BatchNorm in train mode; it is dropped
        return n // b + (1 if n % b > 1 else 0)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        n, side = len(self.labels), self.side
        gen = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=gen)
        dy = torch.randint(0, 2 * self.padding + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * self.padding + 1, (n,), generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        order, dy, dx, flips = (t.to(self.device, non_blocking=True) for t in (order, dy, dx, flips))
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[sl]
            rows = dy[sl, None] + self.arange
            cols = dx[sl, None] + self.arange
            cols = torch.where(flips[sl, None], cols.flip(1), cols)
            flat = (idx[:, None, None] * side + rows[:, :, None]) * side + cols[:, None, :]
            crop = self.pixels.index_select(0, flat.view(-1)).view(len(idx), 32, 32, 3)
            yield Batch(self.normalize(crop), self.labels[idx], idx)


def _pad(images: torch.Tensor, padding: int, mode: str) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 -> (N, 32 + 2p, 32 + 2p, 3), zero or reflection padded (as torchvision's Pad)."""
    src = torch.arange(-padding, 32 + padding)
    if mode == "reflect":
        src = torch.where(src < 0, -src, torch.where(src > 31, 62 - src, src))
        return images[:, src][:, :, src].contiguous()
    out = torch.zeros(len(images), 32 + 2 * padding, 32 + 2 * padding, 3, dtype=torch.uint8)
    out[:, padding:padding + 32, padding:padding + 32] = images
    return out


class EvalLoader:
    """Fixed-order, unaugmented batches (test = normalise only)."""

    def __init__(self, split: Split, batch_size: int, mean, std, device="cpu"):
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.batch_size = batch_size
        self.normalize = _Normalizer(mean, std, self.device)

    def __len__(self):
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for i in range(0, len(self.labels), self.batch_size):
            idx = torch.arange(i, min(i + self.batch_size, len(self.labels)), device=self.device)
            yield Batch(self.normalize(self.images[idx]), self.labels[idx], idx)
