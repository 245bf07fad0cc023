"""Readers of the on-disk layouts: the official pickles, array files (`*.npz`, optionally xz-compressed), and
torchvision's download for users with internet. `locate` finds the files a data folder holds, `read_located`
reads them; every reader returns ((train_x, train_y), (test_x, test_y)) as tensors, uint8 images (N, 32, 32, 3)
and int64 labels, each file checked as it is read (data/validate.py): nothing is converted silently.

Nothing read here is executed: array files are read with `allow_pickle=False`, and the official pickles through
an unpickler that admits only the few globals those files contain (`_BatchUnpickler`).
"""
from __future__ import annotations

import io
import lzma
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError

from .validate import check_images, check_labels

OFFICIAL_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
OFFICIAL_FILES = {"cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
                  "cifar100": (["train"], ["test"])}
LABEL_KEYS = {"cifar10": b"labels", "cifar100": b"fine_labels"}


@dataclass(frozen=True)
class Located:
    """The files of one data folder that `read_located` reads, in order."""

    layout: str              # "official" (pickles) | "arrays" (npz[.xz])
    folder: Path
    train: tuple[Path, ...]
    test: tuple[Path, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        return self.train + self.test


# --- official pickles, read without executing anything --------------------------------------------------

def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy 2
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# What the official python-version batches contain: a dict of bytes keys holding a numpy array (`data`) and
# lists of ints and bytes. A numpy array pickles as `_reconstruct(ndarray, shape, dtype)` plus its state, so
# these are the only globals such a file names (`numpy.core.multiarray` as numpy 1 and Python 2 wrote it,
# `numpy._core.multiarray` as numpy 2 writes it). Anything else is refused before it is created.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class _Refused(Exception):
    """A pickle names a global that a CIFAR batch never contains."""


class _BatchUnpickler(pickle.Unpickler):
    """Admits exactly `_ALLOWED_GLOBALS`; every other global (and so every function a forged file would call)
    is refused when the file names it, before anything is called."""

    def find_class(self, module, name):
        make = _ALLOWED_GLOBALS.get((module, name))
        if make is None:
            raise _Refused(f"{module}.{name}")
        return make()

    def persistent_load(self, pid):
        raise _Refused(f"persistent id {pid!r}")


def load_batch(path: Path):
    """One official batch file: its dict, read by `_BatchUnpickler`."""
    with open(path, "rb") as fh:
        return _BatchUnpickler(fh, encoding="bytes").load()


def _read_pickles(name: str, files: tuple[Path, ...]):
    xs, ys = [], []
    for path in files:
        try:
            d = load_batch(path)
        except FileNotFoundError:
            raise UserError(f"{path} is missing: the {name} folder is incomplete; download it again with "
                            "--download") from None
        except _Refused as e:
            raise UserError(f"{path} is not an official CIFAR batch: it asks to create {e}, which CIFAR files "
                            "never contain, so it was not read (kd-bench never runs code from a data file). "
                            "Replace the folder with the official files (--download), or store your data as "
                            "array files data_batch_*.npz + test_batch.npz (arrays `images`, `labels`)") from None
        except Exception as e:
            raise UserError(f"{path} cannot be read ({type(e).__name__}: {e}); the file is truncated or "
                            "corrupt: delete the folder and download again with --download") from None
        label_key = LABEL_KEYS[name]
        if not isinstance(d, dict) or b"data" not in d or label_key not in d:
            what = f"a dict with keys {sorted(d)[:6]}" if isinstance(d, dict) else f"a {type(d).__name__}"
            raise UserError(f"{path} is not an official {name} batch: it holds {what}, not the keys b'data' and "
                            f"{label_key!r}; download the official files again with --download")
        data = d[b"data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            what = (f"{data.dtype} of shape {data.shape}" if isinstance(data, np.ndarray)
                    else f"a {type(data).__name__}")
            raise UserError(f"{path}: b'data' is {what}; an official batch holds uint8 rows of 3072 values "
                            "(N, 3072). Download the official files again with --download, or store your data "
                            "as array files (`images` uint8 (N, 32, 32, 3), `labels`)")
        labels = np.asarray(d[label_key])
        check_labels(labels, len(data), str(path))
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # the official layout, rows of CHW
        ys.append(labels.astype(np.int64))  # integers checked above: a widening, never a rounding
    return _tensors(np.concatenate(xs), np.concatenate(ys))


# --- array files ---------------------------------------------------------------------------------------

def _tensors(images: np.ndarray, labels: np.ndarray):
    """Checked arrays (uint8 images, int64 labels) as tensors, without a conversion."""
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.ascontiguousarray(labels))


