"""Precision and layout (issue 12): `--precision fp32|bf16|fp16` (part of the run id, except fp32: every fp32 run
keeps the id it had before the setting existed), autocast + gradient scaler in training and evaluation, exact
resume of reduced-precision runs (the scaler's state is checkpointed), the `Method.backward_step` / `in_fp32`
helpers that every `train_step` override uses, channels-last and `--compile` (execution settings, not in the id).
Everything runs on CPU: bf16 autocast and the fp16 gradient scaler both exist there."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import benchmark
from data import DATASETS
from core.errors import UserError
from methods import get_method
from methods.base import FP32, Precision, StepInfo
from methods.base import make_optimizer
from methods.testing import CheckProtocol, make_pair
from models import build_seeded
from runner import env as env_module
from runner.env import ChannelsLast, RunEnv, check_compile
from runner.execute import execute
from runner.folder import RunFolder
from runner.plan import PlanRequest, checked_protocol, plan
from runner.spec import DataSpec, Protocol, RunSpec
from runner.store import load_checked
from runner.train import Run

DATA = DataSpec("cifar10", "synthetic", 32, 16)
QUIET = dict(log=lambda s: None, deterministic=True, measure_repeats=0)
TINY = ["--preset", "smoke", "--teacher", "resnet8", "--student", "resnet8", "--epochs", "1", "--train-size", "64",
        "--test-size", "32"]


def spec_of(precision: str = "fp32", epochs: int = 2, data: DataSpec = DATA) -> RunSpec:
    return RunSpec(data, "ce", "resnet8", 0, Protocol(epochs=epochs, batch_size=16, precision=precision))


# ---- identity ------------------------------------------------------------------------------------------------
def test_fp32_run_ids_are_those_of_before_and_other_precisions_differ():
    # ids computed by runner/spec.py before `precision` existed: existing results folders are still found
    old = RunSpec(DataSpec("cifar10", "synthetic", 256, 128), "ce", "resnet8", 0, Protocol(epochs=3, batch_size=32))
    assert old.run_id == "6a50ee645487fad2"
    full = RunSpec(DataSpec("cifar100", "disk", fingerprint="0123456789abcdef"), "st", "resnet20", 2, Protocol(),
                   hparams={"weight": 1.0, "T": 4.0}, teacher={"run": "a" * 16, "arch": "resnet110"})
    assert full.run_id == "429f62164de50434"
    assert "precision" not in old.to_dict()["protocol"]
    ids = {p: spec_of(p).run_id for p in ("fp32", "bf16", "fp16")}
    assert len(set(ids.values())) == 3
    for p in ("bf16", "fp16"):
        spec = spec_of(p)
        assert spec.to_dict()["protocol"]["precision"] == p
        again = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert again == spec and again.run_id == spec.run_id
    assert RunSpec.from_dict(spec_of().to_dict()).protocol.precision == "fp32"
    with pytest.raises(ValueError, match="precision"):
        Protocol(precision="fp8")


def test_precision_comes_from_the_command_line_or_the_preset_for_every_trained_run(tmp_path):
    req = PlanRequest(preset="smoke", methods=["st"], train_size=64, test_size=32, teacher="resnet8",
                      student="resnet8", precision="bf16")
    stages = plan(req)
    runs = [r for stage in stages for r in stage]
    assert {r.role for r in runs} == {"teacher", "student"}
    assert {r.spec.protocol.precision for r in runs} == {"bf16"}  # the teacher too
    fp32 = {r.run_id for stage in plan(PlanRequest(preset="smoke", methods=["st"], train_size=64, test_size=32,
                                                   teacher="resnet8", student="resnet8")) for r in stage}
    assert not fp32 & {r.run_id for r in runs}
    settings = {"epochs": 2, "batch_size": 64, "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                "padding": 4, "pad_mode": "zeros", "flip": True}
    assert checked_protocol(settings, "p").precision == "fp32"  # presets may leave it out
    assert checked_protocol({**settings, "precision": "fp16"}, "p").precision == "fp16"
    with pytest.raises(UserError, match="precision"):
        checked_protocol({**settings, "precision": "half"}, "p")
    with pytest.raises(SystemExit):
        benchmark.build_parser().parse_args(["--all", "--precision", "fp8"])


# ---- training through the command line -----------------------------------------------------------------------
def test_bf16_sweep_through_the_cli_trains_finite_runs_with_their_own_ids(tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    monkeypatch.setattr(benchmark, "cmd_table", lambda args: 0)  # the tables and plots of the sweep: not needed here
    monkeypatch.setattr(benchmark, "cmd_plot", lambda args: 0)
    code = benchmark.main(["--methods", "st", "--precision", "bf16", *TINY, "--results-dir", str(results)])
    assert code == 0, capsys.readouterr().err
    args = benchmark.build_parser().parse_args(["--methods", "st", *TINY])
    fp32_ids = {r.run_id for stage in plan(benchmark.plan_request(args)) for r in stage}
    folders = list((results / "runs").iterdir())
    assert len(folders) == 3  # teacher, student baseline, st
    for path in folders:
        folder = RunFolder(results, path.name)
        spec, _ = folder.read_spec()
        final = folder.read_final()
        assert spec.protocol.precision == "bf16" and path.name not in fp32_ids
        assert final["status"] == "done" and final["precision"] == "bf16", final
        assert all(torch.isfinite(torch.tensor(v)) for r in folder.read_epochs() for v in r["losses"].values())
        assert 0 <= final["best_top1"] <= 100
        measured = json.loads(next((path / "measurements").glob("*.json")).read_text())
        assert measured["precision"] == "bf16"
    # its rows are its own: never averaged with fp32 runs of the same method, paired with the bf16 baseline
    from report import aggregate
    from report.collect import run_rows

    rows = aggregate.with_rows(run_rows(results))
    assert sorted(rows["row"]) == ["st[bf16]", "student[bf16]", "teacher[bf16]"]
    assert aggregate.baseline_of(("st[bf16]", "resnet20")) == ("student[bf16]", "resnet20")
    assert aggregate.baseline_of(("st[T=2, fp16]", "resnet20")) == ("student[fp16]", "resnet20")
    assert aggregate.baseline_of(("st[T=2]", "resnet20")) == ("student", "resnet20")
    assert aggregate.baseline_of(("student[bf16]", "resnet20")) is None
    assert aggregate.row_label(("st[bf16]", "resnet20")) == "Soft target (bf16)"


# ---- resume --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_reduced_precision_run_resumes_exactly(tmp_path, precision):
    """One epoch, stopped (the process ends after its checkpoint), resumed: the same records and weights as a run
    never stopped. fp16 on CPU works (slowly): its gradient scaler's state comes back from the checkpoint."""
    spec = spec_of(precision, data=DataSpec("cifar10", "synthetic", 16, 16))  # one step an epoch: CPUs have
    # few bf16 and fewer fp16 kernels
    reference = execute(spec, RunEnv(results_dir=str(tmp_path / "ref"), **QUIET))
    assert reference["status"] == "done" and reference["precision"] == precision
    env = RunEnv(results_dir=str(tmp_path / "stopped"), **QUIET)
    first = Run(spec, env)
    assert first.prepare() is None
    first.run_epoch()  # epoch 1 done and checkpointed; the process "dies" here
    folder = RunFolder(env.results_dir, spec.run_id)
    saved = load_checked(folder.ckpt)
    if precision == "fp16":
        assert saved["scaler"] == first.precision.scaler.state_dict()
    else:
        assert "scaler" not in saved
    del first
    torch.manual_seed(123)  # whatever the global state: the checkpoint restores it
    second = Run(spec, env)
    assert second.prepare() is None and second.epoch == 1
    if precision == "fp16":
        assert second.precision.scaler.state_dict() == saved["scaler"]
    record = second.execute()
    keys = [k for k in reference if k.startswith(("best_", "last_"))] + ["model_sha256"]
    assert {k: record[k] for k in keys} == {k: reference[k] for k in keys}
    ref_rows = RunFolder(tmp_path / "ref", spec.run_id).read_epochs()
    rows = folder.read_epochs()
    assert [(r["losses"], r["test"]) for r in rows] == [(r["losses"], r["test"]) for r in ref_rows]


