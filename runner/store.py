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
from pathlib import Path

import torch

MAGIC = b"KDBENCH1"


class CorruptFile(Exception):
    """A file failed its checksum or could not be parsed."""


def write_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def save_checked(obj, path: Path) -> None:
    """torch.save `obj` with a header holding the sha256 of the payload."""
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
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)


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
