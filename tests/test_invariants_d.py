"""Invariants of the module-based feature and relation methods VID, OFD, AFD and CRD that the golden vectors do
not reach: module initialisation, mask semantics, and CRD's sampling, memory bank, Z constants and randomness."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from data import Batch
from methods import get_method
from methods.afd import AFDAttention, afd_loss
from methods.base import Context, StepInfo, Stage
from methods.crd import CRD, NegativeSampler, crd_exp_scores
from methods.ofd import ofd_loss, ofd_margin, ofd_mask
from methods.vid import VIDModule, vid_variance
from models import build_model
from runner.train import build_method

NUM_CLASSES = 10
STAGE = Stage("main", 1, ((0, 0.1),))


def build(name, hparams=None, n_data=40, batch=8, seed=0):
    """A tiny student/teacher pair (resnet8) wired to `name` through the runner's own `build_method`."""
    torch.manual_seed(seed)
    s, t = build_model("resnet8", NUM_CLASSES), build_model("resnet8", NUM_CLASSES).eval()
    gen = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(batch, 3, 8, 8, generator=gen)  # small maps keep the steps fast; shapes follow
    labels = torch.arange(n_data) % NUM_CLASSES
    idx = torch.randperm(n_data, generator=gen)[:batch]
    ctx = Context(num_classes=NUM_CLASSES, dataset="cifar10", seed=seed, device=torch.device("cpu"),
                  train_labels=labels, epochs=1, generator=torch.Generator().manual_seed(seed + 1))
    cls = get_method(name)
    method = build_method(name, cls.resolve_hparams(hparams or {}, "cifar10"), s, t, ctx, x[:2])
    return method, Batch(x, labels[idx], idx)


def step(method, batch):
    opt = torch.optim.SGD([p for m in (method.student, method.extra) for p in m.parameters()], lr=0.1)
    method.train(True)
    return method.train_step(batch, StepInfo(0, 1, STAGE, 0, 0), opt)


# ---- AFD ----------------------------------------------------------------------------------------------------
def test_afd_zero_when_maps_equal():
    g = torch.Generator().manual_seed(0)
    fm = torch.rand(3, 8, 4, 4, generator=g)
    fm[0, 2] = 0.0  # a dead channel must not produce NaN
    fm_s = fm.clone().requires_grad_()
    logits = AFDAttention(8)(fm)
    loss = afd_loss(fm_s, fm, logits)
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, fm_s)
    assert torch.isfinite(grad).all() and grad.abs().max() == 0
    assert afd_loss(fm * 3.0, fm, logits).item() < 1e-12  # per-channel scale does not matter
    assert afd_loss(torch.rand(3, 8, 4, 4, generator=g), fm, logits).item() > 0


# ---- VID ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("init_var", [5.0, 0.5])
def test_vid_variance_starts_at_init_var(init_var):
    module = VIDModule(16, 16, 32, init_var=init_var, eps=1e-6)
    var = vid_variance(module.alpha, 1e-6)
    assert var.shape == (32,)
    torch.testing.assert_close(var, torch.full_like(var, init_var), rtol=1e-6, atol=1e-6)


def test_vid_method_modules_follow_shapes():
    method, _ = build("vid", {"init_var": 3.0, "sf": 0.5})
    for k, c in (("stage1", 16), ("stage2", 32), ("stage3", 64)):
        m = method.extra[k]
        assert m.regressor[0].weight.shape == (c // 2, c, 1, 1) and m.regressor[4].weight.shape == (c, c // 2, 1, 1)
        torch.testing.assert_close(vid_variance(m.alpha), torch.full((c,), 3.0), rtol=1e-6, atol=1e-6)


# ---- OFD ----------------------------------------------------------------------------------------------------
def test_ofd_margin_and_mask():
    # channel 0 has negatives -1 and -3 (margin -2); channel 1 has none (margin 0)
    fm_t = torch.tensor([[[[-1.0, -3.0, 2.0, 0.5]], [[1.0, 2.0, 3.0, 4.0]]]])  # [1, 2, 1, 4]
    margin = ofd_margin(fm_t)
    torch.testing.assert_close(margin.flatten(), torch.tensor([-2.0, 0.0]), rtol=1e-5, atol=1e-5)
    target = torch.maximum(fm_t, margin)  # channel 0 -> [-1, -2, 2, 0.5]
    conn_s = torch.tensor([[[[-5.0, -1.0, 1.0, 3.0]], [[0.0, 2.0, 5.0, 4.0]]]], requires_grad=True)
    mask = ofd_mask(conn_s, target)
    # (-5 <= -1, target <= 0) -> ignored; (-1 > -2) -> counts; positive targets always count
    assert mask.tolist() == [[[[False, True, True, True]], [[True, True, True, True]]]]
    loss = ofd_loss(conn_s, fm_t)
    expected = ((conn_s.detach() - target) ** 2 * mask).mean()
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, conn_s)
    assert grad[0, 0, 0, 0] == 0 and grad[0, 0, 0, 1] != 0
    # a student far below every target only pays where the teacher is positive (targets 2 and 0.5)
    low = torch.full((1, 1, 1, 4), -10.0)
    torch.testing.assert_close(ofd_loss(low, fm_t[:, :1]), torch.tensor((12.0 ** 2 + 10.5 ** 2) / 4))


def test_ofd_connector_trains_in_batch_mode():
    method, batch = build("ofd")
    method.train(True)
    assert all(method.extra[k].training for k in method.extra)
    before = method.extra["stage1_pre"].connector[1].running_mean.clone()
    step(method, batch)
    assert not torch.equal(before, method.extra["stage1_pre"].connector[1].running_mean)


