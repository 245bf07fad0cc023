"""Teacher -> student pairs: the 13 of the CRD benchmark (Tian, Krishnan & Isola, "Contrastive Representation
Distillation", ICLR 2020, Tables 1 and 2; github:HobbitLong/RepDistiller), and which method can run on which pair.

`--pairs crd` plans every pair of `CRD_PAIRS`; `--pairs resnet56:resnet20,wrn_40_2:shufflev1` names pairs. On
every pair the planner leaves out the methods `exclusions` returns, each with a short reason the tables print.

The losses follow AberHu/Knowledge-Distillation-Zoo (the golden reference), whose pairs share every shape. Across
the pairs' different widths and resolutions the methods adapt their features as RepDistiller (the code of Tian
et al.) does, and only where shapes differ (equal-shape pairs, Table 1 of the paper above all, are unchanged):

* FitNet: a regressor (RepDistiller `models/util.py` ConvReg: conv to the teacher's shape + BN + ReLU) on the
  student's stage3;
* AB: a connector per stage (RepDistiller `Connector`: ConvReg without ReLU) on the pre-ReLU maps;
* AT, NST, VID, FT: the larger map (FT: factor) average-pooled to the smaller's grid, as RepDistiller's
  `distiller_zoo/{AT,NST,VID,FT}.py`; their channels may differ already (VID's and FT's 1x1 / 3x3 regressors
  map the student's channels to the teacher's).

A method is left out when

* its reference does not run it across the pair's shapes: OFD (clovaai/overhaul-distillation `distiller.py`:
  1x1 connectors, no spatial adapter; not in RepDistiller) where a stage's grid differs; AFD (AberHu
  `kd_losses/afd.py`: element-wise comparison, no connector; not in RepDistiller) where a stage's map differs;
  FSP (RepDistiller's `FSP` refuses unequal channels) where channel counts differ; IRG (AberHu
  `kd_losses/irg.py`, one-to-one mode) where its stage2 -> stage3 transformation does not fit a network;
  FitNet/AB where ConvReg has no convolution for the grids (a student grid smaller than the teacher's and not
  half of it: none of the 13 pairs);
* Tian et al. do not run it across families (Table 2 has no FSP);
* it trains another network than the pair's student that does not exist (OEC-KD's `oeckd_<student>`) or networks
  of its own (EKD: its own teachers and multi-branch student, not the pair's).

The shape rules read the features of each network from one forward on the `meta` device (no computation), so
planning stays fast; tests/test_pairs_methods.py checks them by building every kept method on every pair and
training a step.
"""
from __future__ import annotations

import re
from functools import lru_cache

from core.errors import UserError

