"""Launchers: where the runs of a plan execute. One interface (`base.Launcher`), three back ends, always named
explicitly, never guessed: `debug` (this process), `local` (a process per run, a pool of GPUs or CPU workers),
`slurm` (job arrays through submitit). Back ends are imported on first use (submitit only for SLURM)."""
from __future__ import annotations

import importlib

from ..env import RunEnv
from .base import DEFAULT_RETRIES, LaunchOptions, Launcher, decide, retry_budget_left

LAUNCHERS: dict[str, str] = {
    "debug": "runner.launchers.debug:DebugLauncher",
    "local": "runner.launchers.local:LocalLauncher",
    "slurm": "runner.slurm.launcher:SlurmLauncher",
}


def make_launcher(name: str, env: RunEnv, retries: int = DEFAULT_RETRIES,
                  options: LaunchOptions | None = None) -> Launcher:
    module, cls = LAUNCHERS[name].split(":")
    return getattr(importlib.import_module(module), cls)(env, retries, options)


__all__ = ["DEFAULT_RETRIES", "LAUNCHERS", "LaunchOptions", "Launcher", "decide", "make_launcher",
           "retry_budget_left"]
