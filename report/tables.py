"""The paper's tables rebuilt from our run records, with the paper's numbers beside ours.

Table 1 (CIFAR-10 top-1/top-2, CIFAR-100 top-1/top-5), Table A1 (top-1..5 on both) and Table 2 (inference
time of the test set and model size). Everything here is a pure function of DataFrames, so the CLI, a
notebook and the tests render the same text from the same records.

Choices a reader of the tables needs (they are repeated in the captions):
- a cell is the mean ± sample std (ddof=1) over the DONE runs of a row, with n; the std is left out at n=1;
- runs that failed, are still running or never started are counted in the cell, and a row without any DONE
  run says why ("failed", "running", "missing") instead of disappearing;
- Δ = ours − paper, computed from the printed (rounded) mean so the three columns agree; only on the real
  test sets ("cifar10"/"cifar100", with their data fingerprint) and the paper's networks — on synthetic or
  subset data the paper's column is still printed but Δ is "–";
- `select="best"` uses each run's best epoch on the test split (the paper's "highest top-k accuracy for our
  validation dataset for each run"), `select="last"` its last epoch.

Statistics (report/stats.py), Tables 1 and A1 only, and only where there are enough seeds, so a table of
single runs looks exactly as before:
- a cell with n >= 3 also shows the 95 % confidence interval of its mean (Student t, n-1 df) in brackets;
- when some row has n >= 2 seeds paired with the student of its network (same seed: same initial weights,
  same batch stream), a panel "vs Student" follows the panel of the numbers: per row and column the mean of
  the per-seed differences row − Student [95 % CI, t with n-1 df], * when the interval excludes 0, n = paired
  seeds, seeds only one side finished left out and counted ("k unpaired"); its Paper column is the paper's
  row − Student. Only rows with n >= 2 pairs in some column are listed; a cell with fewer says so.
- `holm=True` adds a two-sided paired t-test per row (H0: mean difference 0), Holm-adjusted over the family
  of all rows tested in one column (one dataset and metric), † when rejected at α = 0.05.
The CSV has these numbers in their own columns: ci_lo, ci_hi (the mean's interval), diff_mean, diff_lo,
diff_hi, diff_n, diff_unpaired, excludes_zero and, with `holm`, holm_p, holm_reject.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from methods.ensembles import ENSEMBLES

from . import aggregate as agg
from . import stats
from .aggregate import RowId, Stat
from .paper import DATASETS, SHORT_CITATION, paper_methods, paper_value, row_order
from .render import Table, to_csv, to_latex, to_markdown

SELECT_TEXT = {"best": "best epoch on the test split, as the paper collects it",
               "last": "last epoch"}
PAPER_EPOCHS = 200
DASH = "–"
SUBS = ["Ours", "Paper", "Δ"]
TABLE2_KEYS = ["teacher", "student", *ENSEMBLES]  # the rows of the paper's Table 2
LEGEND = ("A cell without a number says why: failed = every run failed; running = started, none "
          "finished; missing = no run finished or started. “k failed” inside a cell counts runs left out "
          "of its mean.")
CI_NOTE = ("With n ≥ 3 the brackets after the std are the 95 % confidence interval of the mean (Student t, "
           "n − 1 degrees of freedom).")
PAIRED_NOTE = ("Panel “vs Student”: for every seed that both the row and the Student (CE alone, same network) "
               "finished, the difference row − Student in percentage points; the students of a seed start from "
               "the same weights and see the same batches, so the pairs share the seed's luck. Cell: mean "
               "difference [95 % confidence interval, Student t with n − 1 degrees of freedom] (n = paired "
               "seeds; “k unpaired” = seeds only one side finished, left out); * = the interval excludes 0. "
               "Listed are the rows with n ≥ 2 pairs in some column; “1 pair”/“no pair”: too few for an "
               "interval. Its Paper column is the paper's row − Student.")
HOLM_NOTE = ("Holm p: two-sided paired t-test of a mean difference of 0 (unadjusted, it rejects at 0.05 exactly "
             "when the interval excludes 0), its p adjusted by Holm's step-down method over all rows tested in the same "
             "column (one family per dataset and metric); † = rejected at a family-wise α = 0.05.")
CHANCE_NOTE = ("A number followed by “!” includes runs that finished at chance level (top-1 within 1.5× of "
               "100/classes %): they learned nothing, and the cell says how many.")


# --- cells ------------------------------------------------------------------------------------------

def _runs(k: int, what: str = "run") -> str:
    return f"{k} {what}{'s' if k != 1 else ''}"


def status_text(s: Stat, unvalued: str = "no value") -> str:
    """Why a row has no number: the state of its runs, with their counts."""
    if s.done:  # finished, yet no value (e.g. not measured): say so, with the rest of the counts
        return f"{unvalued} ({_runs(s.done, 'DONE run')}" + "".join(f", {p}" for p in _others(s)) + ")"
    if s.running:
        return f"running ({_runs(s.running)}" + "".join(f", {p}" for p in _others(s, skip="running")) + ")"
    if s.failed and not s.new:
        return f"failed ({_runs(s.failed)})"
    if s.new:
        return f"missing ({s.new} not started" + (f", {s.failed} failed" if s.failed else "") + ")"
    return "missing"


def _others(s: Stat, skip: str = "") -> list[str]:
    parts = [(s.failed, "failed"), (s.running, "running"), (s.new, "not started")]
    return [f"{k} {what}" for k, what in parts if k and what != skip]


def stat_text(s: Stat, decimals: int = 2, unvalued: str = "no value", ci: bool = False) -> str:
    """`93.14 ± 0.12 (n=3)`, `93.14 (n=1)`, `93.14 ± 0.10 (n=2, 1 failed)`, or the reason for no number;
    with `ci`, a cell with an interval of its mean (n >= 3) shows it: `93.14 ± 0.12 [92.84, 93.44] (n=3)`."""
    if not s.n:
        return status_text(s, unvalued)
    body = f"{s.mean:.{decimals}f}" + (f" ± {s.std:.{decimals}f}" if s.std is not None else "")
    if ci and s.lo is not None:
        body += f" [{s.lo:.{decimals}f}, {s.hi:.{decimals}f}]"
    extras = [f"n={s.n}"] + _others(s)
    if s.chance:
        body += "!"
        extras.append(f"{s.chance} at chance level")
    if s.done > s.n:
        extras.append(f"{s.done - s.n} {unvalued}")
    return f"{body} ({', '.join(extras)})"


def paired_text(p: stats.PairedDiff | None, test: stats.HolmResult | None = None, decimals: int = 2) -> str:
    """A cell of the "vs Student" panel: `+0.42 [0.10, 0.74]* (n=3)`, with `, 1 unpaired` for seeds only one
    side finished and `, Holm p 0.031†` when tested; `1 pair`/`no pair` below 2 pairs, `no Student` when the
    row's network has no student baseline."""
    if p is None:
        return "no Student"
    if p.n < stats.MIN_N_PAIRED:
        return "1 pair" if p.n == 1 else "no pair"
    fmt = lambda x, sign="": f"{round(x, decimals) + 0.0:{sign}.{decimals}f}"  # + 0.0: no "-0.00"
    body = f"{fmt(p.mean, '+')} [{fmt(p.lo)}, {fmt(p.hi)}]" + ("*" if p.excludes_zero else "")
    extras = [f"n={p.n}"] + ([f"{p.unpaired} unpaired"] if p.unpaired else [])
    if test is not None:
        extras.append(f"Holm p {_p_text(test.p_holm)}" + ("†" if test.reject else ""))
    return f"{body} ({', '.join(extras)})"


