"""Every method's pure loss matches its reference implementation, value and gradient, on the golden vectors of
../shared/golden, in float64 and float32, with the criteria of its README: the paper's 20 methods against
AberHu/Knowledge-Distillation-Zoo, and every other registered method that has a golden file (`<method>.pt`, e.g.
the later methods dkd, dist, lskd, reviewkd against their own reference code) without editing this file.

The loss under test is the one the registered class declares, `cls.loss_fn`, called through
`cls.reference_call` (the reference's argument names -> the loss's)."""
from __future__ import annotations

import pytest
import torch

from conftest import SHARED, shared_path
from methods import get_method, method_names

GOLDEN_DIR = SHARED / "golden"


PAPER_METHODS = ("logits st at fitnet nst pkt fsp ft rkd ab sp sobolev bss cc irg vid ofd afd crd dml").split()


def golden_methods() -> list[str]:
    """The paper's 20 (always: a missing file skips, saying so) and, in registry order, every other registered
    method with a golden file in ../shared/golden."""
    have = {p.stem for p in GOLDEN_DIR.glob("*.pt")} if GOLDEN_DIR.is_dir() else set()
    return PAPER_METHODS + [m for m in method_names() if m not in PAPER_METHODS and m in have]


GOLDEN_METHODS = golden_methods()


def test_every_paper_method_is_registered_with_golden_vectors():
    assert [m for m in method_names() if m in PAPER_METHODS] == PAPER_METHODS
    for name in PAPER_METHODS:
        shared_path("golden", f"{name}.pt")


@pytest.mark.parametrize("method", GOLDEN_METHODS)
def test_golden_vectors_check_the_declared_loss(method, monkeypatch):
    """`reference_call` evaluates the class's `loss_fn` and nothing else: replace it and the result follows."""
    cls = get_method(method)
    assert callable(cls.loss_fn)
    case = torch.load(shared_path("golden", f"{method}.pt"), weights_only=True)["cases"][0]
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return torch.tensor(12345.0)

    monkeypatch.setattr(cls, "loss_fn", staticmethod(spy))
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in case["inputs"].items()}
    assert float(cls.reference_call(inputs, dict(case["hparams"]))) == 12345.0 and len(calls) == 1


def _cases():
    """One case per golden vector of every method in GOLDEN_METHODS; registered methods without a golden file
    (OEC-KD, EKD, KDFM) have none."""
    out = []
    for name in GOLDEN_METHODS:
        path = GOLDEN_DIR / f"{name}.pt"
        if not path.exists():
            out.append(pytest.param(name, None, id=f"{name}-missing"))
            continue
        for i, case in enumerate(torch.load(path, weights_only=True)["cases"]):
            out.append(pytest.param(name, i, id=f"{name}-{case['name']}"))
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("method,case_index", _cases())
def test_matches_reference(method, case_index, dtype):
    path = shared_path("golden", f"{method}.pt")
    case = torch.load(path, weights_only=True)["cases"][case_index]
    cls = get_method(method)
    inputs = {k: (v.to(dtype).requires_grad_(k in case["grad_inputs"]) if v.is_floating_point() else v.clone())
              for k, v in case["inputs"].items()}
    loss = cls.reference_call(inputs, dict(case["hparams"])).reshape(())
    assert loss.dtype == dtype
    ref = case["expected"]
    atol = 1e-6 if dtype == torch.float64 else 1e-5
    got = loss.detach().double()
    assert abs(got - ref["loss"]) <= atol + 1e-4 * abs(ref["loss"]), (float(got), float(ref["loss"]))
    if dtype == torch.float64:
        assert abs(got - ref["loss"]) <= 1e-4 * abs(ref["loss"])
    grads = torch.autograd.grad(loss, [inputs[k] for k in case["grad_inputs"]], allow_unused=True)
    for k, g in zip(case["grad_inputs"], grads):
        expected = ref["grads"][k]
        g = torch.zeros_like(expected) if g is None else g.double()
        torch.testing.assert_close(g, expected, rtol=1e-4, atol=atol)
        if dtype == torch.float64:
            assert (g - expected).norm() <= 1e-4 * expected.norm(), k
