#!/usr/bin/env python
"""Ensemble inference: the members as one batched computation vs a Python loop over the models.

Three ways compute the same (M, B, K) member logits for a CIFAR test-set-sized input, each warmed up and timed
over several repetitions (median): the loop over the members as trained; the loop over the members with the
same exact inference rewrites the fused network uses (BatchNorm folded into the convolutions, channels-last),
so the second ratio shows what batching itself adds; and the batched ensemble `runner.ensemble` uses
(`models.fused` for CIFAR ResNets, vmap otherwise). The ratios are measured in this one run, on this machine.

    python bench/ensemble_inference.py [--members 3] [--images 10000] [--batch-size 128] [--device cpu]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_model  # noqa: E402
from models.ensemble import build_ensemble  # noqa: E402
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
    batched, loop = build_ensemble(members, batched=True), build_ensemble(members, batched=False)
    loop_rewritten = build_ensemble([rewritten(m) for m in members], batched=False)
    with torch.inference_mode():
        reference = loop(inputs[:64])
        for other in (batched, loop_rewritten):
            torch.testing.assert_close(other(inputs[:64]), reference, rtol=1e-4, atol=1e-4)
    x_cl = inputs.contiguous(memory_format=torch.channels_last)
    t_loop = statistics.median(time_inference(loop, inputs, args.batch_size, args.repeats))
    t_rewritten = statistics.median(time_inference(loop_rewritten, x_cl, args.batch_size, args.repeats))
    t_batched = statistics.median(time_inference(batched, inputs, args.batch_size, args.repeats))
    print(f"{args.members} x {args.arch}, {args.images} images, batch {args.batch_size}, {device_name(device)}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"loop over the members as trained       : {t_loop:8.3f} s")
    print(f"loop, BN folded + channels-last members: {t_rewritten:8.3f} s")
    print(f"batched ({type(batched).__name__:<19}): {t_batched:8.3f} s")
    print(f"ratio loop / batched: {t_loop / t_batched:.2f}x; rewritten loop / batched: {t_rewritten / t_batched:.2f}x")


def rewritten(model: nn.Module) -> nn.Module:
    """A copy with every conv + BatchNorm pair of a CIFAR ResNet folded into one conv, channels-last."""
    model = copy.deepcopy(model).eval()
    pairs = [(model, "conv1", "bn1")]
    for block in (b for layer in (model.layer1, model.layer2, model.layer3) for b in layer):
        pairs += [(block, "conv1", "bn1"), (block, "conv2", "bn2")]
        if isinstance(block.shortcut, nn.Sequential):
            pairs.append((block.shortcut, "0", "1"))
    for parent, conv, bn in pairs:
        setattr(parent, conv, fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, bn)))
        setattr(parent, bn, nn.Identity())
    return model.to(memory_format=torch.channels_last)


if __name__ == "__main__":
    main()
