"""Every registered method builds on a small teacher/student pair, optimises its extra modules with the student,
and takes three finite training steps with a stable set of loss names, in each of its stages.

The checks themselves live in `methods/testing.py`, so that a user's method is checked by the same code
(examples/test_my_method.py); here they run with the runner's own protocol and optimiser."""
from __future__ import annotations

import pytest
import torch

from methods import get_method, method_names
from methods import testing
from methods.testing import check_declares_itself, check_three_steps, make_pair
from runner.spec import Protocol
from runner.train import build_method, make_optimizer


@pytest.mark.parametrize("name", method_names(include_baseline=True))
def test_method_declares_itself(name):
    cls = get_method(name)
    assert cls.name == name
    check_declares_itself(cls)


@pytest.mark.parametrize("name", method_names(include_baseline=True))
def test_three_steps_per_stage(name):
    check_three_steps(get_method(name), protocol=Protocol(epochs=4, batch_size=16))


def test_the_checks_build_a_method_as_the_runner_does():
    """methods/testing.py repeats the runner's build (methods may not import the runner): same extra modules;
    the optimiser is not repeated: both call `methods.base.make_optimizer`."""
    cls = get_method("vid")  # extra modules initialised in setup
    method, batch = make_pair(cls)
    runner = build_method("vid", cls.resolve_hparams({}, "cifar10"), method.student, method.teacher, method.ctx,
                          batch.x[:2])
    assert method.extra.state_dict().keys() == runner.extra.state_dict().keys()
    for key, value in method.extra.state_dict().items():
        assert torch.equal(value, runner.extra.state_dict()[key]), key
    assert testing.make_optimizer is make_optimizer