def test_a_bf16_cohort_ends_as_its_members_run_separately(tmp_path):
    """Cohort members share the protocol, so its precision: under bf16 they still end bit for bit as separate
    runs (the shared teacher forward runs under the same autocast)."""
    from runner import cohort

    protocol = Protocol(epochs=1, batch_size=16, precision="bf16")
    teacher = RunSpec(DATA, "ce", "resnet8", 0, protocol)
    members = [RunSpec(DATA, m, "resnet8", 0, protocol, hparams=get_method(m).resolve_hparams({}, "cifar10"),
                       teacher={"run": teacher.run_id, "arch": "resnet8"}) for m in ("st", "at")]
    assert len({cohort.cohort_key(s) for s in members}) == 1
    assert cohort.stream_key(members[0]) != cohort.stream_key(spec_of("fp32"))  # never with fp32 runs
    env = RunEnv(results_dir=str(tmp_path), **QUIET)
    assert execute(teacher, env)["status"] == "done"
    together = cohort.execute(members, env)
    assert "cohort: training with 2 member(s)" in RunFolder(tmp_path, members[0].run_id).log.read_text()
    shutil.rmtree(RunFolder(tmp_path, members[0].run_id).path)
    shutil.rmtree(RunFolder(tmp_path, members[1].run_id).path)
    for spec, record in zip(members, together):
        alone = execute(spec, env)
        keys = [k for k in alone if k.startswith(("best_", "last_"))] + ["model_sha256", "precision"]
        assert {k: record[k] for k in keys} == {k: alone[k] for k in keys}, spec.method


