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

    def note(msg: str) -> None:
        env.log(f"[{spec.run_id} {spec.what}] {msg}")
        with open(folder.log, "a") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")

    try:
        folder.clean_temporaries()
        problem = folder.final_problem()
        if problem:
            note(f"{problem}: not trusted, the run continues from its last good checkpoint")
        while True:
            previous = folder.read_final()
            if previous is not None and previous.get("status") == "failed":
                folder.final.unlink()  # running again: PARTIAL, not FAILED (failures.json keeps the count)
                note(f"trying again after {len(folder.read_failures())} failure(s); last: {previous.get('error')}")
            try:
                return get_kind(spec.kind).execute(spec, env, info or {}, claim)
            except UserError:
                raise
            except ClaimLost as e:
                env.log(f"[{spec.run_id}] stopped: {e}")
                return {"status": "busy", "run_id": spec.run_id, "holder": read_claim(folder.path)}
            except (Diverged, Exception) as e:
                machine = environment_problem(e)
                if machine is not None:
                    return _environment_failure(spec, folder, note, machine, e)
                reason = str(e) if isinstance(e, Diverged) else f"{type(e).__name__}: {e}"
                retryable = not isinstance(e, Diverged)
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
    finally:
        claim.release()


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
