"""OEC-KD, EKD and KDFM: the sizes OEC-KD's paper states, the pieces of each loss, who learns from whom, how
the runs are planned, and an exact resume of KDFM (whose discriminator has an optimiser of its own)."""
from __future__ import annotations

import json

import pytest
import torch

from data import Batch
from methods import get_method
from methods.base import Context, StepInfo
from methods.ekd import ekd_loss
from methods.kdfm import KDFM, kdfm_discriminator_loss
from methods.oeckd import oeckd_loss
from models import build_seeded, build_model, count_parameters
from models.pretrained import Renormalize
from runner.plan import PlanRequest, plan
from runner.spec import DataSpec, Protocol, RunSpec
from runner.env import RunEnv
from runner.execute import execute
from runner.train import build_method, make_optimizer

NUM_CLASSES = 10


def build(name, student="resnet8", teacher="resnet14", classes=NUM_CLASSES, hparams=None, extra=None, batch=8):
    cls = get_method(name)
    hp = cls.resolve_hparams(hparams or {}, "cifar10")
    torch.manual_seed(0)
    s = build_model(cls.student_arch(hp, student), classes)
    t = build_model(teacher, classes).eval() if cls.needs_teacher else None
    if extra is None:
        extra = {a: build_model(a, classes).eval() for a in cls.teacher_archs(hp)}
    ctx = Context(num_classes=classes, dataset="cifar10", seed=0, device=torch.device("cpu"),
                  train_labels=torch.arange(64) % classes, epochs=2, extra_teachers=extra)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    method = build_method(name, hp, s, t, ctx, x[:2])
    return method, Batch(x, torch.arange(batch) % classes, torch.arange(batch))


def one_step(method, batch, protocol=Protocol(epochs=2, batch_size=8)):
    stage = method.stages(protocol)[0]
    opt = make_optimizer(list(method.stage_parameters(stage)), protocol, stage)
    method.train(True)
    return method.train_step(batch, StepInfo(0, 2, stage, 0, 0), opt), opt


# ---- OEC-KD -------------------------------------------------------------------------------------------------
def relative_sizes(arch, classes):
    net = build_model(arch, classes)
    counts = [count_parameters(net.member(j)) for j in range(len(net.branches))]
    return [round(100 * c / counts[0], 2) for c in counts]


@pytest.mark.parametrize("arch,classes,table1", [
    ("oeckd_resnet110", 10, [100, 62.79, 35.26, 15.15, 3.64]),        # paper Table 1 (10 classes)
    ("oeckd_resnet110", 100, [100, 62.85, 35.34, 15.23, 3.70]),       # the same rule with 100 classes
    ("oeckd_densenet_bc100", 10, [100, 58.01, 36.34, 13.31, 4.29]),   # paper Table 1
])
def test_oeckd_student_sizes_match_table1(arch, classes, table1):
    # each student is counted as base (stem) + its branch, relative to student 1 (the original network)
    assert relative_sizes(arch, classes) == table1


def test_oeckd_students_are_the_registered_standalone_models():
    net = build_model("oeckd_resnet110", 10)
    assert net.member_archs == ["resnet110", "resnet110_w80", "resnet110_w60", "resnet110_w40", "resnet110_w20"]
    for j, arch in enumerate(net.member_archs):
        assert count_parameters(net.member(j)) == count_parameters(build_model(arch, 10))
    assert [b.widths for b in net.branches] == [(16, 32, 64), (12, 25, 51), (9, 19, 38), (6, 12, 25), (3, 6, 12)]
    dense = build_model("oeckd_densenet_bc100", 10)
    assert [b.growth for b in dense.branches] == [12, 9, 7, 4, 2]


def test_oeckd_members_start_from_their_baselines_initial_weights():
    method, _ = build("oeckd")
    net = method.student
    for j, arch in enumerate(net.member_archs):
        base = build_seeded(arch, NUM_CLASSES, 0).state_dict()
        for k, v in net.branches[j].state_dict().items():
            assert torch.equal(v, base[k]), (arch, k)
    stem = build_seeded("resnet8", NUM_CLASSES, 0).state_dict()
    assert all(torch.equal(v, stem[k]) for k, v in net.stem.state_dict().items())


def test_oeckd_loss_terms():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1, 2, 3])
    same = torch.randn(4, 10, generator=g)
    pt = [torch.randn(4, 8, 4, 4, generator=g, requires_grad=True)]
    adapted = [[torch.randn(4, 8, 4, 4, generator=g, requires_grad=True)]]
    out = oeckd_loss([same, same.clone()], y, pt, adapted)
    assert float(out["kd"]) == pytest.approx(0.0, abs=1e-6), "students equal to the ensemble: no KD"
    torch.testing.assert_close(out["ce"], 0.7 * 2 * torch.nn.functional.cross_entropy(same, y))
    out["inter"].backward()
    assert pt[0].grad is None, "the pseudo teacher's maps are targets only"
    assert adapted[0][0].grad is not None
    torch.testing.assert_close(out["inter"], 0.15 * ((adapted[0][0] - pt[0]) ** 2).mean())


def test_oeckd_kd_includes_the_pseudo_teacher_and_uses_t_squared():
    z1, z2 = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    T = 2.0
    p_t = torch.softmax(((z1 + z2) / 2) / T, 1)
    kl = lambda z: (p_t * (p_t.log() - torch.log_softmax(z / T, 1))).sum()
    out = oeckd_loss([z1, z2], torch.tensor([0]), [], [], T=T)
    torch.testing.assert_close(out["kd"], 0.15 * T * T * (kl(z1) + kl(z2)))


def test_oeckd_step_reports_eq7_terms_and_delivers_every_student():
    method, batch = build("oeckd")
    losses, _ = one_step(method, batch)
    assert set(losses) == {"ce", "inter", "kd"}
    assert len(method.extra["adapt"]) == 3 * 4  # 3 stage outputs x 4 compressed students
    conv = method.extra["adapt"]["s5_stage3"]
    assert conv.bias is not None and (conv.in_channels, conv.out_channels) == (12, 64)
    members = method.member_models()
    assert list(members) == ["s1", "s2", "s3", "s4", "s5", "ens"]
    assert members["ens"] is method.eval_model() is method.student


def test_oeckd_pseudo_teacher_gets_no_gradient_from_the_feature_term():
    method, batch = build("oeckd")
    method.train(True)
    _, outs = method.student.forward_branches(batch.x)
    maps = [outs[0][1][s] for s in ("stage1", "stage2", "stage3")]
    adapted = [[method.extra["adapt"][f"s{l}_{s}"](outs[l - 1][1][s]) for s in ("stage1", "stage2", "stage3")]
               for l in range(2, 6)]
    oeckd_loss([z for z, _ in outs], batch.y, maps, adapted)["inter"].backward()
    assert all(p.grad is None for p in method.student.branches[0].parameters())
    assert any(p.grad is not None for p in method.student.branches[4].parameters())


# ---- EKD ----------------------------------------------------------------------------------------------------
def test_ekd_loss_zero_kd_when_branches_equal_their_teachers():
    g = torch.Generator().manual_seed(0)
    z = [torch.randn(4, 10, generator=g, dtype=torch.float64) for _ in range(2)]  # float64: T^2 amplifies rounding
    out = ekd_loss(z, [v.clone() for v in z], torch.arange(4))
    assert set(out) == {"ce_b1", "kd_b1", "ce_b2", "kd_b2", "ce_ens"}
    assert float(out["kd_b1"]) == pytest.approx(0, abs=1e-6) and float(out["kd_b2"]) == pytest.approx(0, abs=1e-6)


def test_ekd_each_branch_learns_from_its_own_teacher():
    method, batch = build("ekd", hparams={"teachers": ["resnet8"]})
    assert method.teachers[0] is method.teacher and method.teachers[1] is not method.teacher
    method.train(True)
    losses = method.losses(batch, None)
    losses["kd_b1"].backward()
    assert all(p.grad is None for p in method.student.branches[1].parameters())
    assert any(p.grad is not None for p in method.student.branches[0].parameters())
    assert list(method.member_models()) == ["b1", "b2"]


def test_ekd_defaults_and_student():
    cls = get_method("ekd")
    assert "paper-inspired" in cls.description
    hp = cls.resolve_hparams({}, "cifar10")
    assert cls.needs_teacher and cls.teacher_archs(hp) == ["resnet56", "densenet40"]
    assert cls.student_arch(hp, "resnet20") == "ekd3_resnet8"
    assert count_parameters(build_model("ekd3_resnet8", 10)) < count_parameters(build_model("resnet20", 10))


def test_ekd_branches_are_plain_resnet8s():
    method, _ = build("ekd", hparams={"teachers": ["resnet8"]})
    for key, member in method.member_models().items():
        arch = method.member_arch(key)
        assert arch == "resnet8" and count_parameters(member) == count_parameters(build_model(arch, NUM_CLASSES))


def test_ekd_hint_is_optional():
    method, batch = build("ekd", hparams={"teachers": ["resnet8"], "hint_weight": 0.5})
    losses, _ = one_step(method, batch)
    assert "hint" in losses and len(method.extra["hint"]) == 2


def test_ekd_refuses_missing_teachers():
    with pytest.raises(ValueError, match="not loaded"):
        build("ekd", extra={})
    cls = get_method("ekd")
    hp = cls.resolve_hparams({"teachers": ["resnet8"]}, "cifar10")
    ctx = Context(num_classes=10, dataset="cifar10", seed=0, device=torch.device("cpu"),
                  train_labels=torch.arange(8) % 10, epochs=2, extra_teachers={"resnet8": build_model("resnet8", 10)})
    with pytest.raises(ValueError, match="benchmark's teacher"):
        cls(build_model("ekd2_resnet8", 10), None, hp, ctx)


def test_plan_adds_ekd_teachers_and_reuses_the_main_one():
    stages = plan(PlanRequest(preset="smoke", methods=["ekd", "oeckd"]))
    teachers = [r.spec.student for r in stages[0]]
    assert teachers == ["resnet110", "resnet56", "densenet40"], "branch 1's is the benchmark's teacher"
    runs = {r.spec.method: r for r in stages[1] if r.spec.method != "ce"}
    ekd, oec = runs["ekd"], runs["oeckd"]
    assert ekd.spec.student == "ekd3_resnet8" and ekd.spec.teacher["run"] == stages[0][0].run_id
    assert [t["arch"] for t in ekd.spec.teacher["extra"]] == teachers[1:]
    assert set(ekd.depends) == {r.run_id for r in stages[0]}
    assert oec.spec.student == "oeckd_resnet20" and oec.spec.teacher is None and not oec.depends
    json.dumps(ekd.spec.to_dict())  # the teacher list is part of the run id


def test_ekd_first_branch_can_learn_from_a_published_teacher():
    from conftest import shared_path

    ckpt = shared_path("weights", "akamaster_cifar10_resnet56-4bfd9763.th")
    stages = plan(PlanRequest(preset="smoke", methods=["ekd"], teacher_checkpoint=str(ckpt)))
    published, *trained = stages[0]
    assert published.spec.kind == "published" and [r.spec.student for r in trained] == ["resnet56", "densenet40"]
    ekd = next(r for r in stages[1] if r.spec.method == "ekd")
    assert ekd.spec.teacher["arch"] == "resnet56_a" and ekd.info["teacher_path"] == str(ckpt.resolve())


def test_plan_adds_the_oeckd_baselines_once():
    stages = plan(PlanRequest(preset="smoke", methods=["oeckd"], seeds=[0, 1]))
    assert len(stages) == 1, "OEC-KD distils from no pretrained teacher: none is planned"
    baselines = [(r.spec.seed, r.spec.student) for r in stages[0] if r.role == "student" and r.spec.method == "ce"]
    archs = ["resnet20", "resnet20_w80", "resnet20_w60", "resnet20_w40", "resnet20_w20"]
    assert baselines == [(seed, a) for seed in (0, 1) for a in archs]


def test_oeckd_run_gives_a_timed_row_per_student(tmp_path):
    import benchmark
    import pandas as pd

    args = ["--methods", "oeckd", "--preset", "smoke", "--student", "resnet8", "--epochs", "1",
            "--train-size", "128", "--test-size", "64", "--results-dir", str(tmp_path)]
    assert benchmark.main(args) == 0
    label = next(tmp_path.glob("*/summary.csv")).parent
    summary = pd.read_csv(label / "summary.csv")
    members = summary[summary.role == "member"].set_index("method")
    names = [f"oeckd-s{j}" for j in range(1, 6)] + ["oeckd-ens"]
    assert sorted(members.index) == sorted(names)
    members = members.loc[names]
    assert list(members.student) == ["resnet8", "resnet8_w80", "resnet8_w60", "resnet8_w40", "resnet8_w20",
                                     "oeckd_resnet8"]
    baselines = summary[summary.method == "ce"]
    assert sorted(baselines.student) == sorted(members.student[:5])
    # each student is as big as its baseline, and is timed under its own id
    assert (members.params[:5].values == baselines.set_index("student").loc[members.student[:5], "params"]).all()
    measured = pd.read_csv(label / "measurements.csv").set_index("run_id")
    assert set(members.run_id) <= set(measured.index)
    table2 = (tmp_path / "tables" / "table2.md").read_text()
    row = next(line for line in table2.splitlines() if line.startswith("| OEC-KD s2 (resnet8_w80)"))
    time_s = row.split("|")[2].split("(")[0]  # the CIFAR-10 time cell: "0.0123 (n=1)"
    assert float(time_s) > 0
    # `measure` times the students again too
    assert benchmark.main(["measure", "--results-dir", str(tmp_path)]) == 0
    counts = pd.read_csv(label / "measurements.csv").groupby("run_id").size()
    assert (counts[list(members.run_id)] == 2).all()


# ---- KDFM ---------------------------------------------------------------------------------------------------
def test_kdfm_shares_the_teachers_frozen_classifier():
    method, batch = build("kdfm")
    assert method.net.linear is method.teacher.linear and not method.net.linear.weight.requires_grad
    with torch.no_grad():
        t_logits, t_feats = method.teacher(batch.x)
        pooled = t_feats["stage3"].mean((2, 3))
    torch.testing.assert_close(method.net.linear(pooled), t_logits)


def test_kdfm_delivers_the_plain_student_with_the_folded_head(tmp_path):
    """At inference adapter + shared classifier are one linear map: the delivered network is the student's
    architecture, equal to the training-time network, and its model.pt loads like any run's."""
    from models.pretrained import load_teacher
    from runner.train import save_model

    method, batch = build("kdfm")
    for _ in range(2):  # move the adapter's BN statistics and weights away from their initial values
        one_step(method, batch)
    method.train(False)
    with torch.no_grad():
        expected = method.net(batch.x)[0]
        model = method.eval_model()
        assert model is method.student
        torch.testing.assert_close(model(batch.x)[0], expected, rtol=1e-4, atol=1e-5)
    assert count_parameters(model) == count_parameters(build_model("resnet8", NUM_CLASSES))
    norm = ((0.5,) * 3, (0.25,) * 3)
    save_model(model, "resnet8", NUM_CLASSES, norm, tmp_path / "model.pt")
    loaded, _ = load_teacher(tmp_path / "model.pt", NUM_CLASSES, norm)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch.x)[0], expected, rtol=1e-4, atol=1e-5)


def test_kdfm_discriminator_has_its_own_optimizer():
    method, batch = build("kdfm")
    disc = method.extra["disc"]
    before = [p.detach().clone() for p in disc.parameters()]
    w_linear = method.teacher.linear.weight.detach().clone()
    losses, opt = one_step(method, batch)
    assert set(losses) == {"ce", "fm", "kd", "adv", "disc"}
    in_sgd = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_sgd for p in disc.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, disc.parameters())), "the discriminator stepped"
    assert not any(p.requires_grad for p in disc.parameters()), "frozen again outside its step"
    assert torch.equal(w_linear, method.teacher.linear.weight), "the shared classifier stays frozen"
    assert "d_opt" in method.state_dict() and method.state_dict()["d_opt"]["state"]


