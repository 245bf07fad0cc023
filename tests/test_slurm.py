"""The SLURM launcher against a real SLURM: the single-node cluster of slurm/cluster.sh (CI starts it through
.ci/run). Teacher, students and an ensemble as dependent job arrays; one student is interrupted mid-run through
submitit's preemption hook, requeues itself and resumes from its checkpoint to the same result as an
uninterrupted run; a failing teacher gets its students cancelled instead of left pending."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

import benchmark
from runner.folder import RunFolder, State
from runner.plan import PlanRequest, plan
from runner.env import RunEnv
from runner.execute import execute

TINY = dict(preset="smoke", teacher="resnet8", epochs=2, train_size=128, test_size=64)
CLI_TINY = ["--preset", "smoke", "--teacher", "resnet8", "--epochs", "2", "--train-size", "128",
            "--test-size", "64", "--deterministic"]
SLURM = ["--launcher", "slurm", "--cluster-profile", "local"]
METRICS = [f"{w}_top{k}" for w in ("best", "last") for k in range(1, 6)] + ["model_sha256"]
DEADLINE_S = 600


def _tool(*args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None


@pytest.fixture(scope="module")
def cluster():
    """Skip (saying why) unless the kd-bench test cluster answers; in CI a missing cluster is a failure."""
    def unavailable(reason: str):
        if os.environ.get("KDBENCH_REQUIRE_SLURM"):
            pytest.fail(f"KDBENCH_REQUIRE_SLURM is set but {reason}")
        pytest.skip(reason)

    if shutil.which("sbatch") is None:
        unavailable("SLURM is not installed (no sbatch on PATH): `slurm/cluster.sh install` then "
                    "`eval $(slurm/cluster.sh start /tmp/kdbench-slurm)` runs these tests on a local test cluster")
    config = _tool("scontrol", "show", "config")
    if config is None or config.returncode != 0:
        unavailable("no SLURM controller answers (`scontrol show config` failed): start the test cluster with "
                    "`eval $(slurm/cluster.sh start /tmp/kdbench-slurm)`")
    if "ClusterName             = kdbench" not in config.stdout:
        unavailable("the SLURM cluster reachable here is not the kd-bench test cluster of slurm/cluster.sh; "
                    "test jobs are not submitted to it")
    nodes = _tool("sinfo", "-h", "-o", "%t")
    if nodes is None or not {"idle", "mix", "alloc"} & set(nodes.stdout.split()):
        unavailable(f"the test cluster has no usable node (sinfo: {nodes.stdout.strip() if nodes else '-'})")
    return True


@pytest.fixture
def results(tmp_path, monkeypatch):
    """A fresh results folder (so no stale submitit result can be picked up) whose jobs are cancelled at the
    end whatever happens, so a failing test leaves no job occupying the CPUs of the next one."""
    monkeypatch.setenv("KDBENCH_SLURM_POLL_S", "1")
    path = tmp_path / "results"
    yield path
    ids = []
    for slurm_json in path.glob("runs/*/slurm.json"):
        ids.append(json.loads(slurm_json.read_text())["job_id"])
    if ids:
        _tool("scancel", *ids)


def _sacct_times(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (Start, End) as ISO strings (sortable), polled until accounting has both."""
    deadline = time.time() + 30
    while True:
        out = _tool("sacct", "-X", "-n", "-P", "-o", "JobID,Start,End", "-j",
                    ",".join(sorted({j.split("_")[0] for j in job_ids})))
        times = {}
        for line in (out.stdout if out else "").splitlines():
            jid, start, end = line.split("|")
            times[jid] = (start, end)
        if all(j in times and "Unknown" not in times[j][1] for j in job_ids) or time.time() > deadline:
            return times
        time.sleep(1)


