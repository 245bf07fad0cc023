"""Figures from the run records: accuracy against model size and against inference time, training curves.

Sized for a paper: the scatter plots are one column wide (3.3 in), the curve grid one page wide (7 in),
every text at 7 pt or more, saved as PNG (200 dpi, to look at) and PDF (vector, fonts embedded as TrueType
so the text stays editable). Figures are built on their own Agg canvas, never through pyplot, so plotting
neither changes the caller's backend nor keeps figures alive in pyplot's global registry.

Every trained row is a labelled point: the 20 methods share the student's network, so in the size plot
they stack in one column around 0.27 M; the labels are spread apart vertically with leader lines instead
of being left to overlap. A row without a finished run cannot be drawn; it is printed as a note.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from methods.ensembles import ENSEMBLES, PREFIX

from . import aggregate as agg
from .paper import DATASETS, display_name, paper_methods, row_order

COLUMN_WIDTH = 3.3   # in: one column of a two-column paper
PAGE_WIDTH = 7.0     # in: the full text width
FONT_PT = 7
DPI = 200
STYLE = {"font.size": FONT_PT, "axes.labelsize": FONT_PT, "axes.titlesize": FONT_PT,
         "xtick.labelsize": FONT_PT, "ytick.labelsize": FONT_PT, "legend.fontsize": FONT_PT,
         "axes.linewidth": 0.6, "xtick.major.width": 0.6, "ytick.major.width": 0.6,
         "pdf.fonttype": 42, "ps.fonttype": 42}
KINDS = {  # kind -> (legend label, marker, colour)
    "teacher": ("Teacher", "s", "black"), "student": ("Student", "o", "0.45"),
    "method": ("KD method", "o", "tab:blue"), "ensemble": ("Ensemble", "D", "tab:red"),
    "other": ("Other", "^", "tab:green")}


def kind_of(key: str) -> str:
    if key in ("teacher", "student"):
        return key
    if key in paper_methods():
        return "method"
    return "ensemble" if key in ENSEMBLES or key.startswith(PREFIX) else "other"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(text)).strip("-") or "data"


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    png, pdf = out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"
    fig.savefig(png, dpi=DPI)
    fig.savefig(pdf, metadata={"CreationDate": None})  # no timestamp: same records, same file
    return [png, pdf]


# --- the points -------------------------------------------------------------------------------------

def accuracy_points(summary: pd.DataFrame, label: str, x: str = "params",
                    measurements: pd.DataFrame | None = None, select: str = "best",
                    device: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One point per row of dataset `label`: top-1 mean ± std over DONE runs against params (M) or
    inference time (s, mean ± std of per-run medians on one device). Returns (points, notes on rows that
    could not be drawn)."""
    runs = agg.with_rows(summary[summary["dataset"] == label])
    acc = agg.accuracy_stats(runs, f"{select}_top1")
    if x == "time":
        _, measured, _ = agg.pick_device(measurements, device)
        timings = agg.run_timings(measured, summary)
        timings = timings[timings["dataset"] == label]
    rows = agg.ordered_rows(list(acc), row_order(), required=())
    points, notes = [], []
    for row in rows:
        s = acc.get(row, agg.Stat())
        if not s.n:
            notes.append(f"{agg.row_label(row)}: no finished run")
            continue
        if x == "params":
            mine = runs[(runs["row"] == row[0]) & (runs["arch"] == row[1])
                        & (runs["status"].astype(str).str.upper() == "DONE")]
            xs = pd.to_numeric(mine["params"], errors="coerce").dropna() / 1e6
        else:
            xs = timings[(timings["row"] == row[0]) & (timings["arch"] == row[1])]["time_s"].dropna()
        if xs.empty:
            notes.append(f"{agg.row_label(row)}: no {'parameter count' if x == 'params' else 'timing'}")
            continue
        points.append({"row": row[0], "arch": row[1], "name": agg.row_label(row), "kind": kind_of(row[0]),
                       "x": float(xs.mean()), "xerr": float(xs.std(ddof=1)) if len(xs) > 1 else 0.0,
                       "y": s.mean, "yerr": s.std or 0.0, "n": s.n})
    return pd.DataFrame(points), notes


# --- label placement --------------------------------------------------------------------------------