# ---- CRD ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_data,nce_n", [(40, 1000), (400, 50)], ids=["with-replacement", "without-replacement"])
def test_crd_negatives_are_other_classes(n_data, nce_n):
    labels = torch.randint(0, NUM_CLASSES, (n_data,), generator=torch.Generator().manual_seed(3))
    sampler = NegativeSampler(labels, nce_n)
    idx = torch.arange(0, n_data, 3)
    sample_idx = sampler(idx, torch.Generator().manual_seed(0))
    assert sample_idx.shape == (len(idx), nce_n + 1)
    assert torch.equal(sample_idx[:, 0], idx)
    neg = sample_idx[:, 1:]
    assert ((neg >= 0) & (neg < n_data)).all()
    assert (labels[neg] != labels[idx][:, None]).all(), "a negative shares the positive's class"
    if nce_n <= int((labels != labels[0]).sum()):  # enough negatives: a subset, no repeats (as the reference)
        assert all(len(set(row.tolist())) == nce_n for row in neg)
    else:  # every other-class sample is reachable
        assert set(neg[0].tolist()) == set((labels != labels[idx[0]]).nonzero().flatten().tolist())


def test_crd_scores_equal_gathered_rows():
    """The GEMM-then-gather scores equal the reference's gather-rows-then-bmm scores (value and gradient)."""
    g = torch.Generator().manual_seed(0)
    memory = F.normalize(torch.randn(30, 8, generator=g, dtype=torch.float64), dim=1)
    emb = F.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    sample_idx = torch.randint(0, 30, (4, 11), generator=g)
    ours = crd_exp_scores(emb, memory, sample_idx, 0.1)
    rows = memory[sample_idx.reshape(-1)].view(4, 11, 8)
    ref = torch.exp(torch.bmm(rows, emb[:, :, None]).squeeze(2) / 0.1)
    torch.testing.assert_close(ours, ref)
    w = torch.rand(4, 11, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad((ours * w).sum(), emb)[0],
                               torch.autograd.grad((ref * w).sum(), emb)[0])


def _embeddings(method, batch):
    """The embeddings the next step will see (train-mode BN uses batch statistics: same output)."""
    with torch.no_grad():
        method.train(True)
        _, s_feats = method.student(batch.x)
        _, t_feats = method.teacher(batch.x)
        return method.extra["embed_s"](s_feats["pool"]), method.extra["embed_t"](t_feats["pool"])


def test_crd_memory_moves_toward_embeddings_and_stays_unit_norm():
    method, batch = build("crd", {"nce_n": 16})
    mem = method.extra["memory"]
    assert mem.memory_s.shape == (40, 128) and mem.memory_s.device == method.ctx.device
    bound = 1 / math.sqrt(128 / 3)
    assert mem.memory_s.abs().max() <= bound and mem.memory_t.abs().max() <= bound
    assert {"embed_s", "embed_t"} <= set(method.extra)
    old_s, old_t = mem.memory_s.clone(), mem.memory_t.clone()
    emb_s, emb_t = _embeddings(method, batch)
    step(method, batch)
    others = torch.ones(40, dtype=torch.bool)
    others[batch.idx] = False
    for old, new, emb in ((old_s, mem.memory_s, emb_s), (old_t, mem.memory_t, emb_t)):
        rows = new[batch.idx]
        torch.testing.assert_close(rows.norm(dim=1), torch.ones(len(batch.idx)))
        torch.testing.assert_close(rows, F.normalize(0.5 * old[batch.idx] + 0.5 * emb, dim=1))
        assert ((rows * emb).sum(1) > F.cosine_similarity(old[batch.idx], emb)).all()
        assert torch.equal(new[others], old[others]), "rows outside the batch must not move"


def test_crd_z_fixed_on_first_batch_and_checkpoint_round_trip():
    method, batch = build("crd", {"nce_n": 16})
    mem = method.extra["memory"]
    assert mem.z_s.item() == 0 and mem.z_t.item() == 0
    step(method, batch)
    z = (mem.z_s.item(), mem.z_t.item())
    assert z[0] > 0 and z[1] > 0
    step(method, batch)
    assert (mem.z_s.item(), mem.z_t.item()) == z, "Z is fixed by the first batch"

    state = method.state_dict()
    fresh, _ = build("crd", {"nce_n": 16}, seed=5)  # different initial banks and embeddings
    assert not torch.equal(fresh.extra["memory"].memory_s, mem.memory_s)
    fresh.load_state_dict(state)
    fm = fresh.extra["memory"]
    for name in ("memory_s", "memory_t", "z_s", "z_t"):
        assert torch.equal(getattr(fm, name), getattr(mem, name)), name
    # same weights, banks, Z and generator state -> the same next loss
    fresh.student.load_state_dict(method.student.state_dict())
    fresh.teacher.load_state_dict(method.teacher.state_dict())
    fresh.ctx.generator.set_state(method.ctx.generator.get_state())
    a, b = step(method, batch), step(fresh, batch)
    torch.testing.assert_close(a["crd"], b["crd"])
    assert (fm.z_s.item(), fm.z_t.item()) == z, "a resumed run keeps the first run's Z"


def test_crd_step_leaves_global_rng_alone():
    method, batch = build("crd", {"nce_n": 16})
    state = torch.get_rng_state()
    gen_before = method.ctx.generator.get_state()
    step(method, batch)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(method.ctx.generator.get_state(), gen_before), "negatives come from the method's generator"


def test_crd_weight_per_dataset():
    assert CRD.resolve_hparams({}, "cifar10")["weight"] == 0.2
    assert CRD.resolve_hparams({}, "cifar100")["weight"] == 0.8
    assert CRD.resolve_hparams({"weight": 1.5}, "cifar100")["weight"] == 1.5
