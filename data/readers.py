"""Readers of the on-disk layouts: the official pickles, array files (`*.npz`, optionally xz-compressed), and
torchvision's download for users with internet. Every reader returns ((train_x, train_y), (test_x, test_y))."""
from __future__ import annotations

import io
import lzma
import pickle
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError

OFFICIAL_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
OFFICIAL_FILES = {"cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
                  "cifar100": (["train"], ["test"])}
LABEL_KEYS = {"cifar10": b"labels", "cifar100": b"fine_labels"}


def _tensors(images: np.ndarray, labels: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)), torch.from_numpy(
        np.asarray(labels, dtype=np.int64))


def _read_pickles(name: str, folder: Path):
    def read(files):
        xs, ys = [], []
        for f in files:
            path = folder / f
            try:
                with open(path, "rb") as fh:
                    d = pickle.load(fh, encoding="bytes")
                xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                ys.append(np.asarray(d[LABEL_KEYS[name]]))
            except FileNotFoundError:
                raise UserError(f"{path} is missing: the {name} folder is incomplete; download it again with "
                                "--download") from None
            except Exception as e:
                raise UserError(f"{path} cannot be read ({type(e).__name__}: {e}); the file is truncated or "
                                "corrupt: delete the folder and download again with --download") from None
        return _tensors(np.concatenate(xs), np.concatenate(ys))

    train_files, test_files = OFFICIAL_FILES[name]
    return read(train_files), read(test_files)


def _load_npz(path: Path):
    try:
        raw = lzma.open(path).read() if path.suffix == ".xz" else path.read_bytes()
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            return z["images"], z["labels"]
    except Exception as e:
        raise UserError(f"{path} cannot be read ({type(e).__name__}: {e}); the array file is truncated or "
                        "corrupt: copy it again") from None


def _array_files(folder: Path, stem: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"{stem}*") if p.name.endswith((".npz", ".npz.xz")))


def _read_arrays(folder: Path):
    """Array files: `data_batch_*.npz[.xz]` (or `train*.npz[.xz]`) and `test*.npz[.xz]`, each with
    `images` (N, 32, 32, 3) uint8 and `labels` (N,) int."""
    train_files = _array_files(folder, "data_batch_") or _array_files(folder, "train")
    test_files = _array_files(folder, "test")
    if not train_files or not test_files:
        return None

    def read(files):
        parts = [_load_npz(p) for p in files]
        return _tensors(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    return read(train_files), read(test_files)


def _download(name: str, root: Path):
    import torchvision  # imported here: only users with internet need it

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:
        raise UserError(f"downloading {name} into {root} failed ({type(e).__name__}: {e}); check the network "
                        f"or place the official '{OFFICIAL_DIRS[name]}' folder there by hand") from None


def read_splits(name: str, data_dir: str | None, download: bool):
    root = Path(data_dir or "./datasets").expanduser()
    candidates = [root / OFFICIAL_DIRS[name], root]
    if download and not (root / OFFICIAL_DIRS[name]).is_dir():
        _download(name, root)
    for folder in candidates:
        if (folder / OFFICIAL_FILES[name][1][0]).is_file():
            return _read_pickles(name, folder)
    if root.is_dir():
        arrays = _read_arrays(root)
        if arrays is not None:
            return arrays
    raise UserError(
        f"no {name} data found: looked for '{root / OFFICIAL_DIRS[name]}' (official layout) and for array "
        f"files 'data_batch_*.npz[.xz]' + 'test_batch.npz[.xz]' in '{root}'. Pass --download to fetch it, "
        "--data-dir to point at it, or --preset smoke for the built-in synthetic data.")
