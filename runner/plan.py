"""Planning: from the command line to an ordered list of runs (teacher -> student baseline and methods).

A plan is pure: it only builds specs. Whether a run is NEW, PARTIAL or DONE follows from its folder, so
planning twice gives the same run ids and a second `--all` launches nothing that is done.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from core.errors import UserError
from data import dataset_info
from data.fingerprint import data_fingerprint
from methods import default_methods, get_method
from methods.ensembles import PAPER_ENSEMBLES, VOTING, ensemble_name
from methods.registry import plugin_records
from models import MODELS
from models.pretrained import file_sha256, load_teacher

from .spec import DEFAULT_PRECISION, PRECISIONS, DataSpec, Protocol, RunSpec


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
                  "flip": (bool, lambda v: True, ""),
                  "precision": (str, lambda v: v in PRECISIONS, " or ".join(PRECISIONS))}
# protocol settings a preset may leave out, and their value then
PROTOCOL_OPTIONAL = {"precision": DEFAULT_PRECISION}


DATA_KEYS = {"source": "disk or synthetic", "train_size": "a fixed training subset (an int, or null: all)",
             "test_size": "a fixed test subset (an int, or null: all)"}


def check_preset(name: str, preset) -> None:
    """The keys of a preset (built in or a file) and the types of those the protocol check does not cover."""
    if not isinstance(preset, dict) or not isinstance(preset.get("protocol"), dict):
        raise UserError(f"preset {name!r} must be a mapping with a `protocol` mapping (see configs/presets.yaml)")
    unknown = set(preset) - set(PRESET_KEYS)
    if unknown:
        raise UserError(f"preset {name!r}: unknown key(s) {sorted(unknown)}; known: " +
                        ", ".join(f"{k} ({m})" for k, m in PRESET_KEYS.items()))
    for key in ("teacher", "student"):
        if not isinstance(preset.get(key), str) or not preset[key]:
            raise UserError(f"preset {name!r}: `{key}` must name the {PRESET_KEYS[key]}, e.g. "
                            f"{key}: {'resnet110' if key == 'teacher' else 'resnet20'}")
    for key in ("data", "teacher_protocol"):
        if key in preset and not isinstance(preset[key], dict):
            raise UserError(f"preset {name!r}: `{key}` must be a mapping ({PRESET_KEYS[key]})")
    data = preset.get("data", {})
    unknown = set(data) - set(DATA_KEYS)
    if unknown:
        raise UserError(f"preset {name!r}: unknown data setting(s) {sorted(unknown)}; known: " +
                        ", ".join(f"{k} ({m})" for k, m in DATA_KEYS.items()))
    if data.get("source", "disk") not in ("disk", "synthetic"):
        raise UserError(f"preset {name!r}: data source={data['source']!r} must be disk or synthetic")
    for key in ("train_size", "test_size"):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UserError(f"preset {name!r}: data {key}={value!r} must be an int, at least 1 (or null: all)")


def is_preset_file(name: str) -> bool:
    """`--preset` names a file when it has a path separator or a .yaml/.yml suffix, a built-in preset otherwise."""
    return "/" in name or "\\" in name or name.endswith((".yaml", ".yml"))


def get_preset(name: str) -> dict:
    """The preset `name`: built in (configs/presets.yaml) or read from a YAML file with the same keys, checked
    by `check_preset` (its protocol by `checked_protocol` when planned). A UserError says what is wrong."""
    if is_preset_file(name):
        path = Path(name).expanduser()
        try:
            text = path.read_text()
        except OSError as e:
            raise UserError(f"preset file {name} cannot be read ({e.strerror or e}); a built-in preset is named "
                            f"without a path or .yaml suffix: {', '.join(load_presets())}") from None
        try:
            preset = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"preset file {name} is not valid YAML: {' '.join(str(e).split())}") from None
        check_preset(name, preset)
        return preset
    presets = load_presets()
    if name not in presets:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(presets)}, or give a YAML file "
                        "(a path ending in .yaml) with the same keys")
    check_preset(name, presets[name])
    return presets[name]


def checked_protocol(settings: dict, where: str) -> Protocol:
    """A `Protocol` from preset settings, each of the right type and in its range, or a UserError naming it.
    (A batch size of 1 cannot train BatchNorm; a float where an int is expected is refused, not truncated.)"""
    unknown = set(settings) - set(PROTOCOL_RULES)
    if unknown:
        raise UserError(f"{where}: unknown protocol setting(s) {sorted(unknown)}; known: {', '.join(PROTOCOL_RULES)}")
    settings = {**PROTOCOL_OPTIONAL, **settings}
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
    sets: list[str] = field(default_factory=list)  # `--set METHOD.KEY=VALUE[,VALUE...]` (see `parse_sets`)
    pairs: list[tuple[str, str]] | None = None  # (teacher, student) pairs (runner/pairs.py): one plan each
    precision: str | None = None  # fp32 | bf16 | fp16 for every trained run, teachers included (None: the preset's)


def _check_model(name: str, role: str) -> None:
    if name not in MODELS:
        raise UserError(f"unknown {role} model {name!r}; known models: {', '.join(sorted(MODELS))}")


def data_spec(req: PlanRequest) -> DataSpec:
    """The data a request trains on: the preset's, with the command line's overrides, and its fingerprint
    (data/fingerprint.py: read from the cache, or the data is read, checked and hashed). Missing or bad data
    and subset sizes outside 1..N are refused here, before anything runs."""
    data_kw = dict(get_preset(req.preset).get("data", {}))
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
    stages. The main teacher is planned when a method distils from it. With `req.pairs`, see `plan_pairs`."""
    if req.pairs:
        return plan_pairs(req)
    preset = get_preset(req.preset)
    info_ds = dataset_info(req.dataset)
    settings = dict(preset["protocol"])
    if req.epochs is not None:
        if req.epochs < 1:
            raise UserError("--epochs must be at least 1")
        settings["epochs"] = req.epochs
    if req.pad_mode is not None:
        settings["pad_mode"] = req.pad_mode
    if req.precision is not None:
        settings["precision"] = req.precision
    protocol = checked_protocol(settings, f"preset {req.preset!r}")
    teacher_overrides = dict(preset.get("teacher_protocol", {}))
    if req.epochs is not None:
        teacher_overrides.pop("epochs", None)
    if req.precision is not None:  # the command line's precision is the sweep's: its teachers' too
        teacher_overrides.pop("precision", None)
    teacher_protocol = checked_protocol({**settings, **teacher_overrides}, f"preset {req.preset!r} teacher_protocol")
    student = req.student or preset["student"]
    teacher_arch = req.teacher or preset["teacher"]
    _check_model(student, "student")
    methods = default_methods() if req.methods is None else req.methods
    classes = [get_method(m) for m in methods]  # raises on an unknown name before anything runs
    variants = parse_sets(req.sets, methods)  # method -> one hyperparameter override per run
    if not req.teacher_checkpoint:
        _check_model(teacher_arch, "teacher")
    data = data_spec(req)  # after the names: a typo is reported before data is read or fingerprinted

    published = None
    if req.teacher_checkpoint:
        model, arch = load_teacher(req.teacher_checkpoint, info_ds.num_classes, (info_ds.mean, info_ds.std),
                                   arch=req.teacher)  # --teacher, if given, must be what the file holds
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
        baselines = [student] + [arch for name, cls in zip(methods, classes) for over in variants[name]
                                 for arch in cls.baseline_archs(cls.resolve_hparams(over, req.dataset), student)]
        for arch in dict.fromkeys(baselines):
            _check_model(arch, "baseline")
            students.append(PlannedRun(RunSpec(data=data, method="ce", student=arch, seed=seed, protocol=protocol),
                                       "student", {"role": "student"}))
        extra_teachers = {}  # arch -> teacher run, shared by every method of this seed that needs it
        for name, cls, over in ((n, c, o) for n, c in zip(methods, classes) for o in variants[n]):
            if name == "ce":
                continue
            hp = cls.resolve_hparams(over, req.dataset)
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
            info = {**(t_info if cls.needs_teacher else {}), "role": "method"}
            variant = variant_label(cls.resolve_hparams({}, req.dataset), hp)
            if variant:  # the tables' row name: "Soft target (T=2)"
                info["variant"] = variant
            plugins = plugin_records(name)
            if plugins:  # a worker process imports them before it executes the run (methods.registry.load_plugins)
                info["plugins"] = plugins
            students.append(PlannedRun(spec, "student", info, run_depends))
    ensembles = plan_ensembles(req, students, methods)
    return [stage for stage in (teachers, students, ensembles) if stage]


