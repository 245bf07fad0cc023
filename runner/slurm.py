"""The SLURM launcher: the plan's stages as job arrays through submitit, with dependencies between them.

- The executor is `submitit.AutoExecutor(folder=..., cluster="slurm")`: the cluster is named, never detected.
- Settings come from a cluster profile (`slurm/profiles/<name>.yaml`, see `example.yaml`), with command-line
  overrides on top.
- One job array per stage and dependency set, through `executor.batch()`: the teachers are one array; the
  students of one teacher are one array depending `afterok` on exactly that teacher's task, so a sweep over
  datasets and seeds is a handful of arrays and a student never waits for (or dies with) another seed's
  teacher. Later stages (ensembles) depend on their members' tasks the same way. `--kill-on-invalid-dep=yes`
  makes SLURM cancel the dependants of a failed job instead of leaving them pending forever.
- What a job runs is `SlurmRun`, a `submitit.helpers.Checkpointable` whose whole state is the path of the run's
  spec.json: on a timeout or a preemption submitit requeues it, and the new incarnation resumes from ckpt.pt
  (written atomically every epoch), so at most the current epoch is lost.
- SLURM's stdout and stderr of each job are linked into the run folder (`slurm-<job>.out/.err`), next to
  log.txt; `slurm.json` there records which job runs it, for `status` and `cancel`.
- Nothing twice: runs already DONE, or queued or running under an earlier submission, are not submitted
  again (the submission itself holds a lock on the results folder), and inside the job the run folder's claim
  (runner/claims.py) keeps any other launcher off it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from submitit.helpers import Checkpointable, DelayedSubmission

from .claims import claim_alive
from .claims import describe as describe_claim
from core.errors import UserError
from .folder import RunFolder, State
from .launch import retry_budget_left
from .plan import PlannedRun
from .store import write_atomic

ROOT = Path(__file__).resolve().parents[1]
PROFILES_DIR = ROOT / "slurm" / "profiles"

# profile key -> (type, meaning); the meanings are printed for a wrong key
PROFILE_KEYS = {
    "partition": (str, "partition (sbatch --partition)"),
    "account": (str, "account to charge (--account)"),
    "qos": (str, "quality of service (--qos)"),
    "timeout_min": (int, "time limit of one job in minutes; a run longer than this requeues itself"),
    "gpus_per_run": (int, "GPUs per run (--gpus-per-node); >0 trains on cuda"),
    "cpus_per_run": (int, "CPUs per run (--cpus-per-task); also the run's torch threads"),
    "mem_gb": (float, "memory per run in GB (--mem)"),
    "constraint": (str, "node features (--constraint), e.g. 'a100|v100'"),
    "exclude": (str, "nodes to avoid (--exclude)"),
    "array_parallelism": (int, "at most this many tasks of one array run at once (--array=...%N)"),
    "signal_delay_s": (int, "seconds before the time limit at which SLURM signals the job to checkpoint"),
    "max_requeues": (int, "how often a job may requeue itself after a time limit (submitit max_num_timeout)"),
    "setup": (list, "shell lines run before the job (module load ..., source venv/bin/activate)"),
    "python": (str, "command that starts python on the nodes (default: this interpreter)"),
    "sbatch": (dict, "any other sbatch options, e.g. {mail-type: FAIL, reservation: kd}"),
}
DEFAULTS = {"timeout_min": 240, "cpus_per_run": 1, "array_parallelism": 64, "signal_delay_s": 120,
            "max_requeues": 20}
# states in which a job may still run the run: it must not be submitted again meanwhile
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
          "CONFIGURING", "COMPLETING", "STOPPED", "SIGNALING", "STAGE_OUT", "SPECIAL_EXIT", "RESV_DEL_HOLD"}


# ---- profiles ---------------------------------------------------------------------------------------------
def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name: str | None, overrides: dict | None = None) -> dict:
    """A cluster profile by name (slurm/profiles/<name>.yaml) or path, with `overrides` (None = unset) on top."""
    if not name:
        raise UserError("the slurm launcher needs --cluster-profile: one of " + ", ".join(profile_names()) +
                        " (slurm/profiles/), or the path of your own YAML file (see slurm/profiles/example.yaml)")
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") or os.sep in name):
        path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"cluster profile {name!r} not found ({path}); known: {', '.join(profile_names())}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"cluster profile {path} is not valid YAML: {e}")
    if not isinstance(data, dict):
        raise UserError(f"cluster profile {path} must be a mapping of settings")
    profile = {**DEFAULTS}
    for key, value in {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}.items():
        if key not in PROFILE_KEYS:
            known = "\n  ".join(f"{k}: {m}" for k, (_, m) in PROFILE_KEYS.items())
            raise UserError(f"unknown cluster profile setting {key!r} (in {path} or the command line); "
                            f"known settings:\n  {known}")
        kind = PROFILE_KEYS[key][0]
        if value is None:
            profile.pop(key, None)
            continue
        try:
            if kind is list:
                value = [str(v) for v in (value if isinstance(value, list) else [value])]
            elif kind is dict:
                if not isinstance(value, dict):
                    raise ValueError("expected a mapping")
            else:
                value = kind(value)
        except (TypeError, ValueError) as e:
            raise UserError(f"cluster profile setting {key}={value!r}: expected {kind.__name__} ({e})")
        profile[key] = value
    profile["name"] = path.stem
    return profile


def parse_set(items: list[str] | None) -> dict:
    """--slurm-set KEY=VALUE items (VALUE read as YAML, so lists and numbers work)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--slurm-set expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def executor_parameters(profile: dict) -> dict:
    """The profile as submitit AutoExecutor parameters."""
    params = {"timeout_min": profile["timeout_min"], "cpus_per_task": profile["cpus_per_run"],
              "slurm_array_parallelism": profile["array_parallelism"],
              "slurm_signal_delay_s": profile["signal_delay_s"]}
    if profile.get("gpus_per_run"):
        params["gpus_per_node"] = profile["gpus_per_run"]
    if profile.get("mem_gb"):
        params["mem_gb"] = profile["mem_gb"]
    for key in ("partition", "account", "qos", "constraint", "exclude"):
        if profile.get(key):
            params[f"slurm_{key}"] = profile[key]
    # the jobs import this project: make it importable even where it is not pip-installed
    params["slurm_setup"] = [f"export PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}}", *profile.get("setup", [])]
    params["slurm_additional_parameters"] = {"kill_on_invalid_dep": "yes",
                                             **{k.replace("-", "_"): v for k, v in profile.get("sbatch", {}).items()}}
    return params


