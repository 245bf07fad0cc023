"""The CRD benchmark's teacher -> student pairs (runner/pairs.py), their planning (`--pairs`) and Table CRD
(report/table_crd.py).

Which method runs on which pair is checked here by its reasons; that every kept method builds and trains on
every pair, that the left-out ones fail, and that the shape adapters appear only where shapes differ, in
tests/test_pairs_methods.py.

The golden Markdown (tests/fixtures/expected_table_crd.md) was rendered once and read by hand; to re-render it
after an intended change: KDBENCH_UPDATE_GOLDEN=1 pytest tests/test_pairs.py.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

import benchmark
from methods import REGISTRY
from report import table_crd as tc
from report.collect import COLUMNS
from runner.pairs import CRD_PAIRS, CROSS_FAMILY, SAME_FAMILY, cross_family, exclusions, parse_pairs

FIX = Path(__file__).resolve().parent / "fixtures"
ALL = [m for m in REGISTRY if m != "ce"]
TIAN = tc.TIAN_METHODS


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


# Tian et al.'s methods left out per pair (the other methods of the registry are checked by the build test): FSP
# only, where Tian et al. leave it out too (Table 2 has no FSP; they print 0.00 for wrn_40_2 -> wrn_40_1, half
# the channels). FitNet, AB, AT, NST, VID and FT adapt their features as RepDistiller does.
EXPECTED_TIAN = {pair: {"fsp"} for pair in [("wrn_40_2", "wrn_40_1"), *CROSS_FAMILY]}


@pytest.mark.parametrize("pair", CRD_PAIRS, ids=lambda p: f"{p[0]}-{p[1]}")
def test_exclusions_with_reasons(pair):
    out = exclusions(pair, ALL)
    assert {m for m in out if m in TIAN} == EXPECTED_TIAN.get(pair, set())
    assert all(isinstance(r, str) and len(r) > 20 for r in out.values())
    assert "ekd" in out and "crd" not in out and "st" not in out  # EKD trains networks of its own
    if cross_family(pair):
        assert out["fsp"].startswith("Tian et al. do not run FSP across families")
    assert ("oeckd" in out) == (pair[1] not in ("resnet20", "resnet32"))  # oeckd_<student>: CIFAR ResNets only
    assert exclusions(pair, ["afd+st"]) == ({"afd+st": f"afd: {out['afd']}"} if "afd" in out else {})
    assert not {"fitnet", "ab", "at", "nst", "vid", "ft"} & set(out)  # adapted on every pair, as RepDistiller
    if "ofd" in out:  # only where a stage's grid differs: its 1x1 connectors handle channels
        assert "no spatial adapter" in out["ofd"] and "clovaai/overhaul-distillation" in out["ofd"]


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
                                                "fsp,fitnet,st", "--preset", "smoke", "--dataset", "cifar10",
                                                "--seeds", "0-1"])
    runs = [r for s in plan(benchmark.plan_request(args)) for r in s]
    fsp = {(r.spec.teacher["arch"], r.spec.seed) for r in runs if r.spec.method == "fsp"}
    assert fsp == {("resnet56", 0), ("resnet56", 1)}  # FSP needs equal channels: not on wrn_40_2 -> wrn_40_1
    fitnet = {(r.spec.teacher["arch"], r.spec.seed) for r in runs if r.spec.method == "fitnet"}
    assert fitnet == {(t, seed) for t in ("wrn_40_2", "resnet56") for seed in (0, 1)}  # with a regressor there
    assert {r.spec.data.dataset for r in runs} == {"cifar10"}


def test_plan_pairs_refusals_and_sets():
    from core.errors import UserError
    from runner.plan import plan

    parse = lambda *a: benchmark.build_parser().parse_args(["--methods", "fsp,st", "--preset", "smoke", *a])
    with pytest.raises(UserError, match="--pairs names the teachers and students"):
        plan(benchmark.plan_request(parse("--pairs", "crd", "--teacher", "resnet56")))
    with pytest.raises(UserError, match="--pairs"):
        benchmark.plan_request(parse("--pairs", "resnet56-resnet20"))
    # a --set of a method left out of some pairs applies where it runs
    runs = [r for s in plan(benchmark.plan_request(parse("--pairs", "wrn_40_2:wrn_40_1,resnet56:resnet20",
                                                         "--set", "fsp.weight=0.2"))) for r in s]
    assert [(r.spec.teacher["arch"], r.spec.hparams["weight"]) for r in runs if r.spec.method == "fsp"] == \
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
    run("fsp", "method", 0, "resnet20", "resnet56", "DONE", 68.5),
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
    assert rows["FitNet"][:3] == ["missing", "72.24", "–"]  # runs here, with RepDistiller's regressor
    assert rows["FSP"][:3] == ["excluded [1]", "–", "–"]  # Tian et al. do not run it either (printed 0.00)
    assert "[1] FSP on wrn_40_2 / wrn_40_1: its FSP matrices need equal channel counts" in same.caption
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


def test_one_student_from_two_teachers_is_two_cells_not_a_duplicate():
    """vgg8 distilled from vgg13 and from resnet50 with seed 0: one run per cell, no "several runs" note."""
    runs = [run("ce", "teacher", 0, "vgg13", None, "DONE", 74.0), run("ce", "teacher", 0, "resnet50", None, "DONE", 79.0),
            run("ce", "student", 0, "vgg8", None, "DONE", 70.0),
            run("st", "method", 0, "vgg8", "vgg13", "DONE", 72.0), run("st", "method", 0, "vgg8", "resnet50", "DONE", 73.0)]
    same, cross = tc.table_crd(pd.DataFrame(runs, columns=COLUMNS), "cifar100")
    assert {label: cells for label, cells in same.panels[0][1]}["Soft target"][0] == "72.00 (n=1)"
    assert {label: cells for label, cells in cross.panels[0][1]}["Soft target"][0] == "73.00 (n=1)"
    assert same.notes == [] and cross.notes == []
    runs.append(run("st", "method", 0, "vgg8", "vgg13", "DONE", 71.0))  # a real duplicate is still said
    same, _ = tc.table_crd(pd.DataFrame(runs, columns=COLUMNS), "cifar100")
    assert any("several DONE runs with seed 0" in n for n in same.notes)


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
