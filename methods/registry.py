"""The method registry, in the paper's order (Kang & Gwak 2020, Table 1). One line per method.

Entries are `name: "module:Class"` and are imported on first use, so a broken or heavy method never slows
down `--list` of the others. A method that is not finished is not listed here. Everything else that names the
methods (the CLI's list, the plan of `--all`, the tables' rows and their order) is read from here.

A method defined outside this package is added at run time with `register(name, "package.module:Class")`
(or the class itself), before planning; `unregister` takes it out again. A process that plans and runs
(including the local launcher's workers, which import the target anew) must register it too; a target given
as a "module:Class" string is the portable form.
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
    try:
        target = REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}; known methods: {', '.join(REGISTRY)} "
                        "(python benchmark.py --list describes them)") from None
    if not isinstance(target, str):
        return target
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


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
