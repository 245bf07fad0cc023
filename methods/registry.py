"""The method registry, in the paper's order (Kang & Gwak 2020, Table 1). One line per method.

Entries are `name: "module:Class"` and are imported on first use, so a broken or heavy method never slows
down `--list` of the others. A method that is not finished is not listed here. Everything else that names the
methods (the CLI's list, the plan of `--all`, the tables' rows and their order) is read from here.

A method defined outside this package is added at run time with `register(name, "package.module:Class")`
(or the class itself), before planning; `unregister` takes it out again. A process that plans and runs
(including the local launcher's workers, which import the target anew) must register it too; a target given
as a "module:Class" string is the portable form. Plugins (`--plugin file.py|package.module`, entry points of
the group `kd_bench.methods`, below) do this for the user: each run of a plugin method records its plugin
(file, sha256) and workers load it with `load_plugins` before executing the run.

`get_method("at+st")` is a combination (methods/combined.py): one student trained with both losses.
"""
from __future__ import annotations

import importlib
import re

from core.errors import UserError

REGISTRY: dict[str, str | type] = {
    "ce": "methods.ce:CE",
    "logits": "methods.logits:Logits",
    "st": "methods.st:SoftTarget",
    "at": "methods.at:AT",
    "fitnet": "methods.fitnet:FitNet",
    "nst": "methods.nst:NST",
    "pkt": "methods.pkt:PKT",
    "fsp": "methods.fsp:FSP",
    "ft": "methods.ft:FT",
    "rkd": "methods.rkd:RKD",
    "ab": "methods.ab:AB",
    "sp": "methods.sp:SP",
    "sobolev": "methods.sobolev:Sobolev",
    "bss": "methods.bss:BSS",
    "cc": "methods.cc:CC",
    "irg": "methods.irg:IRG",
    "vid": "methods.vid:VID",
    "ofd": "methods.ofd:OFD",
    "afd": "methods.afd:AFD",
    "crd": "methods.crd:CRD",
    "dml": "methods.dml:DML",
    "dkd": "methods.dkd:DKD",
    "dist": "methods.dist:DIST",
    "lskd": "methods.lskd:LSKD",
    "reviewkd": "methods.reviewkd:ReviewKD",
    # other systems of the project: run when named (`--methods oeckd,ekd,kdfm`), not by `--all`
    "oeckd": "methods.oeckd:OECKD",
    "ekd": "methods.ekd:EKD",
    "kdfm": "methods.kdfm:KDFM",
}


# Not part of `--all`: `--all` reproduces the paper's Table 1, and these train other networks than its ResNet-20
# student (multi-branch students, extra teachers), so they would change what a whole-table sweep costs and means.
# A list, changed in place by `register`/`unregister` (other modules hold a reference to it).
ON_REQUEST: list[str] = ["oeckd", "ekd", "kdfm", "dkd", "dist", "lskd", "reviewkd"]

# Named sets of on-request methods, run together when named (the CLI's `--methods <set>`); not part of `--all`.
SETS: dict[str, tuple[str, ...]] = {"modern": ("dkd", "dist", "lskd", "reviewkd")}

# a method key is one word: `-` separates an ensemble's members ("ens-at-logits") and a run's extra networks
# ("oeckd-s1") in the tables' row keys
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_RESERVED = {"teacher", "student", "member", "ensemble", "published"}  # row keys, roles and run kinds


def method_names(include_baseline: bool = False, include_on_request: bool = True) -> list[str]:
    return [n for n in REGISTRY if (include_baseline or n != "ce") and (include_on_request or n not in ON_REQUEST)]


def default_methods() -> list[str]:
    """What `--all` plans besides the teacher and the student baseline."""
    return method_names(include_on_request=False)


def get_method(name: str):
    """The `Method` class of a registered name, or of a combination `a+b` (methods/combined.py)."""
    if "+" in name:
        return combined_method(name)
    try:
        target = REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}; known methods: {', '.join(REGISTRY)} "
                        "(python benchmark.py --list describes them; a plugin's methods need --plugin FILE.py "
                        "or package.module)") from None
    if not isinstance(target, str):
        return target
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


# ---- combinations: `--methods at+st` trains one student with the losses of both ---------------------------

_COMBINED: dict[tuple, type] = {}  # (name, component classes) -> the combined class, built once


