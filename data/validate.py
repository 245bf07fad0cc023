"""The checks every split passes before it is used: nothing is converted silently, and a refusal says how to
convert the data once, by hand.

Images are uint8 pixels of shape (N, 32, 32, 3) (NHWC, RGB); labels are integers of shape (N,), in
[0, classes). Readers check each file as they read it (so a message names the file), `load_splits` checks each
whole split against the dataset's class count (so a message names the split).
"""
from __future__ import annotations

import numpy as np
import torch

from core.errors import UserError

PIXELS = "uint8 pixels 0..255 of shape (N, 32, 32, 3) (NHWC, RGB)"


def as_numpy(a) -> np.ndarray:
    """A view of `a` as a numpy array, only to inspect it (never to convert data)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        if a.dtype == torch.bfloat16:
            a = a.float()  # only to describe it: a float is refused anyway
        return a.numpy()
    return np.asarray(a)


def _range(a: np.ndarray) -> tuple:
    return (a.min().item(), a.max().item()) if a.size else (None, None)


def check_images(images, where: str) -> None:
    """Refuse anything but uint8 (N, 32, 32, 3), saying how to convert what was given."""
    x = as_numpy(images)
    shape = tuple(x.shape)
    if x.ndim == 4 and shape[1:] == (3, 32, 32) and shape[3] != 3:
        raise UserError(f"{where}: images have shape {shape}, channels first (NCHW); kd-bench needs channels "
                        f"last (N, 32, 32, 3). Transpose them once: `images = x.transpose(0, 2, 3, 1)` (numpy) "
                        f"or `x.permute(0, 2, 3, 1)` (torch)")
    if x.ndim == 2 and shape[1] == 3072:
        raise UserError(f"{where}: images are flat rows of 3072 values, shape {shape}; kd-bench needs "
                        f"(N, 32, 32, 3). For rows in the official CIFAR order (1024 red, 1024 green, 1024 "
                        f"blue): `images = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)`")
    if x.ndim != 4 or shape[1:] != (32, 32, 3):
        raise UserError(f"{where}: images have shape {shape}; kd-bench needs {PIXELS}")
    if x.dtype == np.uint8:
        return
    lo, hi = _range(x)
    kind = x.dtype.kind
    if kind == "f":
        if lo is not None and lo >= 0 and hi <= 1:
            how = ("they look like floats in [0, 1]: convert them once with "
                   "`images = (x * 255).round().astype(np.uint8)`")
        elif lo is not None and lo >= 0 and hi <= 255:
            how = ("they look like pixel values in [0, 255]: convert them once with "
                   "`images = x.round().astype(np.uint8)`")
        else:
            how = ("values outside [0, 255] are not pixels (normalised images?): undo the normalisation to "
                   "0..255 and store them as uint8")
        raise UserError(f"{where}: images are {x.dtype} in [{lo:g}, {hi:g}]; kd-bench needs {PIXELS} and never "
                        f"converts silently; {how}")
    if kind in "iu":
        if lo is not None and lo >= 0 and hi <= 255:
            how = "all values are within 0..255: convert them once with `images = x.astype(np.uint8)`"
        else:
            how = (f"values from {lo} to {hi} do not fit 0..255, so these are not 8-bit pixels: rescale them to "
                   "0..255 yourself and store them as uint8")
        raise UserError(f"{where}: images are {x.dtype}; kd-bench needs {PIXELS} and never converts silently; {how}")
    raise UserError(f"{where}: images are {x.dtype}; kd-bench needs {PIXELS}")


def check_labels(labels, n_images: int, where: str) -> None:
    """Integer dtype, 1-D, one per image."""
    y = as_numpy(labels)
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and y.size and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            how = "they hold whole numbers: convert them once with `labels = y.astype(np.int64)`"
        elif y.dtype.kind == "b":
            how = "booleans are not class indices: store the class index of each image"
        else:
            how = "store the class index of each image as an integer"
        raise UserError(f"{where}: labels are {y.dtype}; kd-bench needs integer class indices of shape (N,) and "
                        f"never converts silently; {how}")
    if y.ndim != 1:
        if y.ndim == 2 and y.shape[1] == 1:
            how = "flatten them once: `labels = y.reshape(-1)`"
        elif y.ndim == 2 and y.shape[0] == n_images:
            how = "one-hot rows? convert them once: `labels = y.argmax(1)`"
        else:
            how = "store one class index per image"
        raise UserError(f"{where}: labels have shape {tuple(y.shape)}; kd-bench needs shape (N,); {how}")
    if len(y) != n_images:
        raise UserError(f"{where}: {n_images} images but {len(y)} labels; each image needs exactly one label")


def check_label_range(labels, where: str, dataset: str, num_classes: int) -> None:
    """All labels in [0, num_classes): the message names the first offending value and where it is."""
    y = as_numpy(labels)
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise UserError(f"{where}: label {y[i].item()} (at index {i}) is outside 0..{num_classes - 1}, as are "
                        f"{bad.size} of its {len(y)} labels: {dataset} has {num_classes} classes. This is not "
                        f"{dataset} data: choose the matching --dataset, or fix the labels")


def check_not_empty(n: int, where: str) -> None:
    if n == 0:
        raise UserError(f"{where} holds no images: both splits need at least one")


def check_subset(n: int | None, size: int | None, split: str, where: str) -> None:
    """A subset size is 1..size (None = the whole split); 0, negative or too large is refused. `size` None:
    no upper bound (synthetic data is generated at the size asked for)."""
    if n is None:
        return
    flag = f"--{split}-size"
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise UserError(f"{flag} must be a whole number of images, got {n!r}")
    if n < 1:
        whole = f" ({size} images)" if size is not None else ""
        raise UserError(f"{flag} {n}: a subset needs at least 1 image; leave {flag} out to use the whole "
                        f"{split} split{whole}")
    if size is not None and n > size:
        raise UserError(f"{flag} {n} is larger than the {split} split of {where}, which has {size} images: use "
                        f"at most {size}, or leave {flag} out to use all of them")
