"""The researcher's workflow, through the command line: `--set METHOD.KEY=VALUE` (typed, validated, in the run id,
sweeps, labelled rows), `--preset my_protocol.yaml`, plugins (`--plugin file.py`, entry points) trained in this
process and in a local worker process, and combined methods (`--methods at+st`: one run, one row)."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import benchmark
from conftest import ROOT
from methods import ON_REQUEST, REGISTRY, get_method
from methods.base import Method
from methods.registry import load_plugin, load_plugins, plugin_records
from runner.plan import load_presets, plan

EXAMPLE = ROOT / "examples" / "my_method.py"
TINY = ["--preset", "smoke", "--teacher", "resnet8", "--epochs", "1", "--train-size", "64", "--test-size", "32"]
PLAN_ONLY = ["--preset", "smoke", "--train-size", "64", "--test-size", "32"]


def _restore(saved):
    REGISTRY.clear()
    REGISTRY.update(saved[0])
    ON_REQUEST[:] = saved[1]


@pytest.fixture
def registry():
    """The registry as it was, restored in place afterwards whatever the test registered."""
    saved = dict(REGISTRY), list(ON_REQUEST)
    yield
    _restore(saved)


def runs_of(*args) -> list:
    return [r for stage in plan(benchmark.plan_request(benchmark.build_parser().parse_args([*args]))) for r in stage]


def table_rows(results: Path) -> dict[str, list[str]]:
    text = (results / "tables" / "table1.md").read_text()
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
    out = {}
    for r in rows:
        out.setdefault(r[0], r[1:])  # the first panel's row
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- one shared results folder: two sweeps train everything the tests below read --------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """1) debug launcher: a sweep st.T=1,2, the combination at+st and the example plugin's method; 2) the local
    launcher with one worker process: the plugin method again with another weight (a new run, trained in a
    fresh process that knows the method only from the run's recorded plugin)."""
    saved = dict(REGISTRY), list(ON_REQUEST)
    results = tmp_path_factory.mktemp("workflow")
    try:
        first = benchmark.main(["--plugin", str(EXAMPLE), "--methods", "st,at+st,cosine", "--set", "st.T=1,2", *TINY,
                                "--results-dir", str(results)])
        table_after_first = table_rows(results) if first == 0 else {}
        second = benchmark.main(["--plugin", str(EXAMPLE), "--methods", "cosine", "--set", "cosine.weight=2", *TINY,
                                 "--launcher", "local", "--workers", "1", "--results-dir", str(results)])
    finally:
        _restore(saved)  # the other tests start from the built-in registry
    return {"results": results, "codes": (first, second), "table1": table_after_first}


def summary_of(results: Path) -> pd.DataFrame:
    return pd.read_csv(next(results.glob("*/summary.csv")))


def test_both_sweeps_succeed(trained):
    assert trained["codes"] == (0, 0)


def test_a_sweep_trains_one_run_per_value_with_labelled_rows(trained):
    summary = summary_of(trained["results"])
    st = summary[summary.method == "st"]
    assert sorted(st.variant) == ["T=1", "T=2"] and set(st.status) == {"DONE"}
    rows = table_rows(trained["results"])
    assert "(n=1" in rows["Soft target (T=1)"][0] and "(n=1" in rows["Soft target (T=2)"][0]
    for run_id in st.run_id:
        spec = json.loads((trained["results"] / "runs" / run_id / "spec.json").read_text())["spec"]
        assert spec["hparams"]["T"] in (1.0, 2.0) and spec["hparams"]["weight"] == 0.1


def test_combined_method_is_one_run_with_both_losses_and_one_row(trained):
    summary = summary_of(trained["results"])
    combined = summary[summary.method == "at+st"]
    assert len(combined) == 1 and combined.status.tolist() == ["DONE"]
    epochs = (trained["results"] / "runs" / combined.run_id.iloc[0] / "epochs.jsonl").read_text().splitlines()
    assert {"ce", "at", "st"} <= set(json.loads(epochs[0])["losses"])
    rows = table_rows(trained["results"])
    assert [name for name in rows if "AT+Soft target" in name] == ["AT+Soft target"]
    assert "(n=1" in rows["AT+Soft target"][0]


def test_plugin_method_trains_in_process_and_in_a_local_worker(trained):
    results = trained["results"]
    summary = summary_of(results)
    cosine = summary[summary.method == "cosine"]
    assert sorted(cosine.variant.fillna("")) == ["", "weight=2"] and set(cosine.status) == {"DONE"}
    assert "(n=1" in trained["table1"]["Cosine hint"][0]  # its row, after the in-process sweep
    rows = table_rows(results)
    assert "(n=1" in rows["Cosine hint"][0] and "(n=1" in rows["Cosine hint (weight=2)"][0]
    for run_id in cosine.run_id:  # the run records the plugin the worker imported, with its hash
        info = json.loads((results / "runs" / run_id / "spec.json").read_text())["info"]
        (record,) = info["plugins"]
        assert record["file"] == str(EXAMPLE.resolve()) and record["sha256"] == sha256(EXAMPLE)
        assert record["methods"] == {"cosine": "CosineHint"}


def test_plugin_rows_reach_the_plots(trained, registry):
    from report.plots import accuracy_points

    load_plugin(str(EXAMPLE))  # as `plot --plugin examples/my_method.py`: the plot names the row "Cosine hint"
    summary = summary_of(trained["results"])
    points, _ = accuracy_points(summary, summary.dataset.iloc[0])
    assert {"Cosine hint", "Cosine hint (weight=2)", "AT+Soft target", "Soft target (T=1)"} <= set(points.name)
    assert list(trained["results"].glob("*/plots/acc_vs_params*.png"))


def epoch_lines(results: Path) -> list[str]:
    return [line for log in results.glob("runs/*/log.txt") for line in log.read_text().splitlines()
            if re.search(r"epoch \d+ of \d+", line)]


def test_epoch_lines_say_where_the_sweep_is(trained):
    """Each epoch line: run k of n (n = the runs this sweep executes, k distinct), epoch e of E, and the ETAs.
    The first sweep executes 6 runs (teacher, baseline, st T=1, st T=2, at+st, cosine); the second, whose
    teacher and baseline are DONE already, one (in a local worker process)."""
    lines = epoch_lines(trained["results"])
    found = [tuple(map(int, m.groups())) for m in (re.search(r"run (\d+) of (\d+), epoch 1 of 1", x) for x in lines)
             if m]
    assert len(found) == len(lines) == 7
    assert sorted(k for k, n in found if n == 6) == [1, 2, 3, 4, 5, 6]
    assert [k for k, n in found if n == 1] == [1]
    # every run but the sweep's last says what follows: the sweep's ETA, or (the teacher, whose network no later
    # run trains) the runs of other networks; a one-epoch run has nothing left of its own
    assert sum("sweep ~" in x or ", then " in x for x in lines) >= 4
    assert any("then 5 runs of other networks" in x for x in lines)  # the teacher, before the 5 student runs
    assert not any("ETA run" in x for x in lines)


def test_the_sweep_estimates_runs_of_the_same_network_and_counts_the_others():
    from runner.plan import PlanRequest, plan
    from runner.progress import Sweep

    stages = plan(PlanRequest(preset="smoke", methods=["st", "at"], seeds=[0]))
    runs = [r for stage in stages for r in stage]
    sweep = Sweep(runs, "/nonexistent-results", slots=1)
    teacher = next(r for r in runs if r.spec.student == "resnet110")
    students = [r for r in runs if r.spec.kind == "train" and r.spec.student == "resnet20"]
    first = sweep.position([teacher])
    assert first["epochs_after"] == 0 and first["others_after"] == len(students) == 3  # ce, st, at
    second = sweep.position([students[0]])
    assert second["epochs_after"] == 2 * students[0].spec.protocol.epochs and second["others_after"] == 0


def test_progress_arithmetic(monkeypatch):
    """The ETAs from a run's own pace: 3 of 10 epochs done in 30 s -> 70 s left for the run; 40 run-epochs after it
    on 2 slots, shared by a cohort of 2 (5 s per run-epoch) -> 70 + 40 * 5 / 2 = 170 s for the sweep."""
    from runner import progress

    clock = iter([100.0, 130.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    pace = progress.Pace(epoch=0)
    position = {"total": 12, "numbers": {"abc": 4}, "share": 2, "epochs_after": 40, "slots": 2}
    assert pace.where("abc", 3, 10, position) == "run 4 of 12, epoch 3 of 10, ETA run 1m10s, sweep ~2m50s"
    # runs of other networks are counted, not timed at this run's pace (a teacher says little of its students)
    clock = iter([100.0, 130.0])
    pace = progress.Pace(epoch=0)
    position = {"total": 12, "numbers": {"abc": 1}, "share": 1, "epochs_after": 0, "slots": 1, "others_after": 11}
    assert pace.where("abc", 3, 10, position) == ("run 1 of 12, epoch 3 of 10, ETA run 1m10s, "
                                                   "sweep ~1m10s + 11 runs of other networks")
    clock = iter([100.0, 130.0])
    pace = progress.Pace(epoch=0)
    assert pace.where("abc", 10, 10, position) == "run 1 of 12, epoch 10 of 10, then 11 runs of other networks"
    assert [progress.duration(s) for s in (35.2, 250, 3725)] == ["35s", "4m10s", "1h02m"]


def test_a_cpu_sweep_on_a_machine_with_a_gpu_says_so(trained, registry, monkeypatch, capsys):
    """Said before anything starts (here every run is DONE already, so nothing else happens)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    args = ["--plugin", str(EXAMPLE), "--methods", "st,at+st,cosine", "--set", "st.T=1,2", *TINY,
            "--results-dir", str(trained["results"])]
    assert benchmark.main(args) == 0
    assert "trains on the CPU while 2 CUDA GPU(s) are visible; add --device cuda" in capsys.readouterr().err


# --- --set: typed, validated, part of the run id -----------------------------------------------------------

def test_set_values_are_typed_and_enter_the_run_id():
    (plain,) = [r for r in runs_of("--methods", "st,at", *PLAN_ONLY) if r.spec.method == "st"]
    set_runs = runs_of("--methods", "st,at", "--set", "st.T=2", "--set", "at.weight=500", *PLAN_ONLY)
    st = next(r for r in set_runs if r.spec.method == "st")
    at = next(r for r in set_runs if r.spec.method == "at")
    assert st.spec.hparams == {"weight": 0.1, "T": 2.0} and isinstance(st.spec.hparams["T"], float)
    assert at.spec.hparams["weight"] == 500.0 and (st.info["variant"], at.info["variant"]) == ("T=2", "weight=500")
    assert st.run_id != plain.run_id
    (same,) = [r for r in runs_of("--methods", "st", "--set", "st.T=4", *PLAN_ONLY) if r.spec.method == "st"]
    assert same.run_id == plain.run_id and "variant" not in same.info, "the default value is the default run"
    (on,) = [r for r in runs_of("--methods", "st", "--set", "st.logit_stand=true", *PLAN_ONLY) if r.spec.method == "st"]
    assert on.spec.hparams["logit_stand"] is True
    sweep = [r for r in runs_of("--methods", "st", "--set", "st.T=1,2,4,8", *PLAN_ONLY) if r.spec.method == "st"]
    assert [r.spec.hparams["T"] for r in sweep] == [1.0, 2.0, 4.0, 8.0] and len({r.run_id for r in sweep}) == 4
    assert plain.run_id in {r.run_id for r in sweep}
    combo = [r for r in runs_of("--methods", "at+st", "--set", "at+st.st.T=2", *PLAN_ONLY) if r.spec.method == "at+st"]
    assert combo[0].spec.hparams["st"]["T"] == 2.0 and combo[0].info["variant"] == "st.T=2"


def test_a_swept_method_leaves_the_papers_ensembles_out():
    runs = runs_of("--methods", "at,logits", "--set", "at.weight=1,2", *PLAN_ONLY)
    assert not [r for r in runs if r.role == "ensemble"]
    assert [r for r in runs_of("--methods", "at,logits", "--set", "at.weight=2", *PLAN_ONLY) if r.role == "ensemble"]


@pytest.mark.parametrize("sets,message", [
    (["st.T=abc"], "st.T takes a float (default 4.0), not 'abc'; st's hyperparameters: weight (float"),
    (["st.T=nan"], "finite float"),
    (["st.T=inf"], "finite float"),
    (["st.X=2"], "st has no hyperparameter 'X'; st's hyperparameters: weight (float, default 0.1), T (float"),
    (["nosuch.weight=1"], "unknown method 'nosuch'"),
    (["at.weight=1"], "at is not planned"),
    (["st.logit_stand=maybe"], "takes a bool"),
    (["reviewkd.warmup_epochs=2.5"], "takes an int"),
    (["st.T"], "expected METHOD.KEY=VALUE"),
    (["st.T=1,2", "st.weight=1,2"], "at most one swept hyperparameter per method"),
    (["st.T=1", "st.T=2"], "st.T is set twice"),
    (["st.T=2,2"], "given twice"),
    (["at+st.at.nope=1"], "at+st has no hyperparameter 'at.nope'; at+st's hyperparameters: at.weight"),
])
def test_bad_set_exits_2_with_a_message(tmp_path, capsys, sets, message):
    methods = "st,reviewkd" if "reviewkd" in sets[0] else "at+st" if sets[0].startswith("at+st") else "st"
    args = ["status", "--methods", methods, *PLAN_ONLY, "--results-dir", str(tmp_path)]
    assert benchmark.main(args + [a for s in sets for a in ("--set", s)]) == 2
    assert message in capsys.readouterr().err


# --- --preset my_protocol.yaml ----------------------------------------------------------------------------

def test_preset_file_plans_like_the_builtin_and_its_protocol_is_in_the_run_id(tmp_path):
    smoke = load_presets()["smoke"]
    same = tmp_path / "same.yaml"
    same.write_text(yaml.safe_dump(smoke))
    builtin = {r.run_id for r in runs_of("--methods", "st", *PLAN_ONLY)}
    assert {r.run_id for r in runs_of("--methods", "st", *PLAN_ONLY, "--preset", str(same))} == builtin
    slower = tmp_path / "my_protocol.yaml"
    slower.write_text(yaml.safe_dump({**smoke, "protocol": {**smoke["protocol"], "lr": 0.05}}))
    runs = runs_of("--methods", "st", *PLAN_ONLY, "--preset", str(slower))
    assert all(r.spec.protocol.lr == 0.05 for r in runs if r.role != "teacher")
    assert not {r.run_id for r in runs if r.role != "teacher"} & builtin


@pytest.mark.parametrize("content,message", [
    (None, "cannot be read"),
    ("protocol: [unclosed", "not valid YAML"),
    ("- a list", "must be a mapping with a `protocol` mapping"),
    ("{teacher: resnet110, student: resnet20, protocol: {}, colour: red}", "unknown key(s) ['colour']"),
    ("{student: resnet20, protocol: {}}", "`teacher` must name"),
    ("{teacher: resnet110, student: resnet20, data: {source: tape}, protocol: {}}", "data source='tape'"),
    ("{teacher: resnet110, student: resnet20, data: {train_size: 0}, protocol: {}}", "train_size=0"),
    ("{teacher: resnet110, student: resnet20, data: {size: 1}, protocol: {}}", "unknown data setting(s) ['size']"),
    ("{teacher: resnet110, student: resnet20, protocol: {epochs: 2}}", "missing"),
    ("SMOKE_LR_TEXT", "lr='fast' must be float"),
])
def test_bad_preset_file_exits_2_with_a_message(tmp_path, capsys, content, message):
    path = tmp_path / "bad.yaml"
    if content == "SMOKE_LR_TEXT":
        smoke = load_presets()["smoke"]
        content = yaml.safe_dump({**smoke, "protocol": {**smoke["protocol"], "lr": "fast"}})
    if content is not None:
        path.write_text(content)
    args = ["status", "--methods", "st", *PLAN_ONLY, "--preset", str(path), "--results-dir", str(tmp_path)]
    assert benchmark.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# --- plugins ----------------------------------------------------------------------------------------------

def test_plugin_is_listed_and_planned(registry, capsys):
    assert benchmark.main(["--plugin", str(EXAMPLE), "--list"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.split() and l.split()[0] == "cosine")
    assert "Cosine hint" in line and f"(plugin {EXAMPLE.resolve()})" in line
    (run,) = [r for r in runs_of("--plugin", str(EXAMPLE), "--methods", "cosine", *PLAN_ONLY)
              if r.spec.method == "cosine"]
    assert run.info["plugins"][0]["sha256"] == sha256(EXAMPLE)
    assert "cosine" in {r.spec.method for r in runs_of("--all", *PLAN_ONLY)}, "a plugin method is part of --all"


def test_plugin_changed_since_planning_is_refused_in_the_worker(registry, tmp_path):
    from core.errors import UserError

    plugin = tmp_path / "mine.py"
    plugin.write_text(EXAMPLE.read_text().replace('name = "cosine"', 'name = "mine"'))
    assert load_plugin(str(plugin)) == ["mine"]
    records = plugin_records("mine")
    assert load_plugins(records) == ["mine"], "loading what is loaded already is a no-op"
    plugin.write_text(plugin.read_text() + "\n# edited\n")
    with pytest.raises(UserError, match="changed since this run was planned"):
        load_plugins(records)


@pytest.mark.parametrize("content,message", [
    (None, "no such file"),
    ("x = 1\n", "defines no method"),
    ("import nosuchmodule_kdbench\n", "failed to import: ModuleNotFoundError"),
    ("from methods.base import Method\nclass A(Method):\n    name = 'at'\n", "'at' is already registered"),
    ("from methods.base import Method\nclass A(Method):\n    name = 'Bad-Name'\n", "method name 'Bad-Name'"),
])
def test_bad_plugin_exits_2(registry, tmp_path, capsys, content, message):
    path = tmp_path / "plug.py"
    if content is not None:
        path.write_text(content)
    assert benchmark.main(["--plugin", str(path), "--list"]) == 2
    assert message in capsys.readouterr().err


def test_plugin_module_by_name(registry, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    assert benchmark.main(["--plugin", "my_method", "--list"]) == 0
    assert any(l.startswith("cosine") and "(plugin my_method)" in l for l in capsys.readouterr().out.splitlines())
    assert benchmark.main(["--plugin", "no_such_module_kdbench", "--list"]) == 2


class EntryDemo(Method):
    name = "entrydemo"
    display_name = "Entry demo"
    kind = "response"
    description = "an installed method, found through its entry point (a test's)"
    citation = "kd-bench tests"
    defaults = {"weight": 1.0}
    student_taps = teacher_taps = ("logits",)
    loss_fn = staticmethod(lambda a, b: (a - b).pow(2).mean())

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        return {"entrydemo": self.hp["weight"] * self.loss_fn(s_logits, t_logits)}


class FakeEntryPoint:
    def __init__(self, name, value, target):
        self.name, self.value, self.group, self._target = name, value, "kd_bench.methods", target

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def test_entry_points_register_methods(registry, monkeypatch, capsys):
    eps = [FakeEntryPoint("entrydemo", "test_workflow:EntryDemo", EntryDemo),
           FakeEntryPoint("broken", "nowhere:Nothing", ImportError("no module nowhere"))]
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: eps if kw.get("group") == "kd_bench.methods" else [])
    assert benchmark.main(["--list"]) == 0
    out, err = capsys.readouterr()
    assert any(l.startswith("entrydemo") and "Entry demo" in l for l in out.splitlines())
    assert "warning: entry point broken = nowhere:Nothing" in err, "a broken entry point is reported, not fatal"
    (run,) = [r for r in runs_of("--methods", "entrydemo", *PLAN_ONLY) if r.spec.method == "entrydemo"]
    (record,) = run.info["plugins"]
    assert record["entry_point"] == "entrydemo" and record["module"] == "test_workflow"


# --- combined methods -------------------------------------------------------------------------------------

def test_combined_method_passes_the_generic_checks():
    from methods.testing import check_declares_itself, check_three_steps

    cls = get_method("st+at")
    assert cls is get_method("at+st") and cls.name == "at+st" and cls.display_name == "AT+Soft target"
    check_declares_itself(cls)
    check_three_steps(cls, {"at": {"weight": 500.0}})
    assert runs_of("--methods", "st+at", *PLAN_ONLY)[-1].spec.method == "at+st", "one run id per combination"


@pytest.mark.parametrize("methods,message", [
    ("fsp+at", "fsp has its own update step (train_step)"),
    ("ab+at", "different stage structures: ab trains in stages of its own"),
    ("bss+st", "bss computes its own losses"),
    ("at+at", "names at twice"),
    ("at+nosuch", "unknown method 'nosuch'"),
    ("ce+st", "ce distils from no teacher"),
])
def test_combinations_that_cannot_share_a_step_are_refused(tmp_path, capsys, methods, message):
    assert benchmark.main(["status", "--methods", methods, *PLAN_ONLY, "--results-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_the_readme_example_passes_its_template(monkeypatch, registry):
    """examples/test_my_method.py, the template a user copies, passes on examples/my_method.py."""
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    spec = importlib.util.spec_from_file_location("example_template", ROOT / "examples" / "test_my_method.py")
    template = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(template)
    for name in [n for n in vars(template) if n.startswith("test_")]:
        getattr(template, name)()
