"""The registry of run kinds: what a run does with its spec, and how a finished one is measured again.

Each kind is a module with
    execute(spec, env, info, claim) -> final record   (train, resume, or return the record of a DONE run)
    remeasure(folder, spec, info, final, env) -> [measurement records]   (time it again on this machine)
and a spec says its kind (`RunSpec.kind`), so nothing dispatches on a method name. Modules are imported on
first use, like methods, so a launcher that only plans never imports torch-heavy code it does not need.

Execution modes execute several runs together without being a kind of result: every run keeps its kind, folder,
id and records. Each is a module with
    execute(specs, env, infos, retries) -> [final record per spec]
`cohort` (runner/cohort.py) trains the runs that share data, seed, teacher and protocol over one batch stream with
one teacher forward per batch.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .env import RunEnv
from .folder import RunFolder, State
from .measure import save_measurement
from .spec import RUN_KINDS

KINDS: dict[str, str] = {
    "train": "runner.train",
    "ensemble": "runner.ensemble",
    "published": "runner.published",
}
assert tuple(KINDS) == RUN_KINDS, "every kind a spec may name has a module, and no other"


MODES: dict[str, str] = {
    "cohort": "runner.cohort",
}


def get_kind(name: str) -> ModuleType:
    return importlib.import_module(KINDS[name])


def get_mode(name: str) -> ModuleType:
    return importlib.import_module(MODES[name])


def remeasure(folder: RunFolder, env: RunEnv) -> dict | None:
    """Measure a finished run again on this machine: adds measurement files, never overwrites; returns the
    record of its main row (None if the run is not DONE)."""
    if folder.state() != State.DONE:
        return None
    spec, info = folder.read_spec()
    final = folder.read_final()
    records = get_kind(spec.kind).remeasure(folder, spec, info, final, env)
    for record in records:
        record.setdefault("run_id", folder.run_id)
        record.setdefault("method", final["method"])
        record.update(dataset=spec.data.label, seed=spec.seed)
        save_measurement(folder.path, record)
    return records[0]
