"""Distillation methods: `registry` names them, `base.Method` is the contract, one file per method, `ensembles`
the paper's ensembles and the voting rules."""
from .registry import ON_REQUEST, REGISTRY, default_methods, get_method, method_names, register, unregister

__all__ = ["ON_REQUEST", "REGISTRY", "default_methods", "get_method", "method_names", "register", "unregister"]
