"""Dataset descriptions and the one entry point `load_splits`: on-disk CIFAR, array files, or synthetic data.

A split is held as a uint8 tensor of images (N, 32, 32, 3, NHWC, RGB) and an int64 tensor of labels, so the
training pipeline can live on the training device and augment whole batches at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.errors import UserError

from . import readers, synthetic


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# Statistics of the training sets (pixels in [0, 1]), as in the reference code.
DATASETS = {
    "cifar10": DatasetInfo("cifar10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo("cifar100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 32, 32, 3)
    labels: torch.Tensor  # int64 (N,)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.shape[1:] != (32, 32, 3):
            raise UserError(f"images must be uint8 of shape (N, 32, 32, 3), got {tuple(self.images.shape)} "
                            f"{self.images.dtype}")
        if len(self.images) != len(self.labels):
            raise UserError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self):
        return len(self.labels)

    def subset(self, n: int | None, seed: int = 0) -> "Split":
        """A class-balanced-in-expectation subset: the first `n` of a fixed permutation (independent of the run)."""
        if n is None or n >= len(self):
            return self
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return Split(self.images[order], self.labels[order])


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


def load_splits(name: str, source: str, data_dir: str | None, download: bool = False,
                train_size: int | None = None, test_size: int | None = None) -> tuple[Split, Split]:
    """Load (train, test). `source` is 'disk' (official layout or array files under data_dir) or 'synthetic'."""
    info = dataset_info(name)
    if source == "synthetic":
        train, test = synthetic.make_splits(info.num_classes, train_size or 5000, test_size or 1000)
    elif source == "disk":
        train, test = readers.read_splits(name, data_dir, download)
    else:
        raise UserError(f"unknown data source {source!r}; use 'disk' or 'synthetic'")
    train, test = Split(*train), Split(*test)
    if int(train.labels.max()) >= info.num_classes or int(test.labels.max()) >= info.num_classes:
        raise UserError(f"labels exceed {info.num_classes} classes of {name}: the data under {data_dir} is "
                        "not this dataset")
    return train.subset(train_size), test.subset(test_size, seed=1)
