"""Launchers: `debug` runs everything in this process; `local` runs each run in its own process, one run per
GPU (or N CPU processes with the cores split between them); `slurm` (runner/slurm.py) submits job arrays.
The launcher is always named, never guessed.

The plan's stages (teachers, students, ensembles, ...) only order the runs; what gates a run is its
`depends`: it starts once every run it depends on is DONE, so a student starts as soon as its own teacher is
done, not when every teacher is. A run whose dependency failed (and will not be retried) is skipped and
reported. A run that fails records FAILED in its folder and does not stop the others; a failed run is tried
again while its failures number at most `retries`. A run claimed by another process (a second sweep on the
same results folder) is left to it and waited for, so its dependants can still run here.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import time

from .claims import claim_alive
from .claims import describe as describe_claim
from core.errors import UserError
from .folder import RunFolder, State
from .plan import PlannedRun
from .spec import RunSpec
from .train import RunEnv, execute

LAUNCHERS = ("debug", "local", "slurm")
DEFAULT_RETRIES = 1
POLL_S = 2.0  # how often a launcher looks at runs held by other processes


def retry_budget_left(folder: RunFolder, retries: int) -> bool:
    """Whether a FAILED run may run again: its failure is not deterministic (a divergence is) and it has
    failed at most `retries` times so far."""
    final = folder.read_final() or {}
    failures = folder.read_failures()
    if not failures:  # recorded before failures.json existed: a divergence said so in its error
        retryable = final.get("retryable", "diverged" not in str(final.get("error", "")))
        failures = [{"retryable": retryable}] * final.get("failures", 1)
    return bool(failures[-1].get("retryable", True)) and len(failures) <= retries


def decide(run: PlannedRun, results_dir: str, retries: int, pending: set[str]) -> tuple[str, dict | None]:
    """What to do with a run now: ("run", None), ("wait", None), or ("skip", record).

    `pending` holds the run ids this launcher may still execute, so a dependency among them is waited for."""
    folder = RunFolder(results_dir, run.run_id)
    state = folder.state()
    if state == State.DONE:
        return "skip", folder.read_final()
    if state == State.FAILED and not retry_budget_left(folder, retries):
        final = folder.read_final()
        return "skip", {**final, "error": f"{final.get('error')} (failed {final.get('failures', 1)} time(s); "
                                          f"not retried: --retries {retries})"}
    for dep in run.depends:
        dep_folder = RunFolder(results_dir, dep)
        if dep_folder.state() == State.DONE:
            continue
        if dep in pending or claim_alive(dep_folder.path) is not None:
            return "wait", None
        return "skip", {"status": "skipped", "run_id": run.run_id,
                        "error": f"its dependency {dep} is {dep_folder.state().value}, not DONE"}
    if claim_alive(folder.path) is not None:
        return "wait", None
    return "run", None


def _flatten(stages: list[list[PlannedRun]]) -> list[PlannedRun]:
    seen, runs = set(), []
    for stage in stages:
        for run in stage:
            if run.run_id not in seen:
                seen.add(run.run_id)
                runs.append(run)
    return runs


def _log_waiting(env: RunEnv, waiting: list[PlannedRun], said: set) -> None:
    for run in waiting:
        holder = claim_alive(RunFolder(env.results_dir, run.run_id).path)
        key = (run.run_id, (holder or {}).get("token"))
        if holder is not None and key not in said:
            said.add(key)
            env.log(f"waiting: {run.spec.describe()} is executed by {describe_claim(holder)}")


def launch_debug(stages: list[list[PlannedRun]], env: RunEnv, retries: int = DEFAULT_RETRIES) -> list[dict]:
    """Every run in this process, one after the other (tests, debugging with pdb)."""
    queue, records, said = _flatten(stages), [], set()
    while queue:
        progressed = False
        for run in list(queue):
            action, record = decide(run, env.results_dir, retries, {r.run_id for r in queue} - {run.run_id})
            if action == "wait":
                continue
            queue.remove(run)
            progressed = True
            if action == "skip":
                _report_skip(env, run, record)
                records.append(record)
                continue
            record = execute(run.spec, env, run.info, retries=retries)
            if record["status"] == "busy":  # claimed elsewhere between the check and the claim
                queue.append(run)
            else:
                records.append(record)
        if queue and not progressed:
            _log_waiting(env, queue, said)
            time.sleep(POLL_S)
    return records


def _report_skip(env: RunEnv, run: PlannedRun, record: dict) -> None:
    if record.get("status") == "done":
        return
    env.log(f"skip {run.spec.describe()}: {record.get('error')}")


# ---- local: one process per run ---------------------------------------------------------------------------
def _child(conn, spec_dict: dict, info: dict, env_fields: dict, threads: int, retries: int) -> None:
    """Body of a run's own process. Its outcome is also in the run folder; the pipe only carries the record."""
    import torch

    torch.set_num_threads(threads)
    env = RunEnv(**env_fields)
    try:
        record = execute(RunSpec.from_dict(spec_dict), env, info, retries=retries)
    except UserError as e:
        record = {"status": "failed", "run_id": RunSpec.from_dict(spec_dict).run_id, "error": str(e)}
    except KeyboardInterrupt:  # Ctrl-C: the run stays PARTIAL and resumes from its checkpoint next time
        os._exit(130)
    conn.send(record)
    conn.close()
    # everything the run wrote is fsync'ed already; skipping the interpreter's teardown (torch's thread pools
    # and static destructors) saves about 2 s per run
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _slots(env: RunEnv, workers: int | None, gpus: list[int] | None, runs_per_gpu: int) -> tuple[list, str, int]:
    """(slots, device, threads per run): one slot per concurrent run, a GPU id or None for CPU."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if gpus is None and env.device.startswith("cuda"):
        import torch

        gpus = list(range(torch.cuda.device_count()))
        if not gpus:
            raise UserError("--device cuda but no GPU is visible (CUDA_VISIBLE_DEVICES, driver?)")
    if gpus:
        if runs_per_gpu < 1:
            raise UserError("--runs-per-gpu must be at least 1")
        slots = [g for g in gpus for _ in range(runs_per_gpu)]
        return slots, "cuda", max(1, cpus // len(slots))
    n = workers or max(1, min(4, cpus // 2))
    if n < 1:
        raise UserError("--workers must be at least 1")
    return [None] * n, "cpu", max(1, cpus // n)


def launch_local(stages: list[list[PlannedRun]], env: RunEnv, workers: int | None = None,
                 gpus: list[int] | None = None, runs_per_gpu: int = 1,
                 retries: int = DEFAULT_RETRIES) -> list[dict]:
    """Each run in a fresh process (a crash, an out-of-memory kill or a CUDA fault takes down that run only),
    at most one per slot: `runs_per_gpu` per GPU with CUDA_VISIBLE_DEVICES set to it, or `workers` CPU
    processes sharing the cores. Ctrl-C stops every run; each resumes from its last checkpoint next time."""
    slots, device, threads = _slots(env, workers, gpus, runs_per_gpu)
    free = list(slots)
    env_fields = {f.name: getattr(env, f.name) for f in dataclasses.fields(env) if f.name != "log"}
    env_fields["device"] = device
    env.log(f"local pool: {len(slots)} worker(s), {'GPUs ' + str(sorted(set(slots))) if device == 'cuda' else 'CPU'}, "
            f"{threads} thread(s) each")
    ctx = mp.get_context("spawn")
    queue, records, said = _flatten(stages), [], set()
    running: dict = {}  # sentinel -> (run, process, connection, slot)
    try:
        while queue or running:
            in_flight = {r.run_id for r in queue} | {v[0].run_id for v in running.values()}
            waiting = []
            for run in list(queue):
                if not free:
                    break
                action, record = decide(run, env.results_dir, retries, in_flight - {run.run_id})
                if action == "wait":
                    waiting.append(run)
                    continue
                queue.remove(run)
                if action == "skip":
                    _report_skip(env, run, record)
                    records.append(record)
                    continue
                slot = free.pop(0)
                receiver, sender = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_child, name=f"run-{run.run_id}",
                                   args=(sender, run.spec.to_dict(), run.info, env_fields, threads, retries))
                saved = os.environ.get("CUDA_VISIBLE_DEVICES")
                if slot is not None:  # a spawned child takes its environment from ours at start
                    os.environ["CUDA_VISIBLE_DEVICES"] = str(slot)
                try:
                    proc.start()
                finally:
                    if slot is not None:
                        if saved is None:
                            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                        else:
                            os.environ["CUDA_VISIBLE_DEVICES"] = saved
                sender.close()
                running[proc.sentinel] = (run, proc, receiver, slot)
                env.log(f"start {run.spec.describe()}" + (f" on GPU {slot}" if slot is not None else ""))
            if not running:
                if queue:
                    _log_waiting(env, waiting or queue, said)
                    time.sleep(POLL_S)
                continue
            ready = mp.connection.wait(list(running), timeout=POLL_S if waiting else None)
            for sentinel in ready:
                run, proc, receiver, slot = running.pop(sentinel)
                proc.join()
                free.append(slot)
                try:
                    record = receiver.recv() if receiver.poll() else None
                except (EOFError, OSError):  # it died before sending anything
                    record = None
                receiver.close()
                if record is None:  # the process died (killed, out of memory, segfault): resumable
                    record = {"status": "crashed", "run_id": run.run_id,
                              "error": f"its process exited with code {proc.exitcode}; the run resumes from its "
                                       "last checkpoint next time"}
                if record["status"] == "busy":
                    queue.append(run)
                    continue
                env.log(f"{record['status']}: {run.spec.describe()}")
                records.append(record)
    except KeyboardInterrupt:
        env.log("interrupted: stopping every run; partial runs resume from their checkpoints next time")
        _stop_all([v[1] for v in running.values()])
        raise
    return records


def _stop_all(procs: list, grace_s: float = 15.0) -> None:
    """Interrupt each child (it stops between two operations and releases its claim), kill the stubborn."""
    for p in procs:
        if p.is_alive():
            try:
                os.kill(p.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
