"""Cohort training (runner/cohort.py): the members of a cohort end bit for bit as separate runs (every epoch's
losses and metrics, the sha256 of model.pt), one teacher forward per batch is shared and computed only when
asked for, a failing member ends alone, a stopped cohort resumes per member, and the launchers group the right
runs."""
from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from methods import get_method
from runner import cohort
from runner.claims import Claim
from runner.env import RunEnv
from runner.execute import execute
from runner.folder import RunFolder, State
from runner.launchers import LaunchOptions, make_launcher
from runner.launchers.base import jobs, stage_index
from runner.plan import PlanRequest, plan
from runner.spec import DataSpec, Protocol, RunSpec
from runner import train

DATA = DataSpec("cifar10", "synthetic", 64, 32)
PROTOCOL = Protocol(epochs=2, batch_size=16)  # 4 batches an epoch; FSP: 1 init epoch + 2
TEACHER = RunSpec(DATA, "ce", "resnet8", 0, Protocol(epochs=1, batch_size=16))
ENV = dict(deterministic=True, measure_repeats=0, log=lambda s: None)
METHODS = ("ce", "st", "crd", "fsp")
RESULT = [f"{w}_top{k}" for w in ("best", "last") for k in range(1, 6)] + ["model_sha256", "epochs", "params",
                                                                             "extra_params", "best_epoch"]


def member(method: str, seed: int = 0) -> RunSpec:
    cls = get_method(method)
    teacher = {"run": TEACHER.run_id, "arch": "resnet8"} if cls.needs_teacher else None
    return RunSpec(DATA, method, "resnet8", seed, PROTOCOL, hparams=cls.resolve_hparams({}, "cifar10"),
                   teacher=teacher)


SPECS = [member(m) for m in METHODS]


def env(path) -> RunEnv:
    return RunEnv(results_dir=str(path), **ENV)


