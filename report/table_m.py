"""Table M: the paper's 20 methods beside four later ones (DKD, DIST, LSKD, ReviewKD) on the same data.

Rows: teacher, student, the paper's 20 methods in its order, then the later methods of `methods.registry.SETS
["modern"]` in that order, then the paper's ensembles and any other row present in the summary. A required row
without runs stays, saying why (as in Table 1). Columns: top-1 on CIFAR-10 and on CIFAR-100, each as Ours |
Published | Δ, with Table 1's cells (`report.tables.stat_text`: mean ± sample std over seeds, the 95 % interval
of the mean from 3 seeds on, n, run states).

"Published" is, for the teacher, the student, the paper's methods and its ensembles, Kang & Gwak's Table A1
(`report.paper`); for a later method, the number its own reference publishes for the same teacher → student
pair and data set (`paper_data/modern_published.csv`, sources in `modern_published.md`), "–" where it publishes
none. Δ = ours − published, from the printed mean, only on the real test set and where the published number is
for the row's own pair (for the paper's rows: its networks, ResNet-110 → ResNet-20).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

from methods import get_method
from methods.ensembles import ENSEMBLES
from methods.registry import REGISTRY, SETS

from . import aggregate as agg
from .aggregate import RowId, Stat
from .paper import DATA_DIR, DATASETS, SHORT_CITATION, paper_arch, paper_methods, paper_value
from .render import Table
from .tables import (CHANCE_NOTE, CI_NOTE, DASH, LEGEND, PAPER_EPOCHS, SELECT_TEXT, _check, _num, _record,
                     _runs_of, data_sentences, diff, is_real, run_notes, stat_text, write_table)

MODERN_CSV = DATA_DIR / "modern_published.csv"
SUBS = ["Ours", "Published", "Δ"]
PUBLISHED_TEXT = "report/paper_data/modern_published.csv"


def modern_methods() -> list[str]:
    """The later methods, in the order of `SETS["modern"]`."""
    return list(SETS["modern"])


def row_keys() -> list[str]:
    """The table's row order: teacher, student, the paper's 20, the later methods, the paper's ensembles."""
    return ["teacher", "student", *paper_methods(), *modern_methods(), *ENSEMBLES]


# --- the references' own numbers ------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _published() -> pd.DataFrame:
    with MODERN_CSV.open("rb") as f:
        df = pd.read_csv(f, dtype={"method": str, "dataset": str, "teacher": str, "student": str})
    bad = [m for m in df["method"] if m not in REGISTRY]
    if bad or not set(df["dataset"]) <= set(DATASETS):
        raise ValueError(f"{MODERN_CSV.name}: unknown methods {bad} or data sets "
                         f"{sorted(set(df['dataset']) - set(DATASETS))}")
    if df.duplicated(["method", "dataset", "teacher", "student"]).any():
        raise ValueError(f"{MODERN_CSV.name}: a (method, dataset, teacher, student) appears twice")
    return df


def published_modern() -> pd.DataFrame:
    """The later methods' own published numbers: method, dataset, teacher, student, top1, std, source, note."""
    return _published().copy()


def published_value(method: str, dataset: str, teacher: str | None, student: str | None) -> pd.Series | None:
    """The line of `modern_published.csv` for this method, data set and pair, or None."""
    df = _published()
    hit = df[(df["method"] == method) & (df["dataset"] == dataset) & (df["teacher"] == teacher)
             & (df["student"] == student)]
    return None if hit.empty else hit.iloc[0]


# --- pairs ------------------------------------------------------------------------------------------------

def _names(values) -> list[str]:
    return [str(v) for v in values if isinstance(v, str) and v]


def _most_common(values: list[str], default: str) -> str:
    return pd.Series(values).value_counts().index[0] if values else default