# Tian et al., Table 1: teacher and student of the same family
SAME_FAMILY = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"),
               ("resnet110", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8")]
# Tian et al., Table 2: of different families
CROSS_FAMILY = [("vgg13", "mobilenetv2"), ("resnet50", "mobilenetv2"), ("resnet50", "vgg8"),
                ("resnet32x4", "shufflev1"), ("resnet32x4", "shufflev2"), ("wrn_40_2", "shufflev1")]
CRD_PAIRS = SAME_FAMILY + CROSS_FAMILY
NAMED = {"crd": CRD_PAIRS}

Pair = tuple[str, str]


def family(arch: str) -> str:
    """The architectural family, as Tian et al. group the networks (resnet32x4/resnet8x4 are CIFAR ResNets;
    ResNet-50, with bottleneck blocks, is a family of its own)."""
    if arch == "resnet50":
        return "resnet50"
    for prefix in ("wrn", "resnet", "vgg", "shuffle", "mobilenet", "densenet"):
        if arch.startswith(prefix):
            return prefix
    return re.sub(r"\d.*$", "", arch) or arch


def cross_family(pair: Pair) -> bool:
    return family(pair[0]) != family(pair[1])


def parse_pairs(text: str) -> list[Pair]:
    """`crd` -> the 13 pairs; `t:s,t2:s2` -> those pairs, each known to the zoo, each once."""
    from models import MODELS

    text = (text or "").strip()
    if text in NAMED:
        return list(NAMED[text])
    pairs = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        teacher, colon, student = item.partition(":")
        if not colon or not teacher or not student:
            raise UserError(f"--pairs {text!r}: give `crd` or a comma-separated list of TEACHER:STUDENT, e.g. "
                            "--pairs resnet56:resnet20,wrn_40_2:shufflev1")
        for arch in (teacher, student):
            if arch not in MODELS:
                raise UserError(f"--pairs: unknown model {arch!r}; known models: {', '.join(sorted(MODELS))}")
        if (teacher, student) in pairs:
            raise UserError(f"--pairs names {teacher}:{student} twice")
        pairs.append((teacher, student))
    if not pairs:
        raise UserError("--pairs names no pair: give `crd` or TEACHER:STUDENT[,TEACHER:STUDENT...]")
    return pairs


@lru_cache(maxsize=None)
def feature_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """(C, H, W) of every feature of `arch` for a 32x32 input ((C,) for `pool`), from a forward on the meta
    device: shapes without computation."""
    import torch

    from models import build_model

    with torch.device("meta"):
        model = build_model(arch, 100).eval()
        with torch.no_grad():
            _, feats = model(torch.zeros(1, 3, 32, 32))
    return {k: tuple(v.shape[1:]) for k, v in feats.items()}


STAGES = ("stage1", "stage2", "stage3")
PRE = ("stage1_pre", "stage2_pre", "stage3_pre")


def _differ(s: dict, t: dict, taps, what: str) -> list[str]:
    """The taps whose shapes (what = "chw": whole maps, "hw": spatial sizes) differ between student and teacher."""
    cut = (lambda x: x) if what == "chw" else (lambda x: x[1:])
    return [k for k in taps if cut(s[k]) != cut(t[k])]


def _show(shapes: dict, taps) -> str:
    return ", ".join("x".join(map(str, shapes[k])) for k in taps)


def _irg_ok(f: dict) -> bool:
    """IRG's transformation stage2 -> stage3 of one network: stage2 pooled to stage3's grid, stage3's channels
    halved when stage2 has fewer; then both must flatten to one size (methods/irg.py `transformation`)."""
    (c1, h1, w1), (c2, h2, w2) = f["stage2"], f["stage3"]
    h1, w1 = min(h1, h2), min(w1, w2)
    if c1 < c2:
        c2 = c2 // 2
    return c1 * h1 * w1 == c2 * h2 * w2


def _reason(method: str, pair: Pair) -> str | None:
    """Why `method` cannot run on `pair`, or None when it can."""
    from methods import get_method
    from models import MODELS

    teacher, student = pair
    s, t = feature_shapes(student), feature_shapes(teacher)
    if method in ("fitnet", "ab"):
        from methods.fitnet import regressor_fits

        taps = ("stage3",) if method == "fitnet" else PRE
        bad = [k for k in taps if s[k] != t[k] and not regressor_fits(s[k], t[k])]
        what = "regressor" if method == "fitnet" else "connector"
        return bad and (f"its {what}, RepDistiller's ConvReg (models/util.py), has no convolution from the "
                        f"student's {_show(s, bad)} to the teacher's {_show(t, bad)}")
    if method == "ofd":
        bad = _differ(s, t, PRE, "hw")
        return bad and (f"its reference (clovaai/overhaul-distillation distiller.py; RepDistiller has no OFD) "
                        f"connects the stages by 1x1 conv + BN only, no spatial adapter, and the grids of "
                        f"{', '.join(bad)} differ ({_show(s, bad)} vs {_show(t, bad)})")
    if method == "afd":
        bad = _differ(s, t, STAGES, "chw")
        return bad and (f"its reference (AberHu kd_losses/afd.py; RepDistiller has no AFD) compares the stage maps "
                        f"element by element, without a connector, and {', '.join(bad)} differ "
                        f"({_show(s, bad)} vs {_show(t, bad)})")
    if method == "fsp":
        if cross_family(pair):
            return "Tian et al. do not run FSP across families (their Table 2); its FSP matrices need equal channels"
        taps = ("stem",) + STAGES
        bad = [f"{a}-{b}" for a, b in zip(taps, taps[1:]) if (s[a][0], s[b][0]) != (t[a][0], t[b][0])]
        return bad and (f"its FSP matrices need equal channel counts in both networks (RepDistiller's FSP refuses "
                        f"others); {', '.join(bad)} differ")
    if method == "irg":
        bad = [name for name, f in (("student", s), ("teacher", t)) if not _irg_ok(f)]
        shapes = "; ".join(f"{name} {_show(f, ('stage2', 'stage3'))}" for name, f in (("student", s), ("teacher", t))
                           if name in bad)
        return bad and (f"its stage2 -> stage3 transformation (AberHu kd_losses/irg.py, one-to-one mode: stage2 "
                        f"pooled to stage3's grid, stage3's channel pairs averaged; RepDistiller has no IRG) does "
                        f"not give maps of one size in the {' and '.join(bad)} ({shapes})")
    cls = get_method(method)
    if method == "ekd" or cls.teacher_archs(cls.resolve_hparams({}, "cifar100")):
        return "trains its own teachers and multi-branch student, not the pair's"
    arch = cls.student_arch(cls.resolve_hparams({}, "cifar100"), student)
    if arch not in MODELS:
        return f"needs a network {arch} that the zoo does not have"
    return None


def exclusions(pair: Pair, methods) -> dict[str, str]:
    """{method: reason} for the methods of `methods` that cannot run on `pair` (teacher, student). A combination
    `a+b` is left out when one of its components is."""
    out = {}
    for method in methods:
        for part in method.split("+"):
            if part == "ce":
                continue
            reason = _reason(part, tuple(pair))
            if reason:
                out[method] = reason if part == method else f"{part}: {reason}"
                break
    return out
