"""Students side by side (bench/side_by_side.py): K ResNets trained as one grouped network, or one vmap over
their stacked state, with one SGD, are K separate ResNets with K SGDs: same weights and BatchNorm buffers after
the same steps from the same start. This is what makes them a valid execution mode (issue 12, item 4).

Tolerance: the runs are in float64, where a different summation order (a grouped convolution against K plain
ones, a batched matmul against K linears) costs ~1e-16 relative per operation; measured, the members' weights and
buffers differ by <= 3e-16 after two steps. 1e-10 leaves five orders of magnitude for the growth of rounding
through the steps, and is far below what a real difference does: a 2% change of the weight decay (5.1e-4 for
5e-4) moves weights by ~5e-6 in two steps, plain momentum for Nesterov by ~1e-1 (test_an_optimiser_that_differs_
is_caught). Float32 could not tell them apart: a fresh ResNet at lr 0.1 amplifies float32 rounding to ~1e-3 in a
few steps (the bench shows it beside the separate run's own float32 error). Small inputs (8 x 8, batch 8) keep
float64, which CPU convolutions run slowly, fast; the networks pool globally, so nothing else changes.
"""
from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("side_by_side", ROOT / "bench" / "side_by_side.py")
sbs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sbs)  # bench/ is scripts, not a package

TOL = 1e-10
K, BATCH, STEPS, SIZE = 3, 8, 2, 8  # K = 3: a middle member, whose slices touch neither end of the tensors


def data():
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(BATCH, 3, SIZE, SIZE, generator=gen, dtype=torch.float64),
             torch.randint(0, sbs.CLASSES, (BATCH,), generator=gen)) for _ in range(STEPS)]


@functools.cache
def separate(arch: str):
    """The members (distinct seeds) and the separate networks trained from them: the reference."""
    nets = sbs.members(arch, K, torch.float64)
    return nets, sbs.trained(["separate"], nets, data())["separate"]


@pytest.mark.parametrize("way", ["grouped", "vmap"])
@pytest.mark.parametrize("arch", ["resnet14", "resnet8_a"])  # two blocks a stage, projections; pad shortcuts
def test_one_network_one_sgd_equals_separate_members(arch, way):
    nets, reference = separate(arch)
    arm = sbs.trained([way], nets, data())[way]
    moved = max((reference.member_state(j)[n] - nets[j].state_dict()[n]).abs().max().item()
                for j in range(K) for n in ("conv1.weight", "linear.weight", "bn1.running_mean"))
    assert moved > 1e-3, "the steps must move the weights and buffers, or the comparison says nothing"
    diff = sbs.max_abs_diff(arm, reference)  # every parameter and buffer of every member, names checked
    assert diff < TOL, f"{way} {arch}: members differ from the separate networks by {diff:.1e}"


@pytest.mark.parametrize("change", [dict(weight_decay=5.1e-4), dict(nesterov=False)])
def test_an_optimiser_that_differs_is_caught(change):
    nets, reference = separate("resnet14")
    arm = sbs.trained(["grouped"], nets, data(), sgd={**sbs.SGD, **change})["grouped"]
    assert sbs.max_abs_diff(arm, reference) > 100 * TOL


def test_the_bench_runs(capsys, tmp_path):
    out = tmp_path / "side_by_side.json"
    assert sbs.main(["--arch", "resnet8", "--ks", "1,2", "--batch", "4", "--rounds", "1", "--warmup", "0",
                     "--repeats", "1", "--check-steps", "1", "--check-batch", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| K | separate ms/step | grouped ms/step | vmap ms/step | grouped / separate |" in text
    assert "| K | grouped vs separate | vmap vs separate | separate f32 error |" in text
    got = json.loads(out.read_text())
    assert [r["k"] for r in got["rows"]] == [1, 2]
    assert all(v < TOL for c in got["check"].values() for k, v in c.items() if k.endswith("vs separate"))
