"""Statistics that say when a difference from the student is real (report/stats.py) and how Tables 1/A1 and the
plots show them.

Known answers, not recomputed with the code under test: Student-t quantiles from a printed t table
(t_{0.975,2} = 4.303, t_{0.975,4} = 2.776, t_{0.975,1} = 12.706), the closed form of the t distribution with
2 degrees of freedom for a p-value, and Holm's adjustment worked by hand. The constructed summary below has
three seeds: Logits is the student + 1 point in every seed (difference +1, zero-width interval, marked), AT is
noise around the student (interval contains 0), RKD has a seed the student lacks and misses one it has (both
left out and counted), Ens-all is +2 ± 0.2. Its Table 1 was rendered once into
tests/fixtures/expected_stats_table1.md and read by eye; re-render with KDBENCH_UPDATE_GOLDEN=1.

The pre-statistics renderings of single-seed tables (tests/fixtures/expected_*_single_seed.*) were produced
by the report code before this module existed (git HEAD at a642d01) from the report fixture's seed-0 runs:
a table without two seeds anywhere must not change by a byte.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import pytest

from report import plots, stats, tables
from report.collect import COLUMNS
from report.render import to_csv, to_latex, to_markdown

FIX = Path(__file__).resolve().parent / "fixtures"
ONLY10 = {"cifar10": "cifar10", "cifar100": None}


# --- one cell: mean, std, t interval ----------------------------------------------------------------

def test_summary_of_a_cell_n3_against_the_t_table():
    s = stats.summarize([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    half = 4.303 * 1.0 / math.sqrt(3)          # t_{0.975, 2} from a t table
    assert s.lo == pytest.approx(2.0 - half, abs=1e-3) and s.hi == pytest.approx(2.0 + half, abs=1e-3)
    assert s.lo == pytest.approx(-0.484138, abs=1e-5)


def test_summary_of_a_cell_n5_against_the_t_table():
    s = stats.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.mean == 3.0 and s.std == pytest.approx(math.sqrt(2.5))
    half = 2.776 * math.sqrt(2.5) / math.sqrt(5)   # t_{0.975, 4}
    assert (s.lo, s.hi) == (pytest.approx(3.0 - half, abs=1e-3), pytest.approx(3.0 + half, abs=1e-3))


def test_summary_below_three_values_has_no_interval_and_ignores_missing():
    assert stats.summarize([4.0, 5.0]) == stats.Summary(4.5, pytest.approx(math.sqrt(0.5)), 2, None, None)
    assert stats.summarize([7.0, float("nan"), None]) == stats.Summary(7.0, None, 1)
    assert stats.summarize([]) == stats.Summary(None, None, 0)
    with pytest.raises(ValueError):
        stats.t_interval(1.0, 0.0, 1)


# --- paired differences -----------------------------------------------------------------------------

STUDENT = {0: 92.0, 1: 92.6, 2: 91.8}


def test_a_method_one_point_better_in_every_seed():
    d = stats.paired_difference({s: v + 1.0 for s, v in STUDENT.items()}, STUDENT)
    assert d.n == 3 and d.seeds == (0, 1, 2) and d.unpaired == 0
    assert d.mean == pytest.approx(1.0) and d.std == pytest.approx(0.0, abs=1e-12)
    assert d.lo == pytest.approx(1.0) and d.hi == pytest.approx(1.0)   # zero width
    assert d.excludes_zero and d.p == pytest.approx(0.0, abs=1e-9)


def test_exactly_equal_and_exactly_constant_differences():
    same = stats.paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert (same.mean, same.lo, same.hi, same.p, same.excludes_zero) == (0.0, 0.0, 0.0, 1.0, False)
    const = stats.paired_difference({0: 3.0, 1: 4.0}, {0: 1.0, 1: 2.0})
    assert (const.lo, const.hi, const.p, const.excludes_zero) == (2.0, 2.0, 0.0, True)


def test_noise_around_zero_is_not_marked():
    d = stats.paired_difference({0: 92.4, 1: 92.5, 2: 91.6}, STUDENT)  # +0.4, -0.1, -0.2
    assert d.mean == pytest.approx(0.1 / 3)
    sd = math.sqrt(((0.4 - 0.1 / 3) ** 2 + (-0.1 - 0.1 / 3) ** 2 + (-0.2 - 0.1 / 3) ** 2) / 2)
    assert d.std == pytest.approx(sd)
    assert (d.lo, d.hi) == (pytest.approx(0.1 / 3 - 4.303 * sd / math.sqrt(3), abs=1e-3),
                            pytest.approx(0.1 / 3 + 4.303 * sd / math.sqrt(3), abs=1e-3))
    assert d.lo < 0 < d.hi and not d.excludes_zero and d.p > 0.05


def test_unpaired_seeds_are_left_out_and_counted():
    d = stats.paired_difference({0: 92.5, 1: 93.3, 3: 99.0, 4: float("nan")}, STUDENT)
    assert d.seeds == (0, 1) and d.only_method == (3,) and d.only_baseline == (2,) and d.unpaired == 2
    assert d.diffs == (pytest.approx(0.5), pytest.approx(0.7)) and d.mean == pytest.approx(0.6)
    half = 12.706 * math.sqrt(0.02) / math.sqrt(2)    # t_{0.975, 1}, std of (0.5, 0.7)
    assert (d.lo, d.hi) == (pytest.approx(0.6 - half, abs=1e-3), pytest.approx(0.6 + half, abs=1e-3))
    one = stats.paired_difference({0: 93.0, 5: 1.0}, STUDENT)
    assert one.n == 1 and one.mean == pytest.approx(1.0) and one.lo is None and one.p is None
    assert not one.excludes_zero and one.unpaired == 3
    none = stats.paired_difference({}, STUDENT)
    assert none.n == 0 and none.mean is None and none.only_baseline == (0, 1, 2)


def test_paired_t_test_p_value_by_hand():
    # differences 1, 2, 3: t = 2 / (1/sqrt 3) = sqrt 12, 2 df; for 2 df, P(T > t) = 1/2 - t / (2 sqrt(2 + t^2))
    t = math.sqrt(12)
    expected = 2 * (0.5 - t / (2 * math.sqrt(2 + t * t)))
    assert expected == pytest.approx(0.07418, abs=1e-5)
    d = stats.paired_difference({0: 11.0, 1: 12.0, 2: 13.0}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert d.p == pytest.approx(expected, rel=1e-9)
    # the test agrees with its interval: p < 0.05 exactly when the 95 % interval excludes 0
    assert not d.excludes_zero and d.lo < 0


def test_paired_t_test_equals_scipy_ttest_rel():
    from scipy.stats import ttest_rel
    a, b = [93.3, 92.4, 92.5, 93.0], [92.0, 92.6, 91.8, 92.1]
    d = stats.paired_difference(dict(enumerate(a)), dict(enumerate(b)))
    assert d.p == pytest.approx(ttest_rel(a, b).pvalue, rel=1e-9)


# --- Holm -------------------------------------------------------------------------------------------

def test_holm_hand_worked():
    # sorted 0.01, 0.03, 0.04: 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; max(0.06, 1 x 0.04) = 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06)]
    # capped at 1 and monotone: 4 x 0.005 = 0.02; 3 x 0.02 = 0.06; 2 x 0.5 = 1; max(1, 0.9) = 1
    assert stats.holm([0.005, 0.5, 0.02, 0.9]) == [pytest.approx(v) for v in (0.02, 1.0, 0.06, 1.0)]
    assert stats.holm([0.2]) == [0.2] and stats.holm([]) == []


def test_holm_family_of_paired_tests():
    diffs = {"a": stats.PairedDiff(1.0, 0.1, 3, p=0.01), "b": stats.PairedDiff(1.0, 0.1, 3, p=0.04),
             "c": stats.PairedDiff(1.0, 0.1, 3, p=0.03), "single": stats.PairedDiff(1.0, None, 1)}
    res = stats.holm_paired_tests(diffs)
    assert set(res) == {"a", "b", "c"}                   # a row without a test is not in the family
    assert res["a"].p_holm == pytest.approx(0.03) and res["a"].reject and res["a"].m == 3
    assert res["b"].p_holm == pytest.approx(0.06) and not res["b"].reject and res["b"].p == 0.04
    assert res["c"].p_holm == pytest.approx(0.06) and not res["c"].reject


# --- a constructed summary: 3 seeds ------------------------------------------------------------------

STEP = (0.0, 4.0, 5.5, 6.3, 6.9)   # top-k above top-1, the same for every row


def _run(method, role, seed, student, status="DONE", offset=0.0, teacher="resnet110"):
    row = dict.fromkeys(COLUMNS)
    row.update(dataset="cifar10", method=method, role=role, seed=seed, student=student,
               teacher=None if role in ("teacher", "student") else teacher, status=status,
               run_id=f"{method}-{role}-{student}-{seed}")
    if status == "DONE":
        base = STUDENT.get(seed, 92.0) + offset
        for k in range(1, 6):
            row[f"best_top{k}"] = round(base + STEP[k - 1], 4)
            row[f"last_top{k}"] = round(base + STEP[k - 1] - 0.2, 4)
        row.update(epochs=200, best_epoch=180, params=272474, at_chance=False)
    elif status == "FAILED":
        row["error"] = "non-finite loss (nan) at epoch 3, step 7"
    return row


def constructed() -> pd.DataFrame:
    rows = []
    for seed in (0, 1, 2):
        rows.append(_run("ce", "teacher", seed, "resnet110", offset=2.0))
        rows.append(_run("ce", "student", seed, "resnet20"))
        rows.append(_run("logits", "method", seed, "resnet20", offset=1.0))
        rows.append(_run("at", "method", seed, "resnet20", offset=(0.4, -0.1, -0.2)[seed]))
        rows.append(_run("ens-all", "ensemble", seed, "resnet20", offset=(2.0, 1.8, 2.2)[seed]))
    rows += [_run("rkd", "method", 0, "resnet20", offset=0.5), _run("rkd", "method", 1, "resnet20", offset=0.7),
             _run("rkd", "method", 2, "resnet20", status="FAILED"),
             _run("rkd", "method", 3, "resnet20", offset=0.9)]   # seed 3: no student with that seed
    # another network with no student of its own: no paired difference
    rows += [_run("pkt", "method", s, "resnet8", offset=-1.0) for s in (0, 1)]
    return pd.DataFrame(rows, columns=COLUMNS)


def _golden(name: str, text: str) -> None:
    path = FIX / name
    if os.environ.get("KDBENCH_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} changed; see the module docstring"


def _rows(text: str, panel: int = 0) -> dict[str, list[str]]:
    """Row name -> cells of the `panel`-th Markdown grid."""
    grids, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                grids.append(current)
            current.append([p.strip() for p in line.strip().strip("|").split("|")])
        else:
            current = None
    return {r[0]: r[1:] for r in grids[panel][2:]}


def _rec(table, row, metric="top1"):
    r = table.records
    hit = r[(r["row"] == row) & (r["metric"] == metric) & (r["dataset"] == "cifar10")]
    assert len(hit) == 1
    return hit.iloc[0]


def test_golden_stats_table1_markdown():
    _golden("expected_stats_table1.md", to_markdown(tables.table1(constructed(), ONLY10, "best")))


def test_table1_cells_and_panel():
    t = tables.table1(constructed(), ONLY10, "best")
    text = to_markdown(t)
    main, paired = _rows(text, 0), _rows(text, 1)
    # n >= 3: the mean's interval in the cell; n = 2: none
    assert main["Student"][0] == "92.13 ± 0.42 [91.10, 93.17] (n=3)"
    assert main["RKD"][0] == "92.90 ± 0.40 [91.91, 93.89] (n=3, 1 failed)"
    assert paired["Logits"][:3] == ["+1.00 [1.00, 1.00]* (n=3)", "+0.68", ""]
    assert paired["AT"][0] == "+0.03 [-0.77, 0.83] (n=3)"
    assert paired["RKD"][0] == "+0.60 [-0.67, 1.87] (n=2, 2 unpaired)"
    assert paired["Ens-all"][0] == "+2.00 [1.50, 2.50]* (n=3)"
    assert set(paired) == {"Logits", "AT", "RKD", "Ens-all"}  # no teacher, student or student-less network
    # no CIFAR-100 runs: no difference of ours, the paper's difference for reference
    assert all(cells[6] == cells[9] == "–" and cells[8] == cells[11] == "" for cells in paired.values())
    assert paired["AT"][1] == "+0.98" and paired["AT"][7] == "+0.64"  # paper: 93.44 − 92.46, 69.69 − 69.05
    assert "95 % confidence interval of the mean (Student t" in t.caption
    assert "Panel “vs Student”" in t.caption and "Holm" not in t.caption


def test_table_csv_has_the_numbers_in_their_own_columns():
    t = tables.table1(constructed(), ONLY10, "best")
    df = pd.read_csv(pd.io.common.StringIO(to_csv(t)))
    assert {"ci_lo", "ci_hi", "diff_mean", "diff_lo", "diff_hi", "diff_n", "diff_unpaired",
            "excludes_zero"} <= set(df.columns) and "holm_p" not in df.columns
    get = lambda row: df[(df["row"] == row) & (df["metric"] == "top1") & (df["dataset"] == "cifar10")].iloc[0]
    logits = get("logits")
    assert logits["diff_mean"] == pytest.approx(1.0) and logits["diff_lo"] == pytest.approx(1.0)
    assert logits["diff_n"] == 3 and logits["diff_unpaired"] == 0 and bool(logits["excludes_zero"])
    assert not bool(get("at")["excludes_zero"])
    rkd = get("rkd")
    assert rkd["diff_n"] == 2 and rkd["diff_unpaired"] == 2 and rkd["diff_mean"] == pytest.approx(0.6)
    student = get("student")
    assert pd.isna(student["diff_mean"]) and student["ci_lo"] == pytest.approx(92.1333 - 4.303 * 0.4163 / 3 ** 0.5,
                                                                               abs=2e-3)
    line = next(l for l in to_csv(t).splitlines() if l.startswith("table1,cifar10,cifar10,logits,resnet20,Logits,top1,"))
    assert line.endswith(",1.0000,1.0000,1.0000,3,0,True")    # counts print as integers, flags as booleans


def _by_seed(data: pd.DataFrame, method: str, role: str = "method") -> dict:
    part = data[(data["method"] == method) & (data["role"] == role) & (data["status"] == "DONE")]
    return dict(zip(part["seed"], part["best_top1"]))


def test_holm_in_the_tables():
    data = constructed()
    student = _by_seed(data, "ce", "student")
    ps = {m: stats.paired_difference(_by_seed(data, m, "ensemble" if m == "ens-all" else "method"), student).p
          for m in ("logits", "at", "rkd", "ens-all")}        # the family of the column: 4 rows with >= 2 pairs
    expected = dict(zip(ps, stats.holm(list(ps.values()))))
    t = tables.table1(data, ONLY10, "best", holm=True)
    for row, p_holm in expected.items():
        rec = _rec(t, row)
        assert rec["holm_p"] == pytest.approx(p_holm) and rec["holm_reject"] == (p_holm <= 0.05)
    assert _rec(t, "logits")["holm_reject"] and not _rec(t, "at")["holm_reject"]
    assert pd.isna(_rec(t, "student")["holm_p"])
    paired = _rows(to_markdown(t), 1)
    assert paired["Logits"][0] == "+1.00 [1.00, 1.00]* (n=3, Holm p <0.001†)"
    assert paired["AT"][0] == f"+0.03 [-0.77, 0.83] (n=3, Holm p {expected['at']:.3f})"
    assert "Holm's step-down" in t.caption and "one family per dataset and metric" in t.caption
    a1 = tables.tableA1(data, ONLY10, "best", holm=True)
    assert [title for title, _ in a1.panels][:2] == [
        "CIFAR-10", "CIFAR-10 vs Student, paired by seed: mean of row − Student [95 % CI], percentage points"]
    tex = to_latex(a1)
    assert r"Holm p \textless{}0.001$^\dagger$" in tex and r"$\alpha$ = 0.05" in tex


def test_write_tables_passes_holm(tmp_path):
    tables.write_tables(constructed(), None, ONLY10, tmp_path, holm=True)
    assert "holm_p" in pd.read_csv(tmp_path / "tableA1.csv").columns
    assert "Holm p" in (tmp_path / "table1.md").read_text()
    tables.write_tables(constructed(), None, ONLY10, tmp_path / "plain")
    assert "Holm" not in (tmp_path / "plain" / "table1.md").read_text()


# --- tables of single runs are unchanged --------------------------------------------------------------

def test_single_seed_tables_are_byte_identical_to_before():
    summary = pd.read_csv(FIX / "report_summary.csv")
    one = summary[summary["seed"] == 0]
    datasets = {"cifar10": "cifar10", "cifar100": "cifar100-synthetic-n1024-512"}
    for holm in (False, True):
        assert to_markdown(tables.table1(one, datasets, "best", holm)) == \
            (FIX / "expected_table1_single_seed.md").read_text(encoding="utf-8")
        assert to_latex(tables.tableA1(one, datasets, "best", holm)) == \
            (FIX / "expected_tableA1_single_seed.tex").read_text(encoding="utf-8")


# --- plots ------------------------------------------------------------------------------------------

def test_paired_points_and_plots(tmp_path, capsys):
    pts = plots.paired_points(constructed(), "cifar10", (1, 2))
    top1 = pts[pts["k"] == 1].set_index("row")
    assert set(top1.index) == {"logits", "at", "rkd", "ens-all"}
    assert top1.loc["logits", "excludes_zero"] and not top1.loc["at", "excludes_zero"]
    assert top1.loc["ens-all", "lo"] == pytest.approx(2.0 - 4.303 * 0.2 / 3 ** 0.5, abs=1e-3)
    paths = plots.write_plots(constructed(), None, None, tmp_path)
    names = {p.name for p in paths}
    assert {"paired_table1_cifar10.png", "paired_table1_cifar10.pdf", "paired_tableA1_cifar10.png",
            "paired_tableA1_cifar10.pdf"} <= names
    assert all(p.stat().st_size > 1000 for p in paths)
    one = constructed().query("seed == 0")
    paths = plots.write_plots(one, None, None, tmp_path / "one")
    assert not any(p.name.startswith("paired_") for p in paths)
    assert "no row has 2 seeds paired with the student" in capsys.readouterr().out


def test_plot_rows_are_sorted_by_difference():
    pts = plots.paired_points(constructed(), "cifar10", (1,))
    fig = plots.plot_paired(pts, "t")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["AT", "RKD", "Logits", "Ens-all"]   # bottom to top: smallest to largest difference
    assert plots.dataset_key("cifar100-synthetic-n1024-512") == "cifar100"
    assert plots.dataset_key("cifar10-0123456789abcdef") == "cifar10" and plots.dataset_key("svhn") is None
