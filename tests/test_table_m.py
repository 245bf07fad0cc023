"""Table M (report/table_m.py): the paper's 20 methods beside DKD, DIST, LSKD and ReviewKD.

The summary is tests/fixtures/report_summary.csv (see tests/test_report.py) plus hand-made records of the later
methods: on CIFAR-10 DKD with two seeds, DIST failed, ReviewKD one finished and one running seed, LSKD never
run; and a real-CIFAR-100 column (teacher ResNet-110, student ResNet-20) where LSKD, the one later method whose
reference publishes a number for that pair, ran twice. The golden Markdown file was rendered once and read by
hand; the tests below recompute cells from the records and from the published data.

To re-render the golden file after an intended change: KDBENCH_UPDATE_GOLDEN=1 pytest tests/test_table_m.py.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import md_row
from methods.registry import SETS
from report import paper, table_m as tm
from report.collect import COLUMNS
from report.render import to_csv, to_latex, to_markdown

FIX = Path(__file__).resolve().parent / "fixtures"
C10, C100 = "cifar10", "cifar100"
DATASETS = {"cifar10": C10, "cifar100": C100}


def run(dataset, method, role, seed, student, teacher, status, top1=None, error=None):
    rec = dict.fromkeys(COLUMNS)
    rec.update(dataset=dataset, method=method, role=role, seed=seed, student=student, teacher=teacher,
               status=status, run_id=f"{dataset}-{method}-{role}-{seed}", error=error, epochs=200)
    if top1 is not None:
        rec.update({f"best_top{k}": min(100.0, top1 + 4 * (k - 1)) for k in range(1, 6)},
                   **{f"last_top{k}": min(100.0, top1 - 0.2 + 4 * (k - 1)) for k in range(1, 6)},
                   at_chance=False)
    return rec


MODERN_RUNS = [
    run(C10, "dkd", "method", 0, "resnet20", "resnet110", "DONE", 93.6),
    run(C10, "dkd", "method", 1, "resnet20", "resnet110", "DONE", 93.8),
    run(C10, "dist", "method", 0, "resnet20", "resnet110", "FAILED", error="non-finite loss (nan) at epoch 3, step 7"),
    run(C10, "reviewkd", "method", 0, "resnet20", "resnet110", "DONE", 93.3),
    run(C10, "reviewkd", "method", 1, "resnet20", "resnet110", "PARTIAL"),
    run(C100, "ce", "teacher", 0, "resnet110", None, "DONE", 73.9),
    run(C100, "ce", "student", 0, "resnet20", None, "DONE", 69.2),
    run(C100, "logits", "method", 0, "resnet20", "resnet110", "DONE", 70.4),
    run(C100, "lskd", "method", 0, "resnet20", "resnet110", "DONE", 71.1),
    run(C100, "lskd", "method", 1, "resnet20", "resnet110", "DONE", 71.5),
    run(C100, "dkd", "method", 0, "resnet20", "resnet110", "DONE", 71.0),
]


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    base = pd.read_csv(FIX / "report_summary.csv")
    base = base[base["dataset"] == C10]  # the CIFAR-100 column here is the real one below
    return pd.concat([base, pd.DataFrame(MODERN_RUNS, columns=COLUMNS)], ignore_index=True)


@pytest.fixture(scope="module")
def table(summary):
    return tm.table_m(summary, DATASETS, "best")


def md_names(text: str) -> list[str]:
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    return [ln.strip().strip("|").split("|")[0].strip() for ln in lines[1:]]


def test_golden_markdown(table):
    path, text = FIX / "expected_table_m.md", to_markdown(table)
    if os.environ.get("KDBENCH_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), "expected_table_m.md changed; see the module docstring"


def test_modern_rows_follow_the_papers_20_in_order(table):
    names = md_names(to_markdown(table))
    modern = [paper.display_name(m) for m in SETS["modern"]]
    assert modern == ["DKD", "DIST", "LSKD", "ReviewKD"]
    paper20 = [paper.display_name(m) for m in paper.paper_methods()]
    assert len(paper20) == 20
    assert names[:2] == ["Teacher", "Student"]
    at = names.index("DML")  # the paper's last method, then the later ones
    assert [n for n in names[2:at + 1] if "(" not in n] == paper20
    assert names[at + 1:at + 5] == modern
    # then the rows the summary holds besides: the ensembles and an OEC-KD member
    assert names[at + 5:] == ["Ens-AT-Logits", "Ens-RKD-Logits", "Ens-all", "OEC-KD s1"]


def test_cells(table, summary):
    text = to_markdown(table)
    # ours as in Table 1: mean ± sample std (n), the state of every other run
    dkd = summary[(summary["dataset"] == C10) & (summary["method"] == "dkd")]["best_top1"]
    assert md_row(text, "DKD")[:3] == [f"{dkd.mean():.2f} ± {dkd.std():.2f} (n=2)", "–", "–"]
    assert md_row(text, "DIST")[:3] == ["failed (1 run)", "–", "–"]
    assert md_row(text, "ReviewKD")[:3] == ["93.30 (n=1, 1 running)", "–", "–"]
    assert md_row(text, "LSKD")[:3] == ["missing", "–", "–"]  # never run: shown, saying so
    # CIFAR-100 (ResNet-110 -> ResNet-20): only LSKD's reference publishes this pair (71.48), so only it has Δ
    lskd = summary[(summary["dataset"] == C100) & (summary["method"] == "lskd")]["best_top1"]
    assert md_row(text, "LSKD")[3:] == [f"{lskd.mean():.2f} ± {lskd.std():.2f} (n=2)", "71.48",
                                        f"{round(round(lskd.mean(), 2) - 71.48, 2):+.2f}"]
    assert md_row(text, "DKD")[3:] == ["71.00 (n=1)", "–", "–"]
    # the paper's rows keep Kang & Gwak's numbers and Δ, as Table 1; from 3 seeds on, the 95 % interval of the
    # mean as in Table 1: 93.20 ± t(0.975, 2 df) 4.303 × 0.10 / √3 = ± 0.25
    assert md_row(text, "Logits") == ["93.20 ± 0.10 [92.95, 93.45] (n=3)", "93.14", "+0.06", "70.40 (n=1)", "70.19",
                                      "+0.21"]
    rec = table.records
    lskd100 = rec[(rec["name"] == "LSKD") & (rec["dataset"] == "cifar100")].iloc[0]
    assert lskd100["paper"] == 71.48 and "logit-standardization-KD" in lskd100["published_source"]
    assert (lskd100["teacher"], lskd100["student"]) == ("resnet110", "resnet20")


def test_caption(table):
    cap = table.caption
    for what in ["the paper's 20 distillation methods beside four later ones",
                 "DKD (Zhao et al., CVPR 2022)", "DIST (Huang et al., NeurIPS 2022)", "LSKD (Sun et al., CVPR 2024)",
                 "ReviewKD (Chen et al., CVPR 2021)", "on the same data", "Teacher ResNet-110, student ResNet-20",
                 "mean ± sample standard deviation over seeds", "best epoch on the test split",
                 "Kang & Gwak (2020), Table A1", "report/paper_data/modern_published.csv",
                 "None of the four references publishes CIFAR-10 results",
                 "With teacher ResNet-110 and student ResNet-20 on CIFAR-100 only LSKD (71.48) is published; DKD, "
                 "DIST and ReviewKD publish none for this pair"]:
        assert what in cap, what
    from report.tables import CI_NOTE

    assert CI_NOTE in cap  # the Logits cell has 3 seeds
    assert "last epoch" in tm.table_m(pd.DataFrame(columns=COLUMNS), DATASETS, "last").caption


def test_another_pair_is_compared_with_its_own_published_numbers():
    """CIFAR-100 with RepDistiller's ResNet-56 teacher: DKD, DIST, LSKD and ReviewKD all publish ResNet-56 ->
    ResNet-20; the paper's own numbers (ResNet-110 teacher) get no Δ, although the student is ResNet-20."""
    runs = [run(C100, "ce", "teacher", 0, "resnet56", None, "DONE", 72.3),
            run(C100, "ce", "student", 0, "resnet20", None, "DONE", 69.1),
            run(C100, "logits", "method", 0, "resnet20", "resnet56", "DONE", 70.7),
            run(C100, "dkd", "method", 0, "resnet20", "resnet56", "DONE", 71.5)]
    t = tm.table_m(pd.DataFrame(runs, columns=COLUMNS), {"cifar100": C100})
    text = to_markdown(t)
    assert md_row(text, "DKD")[3:] == ["71.50 (n=1)", "71.97", "-0.47"]
    assert md_row(text, "Logits")[3:] == ["70.70 (n=1)", "70.19", "–"]
    assert md_row(text, "DIST")[3:] == ["missing", "71.75", "–"]
    assert md_row(text, "Teacher (resnet56)")[3:5] == ["72.30 (n=1)", "72.69"]
    assert "Teacher ResNet-56, student ResNet-20" in t.caption
    assert ("With teacher ResNet-56 and student ResNet-20 on CIFAR-100 DKD (71.97), DIST (71.75), LSKD (71.43) and "
            "ReviewKD (71.89) are published.") in t.caption
    assert "→" not in to_latex(t)


def test_published_data():
    df = tm.published_modern()
    assert set(df["method"]) == set(SETS["modern"]) and set(df["dataset"]) == {"cifar100"}
    assert df["source"].notna().all() and not df.duplicated(["method", "dataset", "teacher", "student"]).any()
    assert tm.published_value("lskd", "cifar100", "resnet110", "resnet20")["top1"] == 71.48
    assert tm.published_value("dkd", "cifar100", "resnet110", "resnet20") is None
    assert tm.published_value("dist", "cifar100", "resnet56", "resnet20")["std"] == 0.30
    assert str(tm.MODERN_CSV) == str(paper.DATA_DIR / "modern_published.csv")


def test_renderings_and_files(table, summary, tmp_path):
    assert r"\label{tab:table_m}" in to_latex(table)
    csv = pd.read_csv(pd.io.common.StringIO(to_csv(table)))
    assert {"published_source", "published_std", "teacher", "student"} <= set(csv.columns)
    paths = tm.write_table_m(summary, DATASETS, tmp_path / "tables", "best")
    assert [p.name for p in paths] == ["table_m.md", "table_m.tex", "table_m.csv"]
    assert paths[0].read_text(encoding="utf-8") == to_markdown(table)
