"""Adding a method from outside the package: one class and one `methods.register` call, and it is listed by
`--list`, planned, trained, and printed as a row of the tables under its `display_name`."""
from __future__ import annotations

import pytest
import torch

import benchmark
from methods import ON_REQUEST, REGISTRY, default_methods, get_method, method_names, register, unregister
from methods.base import Method
from report import paper
from runner.plan import PlanRequest, plan

TINY = ["--preset", "smoke", "--teacher", "resnet8", "--epochs", "1", "--train-size", "64", "--test-size", "32"]


def toy_loss(out_s: torch.Tensor, out_t: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the logits."""
    return (out_s - out_t).pow(2).mean()


class Toy(Method):
    name = "toy"
    display_name = "Toy"
    kind = "response"
    description = "L2 between student and teacher logits (a test's toy)"
    citation = "kd-bench tests"
    defaults = {"weight": 0.1}
    student_taps = teacher_taps = ("logits",)
    loss_fn = staticmethod(toy_loss)

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        return {"toy": self.hp["weight"] * toy_loss(s_logits, t_logits)}


@pytest.fixture
def registry():
    """The registry as it was, restored in place afterwards whatever the test registered."""
    saved, saved_on_request = dict(REGISTRY), list(ON_REQUEST)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)
    ON_REQUEST[:] = saved_on_request


@pytest.fixture
def toy(registry):
    register("toy", Toy)
    return Toy


def test_list_shows_a_registered_method(toy, capsys):
    assert benchmark.main(["--list"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.split() and l.split()[0] == "toy")
    assert Toy.kind in line and Toy.description in line and Toy.citation in line


def test_plan_has_a_run_of_a_registered_method(toy):
    runs = [r for stage in plan(PlanRequest(preset="smoke", methods=["toy"])) for r in stage]
    toy_runs = [r for r in runs if r.spec.method == "toy"]
    assert len(toy_runs) == 1 and toy_runs[0].role == "student"
    assert "toy" in default_methods()  # registered without on_request: part of --all


def test_a_registered_method_trains_and_gets_its_table_row(toy, tmp_path):
    assert benchmark.main(["--methods", "toy", *TINY, "--results-dir", str(tmp_path)]) == 0
    table1 = (tmp_path / "tables" / "table1.md").read_text()
    rows = [line.strip("|").split("|") for line in table1.splitlines() if line.startswith("| ")]
    toy_row = next(r for r in rows if r[0].strip() == "Toy")
    assert "(n=1" in toy_row[1], toy_row  # a finished run's accuracy, not "missing" (on 64 images, maybe at chance)
    assert paper.display_name("toy") == "Toy" and paper.display_name("ens-toy-at") == "Ens-Toy-AT"


def test_register_by_module_path_and_on_request(registry):
    register("toy", "test_extend:Toy", on_request=True)
    assert get_method("toy") is Toy
    assert "toy" in method_names() and "toy" not in default_methods() and "toy" not in paper.row_order()
    unregister("toy")
    assert "toy" not in REGISTRY and "toy" not in ON_REQUEST


@pytest.mark.parametrize("name,target,error", [
    ("at", Toy, ValueError),                 # taken
    ("toy-2", Toy, ValueError),              # '-' separates ensemble members and member networks in row keys
    ("ensemble", Toy, ValueError),           # a run kind
    ("other", Toy, ValueError),              # the class says it is "toy"
    ("toy", "test_extend.Toy", ValueError),  # not module:Class
    ("toy", object, TypeError),              # not a Method
])
def test_register_refuses_what_would_break_the_registry(registry, name, target, error):
    before = dict(REGISTRY)
    with pytest.raises(error):
        register(name, target)
    assert REGISTRY == before