def _p_text(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def paper_gain(row: RowId, key: str, k: int) -> float | None:
    """The paper's row − Student for one column, or None where the paper has no such pair of numbers."""
    if not agg.comparable_with_paper(row):
        return None
    mine, base = paper_value("accuracy", row[0], f"{key}_top{k}"), paper_value("accuracy", "student", f"{key}_top{k}")
    return None if mine is None or base is None else round(mine - base, 2) + 0.0


def _stat_columns(s: Stat, p: stats.PairedDiff | None, test: stats.HolmResult | None, holm: bool) -> dict:
    """The CSV's statistics of one cell, each number in its own column (None where there is none)."""
    has_ci = p is not None and p.lo is not None
    out = {"ci_lo": s.lo, "ci_hi": s.hi,
           "diff_mean": p.mean if p is not None else None,
           "diff_lo": p.lo if has_ci else None, "diff_hi": p.hi if has_ci else None,
           "diff_n": p.n if p is not None else None, "diff_unpaired": p.unpaired if p is not None else None,
           "excludes_zero": p.excludes_zero if has_ci else None}
    if holm:
        out.update(holm_p=test.p_holm if test else None, holm_reject=test.reject if test else None)
    return out


def diff(s: Stat, paper: float | None, allowed: bool, decimals: int = 2) -> float | None:
    """Ours − paper from the printed mean, or None where it would compare different things."""
    if not allowed or paper is None or not s.n:
        return None
    d = round(round(s.mean, decimals) - paper, decimals)
    return 0.0 if d == 0 else d


def _num(x: float | None, signed: bool = False) -> str:
    return DASH if x is None else (f"{x:+.2f}" if signed else f"{x:.2f}")


def _record(table: str, dataset: str, label: str | None, row: RowId, metric: str, s: Stat,
            paper: float | None, d: float | None, after: dict | None = None, **extra) -> dict:
    return {"table": table, "dataset": dataset, "label": label, "row": row[0], "arch": row[1],
            "name": agg.row_label(row), "metric": metric, **extra, "mean": s.mean, "std": s.std, "n": s.n,
            "done": s.done, "at_chance": s.chance, "failed": s.failed, "running": s.running, "not_started": s.new,
            "paper": paper, "diff": d, **(after or {})}


# --- data selection and caption pieces --------------------------------------------------------------

def is_real(key: str, label: str | None) -> bool:
    """Only the full real test sets are the paper's; synthetic or subset labels carry a suffix. A label ends in
    its data's fingerprint (`cifar10-<16 hex>`, runner/spec.py DataSpec.label)."""
    return label is not None and re.fullmatch(rf"{re.escape(key)}(-[0-9a-f]{{16}})?", label) is not None


def _check(datasets: dict, select: str | None = None) -> None:
    unknown = set(datasets) - set(DATASETS)
    if unknown:
        raise ValueError(f"datasets keys must be among {sorted(DATASETS)}; got {sorted(unknown)}")
    if select is not None and select not in SELECT_TEXT:
        raise ValueError(f"select must be 'best' or 'last', not {select!r}")


def _runs_of(summary: pd.DataFrame, label: str | None) -> pd.DataFrame:
    if label is None or summary is None or summary.empty:
        return agg.with_rows(pd.DataFrame(columns=["dataset", "method", "role", "seed", "student", "status"]))
    return agg.with_rows(summary[summary["dataset"] == label])


def data_sentences(datasets: dict, what: str = "Δ", but: str = "") -> list[str]:
    out = []
    for key, name in DATASETS.items():
        label = datasets.get(key)
        if label is None:
            out.append(f"No {name} runs were given: its columns show the paper only.")
        elif not is_real(key, label):
            out.append(f"The {name} columns come from “{label}”, not the real {name} test set: the data "
                       f"differ, so the paper's numbers are shown for reference and {what} is not computed "
                       f"(–){but}.")
        elif label != key:  # the full data set, named by its fingerprint
            out.append(f"The {name} columns come from “{label}” (data fingerprint {label[len(key) + 1:]}).")
    return out


def _seed(value) -> str:
    """Seeds read back from CSV may be floats (a column with a gap): print 1, not 1.0."""
    try:
        return str(int(value)) if float(value).is_integer() else str(value)
    except (TypeError, ValueError):
        return str(value)


def run_notes(runs_by_key: dict[str, pd.DataFrame], datasets: dict) -> list[str]:
    """What a reader should know that no cell can show: why runs failed, duplicate seeds, short runs."""
    notes = []
    for key, runs in runs_by_key.items():
        label = datasets.get(key)
        if runs.empty:
            continue
        status = runs["status"].astype(str).str.upper()
        for _, r in runs[status == "FAILED"].iterrows():
            err = r.get("error")
            err = "" if err is None or (isinstance(err, float) and pd.isna(err)) else str(err)
            err = err.strip().splitlines()[0][:160] if err.strip() else "no reason recorded"
            notes.append(f"{label}: {agg.row_label((r['row'], r['arch']))} seed {_seed(r['seed'])} failed: {err}")
        for row, seed in agg.duplicate_seeds(runs):
            notes.append(f"{label}: {agg.row_label(row)} has several DONE runs with seed {_seed(seed)} (different "
                         "specs under one name?); all of them are averaged.")
        if "epochs" in runs and is_real(key, label):
            done = runs[(status == "DONE") & (runs["row"] != "teacher")]
            epochs = sorted({int(e) for e in pd.to_numeric(done["epochs"], errors="coerce").dropna()})
            if epochs and epochs != [PAPER_EPOCHS]:
                notes.append(f"{label}: finished runs trained for {', '.join(map(str, epochs))} epochs; the "
                             f"paper trains {PAPER_EPOCHS}, so Δ compares different protocols.")
    return notes


# --- accuracy tables --------------------------------------------------------------------------------

PAIRED_TITLE = "vs Student, paired by seed: mean of row − Student [95 % CI], percentage points"


def _accuracy_table(summary: pd.DataFrame, datasets: dict, select: str, name: str, title: str,
                    what: str, panels_spec: list[tuple[str | None, list[tuple[str, int]]]],
                    group_name, holm: bool = False) -> Table:
    _check(datasets, select)
    runs = {key: _runs_of(summary, datasets.get(key)) for key in DATASETS}
    seen = [r for key in DATASETS for r in zip(runs[key]["row"], runs[key]["arch"])]
    rows = agg.ordered_rows(seen)
    columns = [c for _, cols in panels_spec for c in cols]
    cell_stats = {(key, k): agg.accuracy_stats(runs[key], f"{select}_top{k}") for key, k in columns}
    paired = {(key, k): agg.paired_stats(runs[key], f"{select}_top{k}", rows) if datasets.get(key) is not None
              else {} for key, k in columns}
    # one family of tests per column (dataset and metric): every row with >= 2 pairs in it
    tests = {c: stats.holm_paired_tests(paired[c]) if holm else {} for c in columns}
    groups = [(group_name(key, k), list(SUBS)) for key, k in panels_spec[0][1]]
    panels, records = [], []
    shown_ci = shown_paired = False
    for panel_title, cols in panels_spec:
        lines = []
        for row in rows:
            cells = []
            for key, k in cols:
                label = datasets.get(key)
                s = cell_stats[(key, k)].get(row, Stat())
                paper = paper_value("accuracy", row[0], f"{key}_top{k}")
                d = diff(s, paper, is_real(key, label) and agg.comparable_with_paper(row))
                cells += [stat_text(s, ci=True) if label is not None else DASH, _num(paper), _num(d, signed=True)]
                shown_ci |= label is not None and s.lo is not None
                p, test = paired[(key, k)].get(row), tests[(key, k)].get(row)
                records.append(_record(name, key, label, row, f"top{k}", s, paper, d,
                                       _stat_columns(s, p, test, holm), select=select))
            lines.append((agg.row_label(row), cells))
        panels.append((panel_title, lines))
        # the paired differences of this panel's columns, for the rows with >= 2 pairs in one of them
        listed = [row for row in rows
                  if any((p := paired[c].get(row)) is not None and p.n >= stats.MIN_N_PAIRED for c in cols)]
        if listed:
            shown_paired = True
            diff_lines = []
            for row in listed:
                cells = []
                for key, k in cols:
                    c = (key, k)
                    cells += [paired_text(paired[c].get(row), tests[c].get(row)) if datasets.get(key) is not None
                              else DASH, _num(paper_gain(row, key, k), signed=True), ""]
                diff_lines.append((agg.row_label(row), cells))
            panels.append((f"{panel_title or 'Difference'} {PAIRED_TITLE}", diff_lines))
    caption = " ".join([
        f"{what} Teacher ResNet-110, student ResNet-20.",
        f"Ours: mean ± sample standard deviation over seeds (n = finished runs; no ± when n = 1), "
        f"{SELECT_TEXT[select]}.",
        *([CI_NOTE] if shown_ci else []),
        f"Paper: {SHORT_CITATION}, Table A1; Δ = ours − paper in percentage points, from the printed mean.",
        *([PAIRED_NOTE] if shown_paired else []),
        *([HOLM_NOTE] if shown_paired and holm else []),
        *data_sentences(datasets),
        *(["Rows naming a network in brackets used another network than the paper and get no Δ."]
          if any(not agg.comparable_with_paper(r) for r in rows) else []),
        LEGEND, *([CHANCE_NOTE] if any(st.chance for by_row in cell_stats.values() for st in by_row.values()) else [])])
    records = pd.DataFrame(records)
    for col, dtype in (("diff_n", "Int64"), ("diff_unpaired", "Int64"), ("excludes_zero", "boolean"),
                       ("holm_reject", "boolean")):
        if col in records:
            records[col] = records[col].astype(dtype)
    return Table(name, title, caption, groups, panels, run_notes(runs, datasets), records)


TABLE1_COLUMNS = [("cifar10", 1), ("cifar10", 2), ("cifar100", 1), ("cifar100", 5)]


def table1(summary: pd.DataFrame, datasets: dict, select: str = "best", holm: bool = False) -> Table:
    """Table 1: CIFAR-10 top-1/top-2 and CIFAR-100 top-1/top-5 (`holm`: Holm-corrected paired tests)."""
    return _accuracy_table(summary, datasets, select, "table1", "Table 1",
                           "Test accuracy (%): top-1 and top-2 on CIFAR-10, top-1 and top-5 on CIFAR-100.",
                           [(None, TABLE1_COLUMNS)], lambda key, k: f"{DATASETS[key]} top-{k}", holm)


def tableA1(summary: pd.DataFrame, datasets: dict, select: str = "best", holm: bool = False) -> Table:
    """Table A1: top-1..top-5 on both datasets, one panel per dataset (`holm`: Holm-corrected paired tests)."""
    panels = [(f"{DATASETS[key]}" + (f" ({datasets[key]})" if datasets.get(key) not in (None, key) else ""),
               [(key, k) for k in range(1, 6)]) for key in DATASETS]
    return _accuracy_table(summary, datasets, select, "tableA1", "Table A1",
                           "Top-1 to top-5 test accuracy (%) on CIFAR-10 and CIFAR-100.",
                           panels, lambda key, k: f"top-{k}", holm)


# --- Table 2 ----------------------------------------------------------------------------------------

def _settings_text(measured: pd.DataFrame) -> str:
    def vals(col):
        return "/".join(sorted({str(v) for v in measured[col].dropna()})) if col in measured else ""
    parts = [f"precision {vals('precision')}" if vals("precision") else "",
             f"batch {vals('batch_size')}" if vals("batch_size") else "",
             f"{vals('threads')} threads" if vals("threads") else "",
             f"torch {vals('torch')}" if vals("torch") else ""]
    return ", ".join(p for p in parts if p)


def _cost_cells(row: RowId, key: str, label: str | None, runs: pd.DataFrame, times: pd.DataFrame,
                device: str | None) -> tuple[list[str], list[dict]]:
    """Table 2's seven cells of one row and dataset: time (ours, paper, Δ), params (ours, paper, Δ), MB."""
    mine = runs[(runs["row"] == row[0]) & (runs["arch"] == row[1])]
    counts = agg.run_counts(mine["status"])
    timed = times[(times["row"] == row[0]) & (times["arch"] == row[1])]
    s = agg.seed_stat(timed["time_s"], counts)
    # sizes do not depend on the device: from the finished runs, else from the measurements
    done = mine[mine["status"].astype(str).str.upper() == "DONE"]
    params = pd.to_numeric(done["params"], errors="coerce").dropna() if "params" in done else pd.Series()
    if params.empty:
        params = timed["params"].dropna()
    p_m = round(float(params.mean()) / 1e6, 2) if len(params) else None
    mb = round(float(params.mean()) * 4 / 1e6, 2) if len(params) else None
    paper_t = paper_value("cost", row[0], f"{key}_time_s")
    paper_p = paper_value("cost", row[0], f"{key}_param_m")
    d_t = diff(s, paper_t, is_real(key, label) and agg.comparable_with_paper(row))
    # the parameter count does not depend on the data, so Δ params holds on synthetic data too
    d_p = (None if p_m is None or paper_p is None or not agg.comparable_with_paper(row)
           else round(p_m - paper_p, 2) + 0.0)
    cells = [stat_text(s, unvalued="not measured") if label is not None else DASH, _num(paper_t),
             _num(d_t, signed=True), _num(p_m), _num(paper_p), _num(d_p, signed=True), _num(mb)]
    size = dict(n=len(params), **counts)
    records = [_record("table2", key, label, row, "time_s", s, paper_t, d_t, device=device),
               _record("table2", key, label, row, "params_m", Stat(mean=p_m, **size), paper_p, d_p, device=device),
               _record("table2", key, label, row, "mb_fp32", Stat(mean=mb, **size), None, None, device=device)]
    return cells, records


def table2(summary: pd.DataFrame, measurements: pd.DataFrame | None, datasets: dict,
           device: str | None = None) -> Table:
    """Table 2: inference time of the whole test set and model size, on one device.

    `device` names a `device_name` of the measurements; default the most recently measured one. A run
    measured several times counts once, with its median time; the cell is then mean ± std over runs.
    """
    _check(datasets)
    device, measured, device_notes = agg.pick_device(measurements, device)
    timings = agg.run_timings(measured, summary)
    runs = {key: _runs_of(summary, datasets.get(key)) for key in DATASETS}
    times = {key: timings[timings["dataset"] == datasets.get(key)] for key in DATASETS}
    seen = []
    for key in DATASETS:
        seen += list(zip(runs[key]["row"], runs[key]["arch"])) + list(zip(times[key]["row"], times[key]["arch"]))
    measured_rows = {r for key in DATASETS for r in zip(times[key]["row"], times[key]["arch"])}
    # the distillation methods share the student's network at inference: listed only when measured
    methods = set(paper_methods())
    seen = [r for r in seen if r[0] not in methods or r in measured_rows]
    rows = agg.ordered_rows(seen, row_order(), required=TABLE2_KEYS)

    groups, records, lines = [], [], []
    for key in DATASETS:
        name = DATASETS[key]
        groups += [(f"{name} time (s)", list(SUBS)), (f"{name} params (M)", list(SUBS)),
                   (f"{name} MB (fp32)", ["Ours"])]
    for row in rows:
        cells = []
        for key in DATASETS:
            row_cells, row_records = _cost_cells(row, key, datasets.get(key), runs[key], times[key], device)
            cells += row_cells
            records += row_records
        lines.append((agg.row_label(row), cells))

    if device is None:
        where = "No inference measurements were given: every time cell says why."
    else:
        where = f"Ours measured on {device} ({_settings_text(measured)})."
        others = [d for d in agg.devices(measurements) if d != device]
        if others:
            where += f" Other devices measured: {'; '.join(others)}."
    caption = " ".join([
        "Inference time (s) of the whole test set and model size.", where,
        "Ours: the median of each run's repeated timings, then mean ± sample standard deviation over runs "
        "(n = measured runs).",
        f"Paper: {SHORT_CITATION}, Table 2, timed on an NVIDIA GTX 1070 Ti, so Δ time mixes hardware and "
        "only the ratios between rows carry over.",
        "The paper heads its size column “Param (MB)” but its values are millions of parameters "
        "(ResNet-20: 0.27); params (M) here is the same quantity, so its Δ is meaningful; MB (fp32) is our "
        "weight size, 4 bytes × parameters / 10⁶.",
        *data_sentences(datasets, "Δ time", "; Δ params is, the networks being the same"),
        "The 20 distillation methods run the student's network at inference and are listed only when measured.",
        "CIFAR ResNets are timed in their inference form, BatchNorm folded into the convolutions (form in "
        "measurements.csv), single networks and ensemble members alike. Ensembles run their members as one "
        "fused network of grouped convolutions on a GPU and as a loop over the folded members on a CPU, "
        "where that measured faster (batched in measurements.csv); the time of a plain loop over the members "
        "as built is in measurements.csv (inference_time_loop_s).",
        LEGEND, "“not measured”: finished, but not timed on this device."])
    return Table("table2", "Table 2", caption, groups, [(None, lines)],
                 device_notes + run_notes(runs, datasets), pd.DataFrame(records))


# --- files ------------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "device"


def write_table(table: Table, out_dir: Path, stem: str | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or table.name
    paths = []
    for ext, render in (("md", to_markdown), ("tex", to_latex), ("csv", to_csv)):
        path = out_dir / f"{stem}.{ext}"
        path.write_text(render(table), encoding="utf-8")
        paths.append(path)
    return paths


def write_tables(summary: pd.DataFrame, measurements: pd.DataFrame | None, datasets: dict,
                 out_dir: str | Path, select: str = "best", device: str | None = None,
                 holm: bool = False) -> list[Path]:
    """Write table1/tableA1/table2 as .md, .tex and .csv into `out_dir`; return the paths.

    `table2.*` shows `device` (default: the most recently measured one); when the measurements span
    several devices and none is named, each also gets `table2-<device>.*`, so no timing is left unrendered.
    `holm`: Tables 1 and A1 add a paired t-test of each row against the Student, Holm-adjusted per column.
    """
    out_dir = Path(out_dir)
    paths = write_table(table1(summary, datasets, select, holm), out_dir)
    paths += write_table(tableA1(summary, datasets, select, holm), out_dir)
    paths += write_table(table2(summary, measurements, datasets, device), out_dir)
    names = agg.devices(measurements)
    if device is None and len(names) > 1:
        for name in names:
            paths += write_table(table2(summary, measurements, datasets, name), out_dir, f"table2-{_slug(name)}")
    return paths
