"""Planning: from the command line to an ordered list of runs (teacher -> student baseline and methods).

A plan is pure: it only builds specs. Whether a run is NEW, PARTIAL or DONE follows from its folder, so
planning twice gives the same run ids and a second `--all` launches nothing that is done.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from core.errors import UserError
from data import dataset_info
from data.fingerprint import data_fingerprint
from methods import default_methods, get_method
from methods.ensembles import PAPER_ENSEMBLES, VOTING, ensemble_name
from models import MODELS
from models.pretrained import file_sha256, load_teacher

from .spec import DataSpec, Protocol, RunSpec


def load_presets() -> dict:
    """The built-in protocol presets (configs/presets.yaml, package data: found from a checkout or a wheel)."""
    return yaml.safe_load(resources.files("configs").joinpath("presets.yaml").read_text())


PRESET_KEYS = {"teacher": "teacher architecture", "student": "student architecture",
               "data": "data source and subset sizes", "protocol": "training settings (runner.spec.Protocol)",
               "teacher_protocol": "training settings of the teacher that differ from `protocol`"}
# each protocol setting: its type and the values it may take
PROTOCOL_RULES = {"epochs": (int, lambda v: v >= 1, "at least 1"), "batch_size": (int, lambda v: v >= 2, "at least 2"),
                  "lr": (float, lambda v: v > 0, "positive"), "momentum": (float, lambda v: 0 <= v < 1, "in [0, 1)"),
                  "nesterov": (bool, lambda v: True, ""), "weight_decay": (float, lambda v: v >= 0, "0 or more"),
                  "padding": (int, lambda v: 0 <= v <= 16, "in 0..16"),
                  "pad_mode": (str, lambda v: v in ("zeros", "reflect"), "zeros or reflect"),
                  "flip": (bool, lambda v: True, "")}


def check_preset(name: str, preset) -> None:
    if not isinstance(preset, dict) or not isinstance(preset.get("protocol"), dict):
        raise UserError(f"preset {name!r} must be a mapping with a `protocol` mapping (see configs/presets.yaml)")
    unknown = set(preset) - set(PRESET_KEYS)
    if unknown:
        raise UserError(f"preset {name!r}: unknown key(s) {sorted(unknown)}; known: " +
                        ", ".join(f"{k} ({m})" for k, m in PRESET_KEYS.items()))


def checked_protocol(settings: dict, where: str) -> Protocol:
    """A `Protocol` from preset settings, each of the right type and in its range, or a UserError naming it.
    (A batch size of 1 cannot train BatchNorm; a float where an int is expected is refused, not truncated.)"""
    unknown = set(settings) - set(PROTOCOL_RULES)
    if unknown:
        raise UserError(f"{where}: unknown protocol setting(s) {sorted(unknown)}; known: {', '.join(PROTOCOL_RULES)}")
    missing = set(PROTOCOL_RULES) - set(settings)
    if missing:
        raise UserError(f"{where}: protocol setting(s) {sorted(missing)} missing")
    values = {}
    for key, value in settings.items():
        kind, ok, rule = PROTOCOL_RULES[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)) or not ok(value):
            raise UserError(f"{where}: {key}={value!r} must be {kind.__name__}" + (f", {rule}" if rule else ""))
        values[key] = value
    return Protocol(**values)


@dataclass
class PlannedRun:
    spec: RunSpec
    role: str                      # teacher | student
    info: dict = field(default_factory=dict)  # unhashed: where a published teacher lives
    depends: tuple[str, ...] = ()  # run ids that must be DONE first

    @property
    def run_id(self) -> str:
        return self.spec.run_id


@dataclass
class PlanRequest:
    dataset: str = "cifar10"
    preset: str = "paper"
    methods: list[str] | None = None  # None = the paper's 20 (`--all`)
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int | None = None
    teacher_checkpoint: str | None = None
    teacher: str | None = None
    student: str | None = None
    synthetic: bool | None = None
    train_size: int | None = None
    test_size: int | None = None
    pad_mode: str | None = None
    ensembles: list[tuple[str, ...]] | None = None  # extra member combinations (besides the paper's four)
    voting: str = "logits"
    data_dir: str | None = None  # where the data on disk is (None: ./datasets); read to fingerprint it
    download: bool = False


def _check_model(name: str, role: str) -> None:
    if name not in MODELS:
        raise UserError(f"unknown {role} model {name!r}; known models: {', '.join(sorted(MODELS))}")


def data_spec(req: PlanRequest) -> DataSpec:
    """The data a request trains on: the preset's, with the command line's overrides, and its fingerprint
    (data/fingerprint.py: read from the cache, or the data is read, checked and hashed). Missing or bad data
    and subset sizes outside 1..N are refused here, before anything runs."""
    presets = load_presets()
    if req.preset not in presets:
        raise UserError(f"unknown preset {req.preset!r}; choose one of {', '.join(presets)}")
    data_kw = dict(presets[req.preset].get("data", {}))
    if req.synthetic is not None:
        data_kw["source"] = "synthetic" if req.synthetic else "disk"
    for key in ("train_size", "test_size"):
        if getattr(req, key) is not None:
            data_kw[key] = getattr(req, key)
    dataset_info(req.dataset)
    ident = data_fingerprint(req.dataset, data_kw.get("source", "disk"), req.data_dir, req.download,
                             data_kw.get("train_size"), data_kw.get("test_size"))
    data_kw.update(train_size=ident.train_size, test_size=ident.test_size, fingerprint=ident.fingerprint)
    return DataSpec(dataset=req.dataset, **data_kw)


def plan(req: PlanRequest) -> list[list[PlannedRun]]:
    """Stages of runs: [teachers], [baselines + methods], [ensembles]. Each run depends only on runs of earlier
    stages. The main teacher is planned when a method distils from it."""
    presets = load_presets()
    if req.preset not in presets:
        raise UserError(f"unknown preset {req.preset!r}; choose one of {', '.join(presets)}")
    preset = presets[req.preset]
    info_ds = dataset_info(req.dataset)
    check_preset(req.preset, preset)
    settings = dict(preset["protocol"])
    if req.epochs is not None:
        if req.epochs < 1:
            raise UserError("--epochs must be at least 1")
        settings["epochs"] = req.epochs
    if req.pad_mode is not None:
        settings["pad_mode"] = req.pad_mode
    protocol = checked_protocol(settings, f"preset {req.preset!r}")
    teacher_overrides = dict(preset.get("teacher_protocol", {}))
    if req.epochs is not None:
        teacher_overrides.pop("epochs", None)
    teacher_protocol = checked_protocol({**settings, **teacher_overrides}, f"preset {req.preset!r} teacher_protocol")
    student = req.student or preset["student"]
    teacher_arch = req.teacher or preset["teacher"]
    _check_model(student, "student")
    methods = default_methods() if req.methods is None else req.methods
    classes = [get_method(m) for m in methods]  # raises on an unknown name before anything runs
    if not req.teacher_checkpoint:
        _check_model(teacher_arch, "teacher")
    data = data_spec(req)  # after the names: a typo is reported before data is read or fingerprinted

    published = None
    if req.teacher_checkpoint:
        model, arch = load_teacher(req.teacher_checkpoint, info_ds.num_classes, (info_ds.mean, info_ds.std))
        del model
        published = {"sha256": file_sha256(req.teacher_checkpoint), "arch": arch}
    else:
        _check_model(teacher_arch, "teacher")

    teachers, students = [], []
    uses_teacher = any(cls.needs_teacher for cls in classes)  # e.g. `--methods oeckd` needs none
    t_info = {}  # what a student needs to find its teacher besides the spec: a published one's path
    if published and uses_teacher:
        # its own row in the tables: evaluated and measured once, trained never (runner/published.py)
        t_info = {"teacher_path": str(Path(req.teacher_checkpoint).resolve())}
        spec = RunSpec(data=data, method=None, student=published["arch"], seed=0, protocol=Protocol(),
                       teacher=dict(published), kind="published")
        teachers.append(PlannedRun(spec, "teacher", {"role": "teacher", **t_info}))
    for seed in req.seeds:
        if published:
            teacher_ref, depends = dict(published), ()
        else:
            t_spec = RunSpec(data=data, method="ce", student=teacher_arch, seed=seed, protocol=teacher_protocol)
            if uses_teacher:
                teachers.append(PlannedRun(t_spec, "teacher", {"role": "teacher"}))
            teacher_ref, depends = {"run": t_spec.run_id, "arch": teacher_arch}, (t_spec.run_id,)
        # CE runs of a network alone: the student's, and those a method asks for (OEC-KD's narrower students)
        baselines = [student] + [arch for cls in classes
                                 for arch in cls.baseline_archs(cls.resolve_hparams({}, req.dataset), student)]
        for arch in dict.fromkeys(baselines):
            _check_model(arch, "baseline")
            students.append(PlannedRun(RunSpec(data=data, method="ce", student=arch, seed=seed, protocol=protocol),
                                       "student", {"role": "student"}))
        extra_teachers = {}  # arch -> teacher run, shared by every method of this seed that needs it
        for name, cls in zip(methods, classes):
            if name == "ce":
                continue
            hp = cls.resolve_hparams({}, req.dataset)
            teacher, run_depends = (dict(teacher_ref), depends) if cls.needs_teacher else (None, ())
            archs = cls.teacher_archs(hp)
            if archs:
                for arch in archs:
                    _check_model(arch, "teacher")
                    if arch not in extra_teachers:
                        extra_teachers[arch] = RunSpec(data=data, method="ce", student=arch, seed=seed,
                                                       protocol=teacher_protocol)
                        if all(t.run_id != extra_teachers[arch].run_id for t in teachers):
                            teachers.append(PlannedRun(extra_teachers[arch], "teacher", {"role": "teacher"}))
                teacher = dict(teacher or {}, extra=[{"run": extra_teachers[a].run_id, "arch": a} for a in archs])
                run_depends = tuple(run_depends) + tuple(extra_teachers[a].run_id for a in archs)
            arch = cls.student_arch(hp, student)
            _check_model(arch, f"{name} student")
            spec = RunSpec(data=data, method=name, student=arch, seed=seed, protocol=protocol, hparams=hp,
                           teacher=teacher)
            students.append(PlannedRun(spec, "student", {**(t_info if cls.needs_teacher else {}), "role": "method"},
                                       run_depends))
    ensembles = plan_ensembles(req, students, methods)
    return [stage for stage in (teachers, students, ensembles) if stage]


def plan_ensembles(req: PlanRequest, students: list[PlannedRun], methods: list[str]) -> list[PlannedRun]:
    """The paper's ensembles whose members are all planned, plus any the user names, per seed."""
    if req.voting not in VOTING:
        raise UserError(f"unknown voting {req.voting!r}; choose one of {', '.join(VOTING)}")
    combos = [c for c in PAPER_ENSEMBLES.values() if all(m in methods for m in c)]
    for combo in req.ensembles or []:
        missing = [m for m in combo if m not in methods]
        if missing or len(combo) < 2:
            raise UserError(f"ensemble {','.join(combo)} needs at least two planned methods; "
                            f"not planned: {', '.join(missing) or '-'} (add them to --methods)")
        if tuple(combo) not in combos and sorted(combo) not in [sorted(c) for c in combos]:
            combos.append(tuple(combo))
    out = []
    by_seed = {}
    for run in students:
        if run.info.get("role") == "method":
            by_seed.setdefault(run.spec.seed, {})[run.spec.method] = run
    for seed, runs in by_seed.items():
        for combo in combos:
            members = [runs[m] for m in combo]
            hp = {"members": [[m, runs[m].run_id] for m in combo], "voting": req.voting}
            first = members[0].spec
            spec = RunSpec(data=first.data, method=ensemble_name(tuple(combo)), student=first.student, seed=seed,
                           protocol=first.protocol, hparams=hp, kind="ensemble")
            out.append(PlannedRun(spec, "ensemble", {"role": "ensemble"}, tuple(r.run_id for r in members)))
    return out