# ---- what a job runs ----------------------------------------------------------------------------------------
class SlurmRun(Checkpointable):
    """One run inside a SLURM job. Its state is only the path of the run's spec.json (plus how to execute it):
    every bit of training progress lives in the run folder, so a requeued job resumes from ckpt.pt."""

    def __init__(self, spec_path: str, env_fields: dict, retries: int):
        self.spec_path = spec_path
        self.env_fields = env_fields
        self.retries = retries

    def __call__(self) -> dict:
        import torch

        from .train import RunEnv, execute

        folder = RunFolder(Path(self.spec_path).parents[2], Path(self.spec_path).parent.name)
        _link_job_logs(folder)
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        torch.set_num_threads(int(cpus) if cpus else len(os.sched_getaffinity(0)))
        spec, info = folder.read_spec()
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


# ---- querying SLURM -----------------------------------------------------------------------------------------
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


def _write_job(folder: RunFolder, entry: dict) -> None:
    old = read_job(folder)
    history = (old.get("history", []) + [{k: v for k, v in old.items() if k != "history"}]) if old else []
    write_atomic(folder.slurm_json, json.dumps({**entry, "history": history}, indent=1, sort_keys=True).encode())


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


# ---- submitting ---------------------------------------------------------------------------------------------
def launch_slurm(stages: list[list[PlannedRun]], env, profile: dict, retries: int = 1, wait: bool = False,
                 poll_s: float | None = None, wait_timeout_s: float | None = None) -> list[dict]:
    """Submit every run that is not DONE (nor queued already) as job arrays, stage after stage; with `wait`,
    also wait for the jobs and return the runs' final records."""
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise UserError("the slurm launcher needs sbatch and srun on PATH: run it on a SLURM login node "
                        "(for a local test cluster see slurm/cluster.sh)")
    log = env.log
    results = Path(env.results_dir).resolve()
    sweep = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    sweep_dir = results / "slurm" / sweep
    env_fields = {f.name: getattr(env, f.name) for f in dataclasses.fields(env) if f.name != "log"}
    env_fields["results_dir"] = str(results)
    if env_fields.get("data_dir"):
        env_fields["data_dir"] = str(Path(env_fields["data_dir"]).resolve())
    if profile.get("gpus_per_run") and env.device == "cpu":
        env_fields["device"] = "cuda"  # the profile asks for GPUs: train on them
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
                state = folder.state()
                if state == State.DONE:
                    records.append(folder.read_final())
                    continue
                if state == State.FAILED and not retry_budget_left(folder, retries):
                    final = folder.read_final()
                    records.append(final)
                    log(f"skip {run.spec.describe()}: failed ({final.get('error')}); not retried (--retries {retries})")
                    continue
                holder = claim_alive(folder.path)
                if holder is not None:
                    records.append({"status": "skipped", "run_id": run.run_id,
                                    "error": f"being executed by {describe_claim(holder)}"})
                    log(f"skip {run.spec.describe()}: being executed by {describe_claim(holder)}")
                    continue
                deps, missing = [], None
                for dep in run.depends:
                    if dep in job_of:
                        deps.append(job_of[dep])
                    elif RunFolder(results, dep).state() != State.DONE:
                        missing = dep
                        break
                if missing:
                    why = f"its dependency {missing} is {RunFolder(results, missing).state().value} and not queued"
                    records.append({"status": "skipped", "run_id": run.run_id, "error": why})
                    log(f"skip {run.spec.describe()}: {why}")
                    continue
                groups.setdefault(tuple(sorted(set(deps))), []).append(run)
            for deps, runs in groups.items():
                jobs = _submit_array(runs, deps, params, profile, sweep_dir, env_fields, retries, results)
                dependency = ("afterok:" + ":".join(deps)) if deps else None
                for run, job in zip(runs, jobs):
                    job_of[run.run_id] = job.job_id
                    _write_job(RunFolder(results, run.run_id),
                               {"job_id": job.job_id, "sweep": sweep, "submitit_folder": str(sweep_dir),
                                "profile": profile["name"], "dependency": dependency,
                                "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")})
                    records.append({"status": "submitted", "run_id": run.run_id, "job_id": job.job_id})
                array_id = jobs[0].job_id.split("_")[0]
                arrays.append({"role": runs[0].role, "array": array_id, "runs": [r.run_id for r in runs],
                               "jobs": [j.job_id for j in jobs], "dependency": dependency})
                log(f"submitted {len(runs)} {runs[0].role} run(s) as SLURM job {array_id}"
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
    wait_for_jobs(list(waiting.values()), log, poll_s, wait_timeout_s)
    states = job_states(list(waiting.values()))
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


def _submit_array(runs: list[PlannedRun], deps: tuple, params: dict, profile: dict, sweep_dir: Path,
                  env_fields: dict, retries: int, results: Path) -> list:
    """Write each run's spec.json and submit the runs as one job array (one job if alone) after `deps`."""
    import submitit

    executor = submitit.AutoExecutor(folder=sweep_dir / "%j", cluster="slurm",
                                     slurm_max_num_timeout=profile["max_requeues"],
                                     **({"slurm_python": profile["python"]} if profile.get("python") else {}))
    p = dict(params, name=f"kd-{runs[0].role}")
    if deps:
        p["slurm_dependency"] = "afterok:" + ":".join(deps)
    executor.update_parameters(**p)
    callables = []
    for run in runs:
        RunFolder(results, run.run_id).write_spec(run.spec, run.info)  # the job's whole input is this file
        callables.append(SlurmRun(str(RunFolder(results, run.run_id).spec_json), env_fields, retries))
    try:
        with executor.batch():
            jobs = [executor.submit(c) for c in callables]
    except Exception as e:
        raise UserError(f"sbatch refused the {runs[0].role} array: {e}") from None
    return jobs


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


# ---- status and cancel -------------------------------------------------------------------------------------
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
