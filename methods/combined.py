"""Combined methods: `--methods at+st` trains one student with the losses of several methods at once.

A combination is a `Method` built from its components (`combine`, called by `registry.get_method("at+st")`):
one student and one teacher forward per batch, then each component's `distill` on the same outputs, so every
component keeps its own loss, its own weight and its own extra modules (namespaced per component:
`extra["at"]`, `extra["st"]`). Its name lists the components sorted by name (`st+at` is planned as
`at+st`), its display name joins theirs ("AT+Soft target"), its hyperparameters are each component's resolved
hyperparameters under the component's name (`{"at": {"weight": 1000.0, ...}, "st": {...}}`), set on the
command line with `--set at+st.at.weight=500`.

Only methods that follow the common recipe combine: the common one-stage schedule (or one stage structure
shared by every component), the common update step, their losses in `distill`, the benchmark's student. A
component that overrides `train_step`, `losses`, `teacher_forward`, `eval_model`, `member_models`,
`student_arch` (or has a stage structure the others lack) is refused, naming what it overrides.
"""
from __future__ import annotations

import inspect

import torch.nn.functional as F

from core.errors import UserError
from core.seeding import seeded

from .base import Method

# what a component may not override: the combination does these once for all components
_OWN = {"losses": "computes its own losses (overrides losses, not distill)",
        "teacher_forward": "has its own teacher forward",
        "eval_model": "delivers another network than the student (eval_model)",
        "member_models": "delivers several networks (member_models)",
        "student_arch": "trains another network than the benchmark's student (student_arch)"}
# the stage structure: every component must share it
_STAGES = ("stages", "stage_parameters")


def _impl(cls: type, attr: str):
    """The attribute as defined (function, classmethod object), not bound: comparable between classes."""
    return inspect.getattr_static(cls, attr)


def _overrides(cls: type, attr: str) -> bool:
    return _impl(cls, attr) is not _impl(Method, attr)


def check_components(classes: tuple[type, ...]) -> None:
    """Refuse what one student cannot train with one optimiser step: a UserError naming the component."""
    names = "+".join(c.name for c in classes)
    if len(classes) < 2:
        raise UserError(f"combination {names!r} needs at least two methods, e.g. at+st")
    for cls in classes:
        if cls.name == "ce" or not cls.needs_teacher:
            raise UserError(f"combination {names}: {cls.name} distils from no teacher (every method already has "
                            "its CE term); combine distillation methods, e.g. at+st")
        if _overrides(cls, "train_step"):
            raise UserError(f"combination {names}: {cls.name} has its own update step (train_step), so it cannot "
                            "share one training step with other methods; combine methods that only define `distill`")
    for attr in _STAGES:
        if len({_impl(cls, attr) for cls in classes}) > 1:
            own = [c.name for c in classes if _overrides(c, attr)]
            common = [c.name for c in classes if not _overrides(c, attr)]
            raise UserError(f"combination {names}: different stage structures: {', '.join(own)} trains in "
                            f"stages of its own ({attr})" + (f", {', '.join(common)} in the common one-stage "
                                                             "schedule" if common else "") +
                            "; combine methods with the same stages")
    for cls in classes:
        for attr, why in _OWN.items():
            if _overrides(cls, attr):
                raise UserError(f"combination {names}: {cls.name} {why}, so it cannot share one training step "
                                "with other methods; combine methods that only define `distill`")


