"""The CRD benchmark's teacher -> student pairs (runner/pairs.py), their planning (`--pairs`) and Table CRD
(report/table_crd.py).

Building every method on every pair takes minutes on a CPU and the suite has no `slow` marker, so the build test
covers a subset: every method that is kept on the two cheapest cross-family pairs (wrn_40_2 -> shufflev1,
resnet32x4 -> shufflev1, where most exclusions fall), and on all 13 pairs the two methods of the README's command
(st, crd). Each is built as the runner builds it (`runner.train.build_method`, 100 classes, batch 2) and trained
one step per stage. The excluded methods of those two pairs are checked to fail when built anyway (a shape
reason is a real one).

The golden Markdown (tests/fixtures/expected_table_crd.md) was rendered once and read by hand; to re-render it
after an intended change: KDBENCH_UPDATE_GOLDEN=1 pytest tests/test_pairs.py.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

import benchmark
from data import Batch
from methods import REGISTRY, get_method
from methods.base import Context, StepInfo
from methods.testing import CheckProtocol, sgd_for
from models import build_model
from report import table_crd as tc
from report.collect import COLUMNS
from runner.pairs import CRD_PAIRS, CROSS_FAMILY, SAME_FAMILY, cross_family, exclusions, parse_pairs
from runner.train import build_method

FIX = Path(__file__).resolve().parent / "fixtures"
ALL = [m for m in REGISTRY if m != "ce"]
TIAN = tc.TIAN_METHODS
CHEAP_CROSS = [("wrn_40_2", "shufflev1"), ("resnet32x4", "shufflev1")]
SHAPE_BOUND = {"at", "fitnet", "nst", "fsp", "ft", "ab", "vid", "ofd", "afd", "irg"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batch-2 steps gain nothing from intra-op threads on a busy 2-core machine (two threads made the build
    tests 20x slower under load); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the pairs and what runs on them ---------------------------------------------------------------------

def test_the_13_pairs_of_tian_et_al():
    assert len(CRD_PAIRS) == 13 and len(set(CRD_PAIRS)) == 13
    assert SAME_FAMILY == [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"),
                           ("resnet110", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"),
                           ("vgg13", "vgg8")]
    assert CROSS_FAMILY == [("vgg13", "mobilenetv2"), ("resnet50", "mobilenetv2"), ("resnet50", "vgg8"),
                            ("resnet32x4", "shufflev1"), ("resnet32x4", "shufflev2"), ("wrn_40_2", "shufflev1")]
    assert not any(cross_family(p) for p in SAME_FAMILY) and all(cross_family(p) for p in CROSS_FAMILY)
    assert parse_pairs("crd") == CRD_PAIRS
    assert parse_pairs("resnet56:resnet20, wrn_40_2:shufflev1") == [("resnet56", "resnet20"), ("wrn_40_2", "shufflev1")]


@pytest.mark.parametrize("text", ["resnet56", "resnet56:nonet", "resnet56:resnet20,resnet56:resnet20", ","])
def test_bad_pairs_are_refused(text):
    from core.errors import UserError
    with pytest.raises(UserError):
        parse_pairs(text)


# Tian et al.'s methods left out per pair (the other methods of the registry are checked by the build test)
NO_STAGE_MATCH = {"at", "fitnet", "nst", "fsp", "ft", "ab", "vid"}  # mobilenetv2 / shufflenets vs 8x8 or 32x32 grids
EXPECTED_TIAN = {
    ("wrn_40_2", "wrn_40_1"): {"fitnet", "fsp", "ab"},  # half the channels: Tian et al. print FSP 0.00 here
    ("vgg13", "mobilenetv2"): NO_STAGE_MATCH, ("resnet50", "mobilenetv2"): NO_STAGE_MATCH,
    ("resnet50", "vgg8"): {"fitnet", "fsp", "ab"},  # same grids, 4x the channels
    ("resnet32x4", "shufflev1"): NO_STAGE_MATCH, ("resnet32x4", "shufflev2"): NO_STAGE_MATCH,
    ("wrn_40_2", "shufflev1"): NO_STAGE_MATCH,
}


@pytest.mark.parametrize("pair", CRD_PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def test_exclusions_with_reasons(pair):
    out = exclusions(pair, ALL)
    assert {m for m in out if m in TIAN} == EXPECTED_TIAN.get(pair, set())
    assert all(isinstance(r, str) and len(r) > 20 for r in out.values())
    assert "ekd" in out and "crd" not in out and "st" not in out  # EKD trains networks of its own
    if cross_family(pair):
        assert out["fsp"].startswith("Tian et al. do not run FSP across families")
    assert ("oeckd" in out) == (pair[1] not in ("resnet20", "resnet32"))  # oeckd_<student>: CIFAR ResNets only
    assert exclusions(pair, ["at+st"]) == ({"at+st": f"at: {out['at']}"} if "at" in out else {})


def _train_one_step(method: str, pair, teacher=None) -> dict:
    cls = get_method(method)
    hp = cls.resolve_hparams({}, "cifar100")
    torch.manual_seed(0)
    student = build_model(cls.student_arch(hp, pair[1]), 100)
    if cls.needs_teacher and teacher is None:
        teacher = build_model(pair[0], 100).eval()
    ctx = Context(num_classes=100, dataset="cifar100", seed=0, device=torch.device("cpu"),
                  train_labels=torch.arange(64) % 100, epochs=2, generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    m = build_method(method, hp, student, teacher if cls.needs_teacher else None, ctx, x)
    protocol = CheckProtocol(epochs=2, batch_size=2)
    stages = m.stages(protocol)
    first = None
    for stage in stages:
        optimizer = sgd_for(list(m.stage_parameters(stage)), protocol, stage)
        m.train(True)
        losses = m.train_step(Batch(x, torch.tensor([0, 1]), torch.tensor([0, 1])),
                              StepInfo(0, sum(s.epochs for s in stages), stage, 0, 0), optimizer)
        first = first or losses
    return first


@pytest.mark.parametrize("pair", CHEAP_CROSS, ids=lambda p: f"{p[0]}-{p[1]}")
def test_every_kept_method_builds_and_trains_on_cheap_cross_pairs(pair):
    left_out = exclusions(pair, ALL)
    teacher = build_model(pair[0], 100).eval()
    for method in ALL:
        if method in left_out:
            if method in SHAPE_BOUND:  # a shape reason is real: built anyway, the method fails
                with pytest.raises((RuntimeError, ValueError)):
                    _train_one_step(method, pair, teacher)
            continue
        losses = _train_one_step(method, pair, teacher)
        assert losses and all(torch.isfinite(v).all() for v in losses.values()), (method, losses)


@pytest.mark.parametrize("pair", CRD_PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def test_st_and_crd_train_on_every_pair(pair):
    with torch.no_grad():
        teacher = build_model(pair[0], 100).eval()
    for method in ("st", "crd"):
        losses = _train_one_step(method, pair, teacher)
        assert set(losses) == {"ce", method} and all(torch.isfinite(v).all() for v in losses.values())


# --- planning ---------------------------------------------------------------------------------------------

def test_seed_ranges():
    parse = lambda *a: benchmark.build_parser().parse_args(["--methods", "st", *a]).seeds
    assert parse("--seeds", "0-4") == [0, 1, 2, 3, 4]
    assert parse("--seeds", "0-2,7") == [0, 1, 2, 7]
    assert parse("--seeds", "3") == [3] and parse() == [0]
    for bad in ("4-2", "a-b", "1,x"):
        with pytest.raises(SystemExit):
            benchmark.build_parser().parse_args(["--seeds", bad])


def test_plan_pairs_crd_st_crd_smoke():
    from runner.plan import plan

    args = benchmark.build_parser().parse_args(["--pairs", "crd", "--methods", "st,crd", "--preset", "smoke"])
    stages = plan(benchmark.plan_request(args))
    assert [s[0].role for s in stages] == ["teacher", "student"]  # no paper ensemble: none of its members
    runs = [r for s in stages for r in s]
    assert len({r.run_id for r in runs}) == len(runs)  # a shared teacher or baseline is planned once
    assert {r.spec.data.dataset for r in runs} == {"cifar100"}  # --pairs: CIFAR-100 unless --dataset says
    teachers = {r.spec.student for r in stages[0]}
    assert teachers == {t for t, _ in CRD_PAIRS}
    baselines = {r.spec.student for r in stages[1] if r.spec.method == "ce"}
    assert baselines == {s for _, s in CRD_PAIRS}
    methods = {(r.spec.method, r.spec.teacher["arch"], r.spec.student) for r in stages[1] if r.spec.method != "ce"}
    assert methods == {(m, t, s) for t, s in CRD_PAIRS for m in ("st", "crd")}
    for r in stages[1]:
        if r.spec.method != "ce":
            teacher_run = next(t for t in stages[0] if t.spec.student == r.spec.teacher["arch"])
            assert r.depends == (teacher_run.run_id,)
    # an excluded method is not planned on its pair; --dataset wins over the pairs' default
    args = benchmark.build_parser().parse_args(["--pairs", "wrn_40_2:wrn_40_1,resnet56:resnet20", "--methods",
                                                "fitnet,st", "--preset", "smoke", "--dataset", "cifar10",
                                                "--seeds", "0-1"])
    runs = [r for s in plan(benchmark.plan_request(args)) for r in s]
    fitnet = {(r.spec.teacher["arch"], r.spec.seed) for r in runs if r.spec.method == "fitnet"}
    assert fitnet == {("resnet56", 0), ("resnet56", 1)}
    assert {r.spec.data.dataset for r in runs} == {"cifar10"}


def test_plan_pairs_refusals_and_sets():
    from core.errors import UserError
    from runner.plan import plan

    parse = lambda *a: benchmark.build_parser().parse_args(["--methods", "fitnet,st", "--preset", "smoke", *a])
    with pytest.raises(UserError, match="--pairs names the teachers and students"):
        plan(benchmark.plan_request(parse("--pairs", "crd", "--teacher", "resnet56")))
    with pytest.raises(UserError, match="--pairs"):
        benchmark.plan_request(parse("--pairs", "resnet56-resnet20"))
    # a --set of a method left out of some pairs applies where it runs
    runs = [r for s in plan(benchmark.plan_request(parse("--pairs", "wrn_40_2:wrn_40_1,resnet56:resnet20",
                                                         "--set", "fitnet.weight=0.2"))) for r in s]
    assert [(r.spec.teacher["arch"], r.spec.hparams["weight"]) for r in runs if r.spec.method == "fitnet"] == \
        [("resnet56", 0.2)]


# --- Table CRD ---------------------------------------------------------------------------------------------

def run(method, role, seed, student, teacher, status, top1=None, dataset="cifar100"):
    rec = dict.fromkeys(COLUMNS)
    rec.update(dataset=dataset, method=method, role=role, seed=seed, student=student, teacher=teacher,
               status=status, run_id=f"{method}-{role}-{student}-{teacher}-{seed}", epochs=240)
    if top1 is not None:
        rec.update(best_top1=top1, last_top1=top1 - 0.3, at_chance=False)
    return rec


SUMMARY_RUNS = [
    # resnet56 -> resnet20 and wrn_40_2 -> wrn_40_1 (Table 1), wrn_40_2 -> shufflev1 (Table 2)
    run("ce", "teacher", 0, "resnet56", None, "DONE", 72.5), run("ce", "teacher", 1, "resnet56", None, "DONE", 72.1),
    run("ce", "teacher", 0, "wrn_40_2", None, "DONE", 75.8),
    run("ce", "student", 0, "resnet20", None, "DONE", 69.2), run("ce", "student", 1, "resnet20", None, "DONE", 68.8),
    run("ce", "student", 0, "wrn_40_1", None, "DONE", 71.7),
    run("ce", "student", 0, "shufflev1", None, "FAILED"),
    run("st", "method", 0, "resnet20", "resnet56", "DONE", 70.9),
    run("st", "method", 1, "resnet20", "resnet56", "DONE", 70.5),
    run("st", "method", 0, "wrn_40_1", "wrn_40_2", "DONE", 73.2),
    run("st", "method", 0, "shufflev1", "wrn_40_2", "PARTIAL"),
    run("fitnet", "method", 0, "resnet20", "resnet56", "DONE", 69.0),
    run("crd", "method", 0, "resnet20", "resnet56", "DONE", 71.3),
    run("crd", "method", 1, "resnet20", "resnet56", "DONE", 71.0),
    run("crd", "method", 2, "resnet20", "resnet56", "DONE", 71.4),
    run("crd", "method", 0, "wrn_40_1", "wrn_40_2", "DONE", 74.0),
    run("crd", "method", 0, "shufflev1", "wrn_40_2", "DONE", 75.2),
    run("dml", "method", 0, "resnet20", None, "DONE", 70.0),  # no teacher: counts for every pair of resnet20
    # another data set: never mixed in
    run("crd", "method", 0, "resnet20", "resnet56", "DONE", 10.0, dataset="cifar10"),
]


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    return pd.DataFrame(SUMMARY_RUNS, columns=COLUMNS)


def test_table_crd_golden(summary, tmp_path):
    paths = tc.write_table_crd(summary, "cifar100", tmp_path)
    assert [p.name for p in paths] == ["table_crd.md", "table_crd.tex", "table_crd.csv"]
    text = paths[0].read_text(encoding="utf-8")
    golden = FIX / "expected_table_crd.md"
    if os.environ.get("KDBENCH_UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_table_crd_cells(summary):
    same, cross = tc.table_crd(summary, "cifar100")
    assert [g for g, _ in same.groups] == ["wrn_40_2 / wrn_40_1", "resnet56 / resnet20"]  # Tian et al.'s order
    assert [g for g, _ in cross.groups] == ["wrn_40_2 / shufflev1"]
    rows = {label: cells for label, cells in same.panels[0][1]}
    assert list(rows)[:2] == ["Teacher", "Student"]
    assert rows["Teacher"][3:] == ["72.30 ± 0.28 (n=2)", "72.34", "-0.04"]
    assert rows["CRD"][3:] == ["71.23 ± 0.21 (n=3)", "71.16", "+0.07"]
    assert rows["FitNet"][:3] == ["excluded [1]", "72.24", "–"]  # no regressor here; Tian et al. have one
    assert "[1] FitNet on wrn_40_2 / wrn_40_1: its hint compares stage3 maps" in same.caption
    assert rows["DML"][3:5] == ["70.00 (n=1)", "–"] and rows["DML"][0] == "missing"
    crow = {label: cells for label, cells in cross.panels[0][1]}
    assert crow["Student"][0].startswith("failed") and crow["Soft target"][0].startswith("running")
    assert cross.notes == ["cifar100: Student (shufflev1) seed 0 failed: no reason recorded"]
    assert crow["CRD"] == ["75.20 (n=1)", "76.05", "-0.85"]
    # synthetic data: the paper's numbers shown, no Δ
    synth = summary.assign(dataset="cifar100-synthetic-n64-32-0123456789abcdef")
    row = {label: cells for label, cells in tc.table_crd(synth, synth["dataset"][0])[0].panels[0][1]}["CRD"]
    assert row[4:6] == ["71.16", "–"]
    assert tc.table_crd(summary, "nothing-here") == []


def test_published_numbers():
    df = tc._published()
    assert len(df) == 7 * 15 - 1 + 6 * 14  # FSP on wrn_40_2 -> wrn_40_1 is not run (printed 0.00)
    assert tc.paper_value(("resnet32x4", "resnet8x4"), "crd") == 75.51
    assert tc.paper_value(("wrn_40_2", "shufflev1"), "st") == 74.83
    assert tc.paper_value(("resnet50", "vgg8"), "fsp") is None


# --- end to end --------------------------------------------------------------------------------------------

def test_pairs_end_to_end(tmp_path, capsys):
    """Two small pairs, one per table, through the CLI: planned, trained, collected, Table CRD written."""
    rc = benchmark.main(["--pairs", "resnet56:resnet20,wrn_40_2:shufflev1", "--methods", "st", "--preset", "smoke",
                         "--epochs", "1", "--train-size", "64", "--test-size", "32",
                         "--results-dir", str(tmp_path)])
    assert rc == 0
    text = (tmp_path / "tables" / "table_crd.md").read_text(encoding="utf-8")
    assert "Table CRD (same family)" in text and "Table CRD (cross family)" in text
    assert "resnet56 / resnet20" in text and "wrn_40_2 / shufflev1" in text
    records = pd.read_csv(tmp_path / "tables" / "table_crd.csv")
    assert set(records["row"]) == {"teacher", "student", "st"} and (records["done"] == 1).all()
