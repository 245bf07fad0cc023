"""ReviewKD (methods/reviewkd.py): golden parity with mdistiller's `hcl_loss` / ABF chain (both variants of
../shared/golden/reviewkd.pt, float64 and float32, value and gradients, the README's criteria), the HCL's
invariants, the ABF chain built from feature shapes (also for student/teacher widths that differ), the
warm-up, the registry entry, and one training step through the runner's `build_method`."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import shared_path
from data import Batch
from methods import ON_REQUEST, REGISTRY, default_methods, get_method
from methods.base import Context, Stage, StepInfo
from methods.reviewkd import ABF, ReviewFusion, ReviewKD, hcl_loss, reviewkd_warmup
from models import build_model
from runner.train import build_method

NUM_CLASSES = 10
STAGE = Stage("main", 1, ((0, 0.1),))


def _golden():
    return torch.load(shared_path("golden", "reviewkd.pt"), weights_only=True)


def _case_names():
    return ["hcl_4levels", "with_abf"]


# ---- golden vectors ----------------------------------------------------------------------------------------
def test_golden_file_has_the_cases_tested_here():
    assert [c["name"] for c in _golden()["cases"]] == _case_names()


# value and gradient parity with every golden case: tests/test_golden.py (it covers every registered method)


@pytest.mark.parametrize("case_name", _case_names())
def test_reference_call_evaluates_the_declared_loss(case_name, monkeypatch):
    case = next(c for c in _golden()["cases"] if c["name"] == case_name)
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return torch.tensor(12345.0)

    monkeypatch.setattr(ReviewKD, "loss_fn", staticmethod(spy))
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in case["inputs"].items()}
    assert float(ReviewKD.reference_call(inputs, dict(case["hparams"]))) == 12345.0 and len(calls) == 1


def test_golden_abf_parameter_names_are_the_modules_state_dict():
    """The with_abf case's parameter inputs are exactly the parameters of a ReviewFusion built from its hparams
    (mdistiller's `abfs.<i>.*` names, abfs.0 = deepest, without att_conv), with the same shapes."""
    case = next(c for c in _golden()["cases"] if c["variant"] == "with_abf")
    hp = case["hparams"]
    fusion = ReviewFusion(hp["in_channels"], hp["out_channels"], hp["shapes"], hp["out_shapes"])
    params = {k: tuple(p.shape) for k, p in fusion.named_parameters()}
    given = {k: tuple(v.shape) for k, v in case["inputs"].items() if k.startswith("abfs.")}
    assert params == given
    assert fusion.abfs[0].att_conv is None and all(a.att_conv is not None for a in fusion.abfs[1:])


# ---- the HCL loss --------------------------------------------------------------------------------------------
def _levels(seed, dtype=torch.float64, b=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, h, h, generator=g, dtype=dtype) for c, h in ((16, 8), (32, 4), (64, 2), (64, 1))]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_hcl_zero_with_zero_gradient_when_fused_equal_teacher(dtype):
    """The invariant of the pure loss: it vanishes (with no pull on the student) exactly when every fused level
    equals the teacher's. The ABF outputs themselves (conv3x3 + BN) cannot equal arbitrary teacher maps by
    construction, so the method's total is only >= 0."""
    t = _levels(1, dtype)
    s = [x.clone().requires_grad_(True) for x in t]
    loss = hcl_loss(s, t)
    assert loss.item() == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in torch.autograd.grad(loss, s))
    other = _levels(2, dtype)
    assert hcl_loss(other, t).item() > 0
    # each level counts: changing only the pooled level makes the loss positive
    assert hcl_loss(t[:3] + [t[3] + 0.1], t).item() > 0


def test_hcl_pyramid_weights_halve_per_used_size():
    """A size p is used only if p < H and the weights halve in order of use: an 8x8 map uses (4, 2, 1) with
    (1/2, 1/4, 1/8), a 4x4 map (2, 1) with (1/2, 1/4), a 2x2 map (1) with 1/2, a 1x1 map none."""
    g = torch.Generator().manual_seed(3)

    def manual(fs, ft, used):
        total, w_sum, w = F.mse_loss(fs, ft), 1.0, 1.0
        for p in used:
            w /= 2
            total = total + w * F.mse_loss(F.adaptive_avg_pool2d(fs, p), F.adaptive_avg_pool2d(ft, p))
            w_sum += w
        return total / w_sum

    for h, used in ((8, (4, 2, 1)), (4, (2, 1)), (2, (1,)), (1, ())):
        fs, ft = (torch.randn(2, 3, h, h, generator=g, dtype=torch.float64) for _ in range(2))
        torch.testing.assert_close(hcl_loss([fs], [ft]), manual(fs, ft, used), rtol=1e-12, atol=0)
    # the levels are summed, not averaged
    s, t = _levels(4), _levels(5)
    torch.testing.assert_close(hcl_loss(s, t), sum(hcl_loss([a], [b]) for a, b in zip(s, t)), rtol=1e-12, atol=0)