def _wait_for(path: Path, what: str) -> None:
    deadline = time.time() + DEADLINE_S
    while not path.exists():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_sweep_honours_dependencies_and_an_interrupted_student_resumes_identically(cluster, results, monkeypatch,
                                                                                   capsys):
    args = ["--methods", "st,logits", "--ensemble", "st,logits", *CLI_TINY, "--results-dir", str(results)]
    stages = plan(PlanRequest(methods=["st", "logits"], ensembles=[("st", "logits")], **TINY))
    (teacher,), students, (ensemble,) = stages
    st = next(r for r in students if r.spec.method == "st")
    folder = RunFolder(results, st.run_id)
    # the st student stops after its first epoch's checkpoint and epoch log, until a signal arrives
    monkeypatch.setenv("KDBENCH_FAULT", f"{st.run_id}/epochs.jsonl@1:after-rename:pause")

    assert benchmark.main([*args, *SLURM]) == 0
    sweeps = list(results.glob("slurm/*/sweep.json"))
    assert len(sweeps) == 1
    arrays = json.loads(sweeps[0].read_text())["arrays"]
    assert [a["role"] for a in arrays] == ["teacher", "student", "student", "ensemble"]
    jobs = {rid: json.loads(RunFolder(results, rid).slurm_json.read_text())["job_id"]
            for stage in stages for rid in (r.run_id for r in stage)}
    deps = {frozenset(a["runs"]): a["dependency"] for a in arrays}
    assert deps[frozenset([teacher.run_id])] is None
    assert deps[frozenset(r.run_id for r in students if not r.depends)] is None  # the baseline needs no teacher
    assert deps[frozenset(r.run_id for r in students if r.depends)] == f"afterok:{jobs[teacher.run_id]}"
    members = sorted(set(jobs[rid] for rid in ensemble.depends))  # st and logits share one cohort job
    assert deps[frozenset([ensemble.run_id])] == "afterok:" + ":".join(members)

    _wait_for(folder.path / ".fault-epochs.jsonl-1-after-rename-pause", "the st student to finish epoch 1")
    from submitit.slurm.slurm import SlurmJob
    interrupted_at = time.time()
    SlurmJob(folder=results / "slurm", job_id=jobs[st.run_id])._interrupt()  # USR2: preempted

    # a second submission of the same sweep adds nothing: it waits for the jobs already queued
    capsys.readouterr()
    assert benchmark.main([*args, *SLURM, "--wait"]) == 0
    out = capsys.readouterr().out
    assert "submitted" not in out and f"already queued: {st.spec.describe()}" in out
    assert len(list(results.glob("slurm/*/sweep.json"))) == 1

    for stage in stages:
        for run in stage:
            assert RunFolder(results, run.run_id).state() == State.DONE, run.spec.describe()
    log = folder.log.read_text()
    assert "resumed after epoch 1" in log and log.count("] training ") == 2
    slurm_out = (folder.path / f"slurm-{jobs[st.run_id]}.out").read_text()
    assert "this job is preempted" in slurm_out and "Requeued job" in slurm_out
    assert "(restart 1)" in slurm_out
    resumed_line = next(l for l in log.splitlines() if "resumed after epoch 1" in l)
    resumed_at = time.mktime(time.strptime(resumed_line[:19], "%Y-%m-%d %H:%M:%S"))

    # dependencies: students started after their teacher ended, the ensemble after its members
    times = _sacct_times(list(jobs.values()))
    for stage in stages[1:]:
        for run in stage:
            for dep in run.depends:
                assert times[jobs[run.run_id]][0] >= times[jobs[dep]][1], (run.spec.describe(), times)

    # the interrupted student ends exactly where an uninterrupted one does (same 1 thread as its job)
    monkeypatch.delenv("KDBENCH_FAULT")
    reference = results.parent / "reference"
    shutil.copytree(RunFolder(results, teacher.run_id).path, reference / "runs" / teacher.run_id)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = execute(st.spec, RunEnv(results_dir=str(reference), deterministic=True, log=lambda s: None), st.info)
    finally:
        torch.set_num_threads(threads)
    final = folder.read_final()
    assert {k: final[k] for k in METRICS} == {k: ref[k] for k in METRICS}

    capsys.readouterr()
    assert benchmark.main(["status", *args]) == 0
    out = capsys.readouterr().out
    assert f"[SLURM job {jobs[st.run_id]} COMPLETED]" in out and "DONE 5" in out
    print(f"\nrequeue: interrupt -> resumed from checkpoint in {resumed_at - interrupted_at:.1f} s")


