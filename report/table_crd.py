"""Table CRD: the teacher -> student pairs of Tian, Krishnan & Isola (CRD, ICLR 2020), laid out as their Tables 1
(teacher and student of the same family) and 2 (of different families), with their numbers beside ours.

Columns: one group per pair present in the summary (`teacher / student`), each Ours | Paper | Δ. Rows: the
teacher, the student alone (CE), then the methods: Tian et al.'s in their order (KD = `st`, FitNet, AT, SP, CC,
VID, RKD, PKT, AB, FT, FSP, NST, CRD), then any other method run on a pair, in the registry's order. A cell is
Table 1's (`report.tables.stat_text`: mean ± sample std over seeds, n, run states) of the runs of that row whose
student is the pair's student and whose teacher is the pair's teacher (a method without a teacher, e.g. DML,
counts for every pair of its student). A method `runner.pairs.exclusions` leaves out of a pair says so
("excluded [k]") and the caption gives reason k.

Paper: `paper_data/tian2020_crd.csv` (CIFAR-100 top-1). Δ = ours − paper from the printed mean, only on the real
CIFAR-100 test set (`report.tables.is_real`).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

from methods.registry import REGISTRY
from runner.pairs import CRD_PAIRS, cross_family, exclusions

from . import aggregate as agg
from .aggregate import Stat
from .paper import DATA_DIR
from .render import Table, to_csv, to_latex, to_markdown
from .tables import (CHANCE_NOTE, LEGEND, SELECT_TEXT, _num, _record, _runs_of, diff, is_real, run_notes,
                     stat_text)

TIAN_CSV = DATA_DIR / "tian2020_crd.csv"
CITATION = "Tian, Krishnan & Isola (2020)"
# the method rows of Tian et al.'s Tables 1 and 2, in their order (their KD is Hinton et al.'s soft targets)
TIAN_METHODS = ["st", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd"]
SUBS = ["Ours", "Paper", "Δ"]
TIAN_EPOCHS = 240


@lru_cache(maxsize=None)
def _published() -> pd.DataFrame:
    with TIAN_CSV.open("rb") as f:
        df = pd.read_csv(f, dtype={"teacher": str, "student": str, "method": str})
    bad = sorted(set(df["method"]) - set(REGISTRY) - {"teacher", "student"})
    if bad or df.duplicated(["teacher", "student", "method"]).any():
        raise ValueError(f"{TIAN_CSV.name}: unknown methods {bad} or a (teacher, student, method) twice")
    return df


def paper_value(pair: tuple[str, str], key: str) -> float | None:
    """Tian et al.'s top-1 of `key` ("teacher", "student" or a method) on `pair`, or None."""
    df = _published()
    hit = df[(df["teacher"] == pair[0]) & (df["student"] == pair[1]) & (df["method"] == key)]
    return None if hit.empty else float(hit["top1"].iloc[0])


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


