"""The reproduced paper's own numbers, and how its rows are named and ordered.

Source: Jaeyong Kang and Jeonghwan Gwak, "Ensemble Learning of Lightweight Deep Learning Models Using
Knowledge Distillation for Image Classification", Mathematics 8(10):1652, 2020. doi:10.3390/math8101652

The numbers live as CSV files in `paper_data/` (see the README there) rather than in code, so that they
are read exactly as transcribed and a diff of them is a diff of data. Everything in the report is keyed by
*row keys*: "teacher", "student", a method key of the registry ("at"), or an ensemble key ("ens-at-logits");
this module turns keys into the names the paper prints and fixes the paper's row order, so that our tables
line up with the paper's row for row.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

CITATION = ("J. Kang and J. Gwak, \"Ensemble Learning of Lightweight Deep Learning Models Using Knowledge "
            "Distillation for Image Classification\", Mathematics 8(10):1652, 2020. doi:10.3390/math8101652")
SHORT_CITATION = "Kang & Gwak (2020)"

DATA_DIR = Path(__file__).resolve().parent / "paper_data"
ACCURACY_CSV = DATA_DIR / "kang2020_tableA1.csv"
COST_CSV = DATA_DIR / "kang2020_table2.csv"

DATASETS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}

# The 20 methods in the paper's order (= the registry's order), with the names the paper prints.
METHOD_NAMES: dict[str, str] = {
    "logits": "Logits", "st": "Soft target", "at": "AT", "fitnet": "FitNet", "nst": "NST", "pkt": "PKT",
    "fsp": "FSP", "ft": "FT", "rkd": "RKD", "ab": "AB", "sp": "SP", "sobolev": "Sobolev", "bss": "BSS",
    "cc": "CC", "irg": "IRG", "vid": "VID", "ofd": "OFD", "afd": "AFD", "crd": "CRD", "dml": "DML",
}
# The paper's soft-voting ensembles: key -> (printed name, member methods). "Ens-all" is AT + Logits + RKD.
ENSEMBLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ens-at-logits": ("Ens-AT-Logits", ("at", "logits")),
    "ens-rkd-logits": ("Ens-RKD-Logits", ("rkd", "logits")),
    "ens-at-rkd": ("Ens-AT-RKD", ("at", "rkd")),
    "ens-all": ("Ens-all", ("at", "logits", "rkd")),
}
ROLE_NAMES = {"teacher": "Teacher", "student": "Student"}
# Teacher and student first, then the methods, then the ensembles: the row order of Tables 1 and A1.
ROW_ORDER: list[str] = ["teacher", "student", *METHOD_NAMES, *ENSEMBLES]
# The networks the paper's rows were measured with; other networks get no difference against the paper.
PAPER_ARCH = {"teacher": "resnet110"}
PAPER_STUDENT_ARCH = "resnet20"

# Systems the benchmark carries beyond the paper, for readable names of their rows.
OTHER_NAMES = {"ce": "CE", "oeckd": "OEC-KD", "ekd": "EKD", "kdfm": "KDFM"}


def paper_arch(key: str) -> str:
    """The network the paper used for a row: ResNet-110 for the teacher, ResNet-20 for everything else."""
    return PAPER_ARCH.get(key, PAPER_STUDENT_ARCH)


def _ensemble_members(key: str) -> tuple[str, ...] | None:
    """The member methods an ensemble key names, or None if it is not `ens-<method>-<method>...`."""
    if key in ENSEMBLES:
        return ENSEMBLES[key][1]
    if not key.startswith("ens-"):
        return None
    parts = tuple(key[len("ens-"):].split("-"))
    return parts if all(p in METHOD_NAMES for p in parts) else None


def canonical_key(key: str) -> str:
    """The paper's key for an ensemble named by another order of the same members (`ens-logits-at`,
    `ens-at-logits-rkd` = `ens-all`), so it meets the paper's row instead of becoming a stray one."""
    members = _ensemble_members(key)
    if members is None:
        return key
    for paper_key, (_, paper_members) in ENSEMBLES.items():
        if sorted(members) == sorted(paper_members):
            return paper_key
    return key


def _short(method: str) -> str:
    return "ST" if method == "st" else METHOD_NAMES.get(method, method)


def display_name(key: str) -> str:
    """The name a row is printed with: the paper's where it has one, a readable one otherwise."""
    key = canonical_key(key)
    if key in ROLE_NAMES:
        return ROLE_NAMES[key]
    if key in METHOD_NAMES:
        return METHOD_NAMES[key]
    if key in ENSEMBLES:
        return ENSEMBLES[key][0]
    if key in OTHER_NAMES:
        return OTHER_NAMES[key]
    if key.startswith("ens-"):
        members = _ensemble_members(key)
        return "Ens-" + ("-".join(_short(m) for m in members) if members else key[len("ens-"):])
    base, _, rest = key.partition("-")  # members of a multi-network run: "oeckd-s1" -> "OEC-KD s1"
    if rest and base in OTHER_NAMES:
        return f"{OTHER_NAMES[base]} {rest}"
    return key


def _csv_name_to_key() -> dict[str, str]:
    # matched case-insensitively: the paper prints "Fitnet" where we print "FitNet"
    names = {**ROLE_NAMES, **METHOD_NAMES, **{k: v[0] for k, v in ENSEMBLES.items()}}
    return {name.lower(): key for key, name in names.items()}


def _load(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
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
