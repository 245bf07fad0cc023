"""CIFAR model zoo: every model returns `(logits, features)` with named features for distillation taps."""
from .registry import MODELS, UnknownModelError, build_model, build_seeded, count_parameters, register
from .resnet import CifarResNet

__all__ = ["MODELS", "UnknownModelError", "build_model", "build_seeded", "count_parameters", "register", "CifarResNet"]