def pairs_of(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """The (teacher, student) pairs of the method runs: Tian et al.'s in their order, then others as seen."""
    if runs.empty or "teacher" not in runs:
        return []
    method_runs = runs[~runs["row"].isin(["teacher", "student"])]
    seen = list(dict.fromkeys((_text(t), s) for t, s in zip(method_runs["teacher"], method_runs["arch"])
                              if _text(t) and s))
    return [p for p in CRD_PAIRS if p in seen] + [p for p in seen if p not in CRD_PAIRS]


def has_pair_runs(summary: pd.DataFrame, label: str | None) -> bool:
    return bool(pairs_of(_runs_of(summary, label)))


def _row_order(runs: pd.DataFrame) -> list[str]:
    keys = [k for k in dict.fromkeys(runs["row"]) if k not in ("teacher", "student")]
    base = lambda k: agg.split_variant(k)[0]
    order = {m: i for i, m in enumerate(TIAN_METHODS + [m for m in REGISTRY if m not in TIAN_METHODS])}
    return ["teacher", "student"] + sorted(keys, key=lambda k: (order.get(base(k), len(order)), k))


def _cell_runs(runs: pd.DataFrame, key: str, pair: tuple[str, str]) -> tuple[pd.DataFrame, str]:
    teacher, student = pair
    if key == "teacher":
        return runs[(runs["row"] == "teacher") & (runs["arch"] == teacher)], teacher
    mine = runs[(runs["row"] == key) & (runs["arch"] == student)]
    if key != "student":
        mine = mine[[_text(t) in (None, teacher) for t in mine["teacher"]]]
    return mine, student


def _pair_runs(runs: pd.DataFrame, pair: tuple[str, str]) -> pd.DataFrame:
    """Every run one pair's cells read: its teacher, its student alone, its methods from this teacher."""
    teacher, student = pair
    keep = [(r == "teacher" and a == teacher) or (a == student and (r == "student" or _text(t) in (None, teacher)))
            for r, a, t in zip(runs["row"], runs["arch"], runs["teacher"])]
    return runs[keep]


def _excluded(pair: tuple[str, str], method: str) -> str | None:
    """Why `method` is left out of `pair` (runner/pairs.py), or None; rows that are no registered method (an
    ensemble, a run's member network, a plugin not loaded here) are never excluded."""
    try:
        return exclusions(pair, [method]).get(method)
    except Exception:  # noqa: BLE001 - an unknown name or network: nothing to say about it
        return None


def _table(runs: pd.DataFrame, pairs: list, rows: list[str], label: str | None, select: str, name: str,
           title: str, what: str) -> Table:
    groups = [(f"{t} / {s}", list(SUBS)) for t, s in pairs]
    notes: dict[str, int] = {}  # reason text -> footnote number
    lines, records, chance = [], [], False
    real = is_real("cifar100", label)
    for key in rows:
        cells = []
        method = agg.split_variant(key)[0]
        for pair in pairs:
            mine, arch = _cell_runs(runs, key, pair)
            s = agg.accuracy_stats(mine, f"{select}_top1").get((key, arch), Stat()) if not mine.empty else Stat()
            paper = None if agg.split_variant(key)[1] else paper_value(pair, method)
            reason = None if key in ("teacher", "student") else _excluded(pair, method)
            d = diff(s, paper, real)
            if reason and not s.runs:
                k = notes.setdefault(f"{agg.row_label((key, ''))} on {pair[0]} / {pair[1]}: {reason}",
                                     len(notes) + 1)
                ours = f"excluded [{k}]"
            else:
                ours = stat_text(s)
            chance |= bool(s.chance)
            cells += [ours, _num(paper), _num(d, signed=True)]
            records.append(_record(name, "cifar100", label, (key, arch), "top1", s, paper, d, select=select,
                                   teacher=pair[0], student=pair[1], excluded=reason))
        lines.append((agg.row_label((key, "")), cells))
    caption = " ".join([
        f"Top-1 test accuracy (%) {what}: per teacher / student pair, the teacher, the student trained alone "
        "and each distillation method, as in Tian et al.'s CRD benchmark.",
        "Ours: mean ± sample standard deviation over seeds (n = finished runs; no ± when n = 1), "
        f"{SELECT_TEXT[select]}.",
        f"Paper: {CITATION}, CIFAR-100 (report/paper_data/tian2020_crd.csv); their KD is Soft target here; "
        "Δ = ours − paper in percentage points, from the printed mean, " +
        ("on the real CIFAR-100 test set." if real else
         f"not computed (–): our runs come from “{label}”, not the real CIFAR-100 test set."),
        *(["Methods that cannot run on a pair are left out: " +
           " ".join(f"[{k}] {text}." for text, k in notes.items())] if notes else []),
        LEGEND, *([CHANCE_NOTE] if chance else [])])
    shown = runs[[(r in ("teacher",) and a in {t for t, _ in pairs}) or a in {s for _, s in pairs}
                  for r, a in zip(runs["row"], runs["arch"])]]
    # per pair, so that one student distilled from two teachers (vgg8 from vgg13 and from resnet50) is two cells,
    # not "several runs of one seed"; Table 1's note on epochs is about Kang & Gwak's 200 (Tian et al. train 240)
    notes = list(dict.fromkeys(n for pair in pairs for n in run_notes({"cifar100": _pair_runs(runs, pair)},
                                                                      {"cifar100": label})
                               if "the paper trains" not in n))
    epochs = sorted({int(e) for e in pd.to_numeric(shown.loc[shown["status"].astype(str).str.upper() == "DONE",
                                                             "epochs"], errors="coerce").dropna()})
    if real and epochs and epochs != [TIAN_EPOCHS]:
        notes.append(f"{label}: finished runs trained for {', '.join(map(str, epochs))} epochs; Tian et al. train "
                     f"{TIAN_EPOCHS}, so Δ compares different protocols.")
    return Table(name, title, caption, groups, [(None, lines)], notes, pd.DataFrame(records))


def table_crd(summary: pd.DataFrame, label: str | None, select: str = "best") -> list[Table]:
    """Table CRD of the runs of one data set (`label`): a same-family and a cross-family table, each only when
    the summary has runs of such a pair; [] when it has none."""
    if select not in SELECT_TEXT:
        raise ValueError(f"select must be 'best' or 'last', not {select!r}")
    runs = _runs_of(summary, label)
    if "teacher" not in runs:
        runs["teacher"] = None
    pairs = pairs_of(runs)
    if not pairs:
        return []
    rows = _row_order(runs)
    same = [p for p in pairs if not cross_family(p)]
    cross = [p for p in pairs if cross_family(p)]
    out = []
    if same:
        out.append(_table(runs, same, rows, label, select, "table_crd_same", "Table CRD (same family)",
                          "of teacher and student of the same family (Tian et al., Table 1)"))
    if cross:
        out.append(_table(runs, cross, rows, label, select, "table_crd_cross", "Table CRD (cross family)",
                          "of teacher and student of different families (Tian et al., Table 2)"))
    return out


def write_table_crd(summary: pd.DataFrame, label: str | None, out_dir: str | Path, select: str = "best") -> list[Path]:
    """Write table_crd.md, table_crd.tex and table_crd.csv (both tables, same family first) into `out_dir`;
    return the paths, none when the summary has no runs of a teacher -> student pair for `label`."""
    tables = table_crd(summary, label, select)
    if not tables:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {"md": "\n".join(to_markdown(t) for t in tables), "tex": "\n".join(to_latex(t) for t in tables),
             "csv": to_csv(Table("table_crd", "Table CRD", "", [], [],
                                 records=pd.concat([t.records for t in tables], ignore_index=True)))}
    paths = []
    for ext, text in texts.items():
        path = out_dir / f"table_crd.{ext}"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths
