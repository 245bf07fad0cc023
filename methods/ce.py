"""Cross-entropy alone: trains the teacher and the student baseline (no distillation)."""
from .base import Method


class CE(Method):
    name = "ce"
    display_name = "CE"
    kind = "baseline"
    description = "cross-entropy only: the teacher run and the student baseline"
    citation = "-"
    defaults = {}
    needs_teacher = False