# ---- the ABF chain from feature shapes ---------------------------------------------------------------------------
def _fake_feats(channels, sizes, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = {}
    for i, (c, h) in enumerate(zip(channels, sizes), start=1):
        pre = torch.randn(b, c, h, h, generator=g)
        feats[f"stage{i}_pre"], feats[f"stage{i}"] = pre, pre.relu()
    feats["pool"] = feats["stage3"].mean((2, 3))
    return feats


def _bare_method(hparams=None):
    s, t = build_model("resnet8", NUM_CLASSES), build_model("resnet8", NUM_CLASSES)
    ctx = Context(num_classes=NUM_CLASSES, dataset="cifar10", seed=0, device=torch.device("cpu"),
                  train_labels=torch.arange(10), epochs=1)
    return ReviewKD(s, t, hparams or {}, ctx)


@pytest.mark.parametrize("t_sizes", [(8, 4, 2), (16, 8, 4)], ids=["same-grid", "teacher-grid-x2"])
def test_setup_builds_abfs_for_different_widths(t_sizes):
    """Student 16/32/64 against a teacher of 32/64/128 channels (CRD-style pairs): one ABF per level, in from
    the student's channels, out to the teacher's (channels and grid), middle width min(512, student pool)."""
    s_feats = _fake_feats((16, 32, 64), (8, 4, 2), seed=1)
    t_feats = _fake_feats((32, 64, 128), t_sizes, seed=2)
    method = _bare_method()
    method.setup(s_feats, t_feats)
    fusion = method.extra["fusion"]
    assert fusion.shapes == [1, 2, 4, 8] and fusion.out_shapes == [1, *t_sizes[::-1]]
    # abfs[0] = deepest (pooled) ... abfs[3] = stage1
    for abf, c_in, c_out in zip(fusion.abfs, (64, 64, 32, 16), (128, 128, 64, 32)):
        assert abf.conv1[0].weight.shape == (64, c_in, 1, 1)
        assert abf.conv2[0].weight.shape == (c_out, 64, 3, 3)
    fused = fusion([s_feats["stage1"], s_feats["stage2"], s_feats["stage3"], s_feats["pool"][:, :, None, None]])
    assert [tuple(f.shape) for f in fused] == [(4, 32, t_sizes[0], t_sizes[0]), (4, 64, t_sizes[1], t_sizes[1]),
                                               (4, 128, t_sizes[2], t_sizes[2]), (4, 128, 1, 1)]
    method.train(True)
    out = method.distill(None, s_feats, None, t_feats, None, StepInfo(100, 200, STAGE, 100))
    assert set(out) == {"reviewkd"} and torch.isfinite(out["reviewkd"]) and out["reviewkd"] > 0
    out["reviewkd"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.extra.parameters())


def test_mid_channels_are_capped_at_512():
    fusion = ReviewFusion([256, 512, 1024, 1024], [64, 128, 256, 256], [1, 4, 8, 16], [1, 8, 16, 32])
    assert all(a.conv1[0].out_channels == 512 for a in fusion.abfs)


def test_abf_init_as_reference():
    """conv1/conv2 weights Kaiming-uniform with a=1 (bound sqrt(3 / fan_in)), BatchNorm (1, 0)."""
    torch.manual_seed(0)
    abf = ABF(64, 64, 64, fuse=True)
    for conv in (abf.conv1[0], abf.conv2[0]):
        fan_in = conv.weight[0].numel()
        assert conv.weight.abs().max() <= (3.0 / fan_in) ** 0.5 + 1e-7
        assert conv.weight.abs().max() > 0.9 * (3.0 / fan_in) ** 0.5
    for bn in (abf.conv1[1], abf.conv2[1]):
        assert (bn.weight == 1).all() and (bn.bias == 0).all()


# ---- warm-up --------------------------------------------------------------------------------------------------
def test_warmup_scaled_from_20_of_240_epochs():
    # 20 of 240 reference epochs -> 17 of 200; 1-based as mdistiller: 1/17 in the first epoch, 1 from the 17th
    assert reviewkd_warmup(0, 200, 20) == pytest.approx(1 / 17)
    assert reviewkd_warmup(15, 200, 20) == pytest.approx(16 / 17)
    assert reviewkd_warmup(16, 200, 20) == 1.0 and reviewkd_warmup(199, 200, 20) == 1.0
    assert reviewkd_warmup(0, 240, 20) == pytest.approx(1 / 20)
    assert reviewkd_warmup(0, 2, 20) == 1.0  # short runs: at least one epoch, so full weight at once
    assert reviewkd_warmup(0, 200, 0) == 1.0  # warm-up off


def test_distill_applies_weight_and_warmup():
    s_feats, t_feats = _fake_feats((16, 32, 64), (8, 4, 2), seed=1), _fake_feats((16, 32, 64), (8, 4, 2), seed=2)
    method = _bare_method({"weight": 3.0})
    method.setup(s_feats, t_feats)
    method.train(True)
    full = method.distill(None, s_feats, None, t_feats, None, StepInfo(50, 200, STAGE, 50))["reviewkd"]
    first = method.distill(None, s_feats, None, t_feats, None, StepInfo(0, 200, STAGE, 0))["reviewkd"]
    torch.testing.assert_close(first, full / 17)
    fused = method.extra["fusion"]([s_feats[k] if s_feats[k].dim() == 4 else s_feats[k][:, :, None, None]
                                    for k in ReviewKD.student_taps])
    targets = [t_feats[k] if t_feats[k].dim() == 4 else t_feats[k][:, :, None, None] for k in ReviewKD.teacher_taps]
    torch.testing.assert_close(full, 3.0 * hcl_loss(fused, targets))


# ---- registry and declaration ---------------------------------------------------------------------------------
def test_registered_on_request_only():
    assert REGISTRY["reviewkd"] == "methods.reviewkd:ReviewKD" and get_method("reviewkd") is ReviewKD
    assert "reviewkd" in ON_REQUEST and "reviewkd" not in default_methods()
    keys = list(REGISTRY)
    assert keys.index("dml") < keys.index("reviewkd") < keys.index("oeckd")  # after the paper's 20
    assert ReviewKD.display_name == "ReviewKD" and ReviewKD.kind == "feature"
    assert ReviewKD.student_taps == ("stage1", "stage2", "stage3", "pool")
    assert ReviewKD.teacher_taps == ("stage1_pre", "stage2_pre", "stage3_pre", "pool")
    assert set(ReviewKD.defaults) == {"weight", "warmup_epochs", "pool_sizes", "max_mid_channel"}


# ---- one training step through the runner ---------------------------------------------------------------------
def test_one_training_step_resnet8_to_resnet8():
    torch.manual_seed(0)
    s, t = build_model("resnet8", NUM_CLASSES), build_model("resnet8", NUM_CLASSES).eval()
    gen = torch.Generator().manual_seed(100)
    x = torch.randn(8, 3, 32, 32, generator=gen)
    y = torch.arange(8) % NUM_CLASSES
    ctx = Context(num_classes=NUM_CLASSES, dataset="cifar10", seed=0, device=torch.device("cpu"),
                  train_labels=torch.arange(40) % NUM_CLASSES, epochs=1, generator=torch.Generator().manual_seed(1))
    method = build_method("reviewkd", ReviewKD.resolve_hparams({}, "cifar10"), s, t, ctx, x[:2])
    fusion = method.extra["fusion"]
    assert fusion.shapes == [1, 8, 16, 32] == fusion.out_shapes  # the reference's ResNet-20 cfg
    assert [a.conv1[0].out_channels for a in fusion.abfs] == [64] * 4
    assert method.eval_model() is method.student  # no head is added: the student's logits are the result

    before_s = {k: v.clone() for k, v in method.student.state_dict().items()}
    before_t = {k: v.clone() for k, v in t.state_dict().items()}
    before_x = {k: v.clone() for k, v in method.extra.state_dict().items()}
    opt = torch.optim.SGD([p for m in (method.student, method.extra) for p in m.parameters()], lr=0.1)
    method.train(True)
    losses = method.train_step(Batch(x, y, torch.arange(8)), StepInfo(0, 1, STAGE, 0, 0), opt)
    assert set(losses) == {"ce", "reviewkd"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["reviewkd"] > 0
    assert any(not torch.equal(before_s[k], v) for k, v in method.student.state_dict().items())
    changed = {k for k, v in method.extra.state_dict().items() if not torch.equal(before_x[k], v)}
    assert {k for k, _ in method.extra.named_parameters()} <= changed, "every ABF parameter is trained"
    assert any("running_mean" in k for k in changed), "ABF BatchNorms run in train mode with the student"
    assert all(torch.equal(before_t[k], v) for k, v in t.state_dict().items()), "the teacher is frozen"