def plan_pairs(req: PlanRequest) -> list[list[PlannedRun]]:
    """The plan of every (teacher, student) pair of `req.pairs`: its teacher, its student alone and every method
    `runner.pairs.exclusions` does not leave out; a run shared by pairs (a teacher, a student baseline) is
    planned once. The paper's ensembles (and `--ensemble`) only for the paper's pair (the preset's)."""
    from dataclasses import replace

    from .pairs import exclusions

    if req.teacher or req.student or req.teacher_checkpoint:
        raise UserError("--pairs names the teachers and students: leave out --teacher, --student and "
                        "--teacher-checkpoint (or plan one pair with them instead of --pairs)")
    preset = get_preset(req.preset)
    methods = default_methods() if req.methods is None else list(req.methods)
    merged: list[list[PlannedRun]] = [[], [], []]
    seen: set[str] = set()
    for teacher, student in req.pairs:
        left_out = exclusions((teacher, student), methods)
        own = (teacher, student) == (preset["teacher"], preset["student"])
        sub = replace(req, pairs=None, teacher=teacher, student=student, teacher_checkpoint=None,
                      methods=[m for m in methods if m not in left_out],
                      sets=[x for x in req.sets if x.partition(".")[0].strip() not in left_out],
                      ensembles=req.ensembles if own else [])
        for stage in plan(sub):
            for run in stage:
                if run.role == "ensemble" and not own:
                    continue
                if run.run_id not in seen:
                    seen.add(run.run_id)
                    merged[{"teacher": 0, "student": 1}.get(run.role, 2)].append(run)
    return [stage for stage in merged if stage]


