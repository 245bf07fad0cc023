"""Tables and plots from run records (report/paper.py, aggregate.py, render.py, tables.py, plots.py).

The fixtures are small hand-made records (tests/fixtures/report_*.csv): the real-CIFAR-10 label with 1-3
seeds per row, a method whose runs all failed, one with a failed seed, a running and a never-started run,
a method on another network, ensembles (one named in another member order), an OEC-KD member row, and a
synthetic stand-in for CIFAR-100; measurements on two devices, with repeated timings and one timing under
another batch size. The golden files were rendered once and checked by hand; the numeric tests below
recompute a few cells straight from the fixture, so the golden files do not merely confirm themselves.

Rows with two or three seeds make Tables 1 and A1 show their statistics (report/stats.py, tested on constructed
data in tests/test_stats.py): the 95 % interval of a mean from n = 3 and a "vs Student" panel of paired
differences; the golden files were re-rendered when these were added and the diff read by eye.

To re-render the golden files after an intended change: KDBENCH_UPDATE_GOLDEN=1 pytest tests/test_report.py,
then read the diff.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import md_row, shared_path
from methods.registry import method_names
from report import paper, plots, tables
from report.collect import COLUMNS
from report.render import latex_escape, to_csv, to_latex, to_markdown

FIX = Path(__file__).resolve().parent / "fixtures"
C10, C100 = "cifar10", "cifar100-synthetic-n1024-512"
DATASETS = {"cifar10": C10, "cifar100": C100}
GPU, CPU = "NVIDIA GeForce RTX 3090", "Intel(R) Xeon(R) CPU @ 2.20GHz"


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    return pd.read_csv(FIX / "report_summary.csv")


@pytest.fixture(scope="module")
def measurements() -> pd.DataFrame:
    return pd.read_csv(FIX / "report_measurements.csv")


def cell(table, name, metric, dataset="cifar10") -> pd.Series:
    rec = table.records
    hit = rec[(rec["name"] == name) & (rec["metric"] == metric) & (rec["dataset"] == dataset)]
    assert len(hit) == 1, f"{name} {metric} {dataset}: {len(hit)} records"
    return hit.iloc[0]


# --- the paper's data -------------------------------------------------------------------------------

def test_fixture_has_the_collect_columns(summary):
    assert list(summary.columns) == COLUMNS


def test_paper_data_is_the_shared_copy():
    for name in ("kang2020_tableA1.csv", "kang2020_table2.csv"):
        assert (paper.DATA_DIR / name).read_bytes() == shared_path("paper", name).read_bytes()


def test_paper_rows_names_and_order():
    # the registry lists the paper's 20 methods first, in the paper's order, then the other systems
    assert method_names()[:20] == list(paper.METHOD_NAMES)
    assert all(paper.display_name(m) != m for m in method_names())  # every registered method has a name
    acc = paper.paper_accuracy()
    assert list(acc.index) == paper.ROW_ORDER  # every printed row mapped, in the paper's order
    assert acc.loc["fitnet", "paper_name"] == "Fitnet" and paper.display_name("fitnet") == "FitNet"
    assert acc.loc["ens-all", "cifar100_top1"] == 74.55
    cost = paper.paper_cost()
    assert list(cost.index) == ["teacher", "student", *paper.ENSEMBLES]
    assert cost.loc["student", "cifar10_param_m"] == 0.27
    assert paper.canonical_key("ens-logits-at") == "ens-at-logits"
    assert paper.canonical_key("ens-at-logits-rkd") == "ens-all"
    assert paper.display_name("ens-st-fitnet") == "Ens-ST-FitNet"
    assert paper.display_name("oeckd-s1") == "OEC-KD s1"
    assert paper.display_name("kdfm") == "KDFM"
    assert "10.3390/math8101652" in paper.CITATION


def test_names_and_ensembles_are_read_from_methods():
    """No second registry here: the rows are the registry's methods under their classes' `display_name`, the
    ensembles those of `methods.ensembles`, the numbers read as package data."""
    from importlib import resources

    from methods import default_methods, ensembles, get_method

    assert list(paper.METHOD_NAMES) == default_methods()
    assert all(name == get_method(m).display_name for m, name in paper.METHOD_NAMES.items())
    assert paper.display_name("st") == "Soft target" and paper.display_name("ens-st-at") == "Ens-ST-AT"
    assert paper.ENSEMBLES is ensembles.ENSEMBLES and paper.ENSEMBLES["ens-all"] == ("Ens-all", ("at", "logits", "rkd"))
    assert paper.ROW_ORDER == ["teacher", "student", *default_methods(), *ensembles.ENSEMBLES]
    assert str(paper.ACCURACY_CSV) == str(resources.files("report") / "paper_data" / "kang2020_tableA1.csv")


# --- golden renderings ------------------------------------------------------------------------------

def _golden(name: str, text: str) -> None:
    path = FIX / name
    if os.environ.get("KDBENCH_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} changed; see the module docstring"


def test_golden_table1_markdown(summary):
    _golden("expected_table1.md", to_markdown(tables.table1(summary, DATASETS, "best")))


def test_golden_tableA1_latex(summary):
    _golden("expected_tableA1.tex", to_latex(tables.tableA1(summary, DATASETS, "best")))


def test_golden_table2_markdown(summary, measurements):
    _golden("expected_table2.md", to_markdown(tables.table2(summary, measurements, DATASETS)))


# --- cells recomputed from the fixture --------------------------------------------------------------

def test_cells_are_mean_std_n_and_difference(summary):
    t1 = tables.table1(summary, DATASETS, "best")
    c10 = summary[summary["dataset"] == C10]
    logits = c10[c10["method"] == "logits"]["best_top1"]
    c = cell(t1, "Logits", "top1")
    assert c["n"] == 3 and c["mean"] == pytest.approx(logits.mean()) and c["std"] == pytest.approx(logits.std())
    assert c["diff"] == pytest.approx(round(round(logits.mean(), 2) - 93.14, 2))
    # n = 3: the 95 % t interval of the mean, 93.20 ± 4.303 · 0.10 / √3
    assert md_row(to_markdown(t1), "Logits")[:3] == ["93.20 ± 0.10 [92.95, 93.45] (n=3)", "93.14", "+0.06"]
    # the student: two seeds of ce; the difference is negative on top-2
    assert md_row(to_markdown(t1), "Student")[:6] == ["92.50 ± 0.14 (n=2)", "92.46", "+0.04",
                                                      "97.65 ± 0.07 (n=2)", "97.67", "-0.02"]
    # an ensemble named in another order lands on the paper's row
    assert md_row(to_markdown(t1), "Ens-RKD-Logits")[:3] == ["93.70 (n=1)", "93.82", "-0.12"]


def test_synthetic_data_prints_the_paper_but_no_difference(summary):
    t1 = tables.table1(summary, DATASETS, "best")
    c = cell(t1, "Student", "top1", "cifar100")
    assert c["mean"] == pytest.approx(4.10) and c["paper"] == 69.05 and pd.isna(c["diff"])
    assert md_row(to_markdown(t1), "Student")[6:9] == ["4.10 (n=1)", "69.05", "–"]
    assert "not the real CIFAR-100" in t1.caption and C100 in t1.caption


def test_failed_running_and_missing_rows_are_shown(summary):
    text = to_markdown(tables.table1(summary, DATASETS, "best"))
    assert md_row(text, "Soft target")[0] == "failed (2 runs)"
    assert md_row(text, "AT")[0] == "93.50 (n=1, 1 failed)"
    assert md_row(text, "AT")[6] == "failed (1 run)"          # its only synthetic run failed
    assert md_row(text, "FitNet")[0] == "running (1 run)"
    assert md_row(text, "NST")[0] == "missing (1 not started)"
    assert md_row(text, "AFD")[0] == "missing"                 # never planned: still listed
    assert md_row(text, "PKT")[0] == "missing"                 # the paper's network never ran ...
    assert md_row(text, "PKT (resnet8)")[:3] == ["91.00 (n=1)", "93.11", "–"]  # ... another one did
    assert md_row(text, "OEC-KD s1")[:3] == ["92.80 (n=1)", "–", "–"]
    first_grid = text.split("\n\n")[1]   # the panel of the numbers (the "vs Student" panel follows)
    names = [line.split("|")[1].strip() for line in first_grid.splitlines() if line.startswith("| ")][1:]
    paper_names = [paper.display_name(k) for k in paper.ROW_ORDER]
    assert [n for n in names if n in paper_names] == paper_names  # every paper row, in order
    assert "Soft target seed 1 failed: CUDA out of memory" in text  # the reason, first line only
    assert "Traceback" not in text


def test_select_changes_caption_and_values(summary):
    best = tables.table1(summary, DATASETS, "best")
    last = tables.table1(summary, DATASETS, "last")
    assert "best epoch on the test split" in best.caption and "last epoch" not in best.caption
    assert "last epoch" in last.caption and "best epoch" not in last.caption
    c10 = summary[(summary["dataset"] == C10) & (summary["method"] == "logits")]
    assert cell(last, "Logits", "top1")["mean"] == pytest.approx(c10["last_top1"].mean())
    assert md_row(to_markdown(last), "Logits")[:3] == ["93.00 ± 0.10 [92.75, 93.25] (n=3)", "93.14", "-0.14"]
    with pytest.raises(ValueError):
        tables.table1(summary, DATASETS, "median")


def test_tableA1_has_one_panel_per_dataset(summary):
    t = tables.tableA1(summary, DATASETS, "best")
    # CIFAR-10 has rows with two seeds paired with the student: its "vs Student" panel follows its numbers
    assert [title for title, _ in t.panels] == [
        "CIFAR-10", "CIFAR-10 vs Student, paired by seed: mean of row − Student [95 % CI], percentage points",
        f"CIFAR-100 ({C100})"]
    assert [g for g, _ in t.groups] == [f"top-{k}" for k in range(1, 6)]
    tex = to_latex(t)
    for word in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule(lr){2-4}", r"accuracy (\%)"):
        assert word in tex
    assert "cifar100-synthetic-n1024-512" in tex and "%" not in tex.split(r"\begin{table*}")[1].replace(r"\%", "")


def test_missing_dataset_shows_dashes(summary):
    t = tables.table1(summary, {"cifar10": C10, "cifar100": None}, "best")
    assert md_row(to_markdown(t), "Student")[6:9] == ["–", "69.05", "–"]
    assert "No CIFAR-100 runs were given" in t.caption


def test_short_runs_on_real_data_are_noted(summary):
    short = summary[summary["dataset"] == C10].copy()
    short["epochs"] = 30
    t = tables.table1(short, {"cifar10": C10}, "best")
    assert any("trained for 30 epochs" in n for n in t.notes)


# --- Table 2 ----------------------------------------------------------------------------------------

def test_table2_median_per_run_then_mean_over_seeds(summary, measurements):
    t2 = tables.table2(summary, measurements, DATASETS)
    assert GPU in t2.caption and CPU in t2.caption  # the default device is the latest; the other named
    gpu = measurements[(measurements["device_name"] == GPU) & (measurements["batch_size"] == 128)]
    teacher = gpu[(gpu["role"] == "teacher") & (gpu["dataset"] == C10)]
    per_run = teacher.groupby("run_id")["inference_time_s"].median()  # 1.15 (3 timings) and 1.25
    c = cell(t2, "Teacher", "time_s")
    assert c["n"] == 2 and c["mean"] == pytest.approx(per_run.mean()) and c["std"] == pytest.approx(per_run.std())
    text = to_markdown(t2)
    assert md_row(text, "Teacher")[:7] == ["1.20 ± 0.07 (n=2)", "3.09", "-1.89", "1.73", "1.73", "+0.00", "6.92"]
    # the batch-1024 timing of the student is another setting: left out, and said so
    assert md_row(text, "Student")[0] == "0.42 ± 0.01 (n=2)"
    assert any("another precision/batch_size/threads setting" in n for n in t2.notes)
    # Δ params from millions of parameters; Δ time not on synthetic data
    assert md_row(text, "Ens-all")[3:6] == ["0.82", "0.81", "+0.01"]
    assert md_row(text, "Teacher")[7:10] == ["0.10 (n=1)", "3.02", "–"]
    assert "millions of parameters" in t2.caption and "GTX 1070 Ti" in t2.caption


def test_table2_shows_a_remeasured_network_in_its_latest_form_only(summary, measurements):
    # the GPU student runs re-timed folded (a later `measure`): their old timings as built are another computation
    gpu = measurements[(measurements["device_name"] == GPU) & (measurements["batch_size"] == 128)]
    students = gpu[(gpu["role"] == "student") & (gpu["dataset"] == C10)]
    folded = students.assign(inference_time_s=0.30, form="bn-folded", measured_at="2026-12-01T10:00:00+00:00")
    t2 = tables.table2(summary, pd.concat([measurements, folded], ignore_index=True), DATASETS)
    assert md_row(to_markdown(t2), "Student")[0] == f"0.30 ± 0.00 (n={students['run_id'].nunique()})"
    assert any(f"{len(students)} earlier measurement(s) of a network in another form" in n for n in t2.notes)
    assert md_row(to_markdown(t2), "Teacher")[0] == "1.20 ± 0.07 (n=2)"  # not re-timed: as before


def test_table2_rows_without_timings_say_why(summary, measurements):
    text = to_markdown(tables.table2(summary, measurements, DATASETS))
    assert md_row(text, "Ens-RKD-Logits")[0] == "not measured (1 DONE run)"
    assert md_row(text, "Ens-AT-RKD")[0] == "missing"
    assert md_row(text, "AT")[0] == "0.41 (n=1, 1 failed)"   # a method shows when it was timed
    with pytest.raises(Exception):
        md_row(text, "Logits")                                # ... and not when it was not
    cpu = to_markdown(tables.table2(summary, measurements, DATASETS, device=CPU))
    assert md_row(cpu, "Teacher")[0] == "30.10 (n=1, 1 not measured)"
    assert md_row(cpu, "Student")[0] == "9.90 ± 0.14 (n=2)"
    with pytest.raises(ValueError):
        tables.table2(summary, measurements, DATASETS, device="TPU")
    none = tables.table2(summary, None, DATASETS)
    assert "No inference measurements" in none.caption
    assert md_row(to_markdown(none), "Teacher")[3] == "1.73"  # sizes come from the summary


def test_write_tables(summary, measurements, tmp_path):
    paths = tables.write_tables(summary, measurements, DATASETS, tmp_path, select="last")
    names = {p.name for p in paths}
    for stem in ("table1", "tableA1", "table2", "table2-nvidia-geforce-rtx-3090",
                 "table2-intel-r-xeon-r-cpu-2-20ghz"):
        assert {f"{stem}.md", f"{stem}.tex", f"{stem}.csv"} <= names
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    csv = pd.read_csv(tmp_path / "table1.csv")
    row = csv[(csv["row"] == "logits") & (csv["metric"] == "top1") & (csv["dataset"] == "cifar10")].iloc[0]
    assert row["select"] == "last" and row["n"] == 3 and row["mean"] == pytest.approx(93.0)
    assert "last epoch" in (tmp_path / "tableA1.tex").read_text()


def test_latex_escape():
    assert latex_escape("resnet110_a 5% a&b #1") == r"resnet110\_a 5\% a\&b \#1"
    assert latex_escape("93.14 ± 0.12, Δ -0.05, Ens-AT-Logits") == \
        r"93.14 $\pm$ 0.12, $\Delta$ $-$0.05, Ens-AT-Logits"


def test_csv_is_numbers(summary):
    text = to_csv(tables.table1(summary, DATASETS))
    df = pd.read_csv(pd.io.common.StringIO(text))
    assert {"mean", "std", "n", "failed", "paper", "diff"} <= set(df.columns)
    assert pd.api.types.is_float_dtype(df["mean"])


# --- plots ------------------------------------------------------------------------------------------

def test_plots_are_written(summary, measurements, tmp_path):
    curves = {"student": [[10.0, 40.0, 60.0], [12.0, 41.0, 61.0]], "at": [[11.0, 45.0, 65.0], [9.0, 44.0]],
              "ens-all": [[20.0, 50.0, 70.0]]}
    paths = plots.write_plots(summary, measurements, curves, tmp_path)
    names = {p.name for p in paths}
    for stem in ("acc_vs_params_cifar10", "acc_vs_time_cifar10", f"acc_vs_params_{C100}", "training_curves",
                 "paired_table1_cifar10", "paired_tableA1_cifar10"):  # CIFAR-10 has rows with 2 paired seeds
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
    for p in paths:
        head = p.read_bytes()[:8]
        assert p.stat().st_size > 1000 and (head.startswith(b"\x89PNG") or head.startswith(b"%PDF"))


def test_plots_without_measurements_skip_the_time_plot(summary, tmp_path, capsys):
    paths = plots.write_plots(summary, None, None, tmp_path)
    assert paths and not any("acc_vs_time" in p.name for p in paths)
    out = capsys.readouterr().out
    assert "no inference measurements" in out and "Soft target: no finished run" in out


def test_plot_points(summary, measurements):
    pts, notes = plots.accuracy_points(summary, C10, "time", measurements)
    teacher = pts[pts["name"] == "Teacher"].iloc[0]
    assert teacher["x"] == pytest.approx(1.20) and teacher["y"] == pytest.approx(94.10)
    assert "Soft target: no finished run" in notes
    pts, _ = plots.accuracy_points(summary, C10, "params")
    assert pts.set_index("name").loc["Ens-all", "x"] == pytest.approx(0.817422)
    assert set(pts["kind"]) == {"teacher", "student", "method", "ensemble", "other"}


def test_runs_at_chance_level_are_marked_in_their_cells(summary):
    """A finished run whose top-1 is at chance level is never shown as a plain number: the cell carries "!" and
    says how many of its runs learned nothing, and the caption explains the mark."""
    marked = summary.copy()
    at = marked.index[(marked["dataset"] == "cifar10") & (marked["method"] == "at") & (marked["status"] == "DONE")]
    assert len(at) >= 1
    marked.loc[at[0], ["best_top1", "at_chance"]] = [11.0, True]
    table = tables.table1(marked, DATASETS, "best")
    text = to_markdown(table)
    assert "1 at chance level" in md_row(text, "AT")[0] and "!" in md_row(text, "AT")[0]
    assert "at chance level" in table.caption
    plain = to_markdown(tables.table1(summary, DATASETS, "best"))
    assert "at chance level" not in plain
