"""Ensembles: voting rules, fast inference (fused, vmap, or a loop over folded members) equal to the plain loop,
planning, and a recorded row."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

import benchmark
from data import DATASETS, EvalLoader
from models import build_model
from models.fused import FusedResNetEnsemble
from models.pretrained import load_teacher
from methods.ensembles import combine, ensemble_name
from models.ensemble import FoldedLoopEnsemble, LoopEnsemble, StackedEnsemble, build_ensemble
from core.errors import UserError
from runner.evaluate import topk_accuracy
from runner.folder import RunFolder
from runner.plan import PlanRequest, plan
from runner.env import cached_splits


def test_voting_rules_differ_where_they_should():
    # member 1 is very sure of class 0, members 2 and 3 mildly prefer class 1
    z = torch.tensor([[[5.0, 0.0, 0.0]], [[0.0, 2.0, 0.0]], [[0.0, 2.0, 0.0]]])
    assert combine(z, "logits").argmax(-1).item() == 0   # summed logits: 5 vs 4
    assert combine(z, "probs").argmax(-1).item() == 1    # mean probabilities: 0.40 vs 0.53
    assert combine(z, "hard").argmax(-1).item() == 1     # two votes to one
    tie = torch.tensor([[[3.0, 0.0, 1.0]], [[0.0, 2.0, 1.0]]])
    assert combine(tie, "hard").argmax(-1).item() == 0   # 1-1 tie broken by the summed logits (3 vs 2)
    with pytest.raises(UserError):
        combine(z, "median")


def test_paper_ensemble_names():
    assert ensemble_name(("logits", "at")) == "ens-at-logits"
    assert ensemble_name(("rkd", "at", "logits")) == "ens-all"
    assert ensemble_name(("st", "crd")) == "ens-st-crd"


def trained_looking(arch, n=3):
    """Members with non-trivial BatchNorm statistics and affine parameters (folding must use all four)."""
    torch.manual_seed(0)
    members = [build_model(arch, 10).eval() for _ in range(n)]
    for m in members:
        for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.1, 0.1)
    return members


@pytest.mark.parametrize("arch,kind", [("resnet20", FoldedLoopEnsemble), ("resnet8_a", FoldedLoopEnsemble),
                                       ("mobilenet", StackedEnsemble)])
def test_fast_inference_equals_the_loop(arch, kind):
    # on the CPU, CIFAR ResNets run as a loop over their folded forms (faster here than the fused network)
    members = trained_looking(arch)
    x = torch.randn(8, 3, 32, 32)
    fast, loop = build_ensemble(members, True), build_ensemble(members, False)
    assert isinstance(fast, kind) and type(loop) is LoopEnsemble
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), loop(x), rtol=1e-4, atol=1e-4)
    assert all(m.training is False for m in members)


@pytest.mark.parametrize("arch", ["resnet20", "resnet8_a"])
def test_the_fused_network_equals_the_loop(arch):
    # the form a GPU gets (build_ensemble picks it there); its arithmetic does not depend on the device
    members = trained_looking(arch)
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(FusedResNetEnsemble(members)(x), LoopEnsemble(members)(x), rtol=1e-4, atol=1e-4)


def test_different_architectures_fall_back_to_the_loop():
    mixed = build_ensemble([build_model("resnet20", 10), build_model("resnet8", 10)], True)
    assert isinstance(mixed, LoopEnsemble)


def test_planning_adds_paper_and_user_ensembles():
    stages = plan(PlanRequest(preset="smoke", methods=["at", "logits", "rkd", "st"], ensembles=[("st", "logits")]))
    names = sorted(r.spec.method for r in stages[-1])
    assert names == ["ens-all", "ens-at-logits", "ens-at-rkd", "ens-rkd-logits", "ens-st-logits"]
    students = {r.spec.method: r.run_id for r in stages[1]}
    ens_all = next(r for r in stages[-1] if r.spec.method == "ens-all")
    assert set(ens_all.depends) == {students["at"], students["logits"], students["rkd"]}
    with pytest.raises(UserError, match="not planned: crd"):
        plan(PlanRequest(preset="smoke", methods=["st"], ensembles=[("st", "crd")]))


def test_ensemble_row_is_recorded_and_correct(tmp_path):
    args = ["--methods", "st,logits", "--ensemble", "st,logits", "--preset", "smoke", "--teacher", "resnet8",
            "--epochs", "2", "--train-size", "128", "--test-size", "64", "--results-dir", str(tmp_path)]
    assert benchmark.main(args) == 0
    summary = pd.read_csv(next(tmp_path.glob("*/summary.csv")))
    row = summary[summary.method == "ens-st-logits"].iloc[0]
    assert row.status == "DONE" and row.role == "ensemble"
    # recompute the last-epoch ensemble from the members' saved weights
    members = summary[summary.method.isin(["st", "logits"])]
    c10 = DATASETS["cifar10"]
    spec, _ = RunFolder(tmp_path, members.run_id.iloc[0]).read_spec()
    _, test = cached_splits(spec.data, None, False)
    logits = []
    for run_id in members.run_id:
        model = load_teacher(RunFolder(tmp_path, run_id).model, 10, (c10.mean, c10.std))[0]
        with torch.inference_mode():
            logits.append(torch.cat([model(b.x)[0] for b in EvalLoader(test, 64, c10.mean, c10.std)]))
    expected = topk_accuracy(sum(logits), test.labels)
    assert row.last_top1 == pytest.approx(expected["top1"])
    assert row.params == members.params.sum()
    measurements = pd.read_csv(next(tmp_path.glob("*/measurements.csv")))
    ens = measurements[measurements.method == "ens-st-logits"].iloc[0]
    assert ens.inference_time_s > 0 and ens.inference_time_loop_s > 0
    assert ens.batched == "FoldedLoopEnsemble" and ens.form == "bn-folded"  # resnet20 members on the CPU
    assert set(measurements[measurements.method != "ens-st-logits"].form) == {"bn-folded"}  # resnet8/20 runs
    assert {"device_name", "torch", "threads", "precision", "batch_size"} <= set(measurements.columns)
    # measuring again (as on another machine) adds one row per finished run and overwrites none
    before = {p: p.read_bytes() for p in tmp_path.glob("runs/*/measurements/*.json")}
    assert benchmark.main(["measure", "--results-dir", str(tmp_path)]) == 0
    assert all(p.read_bytes() == data for p, data in before.items())
    assert len(list(tmp_path.glob("runs/*/measurements/*.json"))) == len(before) + len(summary)
    remeasured = pd.read_csv(next(tmp_path.glob("*/measurements.csv")))
    assert (remeasured.groupby("run_id").size() == 2).all()
