"""Distillation methods: `registry` names them, `base.Method` is the contract, one file per method."""
from .registry import REGISTRY, get_method, method_names

__all__ = ["REGISTRY", "get_method", "method_names"]