def main_pair(runs: pd.DataFrame) -> tuple[str, str]:
    """The teacher and student networks of one data set's runs: the teacher row's network (else the teacher the
    methods name), the student baseline's network; the paper's (ResNet-110, ResNet-20) where the runs do not say."""
    teachers = _names(runs.loc[runs["row"] == "teacher", "arch"]) or _names(runs.get("teacher", pd.Series()))
    students = _names(runs.loc[runs["row"] == "student", "arch"])
    return _most_common(teachers, paper_arch("teacher")), _most_common(students, paper_arch("student"))


def row_pair(runs: pd.DataFrame, row: RowId, main: tuple[str, str]) -> tuple[str | None, str]:
    """(teacher, student) of a row: its runs' teacher (None if they name several), its network."""
    key, arch = row
    student = arch or paper_arch(key)
    mine = runs[(runs["row"] == key) & (runs["arch"] == arch)]
    teachers = sorted(set(_names(mine["teacher"]))) if "teacher" in mine else []
    if len(teachers) > 1:
        return None, student
    return (teachers[0] if teachers else main[0]), student


def pretty(arch: str) -> str:
    """`resnet110` -> ResNet-110 (the paper's spelling); other networks keep the zoo's name."""
    return f"ResNet-{arch[6:]}" if arch.startswith("resnet") and arch[6:].isdigit() else arch


def _pair_text(pair: tuple[str, str]) -> str:
    """In words, not with an arrow: the LaTeX rendering has no arrow sign."""
    return f"teacher {pretty(pair[0])} and student {pretty(pair[1])}"


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


# --- the table --------------------------------------------------------------------------------------------

def table_m(summary: pd.DataFrame, datasets: dict, select: str = "best") -> Table:
    """Table M: top-1 on CIFAR-10 and CIFAR-100 of the teacher, the student, the paper's 20 methods and the later
    methods (with any other row of the summary), ours beside the published numbers."""
    _check(datasets, select)
    runs = {key: _runs_of(summary, datasets.get(key)) for key in DATASETS}
    for key in DATASETS:  # records without a teacher column (older summaries) read as "not said"
        if "teacher" not in runs[key]:
            runs[key]["teacher"] = None
    seen = [r for key in DATASETS for r in zip(runs[key]["row"], runs[key]["arch"])]
    keys = row_keys()
    rows = agg.ordered_rows(seen, keys, required=["teacher", "student", *paper_methods(), *modern_methods()])
    stats = {key: agg.accuracy_stats(runs[key], f"{select}_top1") for key in DATASETS}
    mains = {key: main_pair(runs[key]) for key in DATASETS}
    modern = set(modern_methods())
    paper_pair = (paper_arch("teacher"), paper_arch("student"))

    lines, records, shown_ci = [], [], False
    for row in rows:
        cells = []
        for key in DATASETS:
            label = datasets.get(key)
            s = stats[key].get(row, Stat())
            teacher, student = row_pair(runs[key], row, mains[key])
            if row[0] in modern:
                hit = published_value(row[0], key, teacher, student)
                value = None if hit is None else float(hit["top1"])
                std = None if hit is None or pd.isna(hit["std"]) else float(hit["std"])
                source = None if hit is None else str(hit["source"])
                allowed = is_real(key, label)
            else:
                value, std = paper_value("accuracy", row[0], f"{key}_top1"), None
                source = None if value is None else f"{SHORT_CITATION}, Table A1"
                # the paper's numbers are for its networks; a method row also needs the paper's teacher
                allowed = (is_real(key, label) and agg.comparable_with_paper(row)
                           and (row[0] in ("teacher", "student") or teacher in (None, paper_pair[0],
                                                                                 paper_pair[0] + "_a")))
            d = diff(s, value, allowed)
            cells += [stat_text(s, ci=True) if label is not None else DASH, _num(value), _num(d, signed=True)]
            shown_ci |= label is not None and s.lo is not None
            records.append(_record("table_m", key, label, row, "top1", s, value, d, {"ci_lo": s.lo, "ci_hi": s.hi},
                                   select=select, teacher=teacher, student=student, published_std=std,
                                   published_source=source))
        lines.append((agg.row_label(row), cells))

    groups = [(f"{name} top-1", list(SUBS)) for name in DATASETS.values()]
    stats_all = [st for by_row in stats.values() for st in by_row.values()]
    caption = " ".join([
        "Top-1 test accuracy (%) on CIFAR-10 and CIFAR-100: the paper's 20 distillation methods beside four "
        f"later ones, {_later_names()}, trained by this benchmark on the same data, with the same teacher, "
        "student and protocol.",
        _pairs_sentence(datasets, mains),
        "Ours: mean ± sample standard deviation over seeds (n = finished runs; no ± when n = 1), "
        f"{SELECT_TEXT[select]}.",
        *([CI_NOTE] if shown_ci else []),
        f"Published: for the teacher, the student, the paper's methods and ensembles, {SHORT_CITATION}, Table A1 "
        "(teacher ResNet-110, student ResNet-20); for the later methods, the top-1 each reference publishes for "
        f"its own method with the same teacher and student ({PUBLISHED_TEXT}, with sources).",
        *_availability(datasets, mains),
        "Δ = ours − published in percentage points, from the printed mean, on the real test sets only and only "
        "where the published number is for the row's own pair.",
        f"The later references train 240 epochs with their own recipes, this benchmark {PAPER_EPOCHS} epochs "
        "with the paper's, so their Δ compares protocols as well as code.",
        *data_sentences(datasets),
        *(["Rows naming a network in brackets used another network than the paper: no Δ against the paper's "
            "numbers (a later method's Δ is against its reference's number for that pair, where there is one)."]
          if any(not agg.comparable_with_paper(r) for r in rows) else []),
        LEGEND, *([CHANCE_NOTE] if any(st.chance for st in stats_all) else [])])
    return Table("table_m", "Table M", caption, groups, [(None, lines)], run_notes(runs, datasets),
                 pd.DataFrame(records))


