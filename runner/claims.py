"""Exclusive claims on run folders, so that a run is executed by one process at a time.

Two sweeps started at once on the same results folder (two terminals, a local pool and a SLURM array, two
SLURM arrays from two submissions) would otherwise train the same run twice, and both would write its
checkpoint. Before executing a run, a process writes `claim.json` into the run folder and keeps it fresh with a
heartbeat (its mtime, touched every few seconds); everyone else sees the run as busy and leaves it alone.

A claim is taken over when its holder is known dead, without waiting:
- same host and boot, and its pid is gone (or reused: the process start time differs) -- e.g. after SIGKILL;
- the same SLURM job, restarted (a requeue after a timeout or a preemption): its old incarnation is dead;
- another SLURM job that squeue no longer lists (cancelled, or killed with its node);
and otherwise when its heartbeat is older than `stale_after` seconds (a node that died, a lost network).

Every read-check-write of the claim file happens under an flock on `.claim.lock` beside it, which the kernel
releases when a process dies, so two contenders can never both win. (On a file system without locks the flock
is skipped; the claim then still protects against everything but an exact tie.) A holder whose heartbeat finds
the claim no longer its own (taken over while it was frozen) marks itself lost; the run checks this before each
checkpoint and stops instead of overwriting the new holder's files.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

CLAIM = "claim.json"
LOCK = ".claim.lock"


class ClaimLost(Exception):
    """This process's claim was taken over: another process now executes the run."""


def _settings() -> tuple[float, float]:
    """(heartbeat interval, stale after) in seconds. Environment overrides exist for tests."""
    beat = float(os.environ.get("KDBENCH_CLAIM_HEARTBEAT_S", 15))
    stale = float(os.environ.get("KDBENCH_CLAIM_STALE_S", 300))
    return beat, max(stale, 3 * beat)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The process start time in clock ticks since boot (field 22 of /proc/pid/stat), None if no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _slurm_identity() -> dict:
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return {}
    job = env["SLURM_JOB_ID"]
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return {"slurm_job": job, "slurm_restart": int(env.get("SLURM_RESTART_COUNT", 0) or 0)}


def me() -> dict:
    """Who this process is, as written into a claim."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": pid, "start_time": _start_time(pid),
            **_slurm_identity()}


def _slurm_job_gone(job: str) -> bool:
    """True if SLURM says this job is no longer queued or running (cancelled, killed, ended); False if it is,
    or if SLURM cannot be asked (not a SLURM machine)."""
    if shutil.which("squeue") is None:
        return False
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if out.returncode == 0:
        return not out.stdout.strip()
    return "Invalid job id" in out.stderr  # purged from the controller: long over


def holder_is_dead(holder: dict, mine: dict, ask_slurm: bool = False) -> str | None:
    """Why the holder of a claim is certainly gone, or None if it may be alive. `ask_slurm` also asks squeue
    about a holder's SLURM job (only when taking a claim, to spare the controller)."""
    if holder.get("slurm_job") and holder.get("slurm_job") == mine.get("slurm_job") \
            and holder.get("slurm_restart", 0) < mine.get("slurm_restart", 0):
        return "its SLURM job was requeued"
    if holder.get("host") == mine["host"] and holder.get("boot_id") == mine["boot_id"]:
        if _start_time(holder.get("pid", -1)) != holder.get("start_time"):
            return f"process {holder.get('pid')} on this host is gone"
        return None
    if ask_slurm and holder.get("slurm_job") and holder.get("slurm_job") != mine.get("slurm_job") \
            and _slurm_job_gone(holder["slurm_job"]):
        return f"its SLURM job {holder['slurm_job']} has ended"  # e.g. cancelled and killed on another node
    return None


def describe(holder: dict | None) -> str:
    if not holder:
        return "nobody"
    where = f"{holder.get('host')}:{holder.get('pid')}"
    if holder.get("slurm_job"):
        where += f" (SLURM job {holder['slurm_job']})"
    if "age_s" in holder:
        where += f", heartbeat {holder['age_s']:.0f}s ago"
    return where


@contextlib.contextmanager
def _locked(folder: Path):
    fd = os.open(folder / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # e.g. a network file system without lock support
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        yield
    finally:
        os.close(fd)  # releases the flock


def read_claim(folder: Path) -> dict | None:
    """The current claim with its heartbeat age (`age_s`), or None."""
    path = Path(folder) / CLAIM
    try:
        holder = json.loads(path.read_text())
        holder["age_s"] = max(0.0, time.time() - path.stat().st_mtime)
        return holder
    except (OSError, ValueError):
        return None


def claim_alive(folder: Path) -> dict | None:
    """The claim if its holder may still be running (for status displays and waiting), else None."""
    holder = read_claim(folder)
    if holder is None:
        return None
    _, stale = _settings()
    if holder["age_s"] > stale or holder_is_dead(holder, me()):
        return None
    return holder


class Claim:
    """An exclusive, heartbeated claim on one run folder. Use `acquire()` then `release()`."""

    def __init__(self, folder: str | Path, log=None):
        self.folder = Path(folder)
        self.token = uuid.uuid4().hex
        self.identity = {**me(), "token": self.token}
        self.holder: dict | None = None  # who holds it, after a failed acquire()
        self.lost = False
        self._log = log or (lambda msg: None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> Path:
        return self.folder / CLAIM

    def acquire(self) -> bool:
        """Take the claim if it is free, stale or held by a dead process; False if someone else holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        beat, stale = _settings()
        with _locked(self.folder):
            holder = read_claim(self.folder)
            if holder is not None and holder.get("token") != self.token:
                why = holder_is_dead(holder, self.identity, ask_slurm=True)
                if why is None and holder["age_s"] > stale:
                    why = f"its heartbeat is {holder['age_s']:.0f}s old (limit {stale:.0f}s)"
                if why is None:
                    self.holder = holder
                    return False
                self._log(f"taking over the claim of {describe(holder)}: {why}")
            tmp = self.folder / f".{CLAIM}.{self.token}"
            tmp.write_text(json.dumps({**self.identity, "since": time.time()}, sort_keys=True))
            os.replace(tmp, self.path)
        self._thread = threading.Thread(target=self._beat, args=(beat,), daemon=True,
                                        name=f"claim-heartbeat-{self.folder.name}")
        self._thread.start()
        return True

    def owned(self) -> bool:
        holder = read_claim(self.folder)
        return holder is not None and holder.get("token") == self.token

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                with _locked(self.folder):
                    if self.owned():
                        os.utime(self.path)
                        continue
            except OSError:
                continue  # a file system hiccup: try again at the next beat; staleness is judged by others
            self.lost = True
            self._log(f"claim on {self.folder.name} was taken over by {describe(read_claim(self.folder))}")
            return

    def check(self) -> None:
        """Raise ClaimLost if another process took the run over (called before each checkpoint)."""
        if self.lost or not self.owned():
            self.lost = True
            raise ClaimLost(f"run {self.folder.name} is now executed by {describe(read_claim(self.folder))}")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            with _locked(self.folder):
                if self.owned():
                    self.path.unlink()
        except OSError:
            pass


def wait_released(folders: list[Path], poll_s: float = 2.0, on_wait=None) -> None:
    """Block until none of these run folders is claimed by a live holder."""
    while True:
        busy = [f for f in folders if claim_alive(f) is not None]
        if not busy:
            return
        if on_wait is not None:
            on_wait(busy)
        time.sleep(poll_s)
