"""Where a sweep is, in words a person reads: "run 3 of 41, epoch 5 of 200, ETA run 4m10s, sweep ~1h05m".

A launcher numbers the runs it will execute (`Sweep`: plan order, runs already DONE not counted) and hands each
job its `position` (a plain dict in `RunEnv.progress`, so it crosses into worker processes and SLURM jobs). The
run adds what only it knows: its epoch, its pace and so its own ETA. The sweep's ETA is the run's remaining time
plus the run-epochs not started yet of runs that train the same network, at this run's pace per run-epoch (a
cohort of m runs does m run-epochs per epoch), divided by the launcher's parallel slots: an estimate that
assumes those runs cost what this one does, so it is marked "~". Runs of other networks are counted, not
timed ("+ 25 runs of other networks"): a ResNet-110 teacher's pace says little about its ResNet-20 students.
SLURM jobs run in the queue's order and number: they get no sweep ETA.
Nothing here changes a result.
"""
from __future__ import annotations

import time

from .folder import RunFolder, State


def planned_epochs(spec) -> int:
    """A run's epochs as planned (what a sweep ETA counts; a staged method's extra stages are not included)."""
    return spec.protocol.epochs if spec.kind == "train" else 0


class Sweep:
    """The runs a launcher will execute, numbered in plan order; the position of each job it starts."""

    def __init__(self, runs, results_dir: str, slots: int | None):
        todo = [r for r in runs if RunFolder(results_dir, r.run_id).state() != State.DONE]
        self.numbers = {r.run_id: i + 1 for i, r in enumerate(todo)}
        self.epochs = {r.run_id: planned_epochs(r.spec) for r in todo}
        self.network = {r.run_id: r.spec.student for r in todo}
        self.started: set[str] = set()
        self.slots = slots

    def position(self, job) -> dict:
        """The `RunEnv.progress` of a job (a list of planned runs) starting now."""
        ids = [r.run_id for r in job]
        self.started.update(ids)
        networks = {r.spec.student for r in job}
        later = [rid for rid, e in self.epochs.items() if rid not in self.started and e > 0]
        after = sum(self.epochs[rid] for rid in later if self.network[rid] in networks)
        others = sum(self.network[rid] not in networks for rid in later)
        return {"total": len(self.numbers), "numbers": {rid: self.numbers[rid] for rid in ids if rid in self.numbers},
                "share": len(ids), "epochs_after": after if self.slots else None, "slots": self.slots,
                "others_after": others}


    def numbering(self) -> dict:
        """The `RunEnv.progress` of every job at once (SLURM: the queue decides the order, no ETA for the sweep)."""
        return {"total": len(self.numbers), "numbers": dict(self.numbers), "share": 1, "epochs_after": None,
                "slots": None}


def duration(seconds: float) -> str:
    """3725 -> '1h02m', 250 -> '4m10s', 35.2 -> '35s'."""
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Pace:
    """A run's own clock: its wall time per epoch since this process took it up (evaluation and checkpoints
    included, and in a cohort the other members' work too: what the run's end really waits for)."""

    def __init__(self, epoch: int):
        self.t0, self.epoch0 = time.monotonic(), epoch

    def where(self, run_id: str, epoch: int, total: int, position: dict | None) -> str:
        """'run k of n, epoch e of E' and the ETAs, after `epoch` epochs of `total` are done."""
        head = f"epoch {epoch} of {total}"
        number = (position or {}).get("numbers", {}).get(run_id)
        if number is not None:
            head = f"run {number} of {position['total']}, {head}"
        done = epoch - self.epoch0
        if done <= 0:
            return head
        per_epoch = (time.monotonic() - self.t0) / done
        run_left = per_epoch * (total - epoch)
        text = f"{head}, ETA run {duration(run_left)}" if epoch < total else head
        if position and position.get("slots") and (position.get("epochs_after") or position.get("others_after")):
            per_run_epoch = per_epoch / max(1, position.get("share", 1))
            sweep_left = run_left + (position.get("epochs_after") or 0) * per_run_epoch / position["slots"]
            others = position.get("others_after") or 0
            runs = f"{others} run{'s' if others > 1 else ''} of other networks"
            if sweep_left >= 0.5:
                text += f", sweep ~{duration(sweep_left)}" + (f" + {runs}" if others else "")
            else:  # nothing of this network left to time: only what follows
                text += f", then {runs}"
        return text
