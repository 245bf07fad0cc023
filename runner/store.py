"""Crash-safe files of a run folder.

Every file is written to a temporary name, flushed, fsync'ed and renamed, so a reader sees the old file or the
new one, never half of one. Checkpoints and `final.json` also carry a sha256 of their content, so a file
truncated or damaged on disk (a full disk, a copy cut short) is detected instead of being trusted.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import time
from pathlib import Path

import torch

MAGIC = b"KDBENCH1"
FAULT_ENV = "KDBENCH_FAULT"


class CorruptFile(Exception):
    """A file failed its checksum or could not be parsed."""


def write_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fault = _fault_for(path) if FAULT_ENV in os.environ else None
    with open(tmp, "wb") as f:
        if fault and fault.point == "mid":
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            fault.fire()
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if fault and fault.point == "before-rename":
        fault.fire()
    os.replace(tmp, path)
    if fault and fault.point == "after-rename":
        fault.fire()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def save_checked(obj, path: Path) -> None:
    """torch.save `obj` with a header holding the sha256 of the payload. `obj` must hold only tensors and plain
    types (dict, list, tuple, str, int, float, bool, None): `load_checked` reads nothing else."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    write_atomic(path, MAGIC + hashlib.sha256(payload).digest() + payload)


def load_checked(path: Path, map_location="cpu"):
    raw = Path(path).read_bytes()
    if raw[:8] != MAGIC or len(raw) < 40:
        raise CorruptFile(f"{path}: not a kd-bench checkpoint or truncated header")
    digest, payload = raw[8:40], raw[40:]
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptFile(f"{path}: checksum mismatch (truncated or damaged)")
    # A results folder may be shared or copied from elsewhere, and a forged file can carry a recomputed checksum:
    # the payload is read with the weights-only unpickler, which rebuilds tensors and plain containers and refuses
    # any other global, so whatever the file holds, reading it executes nothing. Checkpoints hold only such types.
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:  # refused by the safe unpickler, or not a torch file at all
        raise CorruptFile(f"{path}: content refused ({describe_error(e)})") from None


def describe_error(e: BaseException, limit: int = 200) -> str:
    """One line saying why torch.load failed (its weights-only refusals span many lines of advice)."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text[text.index(marker) + len(marker):].strip().split("\n")[0].split(". ")[0]
    else:
        text = f"{type(e).__name__}: {text}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_json_checked(path: Path, obj: dict) -> None:
    body = json.dumps(obj, sort_keys=True, indent=1)
    digest = hashlib.sha256(body.encode()).hexdigest()
    write_atomic(path, json.dumps({"sha256": digest, "record": obj}, sort_keys=True, indent=1).encode())


def read_json_checked(path: Path) -> dict:
    try:
        wrapper = json.loads(Path(path).read_text())
        obj = wrapper["record"]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptFile(f"{path}: unreadable ({e})") from None
    body = json.dumps(obj, sort_keys=True, indent=1)
    if hashlib.sha256(body.encode()).hexdigest() != wrapper.get("sha256"):
        raise CorruptFile(f"{path}: checksum mismatch")
    return obj


# ---- fault injection (tests) -------------------------------------------------------------------------------
# The robustness tests must kill a run at exact points of a file write (half-written temporary file, complete
# but not yet renamed, renamed) and pause or fail a run at a known place, also inside SLURM jobs where the test
# cannot reach the process. An environment variable is the one channel that reaches all of them:
#
#   KDBENCH_FAULT="<path suffix>@<n>:<point>:<action>[;...]"
#
# applies at the n-th write_atomic (counted in this process) of a file whose path ends with the suffix (e.g.
# "<run_id>/ckpt.pt"). point: mid | before-rename | after-rename. action: kill (SIGKILL this process), pause
# (sleep up to 300 s, so a signal can be delivered at a known place), raise (OSError at the n-th write and
# every later one), raise-once. kill, pause and raise-once fire once per run folder (a marker file beside the
# target remembers it), so the process that resumes the run gets past them and meets the next entry: one value
# can list a whole sequence of crashes.

_write_counts: dict[tuple[str, int], int] = {}


class _Fault:
    def __init__(self, path: Path, n: int, point: str, action: str):
        self.path, self.n, self.point, self.action = path, n, point, action

    @property
    def marker(self) -> Path:
        return self.path.parent / f".fault-{self.path.name}-{self.n}-{self.point}-{self.action}"

    def fire(self) -> None:
        if self.action != "raise":
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.action == "pause":  # for up to 5 minutes, or until a test creates `<marker>.release`
            deadline = time.monotonic() + 300
            release = self.marker.with_name(self.marker.name + ".release")
            while time.monotonic() < deadline and not release.exists():  # signal handlers run during the sleeps
                time.sleep(0.1)
        else:
            raise OSError(f"injected fault writing {self.path} ({FAULT_ENV})")


def _fault_for(path: Path) -> _Fault | None:
    """The first entry of KDBENCH_FAULT that applies to this write and has not fired yet."""
    text = path.as_posix()
    chosen = None
    for i, item in enumerate(filter(None, os.environ[FAULT_ENV].split(";"))):
        try:
            target, rest = item.rsplit("@", 1)
            n, point, action = rest.split(":")
            n = int(n)
        except ValueError:
            raise ValueError(f"bad {FAULT_ENV} entry {item!r}: expected <path suffix>@<n>:<point>:<action>")
        if point not in ("mid", "before-rename", "after-rename") or \
                action not in ("kill", "pause", "raise", "raise-once"):
            raise ValueError(f"bad {FAULT_ENV} entry {item!r}: unknown point or action")
        if not text.endswith(target):
            continue
        key = (text, i)
        _write_counts[key] = _write_counts.get(key, 0) + 1
        count = _write_counts[key]
        fault = _Fault(path, n, point, action)
        if chosen is None and (count == n or (action == "raise" and count > n)) \
                and (action == "raise" or not fault.marker.exists()):
            chosen = fault
    return chosen
