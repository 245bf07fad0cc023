"""Inference time, size and FLOPs of a finished model, measured the way the paper's Table 2 needs them.

Timing follows the usual rules of a fair benchmark: the whole test split in fixed-size batches, inference mode,
warm-up passes first, device synchronisation around the clock, several repetitions and their median, and the
environment (device, torch, threads, precision, batch size) recorded with every number. A measurement is a
file of its own in the run folder (`measurements/<host>-<time>.json`), so measuring again on another machine
adds a row and never overwrites one.
"""
from __future__ import annotations

import json
import platform
import socket
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from models.frozen import inference_form

from .store import write_atomic


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_inference(forward: Callable[[torch.Tensor], object], inputs: torch.Tensor, batch_size: int,
                   repeats: int = 5, warmup: int = 1) -> list[float]:
    """Seconds per full pass over `inputs` (already normalised, on the device), one value per repetition."""
    device = inputs.device
    batches = list(inputs.split(batch_size))
    for _ in range(warmup):
        for x in batches:
            forward(x)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for x in batches:
            forward(x)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def count_flops(forward: Callable[[torch.Tensor], object], sample: torch.Tensor) -> int:
    """FLOPs of one image (torch's flop counter: 2 per multiply-add of convolutions and matmuls)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        forward(sample[:1])
    return int(counter.get_total_flops())


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def under_precision(forward: Callable[[torch.Tensor], object], precision: str, device: torch.device):
    """`forward` as the run computes it: as is in fp32, under autocast to bf16/fp16 otherwise."""
    if precision == "fp32":
        return forward
    dtype = _DTYPES[precision]

    def run(x):
        with torch.autocast(device.type, dtype=dtype):
            return forward(x)
    return run


def measure(forward, inputs: torch.Tensor, params: int, extra_params: int = 0, batch_size: int = 128,
            repeats: int = 5, precision: str = "fp32") -> dict:
    """Time and count one network on `inputs` in the run's precision (`fp32`, or autocast to `bf16`/`fp16`). A
    network (an `nn.Module`, in eval mode) is timed in its inference form (`models.frozen.inference_form`: a CIFAR
    ResNet with BatchNorm folded, as ensembles are timed); `form` in the record says which."""
    device = inputs.device
    form = {}
    if isinstance(forward, nn.Module):
        net = inference_form(forward)
        form = {"form": "bn-folded" if net is not forward else "as-built"}
        forward = net
    forward = under_precision(forward, precision, device)
    times = time_inference(forward, inputs, batch_size, repeats)
    return {
        "inference_time_s": round(statistics.median(times), 4), "inference_times_s": [round(t, 4) for t in times],
        "images": len(inputs), "params": params, "param_mb": round(params * 4 / 1e6, 4),
        "extra_params": extra_params, "flops": count_flops(forward, inputs),
        "device": device.type, "device_name": device_name(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "precision": precision, "batch_size": batch_size,
        "host": socket.gethostname(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **form,
    }


def save_measurement(run_dir: Path, record: dict) -> Path:
    folder = Path(run_dir) / "measurements"
    folder.mkdir(exist_ok=True)
    stamp = record["measured_at"].replace(":", "")
    path = folder / f"{record['host']}-{record['device']}-{stamp}-{time.time_ns() % 10**6}.json"
    write_atomic(path, json.dumps(record, indent=1, sort_keys=True).encode())
    return path


def read_measurements(run_dir: Path) -> list[dict]:
    folder = Path(run_dir) / "measurements"
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.glob("*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except ValueError:
            continue  # a damaged measurement file is ignored, the others stand
    return out