class CombinedMethod(Method):
    """Base of every combination; `combine` makes the subclass of one set of components."""

    components_cls: dict[str, type] = {}

    @classmethod
    def resolve_hparams(cls, overrides: dict, dataset: str) -> dict:
        """{component: its resolved hyperparameters}; `overrides` = {component: {key: value}}."""
        unknown = set(overrides) - set(cls.components_cls)
        if unknown:
            raise UserError(f"{cls.name}: unknown component(s) {sorted(unknown)}; its components: "
                            f"{', '.join(cls.components_cls)} (set one with --set {cls.name}.COMPONENT.KEY=VALUE)")
        for part, values in overrides.items():
            if not isinstance(values, dict):
                raise UserError(f"{cls.name}: the hyperparameters of component {part} must be a mapping, "
                                f"got {values!r}")
        return {part: comp.resolve_hparams(overrides.get(part, {}), dataset)
                for part, comp in cls.components_cls.items()}

    @classmethod
    def teacher_archs(cls, hparams: dict) -> list[str]:
        return list(dict.fromkeys(a for part, comp in cls.components_cls.items()
                                  for a in comp.teacher_archs(hparams.get(part, comp.defaults))))

    @classmethod
    def baseline_archs(cls, hparams: dict, student: str) -> list[str]:
        return list(dict.fromkeys(a for part, comp in cls.components_cls.items()
                                  for a in comp.baseline_archs(hparams.get(part, comp.defaults), student)))

    def __init__(self, student, teacher, hparams, ctx):
        super().__init__(student, teacher, hparams, ctx)
        self.components = {part: comp(student, teacher, self.hp[part], ctx)
                           for part, comp in self.components_cls.items()}
        for part, comp in self.components.items():
            self.extra[part] = comp.extra

    def setup(self, s_feats, t_feats) -> None:
        for part, comp in self.components.items():
            with seeded(self.ctx.seed, "extra", part):  # a component's modules start as they do when it runs alone
                comp.setup(s_feats, t_feats)
            self.extra[part] = comp.extra  # in case the component replaced its ModuleDict

    def stages(self, protocol):
        return next(iter(self.components.values())).stages(protocol)

    def stage_parameters(self, stage):
        seen, out = set(), []
        for comp in self.components.values():
            for p in comp.stage_parameters(stage):
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def train(self, mode: bool = True) -> None:
        super().train(mode)
        for comp in self.components.values():
            comp.train(mode)

    def losses(self, batch, info):
        """CE once, then each component's weighted distillation losses on the same forward passes. A loss name
        two components share is prefixed with its component's name ("st.kd")."""
        logits, feats = self.student(batch.x)
        out = {"ce": F.cross_entropy(logits, batch.y)}
        t_logits, t_feats = self.teacher_forward(batch.x)
        for part, comp in self.components.items():
            for key, value in self.in_fp32(comp.distill, logits, feats, t_logits, t_feats, batch, info).items():
                out[key if key not in out else f"{part}.{key}"] = value
        return out

    def state_dict(self) -> dict:
        """The extra modules (namespaced per component) plus what each component keeps besides them."""
        return {"extra": self.extra.state_dict(),
                "components": {part: {k: v for k, v in comp.state_dict().items() if k != "extra"}
                               for part, comp in self.components.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.extra.load_state_dict(state["extra"])
        for part, comp in self.components.items():
            prefix = part + "."
            own = {k[len(prefix):]: v for k, v in state["extra"].items() if k.startswith(prefix)}
            comp.load_state_dict({**state.get("components", {}).get(part, {}), "extra": own})


def combine(classes: tuple[type, ...]) -> type:
    """The `Method` subclass training one student with the losses of `classes` (in this order)."""
    check_components(classes)
    name = "+".join(c.name for c in classes)
    kinds = list(dict.fromkeys(c.kind for c in classes))
    attrs = {
        "name": name,
        "display_name": "+".join(c.display_name for c in classes),
        "short_name": "+".join(c.short_name for c in classes),
        "kind": kinds[0] if len(kinds) == 1 else "+".join(kinds),
        "description": "one student trained with the losses of " + " and ".join(c.display_name for c in classes),
        "citation": "; ".join(dict.fromkeys(c.citation for c in classes)),
        "defaults": {c.name: dict(c.defaults) for c in classes},
        "needs_teacher": True,
        "student_taps": tuple(dict.fromkeys(t for c in classes for t in c.student_taps)),
        "teacher_taps": tuple(dict.fromkeys(t for c in classes for t in c.teacher_taps)),
        "components_cls": {c.name: c for c in classes},
        "__module__": __name__,
        "__doc__": f"{name}: " + ", ".join(f"{c.name} ({c.__module__}.{c.__qualname__})" for c in classes),
    }
    return type("Combined_" + "_".join(c.name for c in classes), (CombinedMethod,), attrs)


__all__ = ["CombinedMethod", "check_components", "combine"]
