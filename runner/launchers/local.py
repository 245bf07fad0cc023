"""The `local` launcher: each run in its own process, one run per GPU (or N CPU processes with the cores split
between them)."""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import time

from core.errors import UserError

from ..env import RunEnv
from ..execute import execute
from ..kinds import get_mode
from ..plan import PlannedRun
from ..progress import Sweep
from ..spec import RunSpec
from .base import Launcher, decide, describe_job, flatten, jobs, log_waiting, report_skip, stage_index

POLL_S = 2.0  # how often to look at runs held by other processes


def _child(conn, spec_dict: dict, info: dict, env_fields: dict, threads: int, retries: int) -> None:
    """Body of a run's own process. Its outcome is also in the run folder; the pipe only carries the record."""
    import torch

    from methods.registry import load_plugins

    torch.set_num_threads(threads)
    env = RunEnv(**env_fields)
    try:
        load_plugins(info.get("plugins"))  # the plugins its method comes from, as planned (sha256 checked)
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


def _child_cohort(conn, spec_dicts: list[dict], infos: list[dict], env_fields: dict, threads: int,
                  retries: int) -> None:
    """Body of a cohort's own process (runner/cohort.py): sends one record per run."""
    import torch

    torch.set_num_threads(threads)
    env = RunEnv(**env_fields)
    specs = [RunSpec.from_dict(d) for d in spec_dicts]
    try:
        records = get_mode("cohort").execute(specs, env, infos, retries, raise_user_errors=False)
    except KeyboardInterrupt:
        os._exit(130)
    conn.send(records)
    conn.close()
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


class LocalLauncher(Launcher):
    """Each run in a fresh process (a crash, an out-of-memory kill or a CUDA fault takes down that run only),
    at most one per slot: `runs_per_gpu` per GPU with CUDA_VISIBLE_DEVICES set to it, or `workers` CPU
    processes sharing the cores. Ctrl-C stops every run; each resumes from its last checkpoint next time."""

    name = "local"

    def launch(self, stages: list[list[PlannedRun]]) -> list[dict]:
        o = self.options
        return _launch(stages, self.env, o.workers, o.gpus, o.runs_per_gpu, self.retries, o.cohort)


def _launch(stages, env: RunEnv, workers, gpus, runs_per_gpu, retries, cohort: bool = False) -> list[dict]:
    slots, device, threads = _slots(env, workers, gpus, runs_per_gpu)
    free = list(slots)
    env_fields = {**env.fields(), "device": device}
    env.log(f"local pool: {len(slots)} worker(s), {'GPUs ' + str(sorted(set(slots))) if device == 'cuda' else 'CPU'}, "
            f"{threads} thread(s) each")
    ctx = mp.get_context("spawn")
    queue, records, said = flatten(stages), [], set()
    stage_of = stage_index(stages)
    sweep = Sweep(queue, env.results_dir, slots=len(slots))
    running: dict = {}  # sentinel -> (job: the runs it executes, process, connection, slot)

    def start(job: list[PlannedRun]) -> None:
        slot = free.pop(0)
        receiver, sender = ctx.Pipe(duplex=False)
        job_fields = {**env_fields, "progress": sweep.position(job)}
        if len(job) == 1:
            run = job[0]
            proc = ctx.Process(target=_child, name=f"run-{run.run_id}",
                               args=(sender, run.spec.to_dict(), run.info, job_fields, threads, retries))
        else:
            proc = ctx.Process(target=_child_cohort, name=f"cohort-{job[0].run_id}",
                               args=(sender, [r.spec.to_dict() for r in job], [r.info for r in job], job_fields,
                                     threads, retries))
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
        running[proc.sentinel] = (job, proc, receiver, slot)
        env.log(f"start {describe_job(job)}" + (f" on GPU {slot}" if slot is not None else ""))

    try:
        while queue or running:
            in_flight = {r.run_id for r in queue} | {r.run_id for v in running.values() for r in v[0]}
            waiting, ready = [], []
            for run in list(queue):
                if not free and not cohort:
                    break
                decision = decide(run, env.results_dir, retries, in_flight - {run.run_id})
                if decision.action == "wait":
                    waiting.append(run)
                    continue
                queue.remove(run)
                if decision.action == "skip":
                    report_skip(env, run, decision.record)
                    records.append(decision.record)
                    continue
                if cohort:
                    ready.append(run)  # grouped into jobs below
                    continue
                start([run])
            unstarted = []
            for job in jobs(ready, stage_of, cohort):
                if free:
                    start(job)
                else:
                    unstarted.extend(job)
            queue[:0] = unstarted  # no slot free: decided again at the next pass
            if not running:
                if queue:
                    log_waiting(env, waiting or queue, said)
                    time.sleep(POLL_S)
                continue
            # nothing can start before a process ends unless a slot is free and a run waits on another process
            ready_procs = mp.connection.wait(list(running), timeout=POLL_S if waiting and free else None)
            for sentinel in ready_procs:
                job, proc, receiver, slot = running.pop(sentinel)
                proc.join()
                free.append(slot)
                try:
                    got = receiver.recv() if receiver.poll() else None
                except (EOFError, OSError):  # it died before sending anything
                    got = None
                receiver.close()
                if got is None:  # the process died (killed, out of memory, segfault): resumable
                    got = [{"status": "crashed", "run_id": run.run_id,
                            "error": f"its process exited with code {proc.exitcode}; the run resumes from its "
                                     "last checkpoint next time"} for run in job]
                elif isinstance(got, dict):
                    got = [got]
                for run, record in zip(job, got):
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
