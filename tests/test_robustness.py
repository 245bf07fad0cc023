"""Nothing lost, nothing twice: exclusive claims, SIGKILL at every write point, damaged files, bounded retries,
two sweeps at once, and a local pool that survives a killed run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT
from runner import claims
from runner.claims import Claim, ClaimLost
from runner.folder import RunFolder, State, iter_folders
from runner.launchers import LaunchOptions, make_launcher, retry_budget_left
from runner.plan import PlannedRun
from runner.spec import DataSpec, Protocol, RunSpec
from runner.store import load_checked, write_json_checked
from runner.env import RunEnv
from runner.execute import execute

SPEC = RunSpec(DataSpec("cifar10", "synthetic", 64, 32), "ce", "resnet8", 0, Protocol(epochs=2, batch_size=32))
ENV = dict(deterministic=True, measure_repeats=0, log=lambda s: None)
METRICS = [f"{w}_top{k}" for w in ("best", "last") for k in range(1, 6)] + ["model_sha256"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """SPEC trained once, never interrupted: what every interrupted or damaged copy must end at."""
    results = tmp_path_factory.mktemp("reference")
    record = execute(SPEC, RunEnv(results_dir=str(results), **ENV))
    assert record["status"] == "done"
    return record, RunFolder(results, SPEC.run_id)


def same_result(record: dict, reference: dict) -> bool:
    return all(record[k] == reference[k] for k in METRICS)


def training_starts(folder: RunFolder) -> int:
    return folder.log.read_text().count("] training ") if folder.log.exists() else 0


# ---- claims --------------------------------------------------------------------------------------------------
def test_claim_is_exclusive_heartbeats_and_is_taken_from_the_dead(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_CLAIM_HEARTBEAT_S", "0.1")
    monkeypatch.setenv("KDBENCH_CLAIM_STALE_S", "60")
    a, b = Claim(tmp_path / "run"), Claim(tmp_path / "run")
    assert a.acquire()
    assert not b.acquire() and b.holder["token"] == a.token, "a live holder keeps its claim"
    first = a.path.stat().st_mtime
    time.sleep(0.5)
    assert a.path.stat().st_mtime > first, "the heartbeat keeps the claim fresh"
    a.release()
    assert not a.path.exists() and b.acquire()
    # someone else took the run over (b's process was frozen past the stale limit): b must stop, not write
    taken = json.loads(b.path.read_text())
    b.path.write_text(json.dumps({**taken, "token": "someone-else"}))
    with pytest.raises(ClaimLost):
        b.check()
    b.release()
    assert json.loads(b.path.read_text())["token"] == "someone-else", "release leaves a foreign claim alone"

    # a holder on this host whose process is gone is taken over at once (e.g. after SIGKILL)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ghost = {**claims.me(), "pid": int(dead.stdout), "start_time": "1", "token": "ghost"}
    (tmp_path / "dead").mkdir()
    (tmp_path / "dead" / "claim.json").write_text(json.dumps(ghost))
    c = Claim(tmp_path / "dead")
    assert c.acquire()
    c.release()

    # a holder elsewhere is trusted while its heartbeat is fresh, and taken over once it is stale
    (tmp_path / "far").mkdir()
    far = tmp_path / "far" / "claim.json"
    far.write_text(json.dumps({"host": "node-elsewhere", "boot_id": "x", "pid": 1, "token": "far"}))
    assert not Claim(tmp_path / "far").acquire()
    os.utime(far, (time.time() - 120, time.time() - 120))
    d = Claim(tmp_path / "far")
    assert d.acquire()
    d.release()


_RACE = """
import sys, time
sys.path.insert(0, {root!r})
from runner.claims import Claim
while time.time() < {start}:
    time.sleep(0.001)
c = Claim({folder!r})
won = c.acquire()
print("won" if won else "lost", flush=True)
time.sleep(1.0)
if won:
    c.release()