def test_failed_teacher_cancels_its_students_and_status_shows_why(cluster, results, monkeypatch, capsys):
    args = ["--methods", "st", "--seeds", "1", *CLI_TINY, "--results-dir", str(results), "--retries", "0"]
    (teacher,), students = plan(PlanRequest(methods=["st"], seeds=[1], **TINY))
    st = next(r for r in students if r.depends)
    monkeypatch.setenv("KDBENCH_FAULT", f"{teacher.run_id}/ckpt.pt@1:mid:raise")
    started = time.time()
    assert benchmark.main([*args, *SLURM, "--wait"]) == 1, "a failed sweep exits non-zero"
    assert time.time() - started < DEADLINE_S
    capsys.readouterr()
    assert benchmark.main(["status", *args]) == 0
    lines = {l.split("[")[1].split("]")[0]: l for l in capsys.readouterr().out.splitlines() if "[" in l}
    assert lines[teacher.run_id].startswith("FAILED") and "injected fault" in lines[teacher.run_id]
    assert "FAILED]" in lines[teacher.run_id]  # its SLURM job failed too
    # SLURM cancelled the student (its accounting does not always keep the reason); status says why itself
    assert "CANCELLED" in lines[st.run_id] and f"blocked: needs {teacher.run_id} (FAILED)" in lines[st.run_id]
    baseline = next(r for r in students if not r.depends)
    assert lines[baseline.run_id].startswith("DONE"), "runs that do not need the teacher are unaffected"


def test_claim_of_an_ended_slurm_job_elsewhere_is_taken_over_at_once(cluster, tmp_path):
    """A job cancelled or killed on another node leaves its claim behind; SLURM knows it has ended, so the
    next job need not wait for the heartbeat to go stale."""
    from runner.claims import Claim

    done = subprocess.run(["sbatch", "--parsable", "--wait", "--wrap", "true", "-o", "/dev/null"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for job in (done.stdout.strip().split(";")[0], "999999"):  # ended; unknown to the controller
        folder = tmp_path / job
        folder.mkdir()
        (folder / "claim.json").write_text(json.dumps(
            {"host": "node-elsewhere", "boot_id": "x", "pid": 1, "token": "t", "slurm_job": job}))
        claim = Claim(folder)
        assert claim.acquire(), job
        claim.release()


@pytest.mark.parametrize("extra,message", [
    ([], "needs --cluster-profile"),
    (["--cluster-profile", "nosuch"], "cluster profile 'nosuch' not found"),
    (["--cluster-profile", "local", "--slurm-set", "gpu=1"], "unknown cluster profile setting 'gpu'"),
    (["--cluster-profile", "local", "--slurm-set", "timeout_min=soon"], "timeout_min='soon'"),
])
def test_bad_cluster_profile_exits_2_before_submitting(tmp_path, capsys, extra, message):
    args = ["--methods", "st", *CLI_TINY, "--results-dir", str(tmp_path), "--launcher", "slurm", *extra]
    assert benchmark.main(args) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("runs/*")), "nothing is submitted or written"


def test_profiles_translate_to_submitit_parameters():
    from runner.slurm import executor_parameters, load_profile

    example = load_profile("example", {"partition": "big", "sbatch": {"mail-type": "FAIL"}})
    params = executor_parameters(example)
    assert params["slurm_partition"] == "big" and params["gpus_per_node"] == 1 and params["timeout_min"] == 240
    assert params["slurm_additional_parameters"] == {"kill_on_invalid_dep": "yes", "mail_type": "FAIL"}
    assert params["slurm_setup"][0].startswith("export PYTHONPATH=") and "module load cuda/12.4" in params["slurm_setup"]
    assert "slurm_constraint" not in params  # null in the profile: not passed
