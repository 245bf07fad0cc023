"""Distillation methods: `registry` names them, `base.Method` is the contract, one file per method."""
from .registry import ON_REQUEST, REGISTRY, default_methods, get_method, method_names

__all__ = ["ON_REQUEST", "REGISTRY", "default_methods", "get_method", "method_names"]
