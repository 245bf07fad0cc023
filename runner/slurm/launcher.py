"""The `slurm` launcher: submits the plan's stages as job arrays through submitit, with dependencies between them.

With cohorts (`LaunchOptions.cohort`, the default), the runs of a stage that share data, seed, teacher run and
protocol are one job of the array (runner/cohort.py, `SlurmCohort`): the students of a seed train as one cohort
once their teacher is done, and students of several seeds with the same dependencies (a published teacher) are
one array over the seeds. Every member's slurm.json names the cohort's job."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

from core.errors import UserError

from ..claims import describe as describe_claim
from ..folder import RunFolder
from ..launchers.base import Launcher, decide, flatten, jobs
from ..plan import PlannedRun
from ..progress import Sweep
from ..store import write_atomic
from .job import SlurmCohort, SlurmRun
from .profile import executor_parameters
from .queue import ACTIVE, job_states, queued_jobs, read_job, wait_for_jobs, write_job


@contextlib.contextmanager
def _submit_lock(results: Path):
    """Two submissions on one results folder at once would both see a run as not queued: serialise them."""
    (results / "slurm").mkdir(parents=True, exist_ok=True)
    fd = os.open(results / "slurm" / ".submit.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class SlurmLauncher(Launcher):
    """Submits and returns (`ends_runs` False), or with `wait` stays until every job has ended."""

    name = "slurm"

    def __init__(self, env, retries=1, options=None):
        super().__init__(env, retries, options)
        self.ends_runs = self.options.wait

    def launch(self, stages: list[list[PlannedRun]]) -> list[dict]:
        return launch_slurm(stages, self.env, self.options.profile, self.retries, self.options.wait,
                            cohort=self.options.cohort)


def launch_slurm(stages: list[list[PlannedRun]], env, profile: dict, retries: int = 1, wait: bool = False,
                 poll_s: float | None = None, wait_timeout_s: float | None = None,
                 cohort: bool = False) -> list[dict]:
    """Submit every run that is not DONE (nor queued already) as job arrays, stage after stage; with `wait`,
    also wait for the jobs and return the runs' final records."""
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise UserError("the slurm launcher needs sbatch and srun on PATH: run it on a SLURM login node "
                        "(for a local test cluster see slurm/cluster.sh)")
    log = env.log
    results = Path(env.results_dir).resolve()
    sweep = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    sweep_dir = results / "slurm" / sweep
    env_fields = {**env.fields(), "results_dir": str(results)}
    if env_fields.get("data_dir"):
        env_fields["data_dir"] = str(Path(env_fields["data_dir"]).resolve())
    if profile.get("gpus_per_run") and env.device == "cpu":
        env_fields["device"] = "cuda"  # the profile asks for GPUs: train on them
    env_fields["progress"] = Sweep(flatten(stages), str(results), slots=None).numbering()
    params = executor_parameters(profile)
    records, arrays, job_of = [], [], {}
    with _submit_lock(results):
        queue = queued_jobs() or {}
        for stage in stages:
            groups: dict[tuple, list[PlannedRun]] = {}
            for run in stage:
                folder = RunFolder(results, run.run_id)
                known = read_job(folder)
                if known and known.get("job_id") in queue and queue[known["job_id"]][0] in ACTIVE:
                    job_of[run.run_id] = known["job_id"]
                    log(f"already queued: {run.spec.describe()} is SLURM job {known['job_id']} "
                        f"({queue[known['job_id']][0]})")
                    records.append({"status": "queued", "run_id": run.run_id, "job_id": known["job_id"]})
                    continue
                decision = decide(run, str(results), retries, set(job_of))
                if decision.action == "wait" and decision.holder is not None:
                    # a submission cannot wait for another process: that process finishes it, or a later
                    # sweep resubmits it
                    why = f"it or its dependency is being executed by {describe_claim(decision.holder)}"
                    decision.action, decision.record = "skip", {"status": "skipped", "run_id": run.run_id,
                                                                "error": why}
                if decision.action == "skip":
                    records.append(decision.record)
                    if decision.record.get("status") != "done":
                        log(f"skip {run.spec.describe()}: {decision.record.get('error')}")
                    continue
                deps = [job_of[d] for d in decision.after]
                groups.setdefault(tuple(sorted(set(deps))), []).append(run)
            for deps, runs in groups.items():
                tasks = jobs(runs, {}, cohort)  # one array task per run, or per cohort of runs
                submitted = _submit_array(tasks, deps, params, profile, sweep_dir, env_fields, retries, results)
                dependency = ("afterok:" + ":".join(deps)) if deps else None
                runs = [run for task in tasks for run in task]
                run_jobs = [job for task, job in zip(tasks, submitted) for _ in task]
                for run, job in zip(runs, run_jobs):
                    job_of[run.run_id] = job.job_id
                    write_job(RunFolder(results, run.run_id),
                               {"job_id": job.job_id, "sweep": sweep, "submitit_folder": str(sweep_dir),
                                "profile": profile["name"], "dependency": dependency,
                                "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")})
                    records.append({"status": "submitted", "run_id": run.run_id, "job_id": job.job_id})
                array_id = submitted[0].job_id.split("_")[0]
                cohorts = [[r.run_id for r in task] for task in tasks if len(task) > 1]
                arrays.append({"role": runs[0].role, "array": array_id, "runs": [r.run_id for r in runs],
                               "jobs": [j.job_id for j in run_jobs], "dependency": dependency,
                               **({"cohorts": cohorts} if cohorts else {})})
                log(f"submitted {len(runs)} {runs[0].role} run(s) as SLURM job {array_id}"
                    + (f" ({len(cohorts)} cohort(s), {len(submitted)} task(s))" if cohorts else "")
                    + (f", after {dependency}" if dependency else ""))
        if arrays:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(sweep_dir / "sweep.json", json.dumps(
                {"sweep": sweep, "profile": profile, "arrays": arrays, "argv": sys.argv}, indent=1).encode())
    if not wait:
        if job_of:
            log(f"{len(job_of)} run(s) in the queue; follow them with `status`, stop them with `cancel`")
        return records
    waiting = {rid: jid for rid, jid in job_of.items()}
    # how often to ask squeue; the environment variable is for tests, where jobs take seconds
    poll_s = poll_s or float(os.environ.get("KDBENCH_SLURM_POLL_S", "10"))
    wait_for_jobs(list(dict.fromkeys(waiting.values())), log, poll_s, wait_timeout_s)
    states = job_states(list(dict.fromkeys(waiting.values())))
    final = []
    for rec in records:
        rid = rec.get("run_id")
        if rid not in waiting:
            final.append(rec)
            continue
        folder = RunFolder(results, rid)
        done = folder.read_final()
        if done is not None:
            final.append(done)
        else:
            final.append({"status": "not finished", "run_id": rid,
                          "error": f"SLURM job {waiting[rid]} ended {states.get(waiting[rid], 'UNKNOWN')}"})
    return final