def canonical_name(name: str) -> str:
    """A method name as runs record it: a combination's components sorted by name (`st+at` -> `at+st`: one run
    id for one combination), each component known and named once. Other names are returned as they are."""
    if "+" not in name:
        return name
    parts = name.split("+")
    if any(not p for p in parts):
        raise UserError(f"combination {name!r}: join method names with '+', e.g. at+st")
    twice = sorted({p for p in parts if parts.count(p) > 1})
    if twice:
        raise UserError(f"combination {name!r} names {', '.join(twice)} twice")
    for part in parts:
        if part not in REGISTRY:
            get_method(part)  # the unknown-method error, with the known names
    return "+".join(sorted(parts))


def combined_method(name: str):
    """The `Method` of a combination (methods/combined.py), checked: components with their own stages or
    update rule are refused, naming them."""
    from .combined import combine  # deferred: a combination is built only when named

    canonical = canonical_name(name)
    classes = tuple(get_method(part) for part in canonical.split("+"))
    key = (canonical, classes)
    if key not in _COMBINED:
        _COMBINED[key] = combine(classes)
    return _COMBINED[key]


def component_names(name: str) -> list[str]:
    """The registered methods a (possibly combined) method name is made of."""
    return name.split("+") if name else []


def register(name: str, target: str | type, on_request: bool = False) -> None:
    """Add a method: `target` is "package.module:Class" (imported on first use) or the `Method` subclass itself,
    whose `name` must be `name`. Registered methods come after the built-in ones in every listing and table;
    `on_request=True` keeps it out of `--all` (it runs when named with `--methods`)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _RESERVED:
        raise ValueError(f"method name {name!r}: use lower-case letters, digits and '_', starting with a letter, "
                         f"and none of {sorted(_RESERVED)}")
    if name in REGISTRY:
        raise ValueError(f"method {name!r} is already registered (as {REGISTRY[name]!r}); unregister it first")
    if isinstance(target, str):
        if target.count(":") != 1 or not all(target.split(":")):
            raise ValueError(f"method {name!r}: target {target!r} is not of the form 'package.module:Class'")
    else:
        from .base import Method  # deferred: the registry itself stays import-light

        if not (isinstance(target, type) and issubclass(target, Method)):
            raise TypeError(f"method {name!r}: target must be a 'module:Class' string or a Method subclass, "
                            f"not {target!r}")
        if target.name != name:
            raise ValueError(f"method {name!r}: {target.__name__}.name is {target.name!r}; they must agree "
                             "(runs record the class's name)")
    REGISTRY[name] = target
    if on_request:
        ON_REQUEST.append(name)


def unregister(name: str) -> None:
    """Remove a method added by `register` (a test's toy method, say)."""
    if name not in REGISTRY:
        raise ValueError(f"method {name!r} is not registered")
    del REGISTRY[name]
    while name in ON_REQUEST:
        ON_REQUEST.remove(name)


# ---- plugins: methods defined outside this package ---------------------------------------------------------
#
# `--plugin mymethods.py` (a file: a path with a separator or a `.py` name) or `--plugin package.module` imports
# the module and registers every `Method` subclass it defines with a `name` of its own (a class attribute
# `on_request = True` keeps one out of `--all`); a module that calls `methods.register(...)` itself at import
# works too. Installed packages declare methods as entry points of the group `kd_bench.methods`, each
# `name = "package.module:Class"` naming a Method subclass whose `name` is the entry point's name.
# A run of a plugin method records where the plugin came from and its sha256 in its (unhashed) info, under
# "plugins"; a worker process (local launcher, SLURM job) calls `load_plugins` on that list before executing.

PLUGIN_GROUP = "kd_bench.methods"
_PLUGINS: dict[str, tuple[type, dict, bool]] = {}  # method name -> (class, record of its plugin, on_request)
_FILE_MODULES: dict[tuple[str, str], object] = {}   # (file, sha256) -> module: a plugin file is imported once


def _sha256(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_file_target(target: str) -> bool:
    import os

    return os.sep in target or "/" in target or target.endswith(".py")


def _import_file(path, sha: str):
    """Import a plugin file under a module name of its own (`kd_bench_plugin_<stem>_<sha>`), once per content."""
    import importlib.util
    import sys

    key = (str(path), sha)
    if key not in _FILE_MODULES:
        stem = re.sub(r"\W", "_", path.stem)
        module_name = f"kd_bench_plugin_{stem}_{sha[:12]}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise UserError(f"plugin {path}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses, pickling and the like look their module up here
        try:
            spec.loader.exec_module(module)
        except UserError:
            del sys.modules[module_name]
            raise
        except Exception as e:
            del sys.modules[module_name]
            raise UserError(f"plugin {path} failed to import: {type(e).__name__}: {e}") from None
        _FILE_MODULES[key] = module
    return _FILE_MODULES[key]


def _module_file(module_name: str, where: str) -> str | None:
    """The file of an importable module, found without importing it."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as e:
        raise UserError(f"{where}: cannot find module {module_name!r} ({e})") from None
    if spec is None:
        raise UserError(f"{where}: no module {module_name!r} is importable (installed, or on PYTHONPATH?); a "
                        f"plugin file needs a path, e.g. ./{module_name.rpartition('.')[2]}.py")
    return spec.origin if spec.origin and spec.has_location else None


def _import_module(module_name: str, where: str):
    try:
        return importlib.import_module(module_name)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{where}: module {module_name!r} failed to import: {type(e).__name__}: {e}") from None


def _add(name: str, cls, record: dict, on_request: bool, where: str) -> None:
    """Register a plugin's method (nothing to do when it is registered already: its module registered it at
    import, or the plugin was loaded before) and remember where it came from."""
    current = REGISTRY.get(name)
    if current is not None and current is not cls:
        same = False
        if isinstance(current, str):
            try:
                same = get_method(name) is cls
            except Exception:
                same = False
        if not same:
            raise UserError(f"{where}: method {name!r} is already registered (as {current!r}); give the plugin's "
                            "class another `name`")
    if current is None:
        try:
            register(name, cls, on_request=on_request)
        except (TypeError, ValueError) as e:
            raise UserError(f"{where}: {e}") from None
    _PLUGINS[name] = (cls, record, name in ON_REQUEST)


def _defined_methods(module) -> dict[str, type]:
    """name -> class of the Method subclasses `module` defines (not those it imports) with a `name` of their own."""
    from .base import Method

    return {obj.name: obj for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, Method) and obj.__module__ == module.__name__
            and isinstance(obj.__dict__.get("name"), str) and obj.__dict__["name"]}


def _register_module(module, before: set, record: dict, where: str) -> list[str]:
    """Register what a freshly imported plugin module defines or registered itself; returns the names."""
    found = {n: REGISTRY[n] for n in REGISTRY if n not in before}  # registered by the module at import
    for name, cls in _defined_methods(module).items():
        found.setdefault(name, cls)
    if not found:
        raise UserError(f"{where} defines no method: give a Method subclass a `name` (see examples/my_method.py)")
    classes = {n: get_method(n) if isinstance(c, str) else c for n, c in found.items()}
    record = {**record, "methods": {n: c.__qualname__ for n, c in classes.items()}}
    for name, cls in classes.items():
        _add(name, cls, record, bool(getattr(cls, "on_request", False)) or name in ON_REQUEST, where)
    return list(classes)


def load_plugin(target: str) -> list[str]:
    """`--plugin TARGET`: import a plugin file or module and register its methods; returns their names. Loading
    the same plugin again registers nothing new (and restores its methods if the registry was reset)."""
    from pathlib import Path

    if not isinstance(target, str) or not target.strip():
        raise UserError("--plugin needs a file (mymethods.py) or a module (package.module)")
    where = f"plugin {target}"
    before = set(REGISTRY)
    if _is_file_target(target):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"{where}: no such file (a plugin is a .py file or an importable package.module)")
        sha = _sha256(path)
        fresh = (str(path), sha) not in _FILE_MODULES
        module = _import_file(path, sha)
        record = {"file": str(path), "sha256": sha}
    else:
        import sys

        fresh = target not in sys.modules
        origin = _module_file(target, where)
        module = _import_module(target, where)
        origin = getattr(module, "__file__", None) or origin
        record = {"module": target, "file": origin, "sha256": _sha256(origin) if origin else None}
    if not fresh:
        restored = _restore(record)
        if restored is not None:
            return restored
    return _register_module(module, before, record, where)


def _restore(record: dict) -> list[str] | None:
    """Re-register the methods of a plugin imported before (the module is not executed twice); None when the
    plugin's methods are not known from an earlier load."""
    same = lambda rec: all(rec.get(k) == record.get(k) for k in ("module", "file", "sha256"))
    names = [n for n, (_, rec, _) in _PLUGINS.items() if same(rec)]
    if not names:
        return None
    for name in names:
        cls, rec, on_request = _PLUGINS[name]
        _add(name, cls, rec, on_request, f"plugin {rec.get('module') or rec.get('file')}")
    return names


def load_entry_points() -> tuple[list[str], list[str]]:
    """Register the methods installed packages declare in the entry-point group `kd_bench.methods`. Returns
    (names registered, problems): an entry point that fails to load is reported, not fatal, so one broken
    package does not stop every command."""
    import importlib.metadata
    import sys

    from .base import Method

    names, problems = [], []
    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        where = f"entry point {ep.name} = {ep.value} (group {PLUGIN_GROUP})"
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Method)):
                raise UserError(f"{where} names {cls!r}, not a Method subclass")
            if cls.name != ep.name:
                raise UserError(f"{where}: {cls.__name__}.name is {cls.name!r}; the entry point's name must be "
                                "the method's name")
            module = sys.modules.get(cls.__module__)
            file = getattr(module, "__file__", None)
            record = {"entry_point": ep.name, "module": cls.__module__, "file": file,
                      "sha256": _sha256(file) if file else None, "methods": {ep.name: cls.__qualname__}}
            _add(ep.name, cls, record, bool(getattr(cls, "on_request", False)), where)
            names.append(ep.name)
        except UserError as e:
            problems.append(str(e))
        except Exception as e:
            problems.append(f"{where} failed to load: {type(e).__name__}: {e}")
    return names, problems


