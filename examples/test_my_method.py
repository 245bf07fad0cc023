"""Template: kd-bench's generic method checks on your own method. Copy this file next to your method's file,
change the two lines marked `<-`, and run `python -m pytest -q test_my_method.py` (with kd-bench installed,
or from its checkout). The checks are those every built-in method passes (tests/test_methods.py)."""
from pathlib import Path

import torch

from methods.registry import REGISTRY, load_plugin, unregister
from methods.testing import check_declares_itself, check_three_steps
from my_method import CosineHint as MyMethod, cosine_loss as my_loss  # <- your method and its pure loss

PLUGIN = Path(__file__).with_name("my_method.py")  # <- the file you pass to --plugin


def test_declares_itself():
    """Name, kind, description, citation, display name, loss weight and pure loss function are declared."""
    check_declares_itself(MyMethod)


def test_three_steps_in_each_stage():
    """Builds on a small pair; extra modules are optimised with the student; three finite steps per stage."""
    check_three_steps(MyMethod)
    check_three_steps(MyMethod, {"weight": 0.5})  # with a hyperparameter set, as `--set` does


def test_the_plugin_registers_it():
    """`--plugin` finds the method in the file."""
    names = load_plugin(str(PLUGIN))
    try:
        assert MyMethod.name in names and REGISTRY[MyMethod.name].display_name == MyMethod.display_name
    finally:
        for name in names:
            unregister(name)


def test_loss_is_zero_when_student_matches_teacher_and_has_a_gradient():
    """Your own checks of the loss go here (this one is about the example's cosine loss)."""
    f_t = torch.randn(8, 64)
    assert my_loss(f_t, f_t).abs().item() < 1e-6
    f_s = torch.randn(8, 64, requires_grad=True)
    loss = my_loss(f_s, f_t)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(f_s.grad).all() and f_s.grad.abs().sum() > 0