def _later_names() -> str:
    return _join([f"{get_method(m).display_name} ({get_method(m).citation})" for m in modern_methods()])


def _pairs_sentence(datasets: dict, mains: dict) -> str:
    given = [key for key in DATASETS if datasets.get(key) is not None]
    pairs = {key: mains[key] for key in given} or {key: mains[key] for key in DATASETS}
    if len(set(pairs.values())) == 1:
        teacher, student = next(iter(pairs.values()))
        return f"Teacher {pretty(teacher)}, student {pretty(student)}."
    return " ".join(f"{DATASETS[key]}: teacher {pretty(t)}, student {pretty(s)}." for key, (t, s) in pairs.items())


def _availability(datasets: dict, mains: dict) -> list[str]:
    """Per data set with runs, which later methods publish a number for its pair."""
    out = []
    names = {m: get_method(m).display_name for m in modern_methods()}
    for key, name in DATASETS.items():
        if datasets.get(key) is None:
            continue
        found = [m for m in modern_methods() if published_value(m, key, *mains[key]) is not None]
        missing = [names[m] for m in modern_methods() if m not in found]
        pair = _pair_text(mains[key])
        if not found and not (_published()["dataset"] == key).any():
            out.append(f"None of the four references publishes {name} results (for any pair): their {name} "
                       "Published cells are –.")
        elif not found:
            out.append(f"None of the four references publishes a {name} top-1 with {pair}: their {name} "
                       "Published cells are –.")
        else:
            shown = [f"{names[m]} ({published_value(m, key, *mains[key])['top1']:.2f})" for m in found]
            out.append(f"With {pair} on {name} {'only ' if len(found) == 1 else ''}{_join(shown)} "
                       f"{'is' if len(found) == 1 else 'are'} published"
                       + (f"; {_join(missing)} publish{'es' if len(missing) == 1 else ''} none for this pair (–)."
                          if missing else "."))
    return out


def write_table_m(summary: pd.DataFrame, labels: dict, out_dir: str | Path, select: str = "best") -> list[Path]:
    """Write table_m.md, table_m.tex and table_m.csv into `out_dir`; return the paths. `labels` maps "cifar10" /
    "cifar100" to the results/<label> of each column, as for `report.tables.write_tables`."""
    return write_table(table_m(summary, labels, select), Path(out_dir))
