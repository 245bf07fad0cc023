"""Data identity: which data a run trains and tests on, as a short hash that enters its run id.

- `full_fingerprint`: the sha256 of the decoded arrays of a data folder (images and labels of both splits,
  with their dtypes and shapes), after every check of data/validate.py. It is a property of the data, not of
  the files: the official pickles and array files holding the same images and labels have one fingerprint.
  Hashing the real CIFAR-10 means decompressing and reading 180 MB, so the result is cached in a small JSON
  file (`$KDBENCH_CACHE/fingerprints.json`, default `~/.cache/kd-bench/fingerprints.json`), keyed by dataset
  and folder and valid only while every file of the folder has the same path, size, mtime, ctime and inode.
  Any difference, a file added or removed, another kd-bench fingerprint format: computed again. A cache that
  cannot be read or written only means computing again.
- `data_fingerprint`: what a run uses. For data on disk, the sha256 of (full fingerprint, dataset, subset
  sizes, subset rule), first 16 hex digits: a subset is a deterministic function of the full arrays, its size
  and the rule (`datasets.SUBSET_RULE`), so hashing the rule instead of the subset's pixels keeps the cache
  useful. For synthetic data, the sha256 of the generated arrays themselves (with the generator's
  parameters): generating the smoke preset's 1,536 images costs about 0.1 s and hashing them 3 ms, so the
  run id follows the bytes actually generated, even should another torch generate other bytes from the same
  seed (the generator is deterministic on one torch build; across builds we do not rely on it).
- `load_verified`: the splits of a run, read and checked as `load_splits` reads them, whose fingerprint,
  computed from the arrays just read (no cache), must be the run's: data changed after planning is refused.

Measured on the project's 2-core machine: the real CIFAR-10 (six .npz.xz files) 9.4 s the first time (reading
and decompressing 9.3 s, hashing 0.11 s), then 1 ms from the cache; the smoke preset's synthetic data 0.1-0.3 s
per process (generated, then hashed in 3 ms; kept in memory for the process, not in the file cache).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from core.errors import UserError

from . import readers
from .datasets import SUBSET_RULE, Split, check_splits, dataset_info, read_full
from .validate import check_subset

FORMAT = 1  # bump when readers or checks change what arrays a folder decodes to: every cache entry is redone
DIGITS = 16  # hex digits of a run's data fingerprint


@dataclass(frozen=True)
class Full:
    """The fingerprint of a whole data folder (or of generated data) and its split sizes."""

    fingerprint: str  # 64 hex
    train_n: int
    test_n: int
    where: str


@dataclass(frozen=True)
class DataIdentity:
    """What a run's data is: its fingerprint, and the subset sizes as they enter the run (a subset as large as
    its split is the whole split: None)."""

    fingerprint: str  # DIGITS hex
    train_size: int | None
    test_size: int | None


def cache_path() -> Path:
    """`$KDBENCH_CACHE/fingerprints.json` (or `$KDBENCH_CACHE` itself if it names a .json file), else
    `~/.cache/kd-bench/fingerprints.json`."""
    env = os.environ.get("KDBENCH_CACHE")
    if env:
        p = Path(env).expanduser()
        return p if p.suffix == ".json" else p / "fingerprints.json"
    return Path.home() / ".cache" / "kd-bench" / "fingerprints.json"


def hash_splits(train: Split, test: Split) -> str:
    """sha256 of both splits' arrays, each with its name, dtype and shape (labels as little-endian int64)."""
    h = hashlib.sha256(f"kd-bench data v{FORMAT}".encode())
    for split, s in (("train", train), ("test", test)):
        for key, t in (("images", s.images), ("labels", s.labels)):
            a = np.ascontiguousarray(t.numpy())
            if key == "labels":
                a = np.ascontiguousarray(a.astype("<i8", copy=False))
            h.update(f"|{split}.{key}:{a.dtype.str}:{a.shape}|".encode())
            h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _stats(files) -> list | None:
    """[path, size, mtime_ns, ctime_ns, inode] of every file, or None if one is missing."""
    out = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            return None
        out.append([str(Path(f).resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return out


def _read_cache(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
        return d["entries"] if isinstance(d, dict) and isinstance(d.get("entries"), dict) else {}
    except (OSError, ValueError, KeyError):
        return {}


def _write_cache(path: Path, key: str, entry: dict) -> None:
    """Add one entry (atomically: a reader never sees half a file). Any failure only costs a recomputation."""
    try:
        entries = _read_cache(path)
        entries[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"entries": entries}, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def full_fingerprint(name: str, data_dir: str | None, download: bool = False) -> Full:
    """The fingerprint of the data folder `load_splits(name, 'disk', data_dir)` reads, from the cache when no
    file of it changed; else read (every check applies, a bad folder is refused), hashed and cached."""
    dataset_info(name)
    loc = readers.locate(name, data_dir, download)
    where = f"{name} under {loc.folder}"
    key = f"{name}|{loc.layout}|{Path(loc.folder).resolve()}"
    before = _stats(loc.files)
    path = cache_path()
    entry = _read_cache(path).get(key) if before is not None else None
    if (isinstance(entry, dict) and entry.get("format") == FORMAT and entry.get("files") == before
            and isinstance(entry.get("fingerprint"), str)):
        return Full(entry["fingerprint"], int(entry["train_n"]), int(entry["test_n"]), where)
    train, test = check_splits(name, *readers.read_located(name, loc), where)
    full = Full(hash_splits(train, test), len(train), len(test), where)
    after = _stats(loc.files)
    if before is not None and after == before:  # a file changed while it was read: do not cache that
        _write_cache(path, key, {"format": FORMAT, "files": before, "fingerprint": full.fingerprint,
                                 "train_n": full.train_n, "test_n": full.test_n})
    return full


@lru_cache(maxsize=8)
def _synthetic_full(name: str, train_n: int, test_n: int) -> Full:
    train, test = read_full(name, "synthetic", None, False, train_n, test_n)
    return Full(hash_splits(train, test), len(train), len(test), f"synthetic {name}")


def _identity(full: str, name: str, source: str, train_size: int | None, test_size: int | None) -> str:
    rule = SUBSET_RULE if source == "disk" else "generated at these sizes"
    payload = json.dumps({"format": FORMAT, "data": full, "dataset": name, "source": source,
                          "train_size": train_size, "test_size": test_size, "subset": rule}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:DIGITS]


def data_fingerprint(name: str, source: str, data_dir: str | None, download: bool = False,
                     train_size: int | None = None, test_size: int | None = None) -> DataIdentity:
    """The identity of the data a run with these settings trains and tests on (see the module's text).
    Refuses what `load_splits` refuses: missing or bad data, subset sizes outside 1..N."""
    dataset_info(name)
    if source == "synthetic":
        check_subset(train_size, None, "train", f"synthetic {name}")
        check_subset(test_size, None, "test", f"synthetic {name}")
        full = _synthetic_full(name, train_size or 5000, test_size or 1000)
    elif source == "disk":
        full = full_fingerprint(name, data_dir, download)
        check_subset(train_size, full.train_n, "train", full.where)
        check_subset(test_size, full.test_n, "test", full.where)
        # a subset as large as its split is the split itself: the same data, the same identity
        train_size = None if train_size == full.train_n else train_size
        test_size = None if test_size == full.test_n else test_size
    else:
        raise UserError(f"unknown data source {source!r}; use 'disk' or 'synthetic'")
    return DataIdentity(_identity(full.fingerprint, name, source, train_size, test_size), train_size, test_size)


def load_verified(name: str, source: str, data_dir: str | None, download: bool, train_size: int | None,
                  test_size: int | None, expected: str) -> tuple[Split, Split]:
    """`load_splits`, and proof that the arrays read are the data a run was planned on: their fingerprint is
    computed from the arrays themselves (no cache; hashing the whole CIFAR-10 takes about 0.1 s, reading it
    several seconds) and must equal `expected` (a DataSpec's fingerprint; "" skips the check). A folder
    changed since planning, or another folder on another machine, is refused instead of trained on."""
    train, test = read_full(name, source, data_dir, download, train_size, test_size)
    if expected:
        sizes = (train_size, test_size)
        if source == "disk":
            sizes = (None if train_size == len(train) else train_size, None if test_size == len(test) else test_size)
        got = _identity(hash_splits(train, test), name, source, *sizes)
        if got != expected:
            where = f"the data under {data_dir}" if source == "disk" else f"the synthetic {name} data"
            raise UserError(f"{where} is not the data this run was planned on (its fingerprint is {got}, the "
                            f"run's is {expected}): the files changed since planning, or --data-dir points at "
                            "other data here; plan again to get runs of this data")
    return train.subset(train_size), test.subset(test_size, seed=1)
