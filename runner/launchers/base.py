"""The one interface of every launcher, and the one place that decides whether a planned run runs now.

The plan's stages (teachers, students, ensembles, ...) only order the runs; what gates a run is its `depends`:
it starts once every run it depends on is DONE, so a student starts as soon as its own teacher is done, not when
every teacher is. A run whose dependency failed (and will not be retried) is skipped and reported. A failed run
is tried again while its failures number at most `retries`. A run claimed by another process (a second sweep on
the same results folder) is left to it. Launchers differ only in where runs execute.

With `LaunchOptions.cohort` (the default; `--no-cohort` turns it off) the runs that are ready together are
grouped into jobs (`jobs`): the runs of one stage that share data, seed, teacher run and protocol train as one
cohort (runner/cohort.py: one process, one batch stream, one teacher forward per batch), every other run alone.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ..claims import claim_alive
from ..claims import describe as describe_claim
from ..env import RunEnv
from ..execute import execute
from ..folder import RunFolder, State
from ..kinds import get_mode
from ..plan import PlannedRun

DEFAULT_RETRIES = 1


@dataclass
class LaunchOptions:
    """Launcher settings from the command line; each launcher reads the ones it has."""

    workers: int | None = None          # local, CPU: worker processes
    gpus: list[int] | None = None       # local: GPU ids
    runs_per_gpu: int = 1               # local: runs packed on one GPU
    profile: dict = field(default_factory=dict)  # slurm: the cluster profile with overrides applied
    wait: bool = False                  # slurm: stay until the jobs end
    cohort: bool = True                 # all: runs sharing data, seed, teacher and protocol train as one cohort


class Launcher(ABC):
    """Runs a plan somewhere. `launch` returns one record per planned run: its final record when it ended here
    (done / failed / skipped), or what became of it (`submitted`, `queued`) for launchers that hand runs to
    a queue and return before they end (`ends_runs` False)."""

    name = ""
    ends_runs = True

    def __init__(self, env: RunEnv, retries: int = DEFAULT_RETRIES, options: LaunchOptions | None = None):
        self.env, self.retries, self.options = env, retries, options or LaunchOptions()

    @abstractmethod
    def launch(self, stages: list[list[PlannedRun]]) -> list[dict]:
        ...


def retry_budget_left(folder: RunFolder, retries: int) -> bool:
    """Whether a FAILED run may run again: its failure is not deterministic (a divergence is) and it has
    failed at most `retries` times so far."""
    final = folder.read_final() or {}
    failures = folder.read_failures()
    if not failures:  # recorded before failures.json existed: a divergence said so in its error
        retryable = final.get("retryable", "diverged" not in str(final.get("error", "")))
        failures = [{"retryable": retryable}] * final.get("failures", 1)
    return bool(failures[-1].get("retryable", True)) and len(failures) <= retries


@dataclass
class Decision:
    action: str                       # run | wait | skip
    record: dict | None = None        # skip: the run's record (its final one, or why it is skipped)
    after: tuple[str, ...] = ()       # wait: dependencies this launcher still has to execute (or has queued)
    holder: dict | None = None        # wait: a live claim of another process on the run or a dependency


def decide(run: PlannedRun, results_dir: str, retries: int, pending: set[str]) -> Decision:
    """What to do with a run now. `pending` holds the run ids this launcher may still execute or has queued."""
    folder = RunFolder(results_dir, run.run_id)
    state = folder.state()
    if state == State.DONE:
        return Decision("skip", folder.read_final())
    if state == State.FAILED and not retry_budget_left(folder, retries):
        final = folder.read_final()
        return Decision("skip", {**final, "error": f"{final.get('error')} (failed {final.get('failures', 1)} "
                                                   f"time(s); not retried: --retries {retries})"})
    after, holder = [], None
    for dep in run.depends:
        dep_folder = RunFolder(results_dir, dep)
        if dep_folder.state() == State.DONE:
            continue
        if dep in pending:
            after.append(dep)
            continue
        holder = claim_alive(dep_folder.path)
        if holder is None:
            return Decision("skip", {"status": "skipped", "run_id": run.run_id,
                                     "error": f"its dependency {dep} is {dep_folder.state().value}, not DONE"})
    holder = claim_alive(folder.path) or holder
    if after or holder is not None:
        return Decision("wait", after=tuple(after), holder=holder)
    return Decision("run")


def flatten(stages: list[list[PlannedRun]]) -> list[PlannedRun]:
    """The plan's runs in stage order, each once."""
    seen, runs = set(), []
    for stage in stages:
        for run in stage:
            if run.run_id not in seen:
                seen.add(run.run_id)
                runs.append(run)
    return runs


def stage_index(stages: list[list[PlannedRun]]) -> dict[str, int]:
    """Run id -> the index of the first stage that holds it."""
    index = {}
    for i, stage in enumerate(stages):
        for run in stage:
            index.setdefault(run.run_id, i)
    return index


def jobs(ready: list[PlannedRun], stage_of: dict[str, int], cohort: bool) -> list[list[PlannedRun]]:
    """What executes runs that are ready together: with `cohort`, one job per cohort (the runs of one stage that
    share data, seed, teacher run and protocol and whose method trains in a cohort, when at least two do) and
    one per other run; without, one per run. In the order of `ready`."""
    if not cohort:
        return [[run] for run in ready]
    return get_mode("cohort").group(ready, lambda run: stage_of.get(run.run_id, 0))


def execute_job(job: list[PlannedRun], env: RunEnv, retries: int) -> list[dict]:
    """Execute one job here: a run alone (runner.execute) or a cohort; one record per run, in order."""
    if len(job) == 1:
        return [execute(job[0].spec, env, job[0].info, retries=retries)]
    return get_mode("cohort").execute([r.spec for r in job], env, [r.info for r in job], retries)


def describe_job(job: list[PlannedRun]) -> str:
    if len(job) == 1:
        return job[0].spec.describe()
    first = job[0].spec
    return (f"cohort of {len(job)} on {first.data.label} seed={first.seed}: "
            + ", ".join(f"{r.spec.what} [{r.run_id}]" for r in job))


def report_skip(env: RunEnv, run: PlannedRun, record: dict) -> None:
    if record.get("status") != "done":
        env.log(f"skip {run.spec.describe()}: {record.get('error')}")


def log_waiting(env: RunEnv, waiting: list[PlannedRun], said: set) -> None:
    """Say once per holder which run is waited for and who executes it."""
    for run in waiting:
        holder = claim_alive(RunFolder(env.results_dir, run.run_id).path)
        key = (run.run_id, (holder or {}).get("token"))
        if holder is not None and key not in said:
            said.add(key)
            env.log(f"waiting: {run.spec.describe()} is executed by {describe_claim(holder)}")
