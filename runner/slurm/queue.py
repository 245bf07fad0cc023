"""What SLURM says about jobs (squeue, sacct), the job records in run folders, and waiting for and cancelling
the jobs of a sweep."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

from core.errors import UserError

from ..folder import RunFolder
from ..store import write_atomic

# states in which a job may still run the run: it must not be submitted again meanwhile
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
          "CONFIGURING", "COMPLETING", "STOPPED", "SIGNALING", "STAGE_OUT", "SPECIAL_EXIT", "RESV_DEL_HOLD"}


def _run_tool(args: list[str], timeout: float = 30) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _expand(job_id: str) -> list[str]:
    """'12_[0-2,5%4]' -> ['12_0', '12_1', '12_2', '12_5']; other ids unchanged."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not m:
        return [job_id]
    out = []
    for part in m.group(2).split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def queued_jobs() -> dict[str, tuple[str, str]] | None:
    """This user's jobs still in the queue: job id -> (state, reason). None if squeue is unavailable."""
    out = _run_tool(["squeue", "-h", "-r", "-u", str(os.getuid()), "-o", "%i|%T|%r"])
    if out is None:
        return None
    jobs = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            for jid in _expand(parts[0]):
                jobs[jid] = (parts[1], parts[2])
    return jobs


def job_states(job_ids: list[str]) -> dict[str, str]:
    """job id -> state ('RUNNING', 'COMPLETED', 'CANCELLED (Dependency)', ...), from squeue for jobs in the
    queue and sacct (accounting) for the others; missing when SLURM cannot tell."""
    states: dict[str, str] = {}
    queue = queued_jobs() or {}
    for jid in job_ids:
        if jid in queue:
            state, reason = queue[jid]
            states[jid] = state + (f" ({reason})" if reason and reason != "None" else "")
    rest = sorted({j.split("_")[0] for j in job_ids if j not in states})
    if rest:
        out = _run_tool(["sacct", "-X", "-n", "-P", "-o", "JobID,State,Reason", "-j", ",".join(rest)])
        for line in (out or "").splitlines():
            parts = line.strip().split("|")
            if len(parts) < 2:
                continue
            state = parts[1].split()[0] if parts[1] else "UNKNOWN"
            reason = parts[2] if len(parts) > 2 and parts[2] not in ("", "None") else ""
            for jid in _expand(parts[0]):
                if jid in job_ids and jid not in states:
                    states[jid] = state + (f" ({reason})" if reason and state != "COMPLETED" else "")
    return states


def read_job(folder: RunFolder) -> dict | None:
    try:
        return json.loads(folder.slurm_json.read_text())
    except (OSError, ValueError):
        return None


def write_job(folder: RunFolder, entry: dict) -> None:
    old = read_job(folder)
    history = (old.get("history", []) + [{k: v for k, v in old.items() if k != "history"}]) if old else []
    write_atomic(folder.slurm_json, json.dumps({**entry, "history": history}, indent=1, sort_keys=True).encode())


def wait_for_jobs(job_ids: list[str], log, poll_s: float = 10.0, timeout_s: float | None = None) -> None:
    """Block until none of these jobs is in the queue any more, logging each change of state."""
    start, last = time.monotonic(), {}
    while True:
        queue = queued_jobs()
        if queue is None:
            raise UserError("squeue failed while waiting for the jobs: is the SLURM controller up?")
        current = {j: queue[j][0] for j in job_ids if j in queue}
        for j, state in current.items():
            if last.get(j) != state:
                log(f"SLURM job {j}: {state}")
        last = current
        if not current:
            return
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"SLURM jobs still queued after {timeout_s:.0f}s: {sorted(current)}")
        time.sleep(poll_s)


def slurm_status(results_dir: str, run_ids: list[str]) -> dict[str, str]:
    """run id -> 'job <id> <STATE>' for the runs that have been submitted."""
    jobs = {}
    for rid in run_ids:
        known = read_job(RunFolder(results_dir, rid))
        if known and known.get("job_id"):
            jobs[rid] = known["job_id"]
    if not jobs:
        return {}
    states = job_states(list(jobs.values()))
    return {rid: f"job {jid} {states.get(jid, 'state unknown')}" for rid, jid in jobs.items()}


def cancel(results_dir: str, run_ids: list[str], log=print) -> list[str]:
    """scancel the queued or running jobs of these runs; their partial runs stay resumable."""
    queue = queued_jobs()
    if queue is None:
        raise UserError("cancel needs squeue and scancel on PATH (a SLURM login node)")
    ids = []
    for rid in run_ids:
        known = read_job(RunFolder(results_dir, rid))
        if known and known.get("job_id") in queue and queue[known["job_id"]][0] in ACTIVE:
            ids.append(known["job_id"])
    if ids:
        out = subprocess.run(["scancel", *ids], capture_output=True, text=True)
        if out.returncode != 0:
            raise UserError(f"scancel failed: {out.stderr.strip()}")
        log(f"cancelled {len(ids)} SLURM job(s): {' '.join(ids)}")
    else:
        log("no queued or running SLURM job belongs to these runs")
    return ids
