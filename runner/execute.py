"""Executing one run of any kind as the only process doing so: claim, dispatch to its kind, record failures.

The run folder is claimed first (runner/claims.py), so two sweeps on one results folder never execute a run
twice. What the run does is its kind's business (runner/kinds.py); what happens when it fails is decided here,
once for every kind and every launcher.
"""
from __future__ import annotations

import time
import traceback

from core.errors import Diverged, UserError, environment_problem

from .claims import Claim, ClaimLost, read_claim
from .claims import describe as describe_claim
from .env import RunEnv
from .folder import RunFolder
from .kinds import get_kind
from .spec import RunSpec
from .store import write_json_checked


def execute(spec: RunSpec, env: RunEnv, info: dict | None = None, retries: int = 0) -> dict:
    """Run (or resume, or skip if done) one spec, as the only process doing so.

    The run folder is claimed first (runner/claims.py): if another live process holds it, nothing is done and
    {"status": "busy"} comes back, so two sweeps on one results folder never execute a run twice. A divergence
    or crash is recorded as FAILED with its reason, and every failure is also appended to failures.json, which
    survives retries: a crash is tried again from the last checkpoint while the failures so far number at most
    `retries` (launchers apply the same cap across sweeps). A divergence is deterministic and never retried.
    A bad input (UserError) is raised without recording anything as a result."""
    folder = RunFolder(env.results_dir, spec.run_id)
    claim = Claim(folder.path, log=lambda msg: env.log(f"[{spec.run_id}] {msg}"))
    if not claim.acquire():
        env.log(f"[{spec.run_id}] busy: executed by {describe_claim(claim.holder)}")
        return {"status": "busy", "run_id": spec.run_id, "holder": claim.holder}
    try:
        return execute_claimed(spec, env, info, retries, claim)
    finally:
        claim.release()


def execute_claimed(spec: RunSpec, env: RunEnv, info: dict | None, retries: int, claim: Claim) -> dict:
    """`execute` for a run whose claim this process holds already (runner/cohort.py retries a member this way)."""
    folder = RunFolder(env.results_dir, spec.run_id)
    note = run_note(spec, env, folder)
    open_folder(folder, note)
    while True:
        reopen_failed(folder, note)
        try:
            return get_kind(spec.kind).execute(spec, env, info or {}, claim)
        except UserError:
            raise
        except ClaimLost as e:
            return lost_record(spec, env, folder, e)
        except (Diverged, Exception) as e:
            record = record_failure(spec, env, info, folder, note, e, retries)
            if record is not None:
                return record


# ---- the pieces of `execute`, shared with runner/cohort.py (a cohort member fails and is recorded as a run) ----
def run_note(spec: RunSpec, env: RunEnv, folder: RunFolder):
    """A function writing one line to the run's log (and the env's)."""
    def note(msg: str) -> None:
        env.log(f"[{spec.run_id} {spec.what}] {msg}")
        with open(folder.log, "a") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")
    return note


def open_folder(folder: RunFolder, note) -> None:
    """Before the first attempt of a claimed run: temporaries of killed writers go, a damaged final.json is said."""
    folder.clean_temporaries()
    problem = folder.final_problem()
    if problem:
        note(f"{problem}: not trusted, the run continues from its last good checkpoint")


def reopen_failed(folder: RunFolder, note) -> None:
    """Before each attempt: a FAILED run running again is PARTIAL, not FAILED (failures.json keeps the count)."""
    previous = folder.read_final()
    if previous is not None and previous.get("status") == "failed":
        folder.final.unlink()
        note(f"trying again after {len(folder.read_failures())} failure(s); last: {previous.get('error')}")


def lost_record(spec: RunSpec, env: RunEnv, folder: RunFolder, error: ClaimLost) -> dict:
    """The run was taken over by another process: stop, write nothing more."""
    env.log(f"[{spec.run_id}] stopped: {error}")
    return {"status": "busy", "run_id": spec.run_id, "holder": read_claim(folder.path)}


def record_failure(spec: RunSpec, env: RunEnv, info: dict | None, folder: RunFolder, note, error: BaseException,
                   retries: int) -> dict | None:
    """Record a failed attempt (call it inside the `except` block: the log gets the traceback). Returns the run's
    record, or None when it may be tried again now (a crash with failures so far at most `retries`)."""
    machine = environment_problem(error)
    if machine is not None:
        return _environment_failure(spec, folder, note, machine, error)
    reason = str(error) if isinstance(error, Diverged) else f"{type(error).__name__}: {error}"
    retryable = not isinstance(error, Diverged)
    if not folder.path.exists():
        return {"status": "failed", "run_id": spec.run_id, "error": reason}
    try:
        if not folder.spec_json.exists():  # failed before its kind recorded the spec: record it, so
            folder.write_spec(spec, info or {})  # that status and collect show the failure
        record = _record_failure(spec, folder, note, reason, retryable)
    except OSError as write_error:  # e.g. the disk filled up: the failure cannot even be written
        return _environment_failure(spec, folder, note, environment_problem(write_error) or
                                    f"cannot write to {folder.path}", write_error)
    if not retryable or record["failures"] > retries:
        return record
    return None


def _record_failure(spec: RunSpec, folder: RunFolder, note, reason: str, retryable: bool) -> dict:
    """FAILED in final.json, and the failure appended to failures.json (kept across retries)."""
    note(f"FAILED: {reason}")
    if retryable:
        with open(folder.log, "a") as f:
            f.write(traceback.format_exc())
    failures = folder.read_failures() + [{"error": reason, "retryable": retryable,
                                          "time": time.strftime("%Y-%m-%dT%H:%M:%S")}]
    write_json_checked(folder.failures, {"failures": failures})
    record = {"status": "failed", "run_id": spec.run_id, "error": reason, "failures": len(failures),
              "retryable": retryable, "kind": spec.kind, "method": spec.method, "dataset": spec.data.label,
              "seed": spec.seed, "student": spec.student}
    write_json_checked(folder.final, record)
    return record


def _environment_failure(spec: RunSpec, folder: RunFolder, note, problem: str, exc: BaseException) -> dict:
    """The machine failed: say so, record nothing as a result, spend no retry; the folder stays resumable."""
    message = (f"stopped by the machine ({problem}: {type(exc).__name__}: {exc}); nothing is recorded as a "
               "result and the run resumes from its last checkpoint when started again")
    try:
        note(message)
    except OSError:
        pass  # the log is on the same full disk: the launcher still reports the message
    return {"status": "environment", "run_id": spec.run_id, "error": message, "kind": spec.kind,
            "method": spec.method}