"""


@pytest.mark.parametrize("stale_claim", [False, True])
def test_claim_race_has_exactly_one_winner(tmp_path, stale_claim):
    folder = tmp_path / "run"
    folder.mkdir()
    if stale_claim:  # everyone races to take over the same stale claim
        path = folder / "claim.json"
        path.write_text(json.dumps({"host": "node-elsewhere", "boot_id": "x", "pid": 1, "token": "old"}))
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    start = time.time() + 1.5
    code = _RACE.format(root=str(ROOT), start=start, folder=str(folder))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(8)]
    outcomes = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]


# ---- SIGKILL at every write point ----------------------------------------------------------------------------
_EXECUTE = """
import sys, json
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads({threads})
from runner.spec import RunSpec
from runner.env import RunEnv
from runner.execute import execute
spec = RunSpec.from_dict(json.loads({spec!r}))
record = execute(spec, RunEnv(results_dir={results!r}, deterministic=True, measure_repeats=0, log=lambda s: None))
print(record["status"])
"""


def _run_process(results, faults: str) -> subprocess.CompletedProcess:
    code = _EXECUTE.format(root=str(ROOT), threads=torch.get_num_threads(), spec=json.dumps(SPEC.to_dict()),
                           results=str(results))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "KDBENCH_FAULT": faults})


def test_sigkill_during_every_write_resumes_to_the_identical_result(tmp_path, reference):
    """One run, killed five times in a row, each time inside a different write of its files: during and right
    after a checkpoint write, with a complete checkpoint not yet renamed, while saving the model and while
    writing final.json. Each process resumes where the last left; the end is identical to the reference."""
    ref_record, ref_folder = reference
    rid = SPEC.run_id
    chain = [f"{rid}/ckpt.pt@1:mid:kill", f"{rid}/ckpt.pt@1:after-rename:kill",
             f"{rid}/ckpt.pt@1:before-rename:kill", f"{rid}/model.pt@1:mid:kill",
             f"{rid}/final.json@1:mid:kill"]
    folder = RunFolder(tmp_path, rid)

    def ckpt_epoch():
        return load_checked(folder.ckpt)["epoch"] if folder.ckpt.exists() else None

    expected_after = [  # (checkpointed epoch, rows in epochs.jsonl) after each kill
        (None, 0),  # killed half-way through the first checkpoint: nothing saved, a half temporary file
        (1, 0),     # the checkpoint of epoch 1 is in place, the epoch log not yet written
        (1, 1),     # resumed (log re-synced from the checkpoint), epoch 2 trained, its checkpoint never renamed
        (2, 2),     # both epochs saved, killed writing model.pt
        (2, 2),     # killed writing final.json: still PARTIAL, finishing is simply redone
    ]
    for i, want in enumerate(expected_after):
        out = _run_process(tmp_path, ";".join(chain))
        assert out.returncode == -signal.SIGKILL, f"kill {i + 1} did not happen: {out.stdout} {out.stderr}"
        fired = sorted(p.name for p in folder.path.glob(".fault-*"))
        assert len(fired) == i + 1, fired
        assert folder.state() == State.PARTIAL, f"after kill {i + 1}"
        assert (ckpt_epoch(), len(folder.read_epochs())) == want, f"after kill {i + 1} ({chain[i]})"
        if i == 0:
            assert list(folder.path.glob(".ckpt.pt.tmp*")), "the half-written checkpoint stays a temporary file"
    out = _run_process(tmp_path, ";".join(chain))
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr
    final = folder.read_final()
    assert same_result(final, ref_record)
    assert [r["losses"] for r in folder.read_epochs()] == [r["losses"] for r in ref_folder.read_epochs()]
    assert not list(folder.path.glob(".*.tmp*")), "temporary files of the killed writers are cleaned up"
    assert not folder.ckpt.exists() and not (folder.path / "claim.json").exists()


# ---- damaged files -------------------------------------------------------------------------------------------
def test_damaged_final_json_is_reported_and_never_trusted(tmp_path, reference):
    ref_record, ref_folder = reference
    shutil.copytree(ref_folder.path, tmp_path / "runs" / SPEC.run_id)
    folder = RunFolder(tmp_path, SPEC.run_id)
    text = folder.final.read_text()
    key = f'"best_top1": {ref_record["best_top1"]}'
    assert key in text
    folder.final.write_text(text.replace(key, '"best_top1": 99.99'))  # valid JSON, wrong number
    assert folder.state() == State.PARTIAL, "a final.json failing its checksum is not a result"
    assert "damaged" in folder.final_problem()
    record = execute(SPEC, RunEnv(results_dir=str(tmp_path), **ENV))
    assert same_result(record, ref_record)
    assert "final.json is damaged" in folder.log.read_text()
    folder.final.write_bytes(folder.final.read_bytes()[:50])  # truncated
    assert folder.state() == State.PARTIAL and "damaged" in folder.final_problem()


def test_truncated_checkpoint_is_detected_and_the_run_restarts_cleanly(tmp_path, reference, monkeypatch):
    ref_record, _ = reference
    folder = RunFolder(tmp_path, SPEC.run_id)
    monkeypatch.setenv("KDBENCH_FAULT", f"{SPEC.run_id}/ckpt.pt@2:before-rename:raise")
    stopped = execute(SPEC, RunEnv(results_dir=str(tmp_path), **ENV))
    assert stopped["status"] == "failed" and load_checked(folder.ckpt)["epoch"] == 1
    monkeypatch.delenv("KDBENCH_FAULT")
    folder.ckpt.write_bytes(folder.ckpt.read_bytes()[:-1000])
    record = execute(SPEC, RunEnv(results_dir=str(tmp_path), **ENV))
    assert same_result(record, ref_record)
    assert "checkpoint unusable" in folder.log.read_text()


# ---- retries -------------------------------------------------------------------------------------------------
TINY = ["--preset", "smoke", "--teacher", "resnet8", "--epochs", "1", "--train-size", "64", "--test-size", "32"]


def test_failed_run_is_retried_at_most_retries_times_and_shown_failed(tmp_path, monkeypatch, capsys):
    import benchmark
    from runner.plan import PlanRequest, plan

    args = ["--methods", "st", *TINY, "--results-dir", str(tmp_path)]
    teacher_run = plan(PlanRequest(methods=["st"], preset="smoke", teacher="resnet8", epochs=1, train_size=64,
                                   test_size=32))[0][0]
    teacher = RunFolder(tmp_path, teacher_run.run_id)
    monkeypatch.setenv("KDBENCH_FAULT", f"{teacher_run.run_id}/ckpt.pt@1:mid:raise")  # fails every attempt
    assert benchmark.main([*args, "--retries", "1"]) == 1
    assert teacher.state() == State.FAILED and training_starts(teacher) == 2, "first attempt + 1 retry"
    assert len(teacher.read_failures()) == 2
    capsys.readouterr()
    assert benchmark.main(["status", *args]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if teacher_run.run_id in l)
    assert line.startswith("FAILED") and "failed 2x" in line and "injected fault" in line
    assert "DONE 1" in out  # the student baseline needs no teacher
    assert benchmark.main([*args, "--retries", "1"]) == 1
    assert training_starts(teacher) == 2, "retries used up: not run again"
    monkeypatch.delenv("KDBENCH_FAULT")
    assert benchmark.main([*args, "--retries", "2"]) == 0, "one more retry allowed: it succeeds, students follow"
    assert training_starts(teacher) == 3 and teacher.state() == State.DONE


def test_divergence_is_never_retried(tmp_path):
    folder = RunFolder(tmp_path, "x")
    folder.path.mkdir(parents=True)
    write_json_checked(folder.final, {"status": "failed", "error": "loss diverged", "failures": 1})
    write_json_checked(folder.failures, {"failures": [{"error": "loss diverged", "retryable": False}]})
    assert not retry_budget_left(folder, retries=5)
    write_json_checked(folder.failures, {"failures": [{"error": "OSError", "retryable": True}]})
    assert retry_budget_left(folder, retries=1) and not retry_budget_left(folder, retries=0)
    folder.failures.unlink()  # a failure recorded before failures.json existed
    assert not retry_budget_left(folder, retries=5), "its error says it diverged"


# ---- concurrency and the local pool --------------------------------------------------------------------------
def test_two_sweeps_started_at_once_execute_each_run_once(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmark.py"), "--methods", "st", *TINY, "--results-dir", str(tmp_path)]
    env = {**os.environ, "KDBENCH_CLAIM_HEARTBEAT_S": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folders = list(iter_folders(tmp_path))
    assert len(folders) == 3 and all(f.state() == State.DONE for f in folders)
    assert [training_starts(f) for f in folders] == [1, 1, 1], "every run trained exactly once"


def test_local_pool_survives_a_killed_run_which_then_resumes(tmp_path, monkeypatch):
    other = RunSpec(SPEC.data, "ce", "resnet8", 1, SPEC.protocol)
    stages = [[PlannedRun(SPEC, "teacher"), PlannedRun(other, "teacher")]]
    env = RunEnv(results_dir=str(tmp_path), **ENV)
    monkeypatch.setenv("KDBENCH_FAULT", f"{SPEC.run_id}/ckpt.pt@2:mid:kill")  # its process dies in epoch 2
    records = {r["run_id"]: r for r in make_launcher("local", env, 0, LaunchOptions(workers=2)).launch(stages)}
    assert records[SPEC.run_id]["status"] == "crashed" and records[other.run_id]["status"] == "done"
    folder = RunFolder(tmp_path, SPEC.run_id)
    assert folder.state() == State.PARTIAL and load_checked(folder.ckpt)["epoch"] == 1
    records = {r["run_id"]: r for r in make_launcher("local", env, 0, LaunchOptions(workers=2)).launch(stages)}
    assert records[SPEC.run_id]["status"] == "done" and training_starts(folder) == 2
    assert "resumed after epoch 1" in folder.log.read_text()
    assert records[other.run_id]["status"] == "done" and training_starts(RunFolder(tmp_path, other.run_id)) == 1


def test_debug_launcher_waits_for_a_dependency_held_by_another_process(tmp_path, monkeypatch):
    """A second sweep meeting a teacher that another process is training waits for it, then trains the
    students itself, rather than skipping them or training the teacher again."""
    monkeypatch.setenv("KDBENCH_CLAIM_HEARTBEAT_S", "0.2")
    teacher = SPEC
    student = RunSpec(SPEC.data, "ce", "resnet8", 0, Protocol(epochs=1, batch_size=32))  # stands in for a student
    holder = Claim(RunFolder(tmp_path, teacher.run_id).path)
    assert holder.acquire()

    def finish_teacher_elsewhere():
        time.sleep(1.0)
        holder.release()  # e.g. the other sweep was interrupted: this one must now train the teacher itself

    import threading
    t = threading.Thread(target=finish_teacher_elsewhere)
    t.start()
    stages = [[PlannedRun(teacher, "teacher")], [PlannedRun(student, "student", depends=(teacher.run_id,))]]
    monkeypatch.setattr("runner.launchers.debug.POLL_S", 0.2)
    records = make_launcher("debug", RunEnv(results_dir=str(tmp_path), **ENV), 0).launch(stages)
    t.join()
    results = {r["run_id"]: r["status"] for r in records}
    assert results == {teacher.run_id: "done", student.run_id: "done"}
    assert training_starts(RunFolder(tmp_path, teacher.run_id)) == 1


def test_local_pool_slots_one_run_per_gpu_or_split_cpus():
    from runner.launchers.local import _slots

    cpus = len(os.sched_getaffinity(0))
    slots, device, threads = _slots(RunEnv(), workers=None, gpus=[0, 1, 3], runs_per_gpu=2)
    assert (slots, device, threads) == ([0, 0, 1, 1, 3, 3], "cuda", max(1, cpus // 6))
    slots, device, threads = _slots(RunEnv(), workers=2, gpus=None, runs_per_gpu=1)
    assert (slots, device, threads) == ([None, None], "cpu", max(1, cpus // 2))
