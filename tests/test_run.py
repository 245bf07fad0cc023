"""One run: records, checkpoints, exact resume after SIGKILL, divergence, shared initial weights."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from runner.folder import RunFolder, State
from runner.spec import DataSpec, Protocol, RunSpec
from runner.store import read_json_checked
from models import build_seeded
from runner.env import RunEnv
from runner.execute import execute

DATA = DataSpec("cifar10", "synthetic", 256, 128)
PROTOCOL = Protocol(epochs=3, batch_size=32)
QUIET = dict(log=lambda s: None, deterministic=True)


def teacher_spec(epochs=3):
    return RunSpec(DATA, "ce", "resnet8", 0, Protocol(epochs=epochs, batch_size=32))


def test_run_records_and_skip_when_done(tmp_path):
    spec = teacher_spec()
    rec = execute(spec, RunEnv(results_dir=str(tmp_path), **QUIET))
    folder = RunFolder(tmp_path, spec.run_id)
    assert rec["status"] == "done" and folder.state() == State.DONE
    rows = folder.read_epochs()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.1, 0.01])  # /10 once 50% and 75% are done
    assert set(rows[0]["test"]) == {f"top{k}" for k in range(1, 6)}
    assert rec["best_top1"] == max(r["test"]["top1"] for r in rows)
    assert rec["last_top5"] == rows[-1]["test"]["top5"]
    assert not folder.ckpt.exists() and folder.model.exists()
    assert read_json_checked(folder.final)["run_id"] == spec.run_id
    stamp = folder.final.stat().st_mtime_ns
    execute(spec, RunEnv(results_dir=str(tmp_path), **QUIET))  # done: nothing is redone
    assert folder.final.stat().st_mtime_ns == stamp


def test_run_id_ignores_paths_and_covers_settings():
    a = teacher_spec()
    assert a.run_id == RunSpec.from_dict(json.loads(json.dumps(a.to_dict()))).run_id
    assert a.run_id != teacher_spec(epochs=4).run_id
    assert a.run_id != RunSpec(DATA, "ce", "resnet8", 1, a.protocol).run_id


def test_students_of_one_seed_share_initial_weights():
    a, b = build_seeded("resnet20", 10, 0), build_seeded("resnet20", 10, 0)
    c = build_seeded("resnet20", 10, 1)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def _run_in_subprocess(results: Path) -> subprocess.Popen:
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); import torch; torch.set_num_threads({torch.get_num_threads()})\n"
            "from runner.spec import RunSpec; from runner.env import RunEnv; from runner.execute import execute\n"
            f"spec = RunSpec.from_dict(json.loads({json.dumps(json.dumps(teacher_spec(4).to_dict()))}))\n"
            f"execute(spec, RunEnv(results_dir={str(results)!r}, deterministic=True))\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("after_epochs", [1, 2])
def test_sigkill_mid_epoch_then_resume_gives_identical_result(tmp_path, after_epochs):
    spec = teacher_spec(4)
    env = dict(**QUIET)
    reference = execute(spec, RunEnv(results_dir=str(tmp_path / "ref"), **env))
    folder = RunFolder(tmp_path / "killed", spec.run_id)
    proc = _run_in_subprocess(tmp_path / "killed")
    deadline = time.time() + 120
    while len(folder.read_epochs()) < after_epochs and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.15)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert folder.state() == State.PARTIAL, "killed before finishing"
    assert len(folder.read_epochs()) >= after_epochs
    resumed = execute(spec, RunEnv(results_dir=str(tmp_path / "killed"), **env))
    for key in [f"{w}_top{k}" for w in ("best", "last") for k in range(1, 6)] + ["model_sha256"]:
        assert resumed[key] == reference[key], key
    assert [r["losses"] for r in folder.read_epochs()] == \
        [r["losses"] for r in RunFolder(tmp_path / "ref", spec.run_id).read_epochs()]


def test_divergence_marks_failed_with_reason(tmp_path):
    spec = RunSpec(DATA, "ce", "resnet8", 0, Protocol(epochs=2, batch_size=32, lr=1e6))
    rec = execute(spec, RunEnv(results_dir=str(tmp_path), **QUIET))
    folder = RunFolder(tmp_path, spec.run_id)
    assert rec["status"] == "failed" and "diverged" in rec["error"]
    assert folder.state() == State.FAILED
    final = folder.read_final()
    assert "best_top1" not in final and "diverged" in final["error"]
    assert not folder.model.exists()


def test_corrupt_checkpoint_restarts_cleanly(tmp_path):
    spec = teacher_spec(2)
    env = RunEnv(results_dir=str(tmp_path / "a"), **QUIET)
    reference = execute(spec, env)
    folder = RunFolder(tmp_path / "b", spec.run_id)
    folder.path.mkdir(parents=True)
    (folder.path / "spec.json").write_text(RunFolder(tmp_path / "a", spec.run_id).spec_json.read_text())
    folder.ckpt.write_bytes(b"KDBENCH1" + b"\0" * 64)  # a damaged checkpoint
    again = execute(spec, RunEnv(results_dir=str(tmp_path / "b"), **QUIET))
    assert again["model_sha256"] == reference["model_sha256"]
