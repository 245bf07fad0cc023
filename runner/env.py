"""Where and how runs execute (`RunEnv`), and what every run kind shares: the data splits and the test inputs.

Nothing here changes a run's result, so none of it is part of the run id.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
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
    # evaluation batch; None: 128 on a CPU, where one batch of 512 took 1.6x as long as four of 128 (ResNet-20 and
    # -110: activations outgrow the caches), 1000 on a GPU. Evaluation is per sample, so no result changes.
    test_batch_size: int | None = None
    measure_repeats: int = 3  # inference-time repetitions at the end of a run (0: no measurement)
    # memory layout of networks and batches: True channels-last, False the default (contiguous NCHW), None (default)
    # channels-last on CUDA only. A layout changes results only by float rounding, like the kernels chosen.
    channels_last: bool | None = None
    compile: str | None = None  # torch.compile the student's forward with this backend ("inductor"); None: eager
    progress: dict | None = None  # where the run is in its sweep (runner/progress.py), for the epoch lines
    log: Callable[[str], None] = field(default=print)

    @property
    def eval_batch_size(self) -> int:
        if self.test_batch_size is not None:
            return self.test_batch_size
        return 128 if torch.device(self.device).type == "cpu" else 1000

    def fields(self) -> dict:
        """The settings as plain values, to rebuild this env in another process (the log function stays)."""
        return {k: v for k, v in vars(self).items() if k != "log"}

    @property
    def uses_channels_last(self) -> bool:
        if self.channels_last is None:
            return torch.device(self.device).type == "cuda"
        return self.channels_last


class ChannelsLast:
    """A batch stream (`TrainLoader` or `EvalLoader`) whose images come in channels-last memory format. Each batch
    is converted once, here, so the members of a cohort still share one tensor per batch (the teacher cache
    recognises the batch by identity)."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        if name == "loader":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    @staticmethod
    def convert(batch):
        return dataclasses.replace(batch, x=batch.x.contiguous(memory_format=torch.channels_last))

    def epoch(self, epoch: int):
        return map(self.convert, self.loader.epoch(epoch))

    def __iter__(self):
        return map(self.convert, self.loader)


@lru_cache(maxsize=None)
def check_compile(backend: str | None, device: str) -> None:
    """Refuse `--compile` where torch.compile cannot work, before anything runs: the inductor backend needs a C++
    compiler on CPU and Triton on CUDA. Other backends (eager, aot_eager: for debugging) need neither."""
    if backend is None:
        return
    if backend != "inductor":
        if backend not in torch.compiler.list_backends(exclude_tags=()):
            known = sorted(set(torch.compiler.list_backends()) | {"eager", "aot_eager"})
            raise UserError(f"--compile {backend}: unknown torch.compile backend; known: {', '.join(known)}")
        return
    if torch.device(device).type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise UserError("--compile on CUDA needs Triton (pip install triton), which this torch does not find; "
                            "leave out --compile")
        return
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another torch: look for the usual compilers ourselves
        found = any(shutil.which(c) for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c)
    else:
        try:
            get_cpp_compiler()
            found = True
        except Exception:  # noqa: BLE001 - torch raises its own InvalidCxxCompiler
            found = False
    if not found:
        raise UserError("--compile on CPU needs a C++ compiler for torch.compile (g++, clang++ or $CXX), and none "
                        "works on this machine: install one (e.g. apt-get install g++) or leave out --compile")


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
    return EvalLoader(test, env.eval_batch_size, ds.mean, ds.std, device=torch.device(env.device))