def plugin_source(name: str) -> str | None:
    """Where a plugin method comes from ("mymethods.py", "package.module", "entry point x"), None for built-ins."""
    entry = _PLUGINS.get(name)
    if entry is None or REGISTRY.get(name) is not entry[0]:
        return None
    rec = entry[1]
    if rec.get("entry_point"):
        return f"entry point {rec['module']}"
    return rec.get("module") or rec.get("file")


def plugin_records(name: str) -> list[dict]:
    """What a run of method `name` (a combination too) records so that another process can load the plugins
    its methods come from: one record per plugin, {"file", "sha256", and "module" or "entry_point", "methods"}."""
    out = []
    for part in component_names(name):
        entry = _PLUGINS.get(part)
        if entry is None or REGISTRY.get(part) is not entry[0]:
            continue  # a built-in method, or one registered in code (`register`), not by a plugin
        if entry[1] not in out:
            out.append(dict(entry[1]))
    return out


def load_plugins(records: list[dict] | None) -> list[str]:
    """Worker side: import the plugins a run recorded (its info's "plugins") and register their methods, each
    plugin file checked against its recorded sha256 first. A plugin loaded already is not imported again."""
    from pathlib import Path

    names = []
    for rec in records or []:
        if not isinstance(rec, dict) or not (rec.get("file") or rec.get("module")) or not rec.get("methods"):
            raise UserError(f"a recorded plugin is malformed: {rec!r}")
        where = f"plugin {rec.get('module') or rec.get('file')}"
        file = rec.get("file")
        if rec.get("module"):
            file = _module_file(rec["module"], where) if not rec.get("entry_point") else file
        if rec.get("sha256"):
            if not file or not Path(file).is_file():
                raise UserError(f"{where}: its file {file} is missing; the run needs the plugin it was planned with")
            sha = _sha256(file)
            if sha != rec["sha256"]:
                raise UserError(f"{where} changed since this run was planned (sha256 {sha[:12]}, recorded "
                                f"{rec['sha256'][:12]}): the run would train other code than it records; restore "
                                "the file, or delete the run folder to train with the new code")
        restored = _restore(rec)
        if restored is not None and set(rec["methods"]) <= set(restored):
            names += restored
            continue
        before = set(REGISTRY)
        if rec.get("module"):
            module = _import_module(rec["module"], where)
        else:
            module = _import_file(Path(file), rec["sha256"])
        for name, qualname in rec["methods"].items():
            if name in REGISTRY and name not in before:
                cls = get_method(name)  # the module registered it at import
            else:
                cls = module
                for part in qualname.split("."):
                    cls = getattr(cls, part, None)
                if cls is None:
                    raise UserError(f"{where} no longer defines {qualname} (method {name!r})")
            _add(name, cls, rec, bool(getattr(cls, "on_request", False)), where)
            names.append(name)
    return names
