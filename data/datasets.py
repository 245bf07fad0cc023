"""Dataset descriptions and the one entry point `load_splits`: on-disk CIFAR, array files, or synthetic data.

A split is held as a uint8 tensor of images (N, 32, 32, 3, NHWC, RGB) and an int64 tensor of labels, so the
training pipeline can live on the training device and augment whole batches at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.errors import UserError

from . import readers, synthetic
from .validate import (check_images, check_label_range, check_labels, check_not_empty,
                       check_subset)


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


# How a subset is drawn (Split.subset); part of every subset's data fingerprint (data/fingerprint.py), so a
# change of the rule must change this text.
SUBSET_RULE = "torch.randperm(N, Generator().manual_seed(seed))[:n].sort(); seed 0 for train, 1 for test"


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 32, 32, 3)
    labels: torch.Tensor  # int64 (N,)

    def __post_init__(self):
        if not isinstance(self.images, torch.Tensor) or not isinstance(self.labels, torch.Tensor):
            raise UserError("a Split holds torch tensors: torch.from_numpy(images), torch.from_numpy(labels)")
        check_images(self.images, "split")
        check_labels(self.labels, len(self.images), "split")
        if self.labels.dtype != torch.int64:
            raise UserError(f"split: labels are {self.labels.dtype}; a Split holds int64 labels: convert them "
                            "once with `labels.long()`")

    def __len__(self):
        return len(self.labels)

    def subset(self, n: int | None, seed: int = 0) -> "Split":
        """A class-balanced-in-expectation subset: the first `n` of a fixed permutation (independent of the run);
        `n` None or the split's size: the whole split. See SUBSET_RULE."""
        if n is None or n == len(self):
            return self
        if not 1 <= n <= len(self):
            raise UserError(f"a subset of {n} images of a split of {len(self)}: choose 1..{len(self)}")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return Split(self.images[order], self.labels[order])


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


def load_splits(name: str, source: str, data_dir: str | None, download: bool = False,
                train_size: int | None = None, test_size: int | None = None) -> tuple[Split, Split]:
    """Load (train, test). `source` is 'disk' (official layout or array files under data_dir) or 'synthetic'.

    Every check of data/validate.py runs here: a split that is not uint8 (N, 32, 32, 3) images with integer
    labels in [0, classes), an empty split, or a subset size outside 1..N is refused with a UserError."""
    train, test = read_full(name, source, data_dir, download, train_size, test_size)
    return train.subset(train_size), test.subset(test_size, seed=1)


def read_full(name: str, source: str, data_dir: str | None, download: bool = False,
              train_size: int | None = None, test_size: int | None = None) -> tuple[Split, Split]:
    """The whole (train, test) splits, checked, before any subset; the subset sizes are checked against them.
    For synthetic data the sizes are the generator's (default 5000 and 1000)."""
    info = dataset_info(name)
    if source == "synthetic":
        check_subset(train_size, None, "train", f"synthetic {name}")
        check_subset(test_size, None, "test", f"synthetic {name}")
        train, test = synthetic.make_splits(info.num_classes, train_size or 5000, test_size or 1000)
        where = f"synthetic {name}"
    elif source == "disk":
        loc = readers.locate(name, data_dir, download)
        train, test = readers.read_located(name, loc)
        where = f"{name} under {loc.folder}"
    else:
        raise UserError(f"unknown data source {source!r}; use 'disk' or 'synthetic'")
    splits = check_splits(name, train, test, where)
    check_subset(train_size, len(splits[0]), "train", where)
    check_subset(test_size, len(splits[1]), "test", where)
    return splits[0], splits[1]


def check_splits(name: str, train, test, where: str) -> tuple[Split, Split]:
    """Both splits ((images, labels) each) checked against the dataset: images, labels, not empty, every label
    in [0, classes). Messages name the split and `where` the data comes from."""
    num_classes = dataset_info(name).num_classes
    splits = []
    for split, (images, labels) in (("train", train), ("test", test)):
        what = f"the {split} split of {where}"
        check_images(images, what)
        check_labels(labels, len(images), what)
        check_not_empty(len(images), what)
        check_label_range(labels, what, name, num_classes)
        splits.append(Split(images, labels))
    return splits[0], splits[1]