def plan_ensembles(req: PlanRequest, students: list[PlannedRun], methods: list[str]) -> list[PlannedRun]:
    """The paper's ensembles whose members are all planned, plus any the user names, per seed."""
    if req.voting not in VOTING:
        raise UserError(f"unknown voting {req.voting!r}; choose one of {', '.join(VOTING)}")
    per_seed = Counter((r.spec.method, r.spec.seed) for r in students if r.info.get("role") == "method")
    swept = {method for (method, _), n in per_seed.items() if n > 1}
    # the paper's ensembles of planned members with one run each (a swept member has several: which one?)
    combos = [c for c in PAPER_ENSEMBLES.values() if all(m in methods and m not in swept for m in c)]
    for combo in req.ensembles or []:
        missing = [m for m in combo if m not in methods]
        if missing or len(combo) < 2:
            raise UserError(f"ensemble {','.join(combo)} needs at least two planned methods; "
                            f"not planned: {', '.join(missing) or '-'} (add them to --methods)")
        if set(combo) & swept:
            raise UserError(f"ensemble {','.join(combo)}: {', '.join(sorted(set(combo) & swept))} is swept "
                            "(--set with several values), so it has several runs; an ensemble needs one run per "
                            "member: sweep in another command")
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


# --- `--set METHOD.KEY=VALUE`: a method's hyperparameters, typed like its defaults --------------------------

def _flat(d: dict, prefix: str = "") -> dict:
    """{"at": {"weight": 1.0}} -> {"at.weight": 1.0} (a combination's hyperparameters are per component)."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _type_name(default) -> str:
    if isinstance(default, (list, tuple)):
        inner = {_type_name(v) for v in default}
        return f"list of {inner.pop()}" if len(inner) == 1 else "list"
    return type(default).__name__


def _show(value, typed: bool = False) -> str:
    """A value as the command line writes it: 2 (not 2.0; `typed`: 2.0, which says it is a float), true, [4,2,1]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if typed else f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v, typed) for v in value) + "]"
    return str(value)


def _known_keys(name: str, cls) -> str:
    keys = _flat(cls.defaults)
    if not keys:
        return f"{name} has no hyperparameters"
    return f"{name}'s hyperparameters: " + ", ".join(f"{k} ({_type_name(v)}, default {_show(v, True)})"
                                                    for k, v in keys.items())


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets: `1,2` -> ['1', '2']; `[1,2],[3,4]` -> ['[1,2]', '[3,4]']."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


_BOOL = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False, "1": True, "0": False}


