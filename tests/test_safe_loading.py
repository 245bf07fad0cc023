"""Read without executing: no checkpoint or teacher file, whoever wrote it, is unpickled with code execution.

A forged `ckpt.pt` (valid KDBENCH1 header, checksum recomputed over a code-running pickle) or a forged teacher
`model.pt` never runs its payload: the checkpoint is refused and the run restarts from scratch, the teacher is
refused with a one-line UserError. A checkpoint with a valid checksum but content that does not fit the run
restarts it too, and a teacher that cannot be used (no or unknown arch, misshapen or missing tensors, non-finite
weights or outputs) is refused with a message naming the file and the problem."""
from __future__ import annotations

import copy
import hashlib
import io

import pytest
import torch

import benchmark
from core.errors import UserError
from data import DATASETS
from models import build_model
from models.pretrained import load_teacher
from runner import train
from runner.env import RunEnv
from runner.execute import execute
from runner.folder import RunFolder, State
from runner.spec import DataSpec, Protocol, RunSpec
from runner.store import MAGIC, load_checked, save_checked
from runner.train import save_model

SPEC = RunSpec(DataSpec("cifar10", "synthetic", 32, 16), "ce", "resnet8", 0, Protocol(epochs=2, batch_size=16))
QUIET = dict(log=lambda s: None, deterministic=True, measure_repeats=0)
C10 = DATASETS["cifar10"]
NORM = (C10.mean, C10.std)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The runs here are tiny (batches of 16 images): a second thread only adds overhead, a lot of it when the
    machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _TouchOnUnpickle:
    """Unpickling this creates `path`: what a forged file would do with a real command instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def forged_payload(marker) -> bytes:
    buf = io.BytesIO()
    torch.save({"epoch": 1, "rows": [], "student": _TouchOnUnpickle(marker)}, buf)
    return buf.getvalue()


def test_the_forged_payload_is_live(tmp_path):
    """Control: an unsafe load of the payload the tests below forge does execute it."""
    proof = tmp_path / "proof"
    torch.load(io.BytesIO(forged_payload(proof)), weights_only=False)
    assert proof.exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """SPEC trained once without interruption, and a genuine checkpoint after its epoch 1 (from a second copy
    stopped right after saving it)."""
    root = tmp_path_factory.mktemp("reference")
    record = execute(SPEC, RunEnv(results_dir=str(root / "straight"), **QUIET))
    assert record["status"] == "done"
    original = train.Run._save

    def save_then_stop(self, epoch, rows, optimizer):
        original(self, epoch, rows, optimizer)
        if epoch == 1:
            raise KeyboardInterrupt  # not caught by execute: like a kill
    train.Run._save = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            execute(SPEC, RunEnv(results_dir=str(root / "stopped"), **QUIET))
    finally:
        train.Run._save = original
    folder = RunFolder(root / "stopped", SPEC.run_id)
    return record, folder, load_checked(folder.ckpt)


def _partial_run(reference, results) -> RunFolder:
    """A run folder like the stopped one (spec, epoch log), without its checkpoint."""
    _, stopped, _ = reference
    folder = RunFolder(results, SPEC.run_id)
    folder.path.mkdir(parents=True)
    for f in (stopped.spec_json, stopped.epochs):
        (folder.path / f.name).write_bytes(f.read_bytes())
    return folder


def _resume_from_scratch(reference, folder: RunFolder, results) -> str:
    record, _, _ = reference
    again = execute(SPEC, RunEnv(results_dir=str(results), **QUIET))
    log = folder.log.read_text()
    assert again["status"] == "done" and folder.state() == State.DONE
    assert again["model_sha256"] == record["model_sha256"], "a restart ends where an uninterrupted run ends"
    lines = [line for line in log.splitlines() if "checkpoint unusable" in line]
    assert len(lines) == 1 and "restarting the run from scratch" in lines[0], log
    assert "resumed after" not in log
    return lines[0]


def test_genuine_checkpoint_resumes(tmp_path, reference):
    """Control: the checks below refuse only what does not fit; a checkpoint of this run resumes exactly."""
    record, stopped, _ = reference
    folder = _partial_run(reference, tmp_path)
    folder.ckpt.write_bytes(stopped.ckpt.read_bytes())
    again = execute(SPEC, RunEnv(results_dir=str(tmp_path), **QUIET))
    assert "resumed after epoch 1" in folder.log.read_text()
    assert again["model_sha256"] == record["model_sha256"]


def test_forged_checkpoint_is_never_executed_and_the_run_restarts(tmp_path, reference):
    marker = tmp_path / "forged-checkpoint-ran"
    folder = _partial_run(reference, tmp_path / "results")
    payload = forged_payload(marker)
    folder.ckpt.write_bytes(MAGIC + hashlib.sha256(payload).digest() + payload)  # checksum recomputed
    line = _resume_from_scratch(reference, folder, tmp_path / "results")
    assert "refused" in line and "io.open" in line
    assert not marker.exists()


def _drop(key):
    def change(ckpt):
        del ckpt[key]
        return ckpt
    return change


def _misshape_student(ckpt):
    ckpt["student"]["conv1.weight"] = torch.zeros(3, 3, 3, 3)
    return ckpt


def _misshape_momentum(ckpt):
    state = ckpt["optimizer"]["state"]
    state[next(iter(state))]["momentum_buffer"] = torch.zeros(7)
    return ckpt


def _bad_rng(ckpt):
    ckpt["rng"]["python"]["internal"] = ckpt["rng"]["python"]["internal"][:10]
    return ckpt


def _bad_rows(ckpt):
    ckpt["rows"] = []
    return ckpt


def _bad_epoch(ckpt):
    ckpt["epoch"] = 99
    return ckpt


def _bad_method(ckpt):
    ckpt["method"] = {"extra": {"stray.weight": torch.zeros(1)}}
    return ckpt


@pytest.mark.parametrize("change,says", [
    (_drop("student"), "missing ['student']"),
    (_drop("rng"), "missing ['rng']"),
    (_misshape_student, "size mismatch for conv1.weight"),
    (_misshape_momentum, "momentum_buffer"),
    (_bad_rng, "python rng state"),
    (_bad_rows, "0 rows for 1 epochs"),
    (_bad_epoch, "epoch 99"),
    (_bad_method, "stray.weight"),
    (lambda ckpt: [ckpt], "not a dict"),
], ids=["no-student", "no-rng", "student-shape", "momentum-shape", "rng", "rows", "epoch", "method", "list"])
def test_checkpoint_with_valid_checksum_but_wrong_content_restarts(tmp_path, reference, change, says):
    _, _, genuine = reference
    folder = _partial_run(reference, tmp_path)
    save_checked(change(copy.deepcopy(genuine)), folder.ckpt)  # a valid header and checksum
    line = _resume_from_scratch(reference, folder, tmp_path)
    assert says in line and "\n" not in line


# ---- teachers ------------------------------------------------------------------------------------------------
def _model_file(path, mutate=None, arch="resnet8"):
    """A kd-bench model.pt of a fresh `arch`, its payload changed by `mutate` (dict -> object)."""
    model = build_model(arch, 10).eval()
    save_model(model, arch, 10, NORM, path)
    if mutate is not None:
        torch.save(mutate(torch.load(path, weights_only=True)), path)
    return path


def test_forged_teacher_is_refused_and_never_executed(tmp_path, capsys):
    marker = tmp_path / "forged-teacher-ran"
    forged = tmp_path / "model.pt"
    buf = io.BytesIO()
    torch.save({"format": "kd-bench-model", "arch": "resnet8", "state_dict": _TouchOnUnpickle(marker)}, buf)
    forged.write_bytes(buf.getvalue())
    with pytest.raises(UserError, match="refused by the safe loader") as e:
        load_teacher(forged, 10, NORM)
    assert str(forged) in str(e.value) and "io.open" in str(e.value) and "\n" not in str(e.value)
    code = benchmark.main(["--methods", "st", "--preset", "smoke", "--epochs", "1", "--train-size", "64",
                           "--test-size", "32", "--teacher-checkpoint", str(forged), "--results-dir",
                           str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2 and str(forged) in err and "refused by the safe loader" in err
    assert not marker.exists()


def _set(key, value):
    def mutate(ckpt):
        ckpt["state_dict"][key] = value
        return ckpt
    return mutate


def _without(key, where=None):
    def mutate(ckpt):
        del (ckpt if where is None else ckpt[where])[key]
        return ckpt
    return mutate


def _unknown_arch(ckpt):
    ckpt["arch"] = "resnet9000"
    return ckpt


def _nan_weight(ckpt):
    ckpt["state_dict"]["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    return ckpt


def _broken_statistics(ckpt):
    """Every weight finite, but a negative running variance: sqrt of a negative number in eval mode."""
    ckpt["state_dict"]["bn1.running_var"].fill_(-1.0)
    return ckpt


@pytest.mark.parametrize("mutate,says", [
    (_without("arch"), "without an 'arch'"),
    (_unknown_arch, "unknown architecture 'resnet9000'"),
    (_set("conv1.weight", torch.zeros(16, 3, 5, 5)), "tensor 'conv1.weight' has shape (16, 3, 5, 5)"),
    (_without("layer1.0.conv1.weight", "state_dict"), "missing ['layer1.0.conv1.weight']"),
    (_without("state_dict"), "without a 'state_dict'"),
    (_set("bn1.weight", "sixteen"), "'bn1.weight' is a str, not a tensor"),
    (_nan_weight, "non-finite weights (NaN or inf in 'layer1.0.conv1.weight')"),
    (_broken_statistics, "non-finite outputs"),
    (lambda ckpt: [ckpt["state_dict"]], "holds a list, not a dict"),
    (lambda ckpt: {"weights": ckpt["state_dict"]}, "neither a kd-bench model.pt nor"),
], ids=["no-arch", "unknown-arch", "shape", "missing-key", "no-state-dict", "not-tensor", "nan-weights",
        "nonfinite-outputs", "list", "unknown-layout"])
def test_unusable_teacher_is_refused_in_one_line(tmp_path, mutate, says):
    path = _model_file(tmp_path / "model.pt", mutate)
    with pytest.raises(UserError) as e:
        load_teacher(path, 10, NORM)
    message = str(e.value)
    assert says in message and str(path) in message and "\n" not in message, message


def test_usable_teacher_loads(tmp_path):
    """Control: a sound teacher loads, also behind a renormalisation; the output probe leaves the RNG alone."""
    from models.pretrained import _check_finite_outputs

    path = _model_file(tmp_path / "model.pt", arch="resnet14")
    model, arch = load_teacher(path, 10, ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert arch == "resnet14" and not model.training
    state = torch.get_rng_state()
    _check_finite_outputs(path, model)
    assert torch.equal(state, torch.get_rng_state())
