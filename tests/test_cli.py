"""The command line: planning, idempotent sweeps, status, collect, and clear errors (exit 2) on bad input."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

import benchmark
from conftest import ROOT, shared_path
from methods import ON_REQUEST, REGISTRY, get_method
from report.paper import METHOD_NAMES
from runner.plan import plan

TINY = ["--preset", "smoke", "--teacher", "resnet8", "--epochs", "1", "--train-size", "128", "--test-size", "64"]
# planning reads (and fingerprints) the data: the paper preset's tests plan on a little synthetic data
SOME_DATA = ["--synthetic", "--train-size", "64", "--test-size", "32"]


def cli(*args, results=None):
    extra = ["--results-dir", str(results)] if results else []
    return benchmark.main([*args, *extra])


def test_list_names_every_registered_method(capsys):
    assert cli("--list") == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        cls = get_method(name)
        line = next(l for l in out.splitlines() if l.split()[0].rstrip("*") == name)
        assert cls.kind in line and cls.description in line and cls.citation in line and cls.display_name in line
        assert line.split()[0].endswith("*") == (name in ON_REQUEST), "marked when --all leaves it out"


def planned(*args):
    stages = plan(benchmark.plan_request(benchmark.build_parser().parse_args([*args, *SOME_DATA])))
    return [(r.role, r.spec.method, r.spec.student) for stage in stages for r in stage]


def test_all_plans_the_papers_table_1():
    runs = planned("--all")
    assert runs[0] == ("teacher", "ce", "resnet110") and runs[1] == ("student", "ce", "resnet20")
    assert [m for role, m, _ in runs if role == "student" and m != "ce"] == list(METHOD_NAMES)
    assert [m for role, m, _ in runs if role == "ensemble"] == ["ens-at-logits", "ens-rkd-logits", "ens-at-rkd",
                                                                "ens-all"]
    assert len(runs) == 2 + 20 + 4 and not {m for _, m, _ in runs} & set(ON_REQUEST)


def test_methods_narrows_all_and_the_teacher_is_planned_only_when_used(capsys):
    assert planned("--all", "--methods", "st") == [("teacher", "ce", "resnet110"), ("student", "ce", "resnet20"),
                                                    ("student", "st", "resnet20")]
    assert "instead of the paper's 20" in capsys.readouterr().err
    assert planned("--methods", "dml") == [("student", "ce", "resnet20"), ("student", "dml", "resnet20")]


def test_sweep_is_idempotent_and_collected(tmp_path, capsys):
    assert cli("--methods", "logits,st", *TINY, results=tmp_path) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 4  # teacher, student baseline, logits, st
    summary = pd.read_csv(next(tmp_path.glob("*/summary.csv")))
    assert sorted(summary.method) == ["ce", "ce", "logits", "st"]
    assert set(summary.status) == {"DONE"}
    assert (summary.best_top1 >= summary.last_top1).all()
    finals = {p: (p / "final.json").stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()}
    capsys.readouterr()
    assert cli("--methods", "logits,st", *TINY, results=tmp_path) == 0
    assert "] training " not in capsys.readouterr().out, "a second sweep trains nothing"
    assert finals == {p: (p / "final.json").stat().st_mtime_ns for p in finals}
    assert cli("status", "--methods", "logits,st", *TINY, results=tmp_path) == 0
    assert "DONE 4" in capsys.readouterr().out


def test_local_launcher_runs_students_in_worker_processes(tmp_path, capsys):
    assert cli("--methods", "st", *TINY, "--launcher", "local", "--workers", "2", results=tmp_path) == 0
    out = capsys.readouterr().out
    assert "local pool: 2 worker(s)" in out
    summary = pd.read_csv(next(tmp_path.glob("*/summary.csv")))
    assert len(summary) == 3 and set(summary.status) == {"DONE"}


@pytest.mark.parametrize("args,message", [
    (["--methods", "nosuch", *SOME_DATA], "unknown method 'nosuch'"),
    (["--all", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--all", "--preset", "fast"], "unknown preset 'fast'"),
    (["--all", "--student", "resnet21", *SOME_DATA], "unknown student model 'resnet21'"),
    (["--all", "--data-dir", "/nonexistent"], "--download"),
])
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, args, message):
    assert cli(*args, results=tmp_path) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("runs/*/final.json")), "nothing is recorded as a result"


def test_teacher_for_other_classes_exits_2(tmp_path, capsys):
    ckpt = shared_path("weights", "akamaster_cifar10_resnet20-12fca82f.th")
    code = cli("--all", "--dataset", "cifar100", "--teacher-checkpoint", str(ckpt), *SOME_DATA, results=tmp_path)
    assert code == 2
    assert "predicts 10 classes but the dataset has 100" in capsys.readouterr().err


def test_unwritable_results_folder_exits_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli("--methods", "st", *TINY, results=blocker / "results") == 2
    assert "not writable" in capsys.readouterr().err


def test_published_teacher_is_used_without_training_one(tmp_path, capsys):
    ckpt = shared_path("weights", "akamaster_cifar10_resnet20-12fca82f.th")
    args = ["--methods", "st", "--preset", "smoke", "--epochs", "1", "--train-size", "128", "--test-size", "64",
            "--teacher-checkpoint", str(ckpt)]
    assert cli(*args, results=tmp_path) == 0
    summary = pd.read_csv(next(tmp_path.glob("*/summary.csv"))).set_index("method")
    assert sorted(summary.index) == ["ce", "published", "st"], "the teacher is evaluated, not trained"
    assert summary.loc["st", "teacher"] == "resnet20_a"
    teacher = summary.loc["published"]
    assert (teacher.role, teacher.student, teacher.status, teacher.epochs) == ("teacher", "resnet20_a", "DONE", 0)
    assert teacher.params == 269_722  # He et al.'s ResNet-20 (option A): 0.27 M
    # its accuracy is the checkpoint's own on this test split
    from data import DATASETS, EvalLoader
    from models.pretrained import load_teacher
    from runner.evaluate import evaluate
    from runner.folder import RunFolder
    from runner.env import cached_splits

    spec, _ = RunFolder(tmp_path, teacher.run_id).read_spec()
    ds = DATASETS["cifar10"]
    model = load_teacher(ckpt, 10, (ds.mean, ds.std))[0]
    expected = evaluate(model, EvalLoader(cached_splits(spec.data, None, False)[1], 64, ds.mean, ds.std))
    assert teacher.best_top1 == teacher.last_top1 == pytest.approx(expected["top1"])
    assert "| Teacher (resnet20_a)" in (tmp_path / "tables" / "table1.md").read_text()


def test_published_teacher_changed_on_disk_is_refused(tmp_path):
    import shutil

    from core.errors import UserError
    from runner.env import RunEnv
    from runner.execute import execute

    ckpt = tmp_path / "teacher.th"
    shutil.copy(shared_path("weights", "akamaster_cifar10_resnet20-12fca82f.th"), ckpt)
    (run, *_), *_ = plan(benchmark.plan_request(benchmark.build_parser().parse_args(
        ["--methods", "st", *TINY[:2], "--teacher-checkpoint", str(ckpt)])))
    assert run.spec.kind == "published" and run.spec.method is None
    shutil.copy(shared_path("weights", "akamaster_cifar10_resnet56-4bfd9763.th"), ckpt)
    with pytest.raises(UserError, match="has changed since"):
        execute(run.spec, RunEnv(results_dir=str(tmp_path / "results"), measure_repeats=0), run.info)


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--teacher-checkpoint" in out.stdout


def test_status_names_what_each_run_is(tmp_path, capsys):
    """Run kinds are explicit: the four ensembles and a trained run are told apart in `status`."""
    assert cli("status", "--all", *TINY, results=tmp_path) == 0
    out = capsys.readouterr().out
    for key in ("ens-at-logits", "ens-rkd-logits", "ens-at-rkd", "ens-all"):
        assert sum(f"ensemble {key} (logits voting)" in line for line in out.splitlines()) == 1, key
    assert any(line.startswith("NEW") and " at resnet20 seed=0" in line for line in out.splitlines())


def test_folders_of_another_format_are_reported_and_skipped(tmp_path, capsys):
    """A run folder written by an older kd-bench (no format version), or with a truncated spec.json, is named in one
    line by `collect` and skipped; the readable folders are still collected and the command succeeds."""
    import json

    from runner.folder import RunFolder
    from runner.spec import DataSpec, Protocol, RunSpec

    good = RunSpec(DataSpec("cifar10", "synthetic", 64, 32), "st", "resnet20", 0, Protocol(epochs=1))
    RunFolder(tmp_path, good.run_id).write_spec(good, {"role": "method"})
    old = tmp_path / "runs" / "0123456789abcdef"
    old.mkdir()
    legacy = {k: v for k, v in good.to_dict().items() if k != "kind"}  # format 1 had no kind
    (old / "spec.json").write_text(json.dumps({"run_id": old.name, "spec": legacy, "info": {}}))
    cut = tmp_path / "runs" / "fedcba9876543210"
    cut.mkdir()
    (cut / "spec.json").write_text(json.dumps({"format": 2, "spec": good.to_dict()})[:40])
    evil_spec = RunSpec(DataSpec("../../../escaped", "synthetic", 64, 32), "st", "resnet20", 0, Protocol(epochs=1))
    evil = tmp_path / "runs" / evil_spec.run_id  # a crafted record naming a "dataset" outside the results folder
    evil.mkdir()
    (evil / "spec.json").write_text(json.dumps({"format": 3, "run_id": evil.name, "spec": evil_spec.to_dict()}))
    capsys.readouterr()
    assert cli("collect", results=tmp_path) == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 3 and "Traceback" not in captured.err
    assert any("unknown data '../../../escaped'" in line for line in skipped)
    assert not list(tmp_path.parent.glob("**/escaped*")), "nothing written outside the results folder"
    assert any("another version of kd-bench (format 1" in line and old.name in line for line in skipped)
    assert any("spec.json is damaged" in line and cut.name in line for line in skipped)
    summary = pd.read_csv(next(tmp_path.glob("*/summary.csv")))
    assert summary.run_id.tolist() == [good.run_id]
