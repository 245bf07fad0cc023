"""From run records to one statistic per table row: the arithmetic shared by the tables and the plots.

A *row* is identified by `(key, arch)`: the key is "teacher"/"student" for those roles and the (canonical)
method name otherwise; `arch` is the network the run trained (the summary's `student` column). Keeping the
network in the identity means runs of, say, a ResNet-8 student are never averaged with ResNet-20 runs of
the same method; such rows are printed with the network in brackets and are not compared with the paper.

Only DONE runs contribute numbers. Every other run is *counted* (failed, running, not started) so the
tables can say why a number is absent or rests on fewer seeds, instead of dropping the row.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import pandas as pd

from . import stats
from .paper import canonical_key, display_name, paper_arch, row_order

RowId = tuple[str, str]  # (key, arch); arch "" when the records do not say


@dataclass(frozen=True)
class Stat:
    """Mean and sample std (ddof=1) over the DONE runs of one row, with the count of every other run."""
    mean: float | None = None
    std: float | None = None
    n: int = 0          # DONE runs with a value
    done: int = 0       # DONE runs (some may lack this value)
    chance: int = 0     # DONE runs whose top-1 is at chance level (runner.evaluate.at_chance)
    failed: int = 0
    running: int = 0    # PARTIAL: started, not finished
    new: int = 0        # planned, not started
    lo: float | None = None  # 95 % Student-t interval of the mean, from n >= stats.MIN_N_CI values on
    hi: float | None = None

    @property
    def runs(self) -> int:
        return self.done + self.failed + self.running + self.new


def _arch(value) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def row_key(role, method) -> str:
    return role if role in ("teacher", "student") else canonical_key(str(method))


def split_variant(key: str) -> tuple[str, str]:
    """A row key of runs whose hyperparameters differ from their method's defaults (`--set`), e.g. "st[T=2]",
    -> ("st", "T=2"); any other key -> (key, "")."""
    if key.endswith("]") and "[" in key:
        base, _, variant = key[:-1].partition("[")
        return base, variant
    return key, ""


def with_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with two more columns, `row` (key) and `arch`, identifying the table row of each run. Runs
    with a `variant` (report/collect.py) get a row of their own: key "st[T=2]"."""
    df = summary.copy()
    df["row"] = [row_key(r, m) for r, m in zip(df["role"], df["method"])]
    if "variant" in df:
        df["row"] = [k if not isinstance(v, str) or not v else f"{k}[{v}]" for k, v in zip(df["row"], df["variant"])]
    df["arch"] = [_arch(a) for a in (df["student"] if "student" in df else [None] * len(df))]
    return df


def row_label(row: RowId) -> str:
    key, arch = row
    key, variant = split_variant(key)
    combined = "+" in key and not key.startswith("ens-")  # at+st: "AT+Soft target"
    name = "+".join(display_name(k) for k in key.split("+")) if combined else display_name(key)
    name = f"{name} ({variant})" if variant else name  # "Soft target (T=2)"
    return name if arch in ("", paper_arch(key)) else f"{name} ({arch})"


def comparable_with_paper(row: RowId) -> bool:
    """The paper's numbers describe its networks (ResNet-110 teacher, ResNet-20 otherwise; option-A
    checkpoints of the same depth included); a row trained on another network, or with other hyperparameters
    than the defaults (`split_variant`), gets no difference."""
    key, arch = row
    return not split_variant(key)[1] and arch in ("", paper_arch(key), paper_arch(key) + "_a")


def _natural(text: str) -> list:
    """Sort key reading digit runs as numbers: resnet8 < resnet20 < resnet20_w20 < resnet20_w80 < resnet110."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def ordered_rows(seen: Iterable[RowId], paper_keys: Iterable[str] | None = None,
                 required: Iterable[str] | None = None) -> list[RowId]:
    """The paper's rows in the paper's order (default `paper.row_order()`), each followed by its variants on
    other networks, then the rows the paper lacks in first-seen order. A `required` key (default: every paper
    key) without a run gets a placeholder row, so a planned row that never ran shows as missing instead of
    vanishing."""
    seen = list(dict.fromkeys(seen))
    paper_keys = row_order() if paper_keys is None else list(paper_keys)
    required = set(paper_keys if required is None else required)
    out: list[RowId] = []
    for key in paper_keys:
        variants = [r for r in seen if split_variant(r[0])[0] == key]
        variants.sort(key=lambda r: (not comparable_with_paper(r), r[1] != paper_arch(key), _natural(r[1]),
                                     _natural(split_variant(r[0])[1])))
        if key in required and not any(comparable_with_paper(r) for r in variants):
            variants.insert(0, (key, ""))
        out.extend(variants)
    out.extend(r for r in seen if r[0] not in paper_keys and r not in out)
    return out


def run_counts(status: pd.Series) -> dict[str, int]:
    vc = status.astype(str).str.upper().value_counts()
    return {"done": int(vc.get("DONE", 0)), "failed": int(vc.get("FAILED", 0)),
            "running": int(vc.get("PARTIAL", 0)), "new": int(vc.get("NEW", 0))}


def seed_stat(values: pd.Series, counts: dict[str, int]) -> Stat:
    """Mean ± sample std of the given per-run values (NaN ignored), and the 95 % interval of the mean from
    n >= 3 values on (report/stats.py)."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    n = len(v)
    mean, std = (float(v.mean()) if n else None), (float(v.std(ddof=1)) if n > 1 else None)
    lo, hi = stats.t_interval(mean, std, n) if n >= stats.MIN_N_CI else (None, None)
    return Stat(mean=mean, std=std, n=n, lo=lo, hi=hi, **counts)


