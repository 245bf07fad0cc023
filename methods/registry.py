"""The method registry, in the paper's order (Kang & Gwak 2020, Table 1). One line per method.

Entries are `name: "module:Class"` and are imported on first use, so a broken or heavy method never slows
down `--list` of the others. A method that is not finished is not listed here.
"""
from __future__ import annotations

import importlib

from core.errors import UserError

REGISTRY: dict[str, str] = {
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
    # other systems of the project: run when named (`--methods oeckd,ekd,kdfm`), not by `--all`
    "oeckd": "methods.oeckd:OECKD",
    "ekd": "methods.ekd:EKD",
    "kdfm": "methods.kdfm:KDFM",
}


# Not part of `--all`: `--all` reproduces the paper's Table 1, and these train other networks than its ResNet-20
# student (multi-branch students, extra teachers), so they would change what a whole-table sweep costs and means.
ON_REQUEST = ("oeckd", "ekd", "kdfm")


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
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)