def _load_npz(path: Path):
    try:
        raw = lzma.open(path).read() if path.suffix == ".xz" else path.read_bytes()
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            missing = [k for k in ("images", "labels") if k not in z.files]
            if missing:
                raise UserError(f"{path} holds the arrays {z.files}, not {' and '.join(map(repr, missing))}: an "
                                "array file needs `images` (N, 32, 32, 3) uint8 and `labels` (N,) int, e.g. "
                                "np.savez(path, images=images, labels=labels)")
            images, labels = z["images"], z["labels"]
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path} cannot be read ({type(e).__name__}: {e}); the array file is truncated or "
                        "corrupt: copy it again") from None
    check_images(images, str(path))
    check_labels(labels, len(images), str(path))
    return images, labels.astype(np.int64)  # integers checked above: a widening, never a rounding


def _array_files(folder: Path, stem: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"{stem}*") if p.name.endswith((".npz", ".npz.xz")))


def _read_arrays(files: tuple[Path, ...]):
    """Array files: `data_batch_*.npz[.xz]` (or `train*.npz[.xz]`) and `test*.npz[.xz]`, each with
    `images` (N, 32, 32, 3) uint8 and `labels` (N,) int."""
    parts = [_load_npz(p) for p in files]
    return _tensors(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


# --- finding a folder's files ---------------------------------------------------------------------------

def _download(name: str, root: Path):
    import torchvision  # imported here: only users with internet need it

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:
        raise UserError(f"downloading {name} into {root} failed ({type(e).__name__}: {e}); check the network "
                        f"or place the official '{OFFICIAL_DIRS[name]}' folder there by hand") from None


def locate(name: str, data_dir: str | None, download: bool) -> Located:
    """The files `read_located` will read for `name` under `data_dir` (downloading first if asked and absent)."""
    root = Path(data_dir or "./datasets").expanduser()
    if download and not (root / OFFICIAL_DIRS[name]).is_dir():
        _download(name, root)
    train_names, test_names = OFFICIAL_FILES[name]
    for folder in (root / OFFICIAL_DIRS[name], root):
        if (folder / test_names[0]).is_file():
            return Located("official", folder, tuple(folder / f for f in train_names),
                           tuple(folder / f for f in test_names))
    if root.is_dir():
        train_files = _array_files(root, "data_batch_") or _array_files(root, "train")
        test_files = _array_files(root, "test")
        if train_files and test_files:
            return Located("arrays", root, tuple(train_files), tuple(test_files))
    raise UserError(
        f"no {name} data found: looked for '{root / OFFICIAL_DIRS[name]}' (official layout) and for array "
        f"files 'data_batch_*.npz[.xz]' + 'test_batch.npz[.xz]' in '{root}'. Pass --download to fetch it, "
        "--data-dir to point at it, or --preset smoke for the built-in synthetic data.")


def read_located(name: str, loc: Located):
    if loc.layout == "official":
        return _read_pickles(name, loc.train), _read_pickles(name, loc.test)
    return _read_arrays(loc.train), _read_arrays(loc.test)


def read_splits(name: str, data_dir: str | None, download: bool):
    return read_located(name, locate(name, data_dir, download))