def test_a_fp16_checkpoint_without_its_scaler_is_not_trusted():
    precision = Precision("fp16", "cpu")
    with pytest.raises(ValueError, match="scaler"):
        precision.load_state_dict(None)
    with pytest.raises(ValueError, match="scaler"):
        FP32.load_state_dict({"scale": 1.0})
    with pytest.raises(ValueError, match="malformed"):
        precision.load_state_dict({"scale": float("nan"), "_growth_tracker": 0})


# ---- the method helpers --------------------------------------------------------------------------------------
OVERRIDES = {  # methods with their own train_step or losses (and the helper's callers), small networks
    "kdfm": {}, "dml": {"peer": "resnet8"}, "bss": {}, "sobolev": {}, "oeckd": {},
    "ekd": {"teachers": ["resnet8", "resnet14"], "hint_weight": 1.0}, "fsp": {}, "at+st": {}, "crd": {},
}


@pytest.mark.parametrize("name", list(OVERRIDES))
def test_every_step_override_trains_without_nan_under_bf16(name):
    cls = get_method(name)
    hparams = OVERRIDES[name]
    method, batch = make_pair(cls, hparams, teacher="resnet8", batch=8)
    method.ctx.precision = Precision("bf16", "cpu")
    protocol = CheckProtocol()
    stages = method.stages(protocol)
    total = sum(s.epochs for s in stages)
    for stage in stages:  # FSP's init stage has its own step
        optimizer = make_optimizer(list(method.stage_parameters(stage)), protocol, stage)
        before = [p.detach().clone() for p in method.student.parameters()]
        method.train(True)
        with method.ctx.precision.autocast():
            losses = method.train_step(batch, StepInfo(total - 1, total, stage, 0, 0), optimizer)  # BSS attacks late
        assert losses and all(torch.isfinite(v).all() for v in losses.values()), (name, stage.name, losses)
        assert all(torch.isfinite(p).all() for p in method.student.parameters())
        assert any(not torch.equal(a, p) for a, p in zip(before, method.student.parameters())), "no step taken"


def test_backward_step_goes_through_the_gradient_scaler_once_per_optimiser():
    """KDFM steps two optimisers (discriminator, student): both through the run's scaler under fp16, which
    updates its scale once per training step, after both (torch.amp's pattern for several optimisers)."""
    method, batch = make_pair(get_method("kdfm"), teacher="resnet8", batch=8)
    method.ctx.precision = precision = Precision("fp16", "cpu")
    protocol = CheckProtocol()
    stage = method.stages(protocol)[0]
    optimizer = make_optimizer(list(method.stage_parameters(stage)), protocol, stage)
    with precision.autocast():
        losses = method.train_step(batch, StepInfo(0, 1, stage, 0, 0), optimizer)
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert precision.scaler.state_dict()["_growth_tracker"] == 1  # one update for the two optimisers
    # an overflow in the discriminator's step skips that step only; the scale halves once, at the step's end
    method.extra["disc"].requires_grad_(True)  # as KDFM's own discriminator step does
    disc = [p.detach().clone() for p in method.extra["disc"].parameters()]
    scale = precision.scaler.get_scale()
    method.backward_step(method.extra["disc"](torch.ones(2, 64, 8, 8)).float().sum() * float("inf"), method.d_opt,
                         last=False)
    assert all(torch.equal(a, p) for a, p in zip(disc, method.extra["disc"].parameters()))
    assert precision.scaler.get_scale() == scale  # not yet updated
    student = [p.detach().clone() for p in method.student.parameters()]
    method.backward_step(method.student(batch.x)[0].float().sum(), optimizer)
    assert any(not torch.equal(a, p) for a, p in zip(student, method.student.parameters()))  # its grads were finite
    assert precision.scaler.get_scale() == scale / 2
    # an overflow is skipped, not applied: the weights stay, the scale halves
    weights = [p.detach().clone() for p in method.student.parameters()]
    scale = precision.scaler.get_scale()
    ce = method.student(batch.x)[0].float().sum() * float("inf")
    method.backward_step(ce, optimizer)
    assert all(torch.equal(a, p) for a, p in zip(weights, method.student.parameters()))
    assert precision.scaler.get_scale() == scale / 2


