"""`collect`: rebuild `results/<data>/summary.csv` from the run folders (never appended to), one row per run."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

from data import dataset_info
from runner.evaluate import at_chance
from runner.folder import State, readable_runs
from runner.measure import read_measurements
from runner.spec import member_run_id

COLUMNS = ["dataset", "method", "role", "seed", "student", "teacher", "status",
           *[f"best_top{k}" for k in range(1, 6)], *[f"last_top{k}" for k in range(1, 6)],
           "best_epoch", "epochs", "params", "extra_params", "train_time_s", "run_id", "error", "at_chance"]
# how a run's hyperparameters differ from its method's defaults ("T=2", empty for the defaults), from the run's
# info (runner/plan.py `variant_label`): the tables name the row "Soft target (T=2)". Written after COLUMNS.
VARIANT = "variant"


def _variant(info: dict, spec) -> str:
    """The run's row variant: its hyperparameters' difference from the defaults, and its precision when not
    fp32 ("T=2, bf16"): a bf16 run never shares a row, a mean or a paired baseline with fp32 runs."""
    value = info.get(VARIANT)
    parts = [value if isinstance(value, str) else "", reduced_precision(spec)]
    return ", ".join(p for p in parts if p)


def reduced_precision(spec) -> str:
    precision = getattr(spec.protocol, "precision", "fp32")
    return "" if precision == "fp32" else precision


def run_rows(results_dir: str | Path) -> pd.DataFrame:
    rows = []
    for folder, spec, info in readable_runs(results_dir):
        state = folder.state()
        row = {"dataset": spec.data.label, "method": spec.method or spec.kind, "role": info.get("role", "method"),
               "seed": spec.seed, "student": spec.student, "teacher": (spec.teacher or {}).get("arch"),
               "status": state.value, "run_id": folder.run_id, VARIANT: _variant(info, spec)}
        final = folder.read_final() if state in (State.DONE, State.FAILED) else None
        if final is not None:
            row.update({k: v for k, v in final.items() if k in COLUMNS and k not in ("status", "dataset")})
            if state == State.DONE and "best_top1" in final:
                row["at_chance"] = at_chance(final["best_top1"], dataset_info(spec.data.dataset).num_classes)
        elif state == State.PARTIAL:
            row["epochs"] = len(folder.read_epochs())
        rows.append(row)
        # networks a run delivers besides its main one (e.g. OEC-KD's students) get rows of their own
        for key, member in ((final or {}).get("members") or {}).items():
            entry = {**row, "method": f"{spec.method}-{key}", "run_id": member_run_id(folder.run_id, key),
                     **{k: v for k, v in member.items() if k in COLUMNS}, "role": "member"}
            if "best_top1" in member:
                entry["at_chance"] = at_chance(member["best_top1"], dataset_info(spec.data.dataset).num_classes)
            rows.append(entry)
    return pd.DataFrame(rows, columns=[*COLUMNS, VARIANT])


def measurement_rows(results_dir: str | Path) -> pd.DataFrame:
    """Every measurement of every finished run, on every machine it was measured on."""
    rows = [m for folder, _, _ in readable_runs(results_dir) for m in read_measurements(folder.path)]
    return pd.DataFrame(rows)


def training_curves(results_dir: str | Path, label: str) -> dict[str, list[list[float]]]:
    """method -> one list of per-epoch test top-1 per seed, for the training-curve plots."""
    curves: dict[str, list[list[float]]] = {}
    for folder, spec, info in readable_runs(results_dir):
        if spec.data.label != label or spec.kind != "train" or folder.state() != State.DONE:
            continue
        name = {"teacher": "teacher", "student": "student"}.get(info.get("role"), spec.method)
        if _variant(info, spec):
            name += f"[{_variant(info, spec)}]"  # the row key of report/aggregate.py `with_rows`
        curves.setdefault(name, []).append([r["test"]["top1"] for r in folder.read_epochs()])
    return curves


_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*")


def label_folder(results_dir: str | Path, label: str) -> Path:
    """`results/<label>/`, for a label that is one plain folder name: a label read from a record (or given on
    the command line) never leads outside the results folder."""
    if not isinstance(label, str) or not _LABEL.fullmatch(label) or ".." in label:
        raise ValueError(f"data label {label!r} is not a plain folder name")
    return Path(results_dir) / label


def write_summaries(results_dir: str | Path) -> dict[str, Path]:
    """`results/<data>/summary.csv` and `measurements.csv`, rebuilt from the run folders."""
    df = run_rows(results_dir)
    meas = measurement_rows(results_dir)
    written = {}
    for label, part in df.groupby("dataset", sort=True):
        try:
            out = label_folder(results_dir, label) / "summary.csv"
        except ValueError as e:
            print(f"skipped: {len(part)} run(s) ({', '.join(part.run_id)}): {e}", file=sys.stderr)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        part.sort_values(["method", "seed", "student"]).to_csv(out, index=False)
        if not meas.empty:
            meas[meas.dataset == label].to_csv(out.with_name("measurements.csv"), index=False)
        written[label] = out
    return written


def markdown_overview(df: pd.DataFrame) -> str:
    """A first look: one line per (dataset, method, student), mean over seeds, with n and status counts."""
    if df.empty:
        return "(no runs)"
    if VARIANT in df:  # a variant is its own line: "st[T=2]"
        df = df.assign(method=[m if not isinstance(v, str) or not v else f"{m}[{v}]"
                               for m, v in zip(df["method"], df[VARIANT])])
    done = df[df.status == "DONE"]
    groups = df.groupby(["dataset", "method", "student"], sort=False)
    lines = []
    for (label, method, student), part in groups:
        d = done[(done.dataset == label) & (done.method == method) & (done.student == student)]
        fmt = lambda col: (f"{d[col].mean():.2f} ± {d[col].std(ddof=1):.2f}" if len(d) > 1
                           else f"{d[col].mean():.2f}" if len(d) else "-")
        lines.append({"data": label, "method": method, "model": student, "n": len(d),
                      "best top-1": fmt("best_top1"), "last top-1": fmt("last_top1"),
                      "best top-5": fmt("best_top5"),
                      "status": ", ".join(f"{s} {c}" for s, c in part.status.value_counts().items())})
    return pd.DataFrame(lines).to_markdown(index=False)
