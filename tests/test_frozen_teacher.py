"""The teacher a run distils from is rewritten for speed (models/frozen.py: BatchNorm folded into the
convolutions, channels-last on the CPU). The rewrite must give the teacher's outputs and features to float
rounding, in the layout the methods always saw, and still pass gradients to the input."""
from __future__ import annotations

import pytest
import torch

from data import DATASETS
from models import build_seeded
from models.frozen import FrozenTeacher, frozen_teacher, inference_form
from models.pretrained import Renormalize


def trained_like(arch: str, classes: int = 10) -> torch.nn.Module:
    """A network with BatchNorm statistics and affine parameters that are not the identity (as a trained one's)."""
    net = build_seeded(arch, classes, 0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net.eval()


@pytest.mark.parametrize("arch", ["resnet20", "resnet8_a", "resnet14"])
def test_same_outputs_and_features_to_float_rounding(arch):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    plain = trained_like(arch)
    with torch.no_grad():
        logits, feats = plain(x)
        fast = frozen_teacher(trained_like(arch), torch.device("cpu"))
        f_logits, f_feats = fast(x)
    assert isinstance(fast, FrozenTeacher)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())  # folded, every one
    assert torch.allclose(f_logits, logits, rtol=1e-4, atol=1e-4 * logits.abs().max().item())
    assert f_feats.keys() == feats.keys()
    for k, v in feats.items():
        assert f_feats[k].is_contiguous() and f_feats[k].shape == v.shape
        assert torch.allclose(f_feats[k], v, rtol=1e-4, atol=1e-4 * v.abs().max().item()), k


def test_gradients_reach_the_input_as_before():
    """Sobolev's Jacobian and BSS's attack differentiate the teacher with respect to its input."""
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    grads = []
    for net in (trained_like("resnet20"), frozen_teacher(trained_like("resnet20"), torch.device("cpu"))):
        xi = x.clone().requires_grad_(True)
        net(xi)[0][:, 1].sum().backward()
        grads.append(xi.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-5 * grads[0].abs().max().item())


def test_wrapped_teachers_are_rewritten_and_others_left_alone():
    c10 = DATASETS["cifar10"]
    published = Renormalize(trained_like("resnet20"), ((0.5,) * 3, (0.25,) * 3), (c10.mean, c10.std))
    fast = frozen_teacher(published, torch.device("cpu"))
    assert fast.model is published and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    wrn = build_seeded("wrn_16_2", 10, 0).eval()
    assert frozen_teacher(wrn, torch.device("cpu")) is wrn  # not a CIFAR ResNet: unchanged
    training = build_seeded("resnet20", 10, 0).train()
    assert frozen_teacher(training, torch.device("cpu")) is training  # only an eval-mode network is frozen


def test_networks_are_evaluated_and_timed_in_their_inference_form_and_left_as_they_were():
    from runner.evaluate import evaluate, topk_accuracy
    from runner.measure import measure

    student = trained_like("resnet20").train()  # mid-training: train mode, BatchNorm not folded
    before = {k: v.clone() for k, v in student.state_dict().items()}
    fast = inference_form(student)
    assert fast is not student and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert student.training and any(isinstance(m, torch.nn.BatchNorm2d) for m in student.modules())
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(5))
    loader = [type("B", (), {"x": x, "y": y})()]
    acc = evaluate(student, loader)
    student.eval()
    with torch.no_grad():
        assert acc == topk_accuracy(student(x)[0], y)  # the folded copy predicts what the network predicts
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())  # untouched (BN stats too)
    assert measure(student, x, 1, repeats=1)["form"] == "bn-folded"
    wrn = build_seeded("wrn_16_2", 10, 0).eval()
    assert inference_form(wrn) is wrn and measure(wrn, x, 1, repeats=1)["form"] == "as-built"
