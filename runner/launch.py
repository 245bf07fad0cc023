"""Launchers: `debug` runs everything in this process; `local` keeps a pool of worker processes, one run per
GPU (or N CPU processes with the cores split between them). The launcher is always named, never guessed.

Stages run in order; a run whose dependency (its teacher) is not DONE is skipped and reported, not started.
A run that fails records FAILED in its folder and does not stop the others.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import torch

from .folder import RunFolder, State
from .plan import PlannedRun
from .spec import RunSpec
from .train import RunEnv, execute

LAUNCHERS = ("debug", "local")


def _runnable(stage: list[PlannedRun], env: RunEnv) -> list[PlannedRun]:
    todo = []
    for run in stage:
        state = RunFolder(env.results_dir, run.run_id).state()
        if state in (State.DONE, State.FAILED):
            continue
        missing = [d for d in run.depends if RunFolder(env.results_dir, d).state() != State.DONE]
        if missing:
            env.log(f"skip {run.spec.describe()}: its teacher run {missing[0]} is not done")
            continue
        todo.append(run)
    return todo


def launch_debug(stages: list[list[PlannedRun]], env: RunEnv) -> list[dict]:
    records = []
    for stage in stages:
        for run in _runnable(stage, env):
            records.append(execute(run.spec, env, run.info))
    return records


# ---- local pool -------------------------------------------------------------------------------------------
_worker_device = "cpu"


def _init_worker(slots, threads: int) -> None:
    global _worker_device
    slot = slots.get()
    if slot is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot)
        _worker_device = "cuda"
    torch.set_num_threads(threads)


def _work(spec_dict: dict, info: dict, env_fields: dict) -> dict:
    env = RunEnv(**env_fields, device=_worker_device)
    return execute(RunSpec.from_dict(spec_dict), env, info)


def launch_local(stages: list[list[PlannedRun]], env: RunEnv, workers: int | None = None,
                 gpus: list[int] | None = None, runs_per_gpu: int = 1) -> list[dict]:
    if gpus is None:
        gpus = list(range(torch.cuda.device_count())) if env.device.startswith("cuda") else []
    ctx = mp.get_context("spawn")
    slots = ctx.Queue()
    if gpus:
        n = len(gpus) * runs_per_gpu
        for g in gpus * runs_per_gpu:
            slots.put(g)
        threads = max(1, (os.cpu_count() or 1) // n)
    else:
        n = workers or max(1, min(4, (os.cpu_count() or 1) // 2))
        for _ in range(n):
            slots.put(None)
        threads = max(1, (os.cpu_count() or 1) // n)
    env_fields = {f.name: getattr(env, f.name) for f in dataclasses.fields(env) if f.name not in ("log", "device")}
    env.log(f"local pool: {n} worker(s), {'GPUs ' + str(gpus) if gpus else 'CPU'}, {threads} thread(s) each")
    records = []
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=(slots, threads)) as pool:
        try:
            for stage in stages:
                futures = {pool.submit(_work, r.spec.to_dict(), r.info, env_fields): r
                           for r in _runnable(stage, env)}
                pending = set(futures)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        run = futures[fut]
                        try:
                            rec = fut.result()
                        except Exception as e:  # the worker itself died: the run stays PARTIAL, resumable
                            rec = {"status": "crashed", "run_id": run.run_id, "error": f"{type(e).__name__}: {e}"}
                        env.log(f"{rec['status']}: {run.spec.describe()}")
                        records.append(rec)
        except KeyboardInterrupt:
            env.log("interrupted: stopping workers; partial runs resume from their checkpoints next time")
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return records