def accuracy_stats(runs: pd.DataFrame, column: str) -> dict[RowId, Stat]:
    """Per row, `column` (e.g. best_top1) over its DONE runs. `runs` = `with_rows(...)` of one dataset."""
    out = {}
    for (key, arch), part in runs.groupby(["row", "arch"], sort=False):
        counts = run_counts(part["status"])
        done = part[part["status"].astype(str).str.upper() == "DONE"]
        chance = int(done["at_chance"].astype("boolean").fillna(False).sum()) if "at_chance" in done else 0
        out[(key, arch)] = seed_stat(done[column] if column in done else pd.Series(dtype=float),
                                     {**counts, "chance": chance})
    return out


def seed_values(runs: pd.DataFrame, column: str) -> dict[RowId, dict]:
    """Per row, seed -> `column` of its DONE runs with a value. Several DONE runs of one seed (see
    `duplicate_seeds`, which the tables note) are averaged into that seed's value."""
    if column not in runs:
        return {}
    done = runs[runs["status"].astype(str).str.upper() == "DONE"].copy()
    done["_v"] = pd.to_numeric(done[column], errors="coerce")
    done = done.dropna(subset=["_v", "seed"])
    out: dict[RowId, dict] = {}
    for (key, arch, seed), v in done.groupby(["row", "arch", "seed"], sort=False)["_v"].mean().items():
        out.setdefault((key, arch), {})[_seed_key(seed)] = float(v)
    return out


def _seed_key(seed):
    """Seeds read back from CSV may be floats (a column with a gap): 1.0 and 1 are one seed."""
    try:
        return int(seed) if float(seed).is_integer() else seed
    except (TypeError, ValueError):
        return seed


BASELINE = "student"


PRECISIONS = ("bf16", "fp16")  # a variant naming one of these is a reduced-precision run (report/collect.py)


def baseline_of(row: RowId) -> RowId | None:
    """The row a row is paired with: the student trained alone on the same network and in the same precision
    (its seed's students all start from the same weights); None for the teachers and the baselines themselves."""
    key, arch = row
    base, variant = split_variant(key)
    if base in ("teacher", BASELINE):
        return None
    precision = [p for p in variant.split(", ") if p in PRECISIONS]
    return (f"{BASELINE}[{precision[0]}]" if precision else BASELINE, arch)


def paired_stats(runs: pd.DataFrame, column: str, rows: Iterable[RowId] | None = None
                 ) -> dict[RowId, "stats.PairedDiff"]:
    """Per row with a baseline (`baseline_of`) among `runs` (= `with_rows(...)` of one dataset): `column`
    of the row minus that of the student of its network, paired by seed (report/stats.paired_difference).
    `rows` (default: the rows of `runs`) may name rows without runs here (n = 0). Rows whose network has no
    student row at all are left out."""
    values = seed_values(runs, column)
    present = set(zip(runs["row"], runs["arch"]))
    out = {}
    for row in dict.fromkeys(zip(runs["row"], runs["arch"]) if rows is None else rows):
        base = baseline_of(row)
        if base is None or base not in present:
            continue
        out[row] = stats.paired_difference(values.get(row, {}), values.get(base, {}))
    return out


def duplicate_seeds(runs: pd.DataFrame) -> list[tuple[RowId, int]]:
    """(row, seed) pairs with more than one DONE run: different specs under one method name (e.g. changed
    hyperparameters) would otherwise be averaged as if they were seeds."""
    done = runs[runs["status"].astype(str).str.upper() == "DONE"]
    dup = done.groupby(["row", "arch", "seed"], sort=False).size()
    return [((k, a), int(s)) for (k, a, s), c in dup.items() if c > 1]


