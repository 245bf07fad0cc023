#!/usr/bin/env python
"""Ensemble inference: the members as one batched computation vs a Python loop over the models.

Three ways compute the same (M, B, K) member logits for a CIFAR test-set-sized input, each warmed up and timed
over several repetitions (median): the loop over the members as trained; the loop over the members' inference
forms (BatchNorm folded into the convolutions, channels-last: `models.frozen.inference_form`); and the members
fused into one network of grouped convolutions with the same rewrites (`models.fused`), so the last ratio shows
what grouping itself adds. `models.ensemble.build_ensemble` picks the faster of the last two per device from
these measurements. The ratios are measured in this one run, on this machine.

    python bench/ensemble_inference.py [--members 3] [--images 10000] [--batch-size 128] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_model  # noqa: E402
from models.ensemble import FoldedLoopEnsemble, LoopEnsemble, build_ensemble  # noqa: E402
from models.fused import FusedResNetEnsemble  # noqa: E402
from runner.measure import device_name, time_inference  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    members = [build_model(args.arch, 10).to(device).eval() for _ in range(args.members)]
    inputs = torch.randn(args.images, 3, 32, 32, device=device)
    loop, folded, fused = LoopEnsemble(members), FoldedLoopEnsemble(members), FusedResNetEnsemble(members)
    with torch.inference_mode():
        reference = loop(inputs[:64])
        for other in (folded, fused):
            torch.testing.assert_close(other(inputs[:64]), reference, rtol=1e-4, atol=1e-4)
    x_cl = inputs.contiguous(memory_format=torch.channels_last)  # the layout the data pipeline hands over
    t_loop, t_folded, t_fused = (statistics.median(time_inference(e, x_cl, args.batch_size, args.repeats))
                                 for e in (loop, folded, fused))
    print(f"{args.members} x {args.arch}, {args.images} images, batch {args.batch_size}, {device_name(device)}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"loop over the members as trained          : {t_loop:8.3f} s")
    print(f"loop over the folded, channels-last members: {t_folded:8.3f} s")
    print(f"fused network of grouped convolutions      : {t_fused:8.3f} s")
    print(f"loop / folded loop: {t_loop / t_folded:.2f}x; loop / fused: {t_loop / t_fused:.2f}x; "
          f"folded loop / fused: {t_folded / t_fused:.2f}x (above 1: fusing pays); "
          f"build_ensemble uses {type(build_ensemble(members)).__name__} here")


if __name__ == "__main__":
    main()
