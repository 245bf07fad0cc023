"""A run folder `results/runs/<run_id>/` and the state that follows from its files.

NEW: no folder. PARTIAL: started (spec.json, maybe ckpt.pt). DONE: final.json with status 'done'.
FAILED: final.json with status 'failed' (the reason inside). final.json is written last and atomically, so
it is the done marker; the summary is always rebuilt from these folders.
"""
from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path

from core.errors import UserError
from data import DATASETS

from .spec import RunSpec
from .store import CorruptFile, read_json_checked, write_atomic

# Version of the run-folder layout, recorded in every spec.json. 2: run kinds explicit in the spec; 3: the data's
# fingerprint in the spec (run ids changed both times). A folder of another version is reported and skipped,
# never read as if it were of this one.
FORMAT_VERSION = 3


class UnreadableFolder(Exception):
    """A run folder whose spec.json is damaged, or was written by another version of kd-bench."""


class State(str, Enum):
    NEW = "NEW"
    PARTIAL = "PARTIAL"
    DONE = "DONE"
    FAILED = "FAILED"


class RunFolder:
    def __init__(self, results_dir: str | Path, run_id: str):
        self.run_id = run_id
        self.path = Path(results_dir) / "runs" / run_id

    spec_json = property(lambda self: self.path / "spec.json")
    epochs = property(lambda self: self.path / "epochs.jsonl")
    ckpt = property(lambda self: self.path / "ckpt.pt")
    final = property(lambda self: self.path / "final.json")
    model = property(lambda self: self.path / "model.pt")            # last-epoch weights, the deliverable
    best_model = property(lambda self: self.path / "best.pt")        # weights of the best test top-1 epoch
    log = property(lambda self: self.path / "log.txt")
    failures = property(lambda self: self.path / "failures.json")  # every failure, kept across retries
    slurm_json = property(lambda self: self.path / "slurm.json")    # the SLURM jobs that ran this run

    def read_spec(self) -> tuple[RunSpec, dict]:
        """The spec and the unhashed run information (e.g. where a published teacher lives)."""
        try:
            d = json.loads(self.spec_json.read_text())
        except (OSError, ValueError) as e:
            raise UnreadableFolder(f"run folder {self.path}: spec.json is damaged ({e}); delete the folder to "
                                   "run it again") from None
        version = d.get("format", 1) if isinstance(d, dict) else None
        if version != FORMAT_VERSION:
            raise UnreadableFolder(f"run folder {self.path} was written by another version of kd-bench (format "
                                   f"{version}, this one reads {FORMAT_VERSION}); its results are not mixed "
                                   "with these: move it to another results folder or delete it")
        try:
            spec = RunSpec.from_dict(d["spec"])
            if spec.data.dataset not in DATASETS or spec.data.source not in ("disk", "synthetic"):
                raise ValueError(f"unknown data {spec.data.dataset!r} from {spec.data.source!r}")
            if spec.run_id != self.run_id:
                raise ValueError(f"its spec hashes to {spec.run_id}, not to the folder's name")
            info = d.get("info", {})
            if not isinstance(info, dict):
                raise ValueError("its info is not a mapping")
            return spec, info
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UnreadableFolder(f"run folder {self.path}: spec.json does not hold a valid spec ({e}); "
                                   "delete the folder to run it again") from None

    def write_spec(self, spec: RunSpec, info: dict) -> dict:
        """Create the folder and record its spec (PARTIAL from now on); returns the run information, merged
        with what an earlier start recorded. A folder holding another spec is damaged, never overwritten."""
        self.path.mkdir(parents=True, exist_ok=True)
        record = {"format": FORMAT_VERSION, "run_id": spec.run_id, "spec": spec.to_dict(), "info": info}
        if self.spec_json.exists():
            try:
                old_spec, old_info = self.read_spec()
            except UnreadableFolder as e:
                raise UserError(str(e)) from None
            if old_spec.to_dict() != record["spec"]:
                raise UserError(f"{self.spec_json} holds another spec: the results folder is damaged")
            record["info"] = {**old_info, **info}
        write_atomic(self.spec_json, json.dumps(record, indent=1, sort_keys=True).encode())
        return record["info"]

    def read_final(self) -> dict | None:
        if not self.final.exists():
            return None
        try:
            return read_json_checked(self.final)
        except CorruptFile:
            return None

    def final_problem(self) -> str | None:
        """Why an existing final.json cannot be trusted (truncated, damaged), or None."""
        if not self.final.exists():
            return None
        try:
            read_json_checked(self.final)
        except CorruptFile as e:
            return f"final.json is damaged ({e})"
        return None

    def read_failures(self) -> list[dict]:
        """Earlier failures of this run ({error, retryable, time}), oldest first."""
        if not self.failures.exists():
            return []
        try:
            return read_json_checked(self.failures).get("failures", [])
        except CorruptFile:
            return [{"error": "failures.json is damaged", "retryable": True}]

    def clean_temporaries(self) -> None:
        """Delete half-written temporary files left by a killed writer (call only while holding the claim)."""
        if self.path.is_dir():
            for p in self.path.glob(".*.tmp*"):
                p.unlink(missing_ok=True)

    def state(self) -> State:
        final = self.read_final()
        if final is not None:
            return State.DONE if final.get("status") == "done" else State.FAILED
        return State.PARTIAL if self.path.exists() else State.NEW

    def read_epochs(self) -> list[dict]:
        if not self.epochs.exists():
            return []
        rows = []
        for line in self.epochs.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                break  # a line cut short by a crash: everything after it is not trusted
        return rows


def iter_folders(results_dir: str | Path):
    runs = Path(results_dir) / "runs"
    if runs.is_dir():
        for p in sorted(runs.iterdir()):
            if (p / "spec.json").is_file():
                yield RunFolder(results_dir, p.name)


_reported: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _reported:
        _reported.add(message)
        print(f"skipped: {message}", file=sys.stderr)


def readable_runs(results_dir: str | Path, warn=_warn_once):
    """(folder, spec, info) of every run folder whose spec this version reads; each other folder (damaged, or
    of another format) is reported in one line and skipped, so it never stops the others."""
    for folder in iter_folders(results_dir):
        try:
            spec, info = folder.read_spec()
        except UnreadableFolder as e:
            warn(str(e))
            continue
        yield folder, spec, info
