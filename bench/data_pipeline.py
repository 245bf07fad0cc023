#!/usr/bin/env python
"""Training-batch throughput: kd-bench's device-resident augmentation vs torchvision's DataLoader + PIL.

Both pipelines produce the same thing from the same CIFAR-10 arrays: shuffled batches of 128 normalised
float tensors, random crop 32 with padding 4 and horizontal flip. Each is warmed up, then timed over whole
epochs of the training set; the ratio printed is measured in this one run, on this machine.

    python bench/data_pipeline.py --data-dir ../shared/data/cifar10 [--images 50000] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import DATASETS, TrainLoader, load_splits  # noqa: E402


class ArrayDataset(torch.utils.data.Dataset):
    """The usual torchvision path: one PIL image per sample, transforms applied one by one."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def time_epochs(make_iter, n_images: int, epochs: int) -> float:
    """Images per second over `epochs` full passes, after one warm-up pass."""
    for _ in make_iter(0):
        pass
    t0 = time.perf_counter()
    seen = 0
    for e in range(1, epochs + 1):
        for x, y in make_iter(e):
            seen += len(y)
    assert seen == n_images * epochs
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="../shared/data/cifar10")
    ap.add_argument("--images", type=int, default=20000, help="training images per epoch (default 20000)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="DataLoader worker processes (default: the cores, at most 2)")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()

    import torchvision.transforms as T

    info = DATASETS["cifar10"]
    train, _ = load_splits("cifar10", "disk", args.data_dir, train_size=args.images)
    n = len(train)
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(info.mean, info.std)])
    ds = ArrayDataset(train.images.numpy(), train.labels.numpy(), transform)

    def torchvision_iter(epoch):
        g = torch.Generator().manual_seed(epoch)
        return torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, generator=g,
                                           num_workers=args.workers, persistent_workers=False)

    loader = TrainLoader(train, args.batch_size, info.mean, info.std, seed=0)
    assert n % args.batch_size != 1

    def kdbench_iter(epoch):
        return ((b.x, b.y) for b in loader.epoch(epoch))

    ours = time_epochs(kdbench_iter, n, args.epochs)
    theirs = time_epochs(torchvision_iter, n, args.epochs)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"images per epoch: {n}, batch {args.batch_size}, {args.epochs} timed epochs after 1 warm-up")
    print(f"torchvision DataLoader + PIL ({args.workers} workers): {theirs:10.0f} images/s")
    print(f"kd-bench TrainLoader (in process, {loader.device}):    {ours:10.0f} images/s")
    print(f"ratio: {ours / theirs:.1f}x")


if __name__ == "__main__":
    main()