def _overlap(a, b) -> float:
    """Area shared by two boxes (x0, y0, x1, y1)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _spread(desired: np.ndarray, gap: float, low: float, high: float) -> np.ndarray:
    """Positions as close as possible to `desired` (sorted ascending), at least `gap` apart and in the
    same order, kept inside [low, high] when they fit: push up, recentre, then clamp the block."""
    pos = desired.astype(float).copy()
    for i in range(1, len(pos)):
        pos[i] = max(pos[i], pos[i - 1] + gap)
    pos -= pos.mean() - desired.mean()
    if pos[-1] > high:
        pos -= pos[-1] - high
    if pos[0] < low:
        pos += low - pos[0]
    return pos


def label_points(fig: Figure, ax, xs, ys, names, obstacles=()) -> None:
    """Label every point, keeping labels apart and readable.

    Points in one column (the methods share the student's size, and nearly its time) get their labels
    stacked beside the column in the points' own vertical order, so leader lines never cross; a tall
    column puts every other label on the left to halve the stack. Lone points then take the first spot
    (right, left, a line up or down...) that covers no label, point, legend (`obstacles`) or axes edge.
    """
    renderer = fig.canvas.get_renderer()
    px = ax.transData.transform(np.column_stack([xs, ys]))
    line = FONT_PT * 1.2 * fig.dpi / 72.0        # one text line, in pixels
    gap = 0.45 * line
    box = ax.get_window_extent(renderer)
    frame = (box.x0, box.y0, box.x1, box.y1)
    marks = [(x - 0.3 * line, y - 0.3 * line, x + 0.3 * line, y + 0.3 * line) for x, y in px]
    placed = [tuple(o) for o in obstacles]
    widths = []
    for name in names:
        probe = ax.text(0, 0, name, fontsize=FONT_PT)
        widths.append(probe.get_window_extent(renderer).width)
        probe.remove()

    def put(i: int, cand: tuple, side: str, moved: bool) -> None:
        anchor = (cand[0] if side == "right" else cand[2], (cand[1] + cand[3]) / 2)
        ax.annotate(names[i], xy=(xs[i], ys[i]), xytext=tuple(ax.transData.inverted().transform(anchor)),
                    textcoords="data", ha="left" if side == "right" else "right", va="center",
                    fontsize=FONT_PT, annotation_clip=False,
                    arrowprops=dict(arrowstyle="-", lw=0.4, color="0.6", shrinkA=1, shrinkB=2) if moved else None)
        placed.append(cand)

    def box_at(i: int, side: str, x: float, y: float) -> tuple:
        x0 = x + gap if side == "right" else x - gap - widths[i]
        return (x0, y - line / 2, x0 + widths[i], y + line / 2)

    # columns: points closer than a line horizontally
    order = sorted(range(len(names)), key=lambda i: px[i, 0])
    columns, current = [], [order[0]] if order else []
    for i in order[1:]:
        if px[i, 0] - px[current[-1], 0] < 1.5 * line:
            current.append(i)
        else:
            columns.append(current)
            current = [i]
    if current:
        columns.append(current)
    singles = [c[0] for c in columns if len(c) == 1]
    def cost(cand: tuple, own: set) -> float:
        inside = cand[0] >= frame[0] and cand[2] <= frame[2] and cand[1] >= frame[1] and cand[3] <= frame[3]
        return (sum(_overlap(cand, b) for b in placed)
                + sum(_overlap(cand, m) for j, m in enumerate(marks) if j not in own)
                + (0 if inside else (cand[2] - cand[0]) * line))

    def stack(col: list[int], sides: dict) -> list[tuple]:
        out = []
        for side in ("right", "left"):
            members = [i for i in col if sides[i] == side]
            if members:
                x = px[col, 0].max() if side == "right" else px[col, 0].min()
                ys_ = _spread(px[members, 1], line, frame[1] + line / 2, frame[3] - line / 2)
                out += [(i, box_at(i, side, x, y), side, abs(y - px[i, 1]) > 0.3 * line or abs(x - px[i, 0]) > line)
                        for i, y in zip(members, ys_)]
        return out

    for col in sorted((c for c in columns if len(c) > 1), key=len, reverse=True):
        col = sorted(col, key=lambda i: px[i, 1])
        if len(col) * line > 0.5 * (frame[3] - frame[1]):  # tall: every other label on the left
            options = [{i: ("right" if r % 2 == 0 else "left") for r, i in enumerate(col)}]
        else:  # all right, all left, or each label on its own better side
            own = {i: min(("right", "left"), key=lambda side: cost(
                box_at(i, side, px[col, 0].max() if side == "right" else px[col, 0].min(), px[i, 1]), set(col)))
                for i in col}
            options = [{i: "right" for i in col}, {i: "left" for i in col}, own]
        layouts = [stack(col, sides) for sides in options]
        best = min(layouts, key=lambda lay: sum(cost(c, set(col)) for _, c, _, _ in lay))
        for i, cand, side, moved in best:
            put(i, cand, side, moved)
    for i in singles:
        x, y = px[i]
        best = None
        for k in [0, *[s * j for j in range(1, 12) for s in (1, -1)]]:
            for side in ("right", "left"):
                cand = box_at(i, side, x, y + k * line)
                c = cost(cand, {i}) + 1e-3 * abs(k) + (1e-4 if side == "left" else 0)
                if best is None or c < best[0]:
                    best = (c, cand, side, k)
            if best[0] < 1e-2:
                break
        put(i, best[1], best[2], best[3] != 0)


def _largest_column(xs: np.ndarray, rel: float = 0.06) -> int:
    """How many points share (about) one x: sets the figure height so their stacked labels fit."""
    xs = np.sort(np.asarray(xs, dtype=float))
    best, start = 1, 0
    for i in range(len(xs)):
        while xs[i] - xs[start] > rel * max(abs(xs[i]), 1e-9):
            start += 1
        best = max(best, i - start + 1)
    return best


def plot_accuracy(points: pd.DataFrame, x: str, title: str, select: str = "best") -> Figure:
    """Top-1 against params (log axis: 0.27 M to 1.7 M spans a factor of six) or inference time."""
    import matplotlib
    with matplotlib.rc_context(STYLE):
        # tall enough for the labels of the largest column, and for many scattered points (~0.9 line each)
        lines = max(_largest_column(points["x"].to_numpy()), int(0.9 * len(points)))
        height = min(6.5, max(2.6, 1.0 + 0.13 * lines))
        fig = _new_figure(COLUMN_WIDTH, height)
        # fixed margins (in inches) rather than a layout engine: label positions are computed in display
        # coordinates and must not move afterwards
        fig.subplots_adjust(left=0.5 / COLUMN_WIDTH, right=1 - 0.1 / COLUMN_WIDTH,
                            bottom=0.42 / height, top=1 - 0.22 / height)
        ax = fig.add_subplot(1, 1, 1)
        for kind, (legend, marker, colour) in KINDS.items():
            part = points[points["kind"] == kind]
            if part.empty:
                continue
            ax.errorbar(part["x"], part["y"], yerr=part["yerr"], xerr=part["xerr"] if x == "time" else None,
                        fmt=marker, ms=3.2, color=colour, ecolor=colour, elinewidth=0.6, capsize=1.5,
                        label=legend, zorder=3)
        if x == "params":
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("Parameters (millions)")
            lo, hi = points["x"].min(), points["x"].max()
            ax.set_xlim(lo / 2.0, hi * 2.6)  # room for labels on both sides
        else:
            ax.set_xlabel("Inference time of the test set (s)")
            lo, hi = (points["x"] - points["xerr"]).min(), (points["x"] + points["xerr"]).max()
            pad = max(hi - lo, hi * 0.1) * 0.3
            ax.set_xlim(max(0.0, lo - pad), hi + pad)
        ylo, yhi = (points["y"] - points["yerr"]).min(), (points["y"] + points["yerr"]).max()
        ypad = max(yhi - ylo, 0.5) * 0.08
        ax.set_ylim(ylo - ypad, yhi + ypad)
        ax.set_ylabel(f"Top-1 accuracy (%), {select} epoch")
        ax.set_title(title, loc="left")
        ax.grid(True, lw=0.3, color="0.85")
        legend = ax.legend(loc="lower right", frameon=True, framealpha=0.9, handletextpad=0.3, borderpad=0.3,
                           labelspacing=0.2)
        lb = legend.get_window_extent(fig.canvas.get_renderer())
        label_points(fig, ax, points["x"].to_numpy(), points["y"].to_numpy(), list(points["name"]),
                     obstacles=[(lb.x0, lb.y0, lb.x1, lb.y1)])
    return fig


def plot_curves(curves: dict[str, list[list[float]]], title: str | None = None) -> Figure:
    """One small panel per method (teacher/student included when given): each seed's test top-1 per
    epoch as a thin line and their mean (over the seeds that reached that epoch) as a thick one. Shared
    axes, so panels compare at a glance."""
    import matplotlib
    order = row_order()
    keys = sorted(curves, key=lambda k: (order.index(k) if k in order else len(order), list(curves).index(k)))
    ncols = min(4, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    width = COLUMN_WIDTH if ncols == 1 else PAGE_WIDTH
    height = 0.45 + 1.25 * nrows
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(width, height)
        axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
        for ax in axes.flat[len(keys):]:
            ax.set_visible(False)
        for ax, key in zip(axes.flat, keys):
            seeds = [np.asarray(c, dtype=float) for c in curves[key] if len(c)]
            colour = KINDS[kind_of(key)][2]
            if seeds:
                grid = np.full((len(seeds), max(len(c) for c in seeds)), np.nan)
                for i, c in enumerate(seeds):
                    grid[i, :len(c)] = c
                    ax.plot(np.arange(1, len(c) + 1), c, lw=0.5, alpha=0.45, color=colour)
                with np.errstate(all="ignore"):
                    mean = np.nanmean(grid, axis=0)
                ax.plot(np.arange(1, grid.shape[1] + 1), mean, lw=1.1, color=colour)
            ax.set_title(f"{display_name(key)} (n={len(seeds)})", loc="left", pad=2)
            ax.grid(True, lw=0.3, color="0.85")
        for ax in axes[-1, :]:
            ax.set_xlabel("Epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in axes[:, 0]:
            ax.set_ylabel("Test top-1 (%)")
        if title:
            fig.suptitle(title, fontsize=FONT_PT, x=0.01, ha="left")
        fig.set_layout_engine("constrained")
    return fig


# --- paired differences from the student ------------------------------------------------------------

# the columns each table shows of a dataset, by the dataset's key (report/tables.py)
TABLE_METRICS = {"table1": {"cifar10": (1, 2), "cifar100": (1, 5)},
                 "tableA1": {"cifar10": (1, 2, 3, 4, 5), "cifar100": (1, 2, 3, 4, 5)}}


def dataset_key(label: str) -> str | None:
    """"cifar10"/"cifar100" for a data label (`cifar100-synthetic-n1024-512`, `cifar10-<fingerprint>`)."""
    m = re.match(r"(cifar100|cifar10)(?![0-9])", str(label))
    return m.group(1) if m else None


def paired_points(summary: pd.DataFrame, label: str, metrics: tuple[int, ...] = (1,),
                  select: str = "best") -> pd.DataFrame:
    """One line per (row, top-k) of dataset `label` with >= 2 seeds paired with the student of its network:
    the mean difference row − student and its 95 % interval (report/stats.py: t with n-1 df), n, and
    whether the interval excludes 0."""
    runs = agg.with_rows(summary[summary["dataset"] == label])
    out = []
    for k in metrics:
        for row, d in agg.paired_stats(runs, f"{select}_top{k}").items():
            if d.lo is None:
                continue
            out.append({"row": row[0], "arch": row[1], "name": agg.row_label(row), "kind": kind_of(row[0]),
                        "metric": f"top{k}", "k": k, "mean": d.mean, "lo": d.lo, "hi": d.hi, "n": d.n,
                        "unpaired": d.unpaired, "excludes_zero": d.excludes_zero})
    return pd.DataFrame(out, columns=["row", "arch", "name", "kind", "metric", "k", "mean", "lo", "hi", "n",
                                      "unpaired", "excludes_zero"])


def plot_paired(points: pd.DataFrame, title: str, select: str = "best") -> Figure:
    """One panel per top-k: each row's mean paired difference from the student (dot) with its 95 % interval
    (bar), rows sorted by the first panel's difference (largest on top) and shared by all panels, the zero
    line drawn; a filled dot marks an interval that excludes 0, an open one an interval that contains it."""
    import matplotlib
    from matplotlib.lines import Line2D
    ks = sorted(points["k"].unique())
    first = points[points["k"] == ks[0]].set_index("name")["mean"]
    names = list(dict.fromkeys(points["name"]))
    # sorted by the first metric's difference; rows without it after, by their own first difference
    names.sort(key=lambda n: (n not in first.index, -(first.get(n, points[points["name"] == n]["mean"].iloc[0]))))
    ypos = {n: len(names) - 1 - i for i, n in enumerate(names)}
    width = COLUMN_WIDTH if len(ks) <= 2 else PAGE_WIDTH
    height = min(9.0, 1.3 + 0.16 * len(names))
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(width, height)
        axes = fig.subplots(1, len(ks), sharey=True, squeeze=False)[0]
        for ax, k in zip(axes, ks):
            part = points[points["k"] == k]
            ax.axvline(0.0, color="0.3", lw=0.6, zorder=1)
            for _, p in part.iterrows():
                colour = KINDS[p["kind"]][2]
                y = ypos[p["name"]]
                ax.plot([p["lo"], p["hi"]], [y, y], color=colour, lw=0.9, solid_capstyle="butt", zorder=2)
                ax.plot([p["mean"]], [y], marker="o", ms=3.4, color=colour, zorder=3,
                        markerfacecolor=colour if p["excludes_zero"] else "white", markeredgewidth=0.8)
            lo, hi = min(0.0, part["lo"].min()), max(0.0, part["hi"].max())
            pad = max(hi - lo, 0.2) * 0.08
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_title(f"top-{k}", loc="left", pad=2)
            ax.grid(True, axis="x", lw=0.3, color="0.85")
        axes[0].set_yticks(range(len(names)))
        axes[0].set_yticklabels(list(reversed(names)))
        axes[0].set_ylim(-0.7, len(names) - 0.3)
        handles = [Line2D([], [], marker="o", ls="-", lw=0.9, color="0.3", ms=3.4,
                          label="mean, 95 % CI excludes 0"),
                   Line2D([], [], marker="o", ls="-", lw=0.9, color="0.3", markerfacecolor="white", ms=3.4,
                          label="95 % CI contains 0")]
        # the legend's title is the x axis label shared by the panels
        fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False, handletextpad=0.4,
                   columnspacing=1.2, title=f"accuracy − Student's, same seed (pp), {select} epoch", title_fontsize=FONT_PT)
        fig.suptitle(title, fontsize=FONT_PT, x=0.01, ha="left")
        fig.set_layout_engine("constrained")
    return fig


# --- files ------------------------------------------------------------------------------------------

def _write_paired(summary: pd.DataFrame, label: str, title: str, out_dir: Path, select: str) -> list[Path]:
    """`paired_<table>_<label>`: per table, its columns of this dataset as paired differences from the
    student, when some row has >= 2 paired seeds (otherwise there is no interval to draw)."""
    key = dataset_key(label)
    paths = []
    for table, by_key in TABLE_METRICS.items():
        metrics = by_key.get(key, (1, 2, 3, 4, 5) if table == "tableA1" else ())
        if not metrics:
            continue
        pts = paired_points(summary, label, metrics, select)
        if pts.empty:
            print(f"note: paired_{table}_{label}: no row has 2 seeds paired with the student, skipped")
            continue
        name = {"table1": "Table 1", "tableA1": "Table A1"}[table]
        fig = plot_paired(pts, f"{title}, {name}: difference from the Student, paired by seed", select)
        paths += _save(fig, out_dir, f"paired_{table}_{_slug(label)}")
    return paths


def write_plots(summary: pd.DataFrame, measurements: pd.DataFrame | None,
                curves: dict[str, list[list[float]]] | None, out_dir: str | Path,
                select: str = "best", device: str | None = None, curves_title: str | None = None) -> list[Path]:
    """Per dataset label in `summary`: `acc_vs_params_<label>` and, when timed, `acc_vs_time_<label>`;
    `paired_table1_<label>` and `paired_tableA1_<label>` (each row's paired difference from the student
    with its 95 % interval, for the columns of that table) when some row has >= 2 paired seeds;
    plus `training_curves` from `curves` (method -> one per-epoch top-1 list per seed). PNG and PDF each.
    Whatever cannot be drawn is reported on stdout and skipped; the other figures are still written."""
    out_dir = Path(out_dir)
    paths: list[Path] = []
    labels = list(dict.fromkeys(summary["dataset"])) if summary is not None and not summary.empty else []
    if not labels:
        print("note: no runs in the summary: no accuracy plots")
    dev = agg.devices(measurements)
    device = device or (dev[0] if dev else None)
    for label in labels:
        title = DATASETS.get(label, label)
        for x, stem in (("params", "acc_vs_params"), ("time", "acc_vs_time")):
            if x == "time" and device is None:
                print(f"note: no inference measurements: acc_vs_time_{label} skipped")
                continue
            pts, notes = accuracy_points(summary, label, x, measurements, select, device)
            if notes:
                print(f"note: {stem}_{label}: not drawn: {'; '.join(notes)}")
            if pts.empty:
                print(f"note: {stem}_{label}: nothing to draw, skipped")
                continue
            fig = plot_accuracy(pts, x, title + (f", {device}" if x == "time" else ""), select)
            paths += _save(fig, out_dir, f"{stem}_{_slug(label)}")
        paths += _write_paired(summary, label, title, out_dir, select)
    if curves:
        paths += _save(plot_curves(curves, curves_title), out_dir, "training_curves")
    else:
        print("note: no training curves given: training_curves skipped")
    return paths