# --- inference measurements -------------------------------------------------------------------------

SETTINGS = ["precision", "batch_size", "threads"]


def _when(df: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(df["measured_at"], utc=True, errors="coerce", format="mixed") \
        if "measured_at" in df else pd.Series(pd.NaT, index=df.index)


def devices(measurements: pd.DataFrame | None) -> list[str]:
    """Device names, most recently measured first."""
    if measurements is None or measurements.empty or "device_name" not in measurements:
        return []
    df = measurements.assign(_when=_when(measurements), _dev=measurements["device_name"].astype(str))
    last = df.groupby("_dev")["_when"].max().sort_values(ascending=False, na_position="last")
    return list(last.index)


def pick_device(measurements: pd.DataFrame | None, device: str | None = None
                ) -> tuple[str | None, pd.DataFrame, list[str]]:
    """The measurements of one device (default: the most recently measured one) under one setting.

    Timings from different machines, precisions, batch sizes or thread counts are not comparable, so one
    table shows one of each: the setting of the device's latest measurement; and each run in the form of its
    latest measurement (`form`: BatchNorm folded or as built). Returns (device, rows, notes).
    """
    names = devices(measurements)
    if not names:
        return None, pd.DataFrame(), []
    if device is None:
        device = names[0]
    if device not in names:
        raise ValueError(f"no measurements on device {device!r}; measured devices: {', '.join(names)}")
    df = measurements[measurements["device_name"].astype(str) == device].copy()
    df["_when"] = _when(df)
    notes = []
    present = [c for c in SETTINGS if c in df]
    if present:
        setting = df[present].astype(str)
        latest = setting.loc[df["_when"].fillna(pd.Timestamp.min.tz_localize("UTC")).idxmax()]
        keep = (setting == latest).all(axis=1)
        if not keep.all():
            notes.append(f"{int((~keep).sum())} measurement(s) on this device with another "
                         f"{'/'.join(present)} setting are not shown.")
        df = df[keep]
    if "form" in df:
        # a network re-timed in its inference form (BatchNorm folded) is shown so; its earlier timings as built
        # (recorded before the form existed, hence no value) are another computation, not averaged in
        form = df["form"].fillna("as-built").astype(str)
        when = df["_when"].fillna(pd.Timestamp.min.tz_localize("UTC"))
        newest = form.loc[when.sort_values(kind="stable").index].groupby(df["run_id"]).last()
        keep = form == df["run_id"].map(newest)
        if not keep.all():
            notes.append(f"{int((~keep).sum())} earlier measurement(s) of a network in another form "
                         "(measurements.csv: form) are not shown.")
        df = df[keep]
    return device, df.drop(columns="_when"), notes


def run_timings(measured: pd.DataFrame, summary: pd.DataFrame | None) -> pd.DataFrame:
    """One line per measured run: the median of its repeated timings (robust to a cold first pass or a
    busy machine), with its row identity. The network comes from the summary through the run id."""
    if measured.empty:
        return pd.DataFrame(columns=["run_id", "dataset", "row", "arch", "time_s", "params"])
    arch_of, archs_of_key, row_of = {}, {}, {}
    if summary is not None and not summary.empty and "run_id" in summary:
        rows = with_rows(summary)
        arch_of = dict(zip(rows["run_id"], rows["arch"]))
        row_of = dict(zip(rows["run_id"], rows["row"]))  # a variant's row ("st[T=2]") is known from its run
        for key, arch in zip(rows["row"], rows["arch"]):
            archs_of_key.setdefault(key, set()).add(arch)
    df = measured.copy()
    df["time_s"] = pd.to_numeric(df["inference_time_s"], errors="coerce")
    df["params"] = pd.to_numeric(df.get("params"), errors="coerce")
    per_run = df.groupby("run_id", sort=False).agg(
        dataset=("dataset", "first"), role=("role", "first"), method=("method", "first"),
        time_s=("time_s", "median"), params=("params", "median"))
    per_run = per_run.reset_index()
    per_run["row"] = [row_of.get(rid) or row_key(r, m)
                      for rid, r, m in zip(per_run["run_id"], per_run["role"], per_run["method"])]
    # a run missing from the summary (e.g. an ensemble evaluated on the fly) takes its row's only network
    per_run["arch"] = [arch_of[rid] if rid in arch_of else
                       (next(iter(archs_of_key[k])) if len(archs_of_key.get(k, ())) == 1 else "")
                       for rid, k in zip(per_run["run_id"], per_run["row"])]
    return per_run[["run_id", "dataset", "row", "arch", "time_s", "params"]]
