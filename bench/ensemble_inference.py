#!/usr/bin/env python
"""Ensemble inference: members stacked and run as one vmap'ed computation vs a Python loop over models.

Both compute the same (M, B, K) member logits for the whole CIFAR test-set size; each is warmed up, then
timed over several repetitions (median). The ratio printed is measured in this one run, on this machine.

    python bench/ensemble_inference.py [--members 3] [--images 10000] [--batch-size 128] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_model  # noqa: E402
from runner.ensemble import build_ensemble  # noqa: E402
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
    stacked, loop = build_ensemble(members, batched=True), build_ensemble(members, batched=False)
    with torch.inference_mode():
        torch.testing.assert_close(stacked(inputs[:64]), loop(inputs[:64]), rtol=1e-4, atol=1e-4)
    t_loop = sorted(time_inference(loop, inputs, args.batch_size, args.repeats))[args.repeats // 2]
    t_stacked = sorted(time_inference(stacked, inputs, args.batch_size, args.repeats))[args.repeats // 2]
    print(f"{args.members} x {args.arch}, {args.images} images, batch {args.batch_size}, {device_name(device)}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"loop over models : {t_loop:8.3f} s")
    print(f"stacked (vmap)   : {t_stacked:8.3f} s")
    print(f"ratio loop/stacked: {t_loop / t_stacked:.2f}x")


if __name__ == "__main__":
    main()