def rows(results, spec) -> list[dict]:
    return [{k: r[k] for k in ("epoch", "stage", "lr", "losses", "test")}
            for r in RunFolder(results, spec.run_id).read_epochs()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The teacher, and every member trained as a separate run: what each cohort member must end at."""
    results = tmp_path_factory.mktemp("reference")
    assert execute(TEACHER, env(results))["status"] == "done"
    records = {s.run_id: execute(s, env(results)) for s in SPECS}
    assert all(r["status"] == "done" for r in records.values())
    return results, records


def with_teacher(reference, path):
    """A results folder holding only the reference's teacher run."""
    src = RunFolder(reference[0], TEACHER.run_id).path
    shutil.copytree(src, RunFolder(path, TEACHER.run_id).path)
    return path


def assert_same(results, spec, reference) -> None:
    ref_results, ref_records = reference
    final = RunFolder(results, spec.run_id).read_final()
    assert final["status"] == "done", (spec.method, final)
    assert {k: final[k] for k in RESULT} == {k: ref_records[spec.run_id][k] for k in RESULT}, spec.method
    assert rows(results, spec) == rows(ref_results, spec), spec.method


# ---- identity ------------------------------------------------------------------------------------------------
def test_cohort_equals_separate_runs_and_shares_one_lazy_teacher_forward(tmp_path, reference, monkeypatch):
    results = with_teacher(reference, tmp_path)
    computed, asked = [], []
    original = cohort.TeacherCache.__call__

    def counting(self, method, x):
        if x is self.x:
            asked.append(method.name)
            if self.out is None:
                computed.append(method.name)
        return original(self, method, x)

    monkeypatch.setattr(cohort.TeacherCache, "__call__", counting)
    records = cohort.execute(SPECS, env(results))
    assert [r["status"] for r in records] == ["done"] * len(SPECS)
    for spec in SPECS:
        assert_same(results, spec, reference)
        assert "cohort: training with 4 member(s)" in RunFolder(results, spec.run_id).log.read_text()
    # epoch 1: st, crd and FSP's init stage ask; epoch 2: st and crd; epoch 3 (FSP's last, CE only): nobody
    assert len(computed) == 4 + 4 and len(asked) == 4 * 3 + 4 * 2
    assert not RunFolder(results, SPECS[0].run_id).ckpt.exists()


def test_each_member_keeps_its_own_global_rng(tmp_path, reference, monkeypatch):
    """A step that draws from the global torch generator (as dropout would) draws what it draws alone."""
    import torch

    draws = {}
    original = get_method("st").train_step  # Method.train_step

    def drawing(self, batch, info, optimizer):
        draws.setdefault(self.name, []).append(torch.rand(()).item())
        return original(self, batch, info, optimizer)

    monkeypatch.setattr(get_method("st"), "train_step", drawing)
    monkeypatch.setattr(get_method("ce"), "train_step", drawing)
    specs = [member("ce"), member("st")]
    alone = {}
    for spec in specs:
        torch.manual_seed(7)
        execute(spec, env(with_teacher(reference, tmp_path / f"alone-{spec.method}")))
        alone[spec.method] = draws.pop(spec.method)
    torch.manual_seed(7)
    cohort.execute(specs, env(with_teacher(reference, tmp_path / "cohort")))
    assert draws == alone and len(draws["st"]) == 8


# ---- failures ------------------------------------------------------------------------------------------------
def test_a_diverging_or_crashing_member_ends_alone(tmp_path, reference, monkeypatch):
    """st diverges (NaN loss): FAILED in its folder, never retried; crd crashes writing its first checkpoint
    and is tried again apart (retries 1), from scratch, to the reference result; a member claimed by another
    process is left to it; fsp goes on to the reference result."""
    import torch

    results = with_teacher(reference, tmp_path)
    st = get_method("st")
    monkeypatch.setattr(st, "distill", lambda self, *a: {"st": torch.tensor(float("nan"))})
    crd, fsp, ce = member("crd"), member("fsp"), member("ce")
    monkeypatch.setenv("KDBENCH_FAULT", f"{crd.run_id}/ckpt.pt@1:mid:raise-once")
    other = Claim(RunFolder(results, ce.run_id).path)
    assert other.acquire()
    try:
        records = cohort.execute([ce, member("st"), crd, fsp], env(results), retries=1)
    finally:
        other.release()
    status = [r["status"] for r in records]
    assert status == ["busy", "failed", "done", "done"], records
    folder = RunFolder(results, member("st").run_id)
    assert folder.state() == State.FAILED and "diverged" in folder.read_final()["error"]
    assert folder.read_failures()[-1]["retryable"] is False and not folder.model.exists()
    crd_folder = RunFolder(results, crd.run_id)
    assert len(crd_folder.read_failures()) == 1 and "trying again" in crd_folder.log.read_text()
    assert_same(results, crd, reference)
    assert_same(results, fsp, reference)
    assert not RunFolder(results, ce.run_id).spec_json.exists(), "left to the process that holds it"


def test_a_bad_input_records_nothing_and_is_raised_after_the_others(tmp_path):
    from core.errors import UserError

    with pytest.raises(UserError, match="teacher model"):  # the teacher run was never trained
        cohort.execute(SPECS[1:3], env(tmp_path))
    for spec in SPECS[1:3]:
        folder = RunFolder(tmp_path, spec.run_id)
        assert folder.read_final() is None and not (folder.path / "claim.json").exists()


# ---- resume --------------------------------------------------------------------------------------------------
class Stop(KeyboardInterrupt):
    """Stands in for a cohort's process being stopped (Ctrl-C, a time limit)."""


def test_stopped_cohort_resumes_per_member_to_the_separate_results(tmp_path, reference, monkeypatch):
    ref_results, _ = reference
    results = with_teacher(reference, tmp_path)
    ce, st, crd, fsp = SPECS
    shutil.copytree(RunFolder(ref_results, ce.run_id).path, RunFolder(results, ce.run_id).path)  # DONE apart
    stamp = RunFolder(results, ce.run_id).final.stat().st_mtime_ns

    original_save = train.Run._save

    def save_then_stop(self, epoch, rows_, optimizer):
        original_save(self, epoch, rows_, optimizer)
        if self.spec.method == "st" and epoch == 1:
            raise Stop()

    monkeypatch.setattr(train.Run, "_save", save_then_stop)
    with pytest.raises(Stop):
        execute(st, env(results))  # st alone, stopped after its epoch 1: it is ahead of the fresh members
    monkeypatch.setattr(train.Run, "_save", original_save)
    assert RunFolder(results, st.run_id).state() == State.PARTIAL

    original_epoch = cohort.Cohort.run_epoch

    def epoch_then_stop(self, epoch, now):
        original_epoch(self, epoch, now)
        raise Stop()

    monkeypatch.setattr(cohort.Cohort, "run_epoch", epoch_then_stop)
    with pytest.raises(Stop):
        cohort.execute(SPECS, env(results))  # trains epoch 1 of crd and fsp; st waits at its epoch
    monkeypatch.setattr(cohort.Cohort, "run_epoch", original_epoch)
    # st, ahead, waited: the cohort's first epoch was its members' first, not st's second
    assert [len(RunFolder(results, s.run_id).read_epochs()) for s in (st, crd, fsp)] == [1, 1, 1]
    assert all(not (RunFolder(results, s.run_id).path / "claim.json").exists() for s in SPECS)

    records = cohort.execute(SPECS, env(results))
    assert [r["status"] for r in records] == ["done"] * 4
    assert RunFolder(results, ce.run_id).final.stat().st_mtime_ns == stamp, "a DONE member is skipped"
    for spec in SPECS:
        assert_same(results, spec, reference)
    for spec in (st, crd, fsp):
        assert "resumed after epoch 1" in RunFolder(results, spec.run_id).log.read_text()


# ---- launchers -----------------------------------------------------------------------------------------------
TINY = dict(preset="smoke", teacher="resnet8", student="resnet8", epochs=1, train_size=64, test_size=32)


def test_launchers_group_the_runs_of_a_stage_sharing_data_seed_teacher_protocol():
    stages = plan(PlanRequest(methods=["st", "crd", "fsp", "sobolev", "dml", "ekd"], seeds=[0, 1], **TINY))
    teachers, students = stages[0], stages[1]
    stage_of = stage_index(stages)
    grouped = jobs(teachers + students, stage_of, cohort=True)
    cohorts = [[r.spec.method for r in job] for job in grouped if len(job) > 1]
    assert cohorts == [["st", "crd", "fsp"], ["st", "crd", "fsp"]], "one cohort per seed"
    assert {job[0].spec.seed for job in grouped if len(job) > 1} == {0, 1}
    alone = sorted(job[0].spec.method for job in grouped if len(job) == 1 and job[0].role == "student")
    # the baseline (no teacher to share) and the methods that run apart
    assert alone == sorted(["ce", "sobolev", "dml", "ekd"] * 2)
    assert all(len(job) == 1 for job in grouped if job[0].role == "teacher")
    assert all(len(job) == 1 for job in jobs(students, stage_of, cohort=False))
    assert cohort.why_apart(next(r.spec for r in students if r.spec.method == "sobolev"))
    assert jobs([r for r in students if r.spec.method == "st"], stage_of, cohort=True) == \
        [[r] for r in students if r.spec.method == "st"], "a cohort of one is a separate run"


def test_debug_launcher_trains_a_cohort_and_no_cohort_keeps_separate_runs(tmp_path):
    stages = plan(PlanRequest(methods=["st", "at"], **TINY))
    students = [r for r in stages[1] if r.spec.method != "ce"]
    records = make_launcher("debug", env(tmp_path / "a"), 0, LaunchOptions()).launch(stages)
    assert len(records) == 4 and all(r["status"] == "done" for r in records)
    for run in students:
        assert "cohort: training with 2 member(s)" in RunFolder(tmp_path / "a", run.run_id).log.read_text()
    records = make_launcher("debug", env(tmp_path / "b"), 0, LaunchOptions(cohort=False)).launch(stages)
    assert all(r["status"] == "done" for r in records)
    for run in students:
        assert "cohort" not in RunFolder(tmp_path / "b", run.run_id).log.read_text()
        a, b = RunFolder(tmp_path / "a", run.run_id), RunFolder(tmp_path / "b", run.run_id)
        assert a.read_final()["model_sha256"] == b.read_final()["model_sha256"]


def test_local_launcher_runs_a_cohort_in_one_process(tmp_path):
    stages = plan(PlanRequest(methods=["st", "at"], **TINY))
    results = tmp_path
    for run in [stages[0][0]] + [r for r in stages[1] if r.spec.method == "ce"]:
        execute(run.spec, env(results))  # teacher and baseline here: the pool only has to start the cohort
    records = make_launcher("local", env(results), 0, LaunchOptions(workers=1)).launch(stages)
    assert sorted(r["status"] for r in records) == ["done"] * 4
    for run in stages[1]:
        log = RunFolder(results, run.run_id).log.read_text()
        assert ("cohort: training with 2 member(s)" in log) == (run.spec.method != "ce")


def test_slurm_submits_one_task_per_cohort_and_the_job_trains_it(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from runner.slurm import launcher as slurm_launcher
    from runner.slurm.job import SlurmCohort, SlurmRun
    from runner.slurm.profile import load_profile
    from runner.slurm.queue import read_job

    stages = plan(PlanRequest(methods=["st", "at", "sobolev"], seeds=[0, 1], **TINY))
    submitted = []

    def fake_submit(tasks, deps, params, profile, sweep_dir, env_fields, retries, results):
        callables = [SlurmRun if len(t) == 1 else SlurmCohort for t in tasks]
        submitted.append(([[r.spec.method for r in t] for t in tasks], deps, callables, env_fields))
        base = 100 + len(submitted)
        for task in tasks:
            for run in task:
                RunFolder(results, run.run_id).write_spec(run.spec, run.info)
        return [SimpleNamespace(job_id=f"{base}_{i}") for i in range(len(tasks))]

    monkeypatch.setattr(slurm_launcher.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(slurm_launcher, "queued_jobs", lambda: {})
    monkeypatch.setattr(slurm_launcher, "_submit_array", fake_submit)
    records = slurm_launcher.launch_slurm(stages, env(tmp_path), load_profile("local"), cohort=True)
    assert all(r["status"] == "submitted" for r in records)
    student_arrays = [s for s in submitted if s[1]]  # those after a teacher: one per seed
    assert len(student_arrays) == 2
    for tasks, _, callables, _ in student_arrays:
        assert sorted(map(sorted, tasks)) == [["at", "st"], ["sobolev"]]
        assert sorted(c.__name__ for c in callables) == ["SlurmCohort", "SlurmRun"]
    jobs_of = {r.spec.method: read_job(RunFolder(tmp_path, r.run_id))["job_id"]
               for r in stages[1] if r.spec.seed == 0}
    assert jobs_of["st"] == jobs_of["at"] != jobs_of["sobolev"], "the members of a cohort share its job"

    # what such a job runs: the cohort of one seed, in this process, after its teacher
    seed0 = [r for r in stages[1] if r.spec.seed == 0 and r.spec.method in ("st", "at")]
    teacher = next(r for r in stages[0] if r.spec.seed == 0)
    execute(teacher.spec, env(tmp_path))
    paths = [str(RunFolder(tmp_path, r.run_id).spec_json) for r in seed0]
    fields = {k: v for k, v in env(tmp_path).fields().items()}
    out = SlurmCohort(paths, fields, 0)()
    assert [r["status"] for r in out] == ["done", "done"]
    assert all("cohort: training with 2" in RunFolder(tmp_path, r.run_id).log.read_text() for r in seed0)