def test_kdfm_discriminator_loss_is_vanilla_gan():
    big = torch.full((4, 1), 20.0)
    assert float(kdfm_discriminator_loss(big, -big)) == pytest.approx(0, abs=1e-6)
    assert float(kdfm_discriminator_loss(-big, big)) > 10


def test_kdfm_paper_pairs_resize_and_adapt():
    # DenseNet-40 -> 4-layer CNN (same 8x8 grid), DenseNet-BC-40 -> MobileNet (2x2 map up-sampled to 8x8)
    for student, teacher, c_t in (("cnn4", "densenet40", 448), ("mobilenet", "densenet_bc40", 132)):
        method, batch = build("kdfm", student=student, teacher=teacher, batch=2)
        logits, feats = method.net(batch.x)
        assert tuple(feats["adapted"].shape[1:]) == (c_t, 8, 8) and logits.shape == (2, NUM_CLASSES)
        losses, _ = one_step(method, batch)
        assert all(torch.isfinite(v) for v in losses.values())
        method.train(False)
        with torch.no_grad():
            # the same function by two paths in float32; after one step at lr 0.1 on a batch of two, logits can
            # reach 1e10, where summation order alone moves the last digits: compare relatively, at float32 scale
            torch.testing.assert_close(method.eval_model()(batch.x)[0], method.net(batch.x)[0], rtol=1e-3, atol=1e-5)


def test_kdfm_finds_the_classifier_of_a_published_teacher():
    from methods.kdfm import _classifier
    t = build_model("resnet8", 10)
    assert _classifier(Renormalize(t, ((0, 0, 0), (1, 1, 1)), ((0.5,) * 3, (0.2,) * 3))) is t.linear


def test_kdfm_resume_is_exact(tmp_path, monkeypatch):
    """Killed after epoch 1 and resumed, a KDFM run ends with the metrics of one never interrupted: the
    discriminator's Adam state travels in the checkpoint."""
    import runner.train as train

    data = DataSpec("cifar10", "synthetic", 32, 16)
    teacher = RunSpec(data, "ce", "resnet8", 0, Protocol(epochs=1, batch_size=16))
    spec = RunSpec(data, "kdfm", "resnet8", 0, Protocol(epochs=2, batch_size=16),
                   hparams=KDFM.resolve_hparams({}, "cifar10"), teacher={"run": teacher.run_id, "arch": "resnet8"})
    quiet = dict(log=lambda s: None, deterministic=True)
    rows = {}
    for name in ("straight", "resumed"):
        env = RunEnv(results_dir=str(tmp_path / name), **quiet)
        assert execute(teacher, env)["status"] == "done"
        if name == "resumed":
            original = train.Run._save

            def save_then_die(self, epoch, r, optimizer):
                original(self, epoch, r, optimizer)
                if epoch == 1:
                    raise KeyboardInterrupt  # not caught by execute: like a kill, nothing recorded
            monkeypatch.setattr(train.Run, "_save", save_then_die)
            with pytest.raises(KeyboardInterrupt):
                execute(spec, env)
            monkeypatch.setattr(train.Run, "_save", original)
        assert execute(spec, env)["status"] == "done"
        rows[name] = [json.loads(l) for l in (tmp_path / name / "runs" / spec.run_id / "epochs.jsonl").open()]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "train_time"} for r in rs]
    assert strip(rows["straight"]) == strip(rows["resumed"])


def test_oeckd_preset_is_the_paper_protocol_at_350_epochs():
    from runner.plan import load_presets

    presets = load_presets()
    oec, paper = dict(presets["oeckd"]["protocol"]), dict(presets["paper"]["protocol"])
    assert oec.pop("epochs") == 350 and paper.pop("epochs") == 200
    assert oec == paper and presets["oeckd"]["data"] == presets["paper"]["data"]