def _submit_array(tasks: list[list[PlannedRun]], deps: tuple, params: dict, profile: dict, sweep_dir: Path,
                  env_fields: dict, retries: int, results: Path) -> list:
    """Write each run's spec.json and submit the tasks (a run, or a cohort of runs) as one job array (one job if
    alone) after `deps`; one job per task."""
    import submitit

    executor = submitit.AutoExecutor(folder=sweep_dir / "%j", cluster="slurm",
                                     slurm_max_num_timeout=profile["max_requeues"],
                                     **({"slurm_python": profile["python"]} if profile.get("python") else {}))
    role = tasks[0][0].role
    p = dict(params, name=f"kd-{role}")
    if deps:
        p["slurm_dependency"] = "afterok:" + ":".join(deps)
    executor.update_parameters(**p)
    callables = []
    for task in tasks:
        paths = []
        for run in task:
            RunFolder(results, run.run_id).write_spec(run.spec, run.info)  # the job's whole input is this file
            paths.append(str(RunFolder(results, run.run_id).spec_json))
        callables.append(SlurmRun(paths[0], env_fields, retries) if len(task) == 1 else
                         SlurmCohort(paths, env_fields, retries))
    try:
        with executor.batch():
            submitted = [executor.submit(c) for c in callables]
    except Exception as e:
        raise UserError(f"sbatch refused the {role} array: {e}") from None
    return submitted
