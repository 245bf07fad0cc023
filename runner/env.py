"""Where and how runs execute (`RunEnv`), and what every run kind shares: the data splits and the test inputs.

Nothing here changes a run's result, so none of it is part of the run id.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import torch

from core.errors import UserError
from data import EvalLoader, dataset_info
from data.fingerprint import load_verified

from .spec import DataSpec


@dataclass
class RunEnv:
    """Where and how a run executes; nothing here changes its result (not part of the run id)."""

    results_dir: str = "results"
    data_dir: str | None = None
    download: bool = False
    device: str = "cpu"
    deterministic: bool = False
    test_batch_size: int = 1000
    measure_repeats: int = 3  # inference-time repetitions at the end of a run (0: no measurement)
    log: Callable[[str], None] = field(default=print)

    def fields(self) -> dict:
        """The settings as plain values, to rebuild this env in another process (the log function stays)."""
        return {k: v for k, v in vars(self).items() if k != "log"}


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, before any run folder is written (a run on it would fail
    for a reason that is not the run's)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r} is not a device: use cpu, cuda or cuda:<index>") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: this machine has no usable CUDA GPU (torch {torch.__version__}, "
                            "CUDA_VISIBLE_DEVICES, driver?); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
    elif dev.type != "cpu":
        raise UserError(f"--device {device}: kd-bench runs on cpu or cuda")


def set_deterministic(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not on
    torch.backends.cudnn.deterministic = on


@lru_cache(maxsize=4)
def cached_splits(data: DataSpec, data_dir: str | None, download: bool):
    """The splits a run trains and tests on, proven to be the data it was planned on (their fingerprint is
    computed from the arrays read, here, on this machine), or a UserError."""
    return load_verified(data.dataset, data.source, data_dir, download, data.train_size, data.test_size,
                         data.fingerprint)


def test_loader(data: DataSpec, env: RunEnv) -> EvalLoader:
    """The test split of `data`, normalised with the dataset's statistics, on the env's device."""
    ds = dataset_info(data.dataset)
    _, test = cached_splits(data, env.data_dir, env.download)
    return EvalLoader(test, env.test_batch_size, ds.mean, ds.std, device=torch.device(env.device))