def test_fp32_step_uses_no_autocast_and_no_scaler():
    assert not FP32.reduced and FP32.scaler is None
    method, batch = make_pair(get_method("st"), batch=8)
    assert method.ctx.precision is FP32  # a Context built by hand: the paper's fp32
    calls = []
    method.in_fp32(lambda *a: calls.append(a), torch.ones(1, dtype=torch.bfloat16))
    assert calls[0][0].dtype == torch.bfloat16  # fp32 runs: a plain call, nothing converted
    bf16 = Precision("bf16", "cpu")
    method.ctx.precision = bf16
    with bf16.autocast():
        seen = method.in_fp32(lambda x: (x.dtype, torch.is_autocast_enabled("cpu")), torch.ones(1).bfloat16())
    assert seen == (torch.float32, False)


# ---- layout and compilation (execution settings) --------------------------------------------------------------
def test_channels_last_is_an_execution_setting(tmp_path):
    spec = spec_of("bf16", epochs=1)
    assert RunEnv(device="cpu").uses_channels_last is False  # CPU: the default layout unless asked
    env = RunEnv(results_dir=str(tmp_path), channels_last=True, **QUIET)
    run = Run(spec, env)
    assert run.prepare() is None
    assert isinstance(run.train_loader, ChannelsLast)
    batch = next(iter(run.train_loader.epoch(0)))
    assert batch.x.is_contiguous(memory_format=torch.channels_last)
    assert run.method.student.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    record = run.execute()
    assert record["status"] == "done" and record["run_id"] == spec.run_id
    assert 0 <= record["best_top1"] <= 100


def test_the_evaluation_batch_is_an_execution_setting():
    from data import EvalLoader
    from runner.env import cached_splits
    from runner.evaluate import predict_logits

    assert RunEnv().eval_batch_size == 128 and RunEnv(device="cuda").eval_batch_size == 1000
    assert RunEnv(test_batch_size=50).eval_batch_size == 50
    _, test = cached_splits(DATA, None, False)
    net = build_seeded("resnet8", 10, 0).eval()
    ds = DATASETS["cifar10"]
    small, large = (predict_logits(net, EvalLoader(test, b, ds.mean, ds.std)) for b in (4, 1000))  # 16 test images: 4 batches, 1
    torch.testing.assert_close(small, large)  # the same logits, labels and order, batch by batch or at once


def test_compile_trains_with_plain_checkpoints_or_is_refused_up_front(tmp_path, monkeypatch, capsys):
    # a light backend (dynamo + AOT autograd, no C++ build); the CPU inductor build takes a minute per network
    spec = spec_of("fp32", epochs=2)
    env = RunEnv(results_dir=str(tmp_path / "c"), compile="aot_eager", **QUIET)
    run = Run(spec, env)
    assert run.prepare() is None
    run.run_epoch()
    ckpt = load_checked(RunFolder(env.results_dir, spec.run_id).ckpt)
    build_seeded("resnet8", 10, 0).load_state_dict(ckpt["student"])  # strict: the plain module's keys
    run.run_epoch()
    record = run.finish()
    assert record["status"] == "done" and 0 <= record["best_top1"] <= 100
    model = torch.load(RunFolder(env.results_dir, spec.run_id).model, weights_only=False)
    build_seeded("resnet8", 10, 0).load_state_dict(model["state_dict"])
    # sobolev back-propagates twice through the student: it trains eagerly, and its log says so
    sob = RunSpec(DATA, "sobolev", "resnet8", 0, Protocol(epochs=1, batch_size=16),
                  hparams=get_method("sobolev").resolve_hparams({}, "cifar10"),
                  teacher={"run": spec.run_id, "arch": "resnet8"})
    assert Run(sob, env).prepare() is None
    assert "--compile: not applied to sobolev" in RunFolder(env.results_dir, sob.run_id).log.read_text()
    # no C++ compiler: refused before anything is planned or written
    import torch._inductor.cpp_builder as cpp_builder

    def no_compiler():
        raise RuntimeError("no working C++ compiler")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    check_compile.cache_clear()
    try:
        with pytest.raises(UserError, match="C\\+\\+ compiler"):
            check_compile("inductor", "cpu")
        results = tmp_path / "refused"
        assert benchmark.main(["--methods", "st", *TINY, "--compile", "--results-dir", str(results)]) == 2
        assert "needs a C++ compiler" in capsys.readouterr().err and not results.exists()
    finally:
        check_compile.cache_clear()
    with pytest.raises(UserError, match="unknown torch.compile backend"):
        check_compile("no-such-backend", "cpu")
    assert env_module.check_compile(None, "cpu") is None
