"""No wrong number reaches a table: failures of the machine are not results, two sweeps that overlap in time
execute each run once."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

import runner.execute
import runner.train
from conftest import ROOT
from runner.env import RunEnv
from runner.execute import execute
from runner.folder import RunFolder, State, iter_folders
from runner.launchers import decide
from runner.plan import PlannedRun, PlanRequest, plan
from runner.spec import DataSpec, Protocol, RunSpec

SPEC = RunSpec(DataSpec("cifar10", "synthetic", 64, 32), "ce", "resnet8", 0, Protocol(epochs=2, batch_size=32))
ENV = dict(deterministic=True, measure_repeats=0, log=lambda s: None)


def _fail_in_epoch(monkeypatch, epoch: int, exc: BaseException) -> None:
    real = runner.train.Run._train_epoch

    def train_epoch(self, e, *args, **kwargs):
        if e == epoch:
            raise exc
        return real(self, e, *args, **kwargs)

    monkeypatch.setattr(runner.train.Run, "_train_epoch", train_epoch)


@pytest.mark.parametrize("exc", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                 OSError(errno.ENOSPC, "No space left on device"),
                                 RuntimeError("CUDA error: an illegal memory access was encountered")],
                         ids=["oom", "disk-full", "gpu-fault"])
def test_a_machine_failure_is_not_a_result_and_the_run_resumes(tmp_path, monkeypatch, exc):
    folder = RunFolder(tmp_path, SPEC.run_id)
    with monkeypatch.context() as m:
        _fail_in_epoch(m, 1, exc)
        record = execute(SPEC, RunEnv(results_dir=str(tmp_path), **ENV), retries=0)
    assert record["status"] == "environment" and "resumes" in record["error"]
    assert folder.state() == State.PARTIAL, "nothing recorded as FAILED"
    assert folder.read_failures() == [], "no retry spent"
    assert decide(PlannedRun(SPEC, "teacher"), str(tmp_path), 0, set()).action == "run", "even with --retries 0"
    assert "stopped by the machine" in folder.log.read_text()
    record = execute(SPEC, RunEnv(results_dir=str(tmp_path), **ENV), retries=0)
    assert record["status"] == "done" and "resumed after epoch 1" in folder.log.read_text()


def test_a_full_disk_while_recording_a_failure_is_reported_not_raised(tmp_path, monkeypatch):
    _fail_in_epoch(monkeypatch, 0, ValueError("a bug in a method"))

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner.execute, "write_json_checked", full_disk)
    record = execute(SPEC, RunEnv(results_dir=str(tmp_path), **ENV), retries=0)
    assert record["status"] == "environment" and "disk full" in record["error"]
    assert RunFolder(tmp_path, SPEC.run_id).state() == State.PARTIAL


def test_two_sweeps_that_overlap_in_time_execute_each_run_once(tmp_path):
    """Sweep A is held (by an injected pause) while it owns the teacher's claim; sweep B starts then, so the two
    provably overlap. B waits for the teacher instead of training it, and every run trains exactly once."""
    tiny = ["--preset", "smoke", "--teacher", "resnet8", "--epochs", "1", "--train-size", "64", "--test-size", "32"]
    teacher = plan(PlanRequest(methods=["st"], preset="smoke", teacher="resnet8", epochs=1, train_size=64,
                               test_size=32))[0][0]
    cmd = [sys.executable, str(ROOT / "benchmark.py"), "--methods", "st", *tiny, "--results-dir", str(tmp_path)]
    env = {**os.environ, "KDBENCH_CLAIM_HEARTBEAT_S": "1"}
    a = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**env, "KDBENCH_FAULT": f"{teacher.run_id}/ckpt.pt@1:after-rename:pause"})
    marker = RunFolder(tmp_path, teacher.run_id).path / ".fault-ckpt.pt-1-after-rename-pause"
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert a.poll() is None and time.monotonic() < deadline, "sweep A never reached its pause"
        time.sleep(0.2)
    b = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    b_out: list[str] = []
    reader = threading.Thread(target=lambda: b_out.extend(b.stdout), daemon=True)
    reader.start()
    while not any("waiting:" in line and teacher.run_id in line for line in b_out):
        assert b.poll() is None and time.monotonic() < deadline, f"sweep B did not wait: {''.join(b_out)}"
        time.sleep(0.2)
    marker.with_name(marker.name + ".release").touch()  # A goes on; B, waiting on A's claim, follows
    a_out = a.communicate(timeout=600)[0]
    b.wait(timeout=600)
    reader.join(timeout=10)
    assert (a.returncode, b.returncode) == (0, 0), a_out + "".join(b_out)
    folders = list(iter_folders(tmp_path))
    assert len(folders) == 3 and all(f.state() == State.DONE for f in folders)
    assert [f.log.read_text().count("] training ") for f in folders] == [1, 1, 1], "each run trained once"
