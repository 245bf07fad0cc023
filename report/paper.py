"""The reproduced paper's own numbers, and how its rows are named and ordered.

Source: Jaeyong Kang and Jeonghwan Gwak, "Ensemble Learning of Lightweight Deep Learning Models Using
Knowledge Distillation for Image Classification", Mathematics 8(10):1652, 2020. doi:10.3390/math8101652

The numbers live as CSV files in `paper_data/` (see the README there) rather than in code, so that they
are read exactly as transcribed and a diff of them is a diff of data; they are read as package resources, so
an installed wheel finds them too. Everything in the report is keyed by *row keys*: "teacher", "student", a
method key of the registry ("at"), or an ensemble key ("ens-at-logits"). This module turns keys into printed
names and fixes the row order, but holds no list of methods or ensembles of its own: the methods, their order
and their printed names come from `methods.REGISTRY` and each class's `display_name`, the paper's ensembles
from `methods.ensembles`. So a method added to the registry (or with `methods.register`) gets its row.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import pandas as pd

from methods import get_method, method_names
from methods.ensembles import ENSEMBLES, PREFIX, ensemble_members, ensemble_name
from methods.registry import REGISTRY

if TYPE_CHECKING:  # importlib.abc on Python 3.10, importlib.resources.abc from 3.11
    from importlib.resources.abc import Traversable

CITATION = ("J. Kang and J. Gwak, \"Ensemble Learning of Lightweight Deep Learning Models Using Knowledge "
            "Distillation for Image Classification\", Mathematics 8(10):1652, 2020. doi:10.3390/math8101652")
SHORT_CITATION = "Kang & Gwak (2020)"

DATA_DIR: Traversable = resources.files("report") / "paper_data"
ACCURACY_CSV = DATA_DIR / "kang2020_tableA1.csv"
COST_CSV = DATA_DIR / "kang2020_table2.csv"

DATASETS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}

ROLE_NAMES = {"teacher": "Teacher", "student": "Student"}
# The networks the paper's rows were measured with; other networks get no difference against the paper.
PAPER_ARCH = {"teacher": "resnet110"}
PAPER_STUDENT_ARCH = "resnet20"


def paper_methods() -> list[str]:
    """The paper's methods in its order: the registry's, less the baseline (`ce`) and the systems run only on
    request (`methods.ON_REQUEST`). The same set `--all` plans."""
    return method_names(include_baseline=False, include_on_request=False)


def row_order() -> list[str]:
    """Teacher and student first, then the methods, then the ensembles: the row order of Tables 1 and A1."""
    return ["teacher", "student", *paper_methods(), *ENSEMBLES]


def __getattr__(name: str):
    """`METHOD_NAMES` (method key -> printed name, in the paper's order) and `ROW_ORDER`, read from the registry
    on each access, so they include methods registered at run time."""
    if name == "METHOD_NAMES":
        return {key: get_method(key).display_name for key in paper_methods()}
    if name == "ROW_ORDER":
        return row_order()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def paper_arch(key: str) -> str:
    """The network the paper used for a row: ResNet-110 for the teacher, ResNet-20 for everything else."""
    return PAPER_ARCH.get(key, PAPER_STUDENT_ARCH)


def canonical_key(key: str) -> str:
    """The paper's key for an ensemble named by another order of the same members (`ens-logits-at`,
    `ens-at-logits-rkd` = `ens-all`), so it meets the paper's row instead of becoming a stray one."""
    members = ensemble_members(key)
    return key if members is None else ensemble_name(members)


def display_name(key: str) -> str:
    """The name a row is printed with: the paper's where it has one, the method's `display_name` otherwise."""
    key = canonical_key(key)
    if key in ROLE_NAMES:
        return ROLE_NAMES[key]
    if key in ENSEMBLES:
        return ENSEMBLES[key].name
    if key in REGISTRY:
        return get_method(key).display_name
    if key.startswith(PREFIX):
        members = ensemble_members(key)
        return "Ens-" + ("-".join(get_method(m).short_name for m in members) if members else key[len(PREFIX):])
    base, _, rest = key.partition("-")  # members of a multi-network run: "oeckd-s1" -> "OEC-KD s1"
    if rest and base in REGISTRY:
        return f"{get_method(base).display_name} {rest}"
    return key


def _csv_name_to_key() -> dict[str, str]:
    # matched case-insensitively: the paper prints "Fitnet" where we print "FitNet"
    names = {**ROLE_NAMES, **{key: get_method(key).display_name for key in paper_methods()},
             **{key: e.name for key, e in ENSEMBLES.items()}}
    return {name.lower(): key for key, name in names.items()}


def _load(path: Traversable) -> pd.DataFrame:
    with path.open("rb") as f:  # a file of the installed package, maybe inside a zip: not always a Path
        df = pd.read_csv(f)
    lookup = _csv_name_to_key()
    keys = [lookup.get(str(name).strip().lower()) for name in df["method"]]
    unknown = [name for name, key in zip(df["method"], keys) if key is None]
    if unknown:  # a renamed row would silently lose its paper numbers: refuse instead
        raise ValueError(f"{path.name}: rows {unknown} match no known method name")
    df.insert(0, "key", keys)
    return df.rename(columns={"method": "paper_name"}).set_index("key")


@lru_cache(maxsize=None)
def _accuracy() -> pd.DataFrame:
    return _load(ACCURACY_CSV)


@lru_cache(maxsize=None)
def _cost() -> pd.DataFrame:
    return _load(COST_CSV)


def paper_accuracy() -> pd.DataFrame:
    """Table A1 (Table 1 is a subset): index = row key, columns `cifar10_top1` .. `cifar100_top5` (%)."""
    return _accuracy().copy()


def paper_cost() -> pd.DataFrame:
    """Table 2: index = row key, columns `cifar10_time_s`, `cifar10_param_m`, `cifar100_time_s`,
    `cifar100_param_m` (param_m = millions of parameters, although the paper heads it "Param (MB)")."""
    return _cost().copy()


def paper_value(table: str, key: str, column: str) -> float | None:
    """One published number, or None where the paper has no such row or column."""
    df = _accuracy() if table == "accuracy" else _cost()
    key = canonical_key(key)
    if key not in df.index or column not in df.columns:
        return None
    value = df.at[key, column]
    return None if pd.isna(value) else float(value)
