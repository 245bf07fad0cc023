"""SLURM cluster profiles: the YAML settings of one cluster (slurm/profiles/<name>.yaml, see example.yaml), with
command-line overrides on top, turned into submitit executor parameters."""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import yaml

from core.errors import UserError

ROOT = Path(__file__).resolve().parents[2]  # the project's import root: jobs get it on PYTHONPATH


def _profiles_dir():
    """The shipped profiles, read as package data (works from a checkout and from an installed wheel)."""
    return resources.files("slurm").joinpath("profiles")


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
MINIMA = {"timeout_min": 1, "gpus_per_run": 0, "cpus_per_run": 1, "mem_gb": 0.001, "array_parallelism": 1,
          "signal_delay_s": 0, "max_requeues": 0}
DEFAULTS = {"timeout_min": 240, "cpus_per_run": 1, "array_parallelism": 64, "signal_delay_s": 120,
            "max_requeues": 20}
# states in which a job may still run the run: it must not be submitted again meanwhile


def profile_names() -> list[str]:
    return sorted(p.name[:-len(".yaml")] for p in _profiles_dir().iterdir() if p.name.endswith(".yaml"))


def load_profile(name: str | None, overrides: dict | None = None) -> dict:
    """A cluster profile by name (slurm/profiles/<name>.yaml) or path, with `overrides` (None = unset) on top."""
    if not name:
        raise UserError("the slurm launcher needs --cluster-profile: one of " + ", ".join(profile_names()) +
                        " (slurm/profiles/), or the path of your own YAML file (see slurm/profiles/example.yaml)")
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") or os.sep in name):
        path = _profiles_dir().joinpath(f"{name}.yaml")
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
        low = MINIMA.get(key)
        try:
            if isinstance(value, bool) and kind is not bool:
                raise ValueError("a yes/no value where a number or text is expected")
            if kind is list:
                value = [str(v) for v in (value if isinstance(value, list) else [value])]
            elif kind is dict:
                if not isinstance(value, dict):
                    raise ValueError("expected a mapping")
            else:
                value = kind(value)
            if low is not None and value < low:
                raise ValueError(f"must be at least {low}")
        except (TypeError, ValueError) as e:
            raise UserError(f"cluster profile setting {key}={value!r}: expected {kind.__name__} ({e})") from None
        profile[key] = value
    profile["name"] = Path(path.name).stem
    return profile


def parse_set(items: list[str] | None) -> dict:
    """--slurm-set KEY=VALUE items (VALUE read as YAML, so lists and numbers work)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--slurm-set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            problem = str(e).splitlines()[0]
            raise UserError(f"--slurm-set {item!r}: the value is not valid YAML ({problem}); quote it, e.g. "
                            f"--slurm-set {key.strip()}='\"{value}\"'") from None
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