def _typed(text: str, default):
    """`text` as a value of the default's type, or ValueError. A float must be finite; an int is not a float."""
    text = text.strip()
    if isinstance(default, bool):
        if text.lower() not in _BOOL:
            raise ValueError
        return _BOOL[text.lower()]
    if isinstance(default, int):
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ValueError
        return int(text)
    if isinstance(default, float):
        value = float(text)
        if not math.isfinite(value):
            raise ValueError("not finite")
        return value
    if isinstance(default, str):
        if not text:
            raise ValueError
        return text
    if isinstance(default, (list, tuple)):
        if not (text.startswith("[") and text.endswith("]")):
            raise ValueError
        inner = text[1:-1].strip()
        items = _split_top(inner) if inner else []
        if not default:
            return [item.strip() for item in items]
        kinds = list(default) if len(default) == len(items) else [default[0]] * len(items)
        return [_typed(item, kind) for item, kind in zip(items, kinds)]
    raise ValueError(f"a {type(default).__name__} cannot be set from the command line")


def parse_sets(items: list[str], methods: list[str]) -> dict[str, list[dict]]:
    """`--set METHOD.KEY=VALUE` items -> {method: [overrides of one run, ...]} for every planned method.

    METHOD is a planned method (a combination's keys are COMPONENT.KEY: `at+st.at.weight=500`), KEY one of its
    `defaults`, VALUE typed like the default (int, float, bool: true/false, str, list: [a,b]); floats must be
    finite. Several comma-separated values (`st.T=1,2,4,8`) plan one run per value: a sweep, at most one swept
    key per method. Refusals are UserErrors naming the method's keys and the expected type."""
    from methods.registry import canonical_name

    planned = {m: get_method(m) for m in methods}
    chosen: dict[str, dict[str, list]] = {}
    for item in items or []:
        where = f"--set {item}"
        lhs, eq, text = item.partition("=")
        name, dot, key = lhs.strip().partition(".")
        if not eq or not dot or not name or not key:
            raise UserError(f"{where}: expected METHOD.KEY=VALUE, e.g. --set st.T=2 (several values sweep: "
                            "st.T=1,2,4)")
        name = canonical_name(name)
        cls = get_method(name)  # an unknown method: the error lists the known ones
        if name not in planned:
            hint = [m for m in planned if name in m.split("+")]
            raise UserError(f"{where}: {name} is not planned (--methods " + ",".join(planned) + ")" +
                            (f"; to set it inside a combination: --set {hint[0]}.{name}.{key}={text}" if hint
                             else "; add it to --methods"))
        defaults = _flat(cls.defaults)
        if key not in defaults:
            raise UserError(f"{where}: {name} has no hyperparameter {key!r}; {_known_keys(name, cls)}")
        default = defaults[key]
        values = []
        for part in _split_top(text) if not isinstance(default, str) else text.split(","):
            try:
                value = _typed(part, default)
            except ValueError as e:
                kind = _type_name(default)
                kind = "a finite float (NaN and infinity are refused)" if str(e) == "not finite" else \
                    f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}" + (" in brackets, e.g. [1,2]" if kind.startswith("list")
                                                                   else " (true or false)" if kind == "bool" else "")
                raise UserError(f"{where}: {name}.{key} takes {kind} (default {_show(default, True)}), not "
                                f"{part.strip()!r}; {_known_keys(name, cls)}") from None
            if value in values:
                raise UserError(f"{where}: {_show(value)} is given twice")
            values.append(value)
        mine = chosen.setdefault(name, {})
        if key in mine:
            raise UserError(f"{where}: {name}.{key} is set twice; to sweep it give its values at once, e.g. "
                            f"--set {name}.{key}=1,2")
        mine[key] = values
        swept = [k for k, v in mine.items() if len(v) > 1]
        if len(swept) > 1:
            raise UserError(f"{where}: {name} sweeps {' and '.join(swept)}: at most one swept hyperparameter per "
                            "method (run one sweep per command, or give the others one value)")
    out = {}
    for name in methods:
        keys = chosen.get(name, {})
        swept = next((k for k, v in keys.items() if len(v) > 1), None)
        runs = []
        for value in keys[swept] if swept else [None]:
            flat = {k: (value if k == swept else v[0]) for k, v in keys.items()}
            over: dict = {}
            for path, v in flat.items():
                *parents, last = path.split(".")
                node = over
                for p in parents:
                    node = node.setdefault(p, {})
                node[last] = v
            runs.append(over)
        out[name] = runs
    return out


def variant_label(defaults: dict, hparams: dict) -> str:
    """How a run's hyperparameters differ from its method's defaults: "" or e.g. "T=2", "at.weight=500"."""
    base, mine = _flat(defaults), _flat(hparams)
    return ", ".join(f"{k}={_show(v)}" for k, v in mine.items() if k not in base or base[k] != v or
                     type(base[k]) is not type(v))
