"""What a SLURM job runs: one run, or one cohort of runs (runner/cohort.py), resumable across requeues (submitit's
checkpoint-and-requeue pattern)."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from submitit.helpers import Checkpointable, DelayedSubmission

from ..env import RunEnv
from ..execute import execute
from ..folder import RunFolder
from ..kinds import get_mode

class SlurmRun(Checkpointable):
    """One run inside a SLURM job. Its state is only the path of the run's spec.json (plus how to execute it):
    every bit of training progress lives in the run folder, so a requeued job resumes from ckpt.pt."""

    def __init__(self, spec_path: str, env_fields: dict, retries: int):
        self.spec_path = spec_path
        self.env_fields = env_fields
        self.retries = retries

    def __call__(self) -> dict:
        import torch

        folder = RunFolder(Path(self.spec_path).parents[2], Path(self.spec_path).parent.name)
        _link_job_logs(folder)
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        torch.set_num_threads(int(cpus) if cpus else len(os.sched_getaffinity(0)))
        spec, info = folder.read_spec()
        from methods.registry import load_plugins

        load_plugins(info.get("plugins"))  # the plugins its method comes from, as planned (sha256 checked)
        env = RunEnv(**self.env_fields, log=lambda msg: print(msg, flush=True))
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(f"kd-bench: run {spec.run_id} in SLURM job {_job_id()} (restart {restart}), "
              f"{torch.get_num_threads()} thread(s), device {env.device}", flush=True)
        while True:
            record = execute(spec, env, info, retries=self.retries)
            if record["status"] != "busy":
                break
            # another launcher runs it: try again until it is done (then execute returns its record) or its
            # holder is gone (then this job resumes it)
            time.sleep(10)
        if record["status"] != "done":
            # fail the job, so that SLURM cancels the runs depending on this one
            raise RuntimeError(f"run {spec.run_id} {record['status']}: {record.get('error')}")
        return record

    def checkpoint(self, *args, **kwargs) -> DelayedSubmission:
        """Called by submitit on a timeout or preemption signal: nothing to save beyond ckpt.pt, which the
        run writes at every epoch; the requeued job starts this same object again."""
        print(f"kd-bench: job {_job_id()} is being requeued; {self.spec_path} resumes from its checkpoint",
              flush=True)
        return DelayedSubmission(self, *args, **kwargs)


class SlurmCohort(Checkpointable):
    """One cohort inside a SLURM job: its state is only the paths of its runs' spec.json files, so a requeued job
    executes the cohort again and every member resumes from its own ckpt.pt (a DONE member is skipped).

    The job fails only if no member ends DONE: a member that failed is recorded FAILED in its own folder, and the
    jobs depending on this one (ensembles) still run for the members that are done."""

    def __init__(self, spec_paths: list[str], env_fields: dict, retries: int):
        self.spec_paths = list(spec_paths)
        self.env_fields = env_fields
        self.retries = retries

    def __call__(self) -> list[dict]:
        import torch

        folders = [RunFolder(Path(p).parents[2], Path(p).parent.name) for p in self.spec_paths]
        for folder in folders:
            _link_job_logs(folder)
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        torch.set_num_threads(int(cpus) if cpus else len(os.sched_getaffinity(0)))
        specs, infos = zip(*(folder.read_spec() for folder in folders))
        env = RunEnv(**self.env_fields, log=lambda msg: print(msg, flush=True))
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(f"kd-bench: cohort of {len(specs)} runs ({', '.join(s.run_id for s in specs)}) in SLURM job "
              f"{_job_id()} (restart {restart}), {torch.get_num_threads()} thread(s), device {env.device}",
              flush=True)
        cohort = get_mode("cohort")
        records = {s.run_id: None for s in specs}
        todo = list(range(len(specs)))
        while todo:
            got = cohort.execute([specs[i] for i in todo], env, [infos[i] for i in todo], self.retries)
            for i, record in zip(todo, got):
                records[specs[i].run_id] = record
            todo = [i for i in todo if records[specs[i].run_id]["status"] == "busy"]
            if todo:  # another launcher runs them: again until done there, or their holder is gone
                time.sleep(10)
        if not any(r["status"] == "done" for r in records.values()):
            raise RuntimeError("no run of the cohort is done: " + "; ".join(
                f"{rid} {r['status']}: {r.get('error')}" for rid, r in records.items()))
        return list(records.values())

    def checkpoint(self, *args, **kwargs) -> DelayedSubmission:
        print(f"kd-bench: job {_job_id()} is being requeued; the cohort's {len(self.spec_paths)} runs resume from "
              "their checkpoints", flush=True)
        return DelayedSubmission(self, *args, **kwargs)


def _job_id() -> str:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID", "?")


def _link_job_logs(folder: RunFolder) -> None:
    """Make SLURM's stdout/stderr of this job appear in the run folder: a hard link to submitit's file (the
    same file, written live, surviving a cleanup of the submitit folder), a symbolic link across file systems."""
    from submitit import JobEnvironment

    try:
        job_env = JobEnvironment()
        paths = job_env.paths
    except Exception:  # not inside a submitit job (e.g. called directly in a test)
        return
    for src, suffix in ((paths.stdout, "out"), (paths.stderr, "err")):
        dst = folder.path / f"slurm-{job_env.job_id}.{suffix}"
        if dst.exists() or dst.is_symlink() or not src.exists():
            continue
        try:
            os.link(src, dst)
        except OSError:
            with contextlib.suppress(OSError):
                dst.symlink_to(src)
