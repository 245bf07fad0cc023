"""CIFAR model zoo: every model returns `(logits, features)` with named features for distillation taps."""
from .contract import (FEATURES, LOGITS, TAP_NAMES, Model, ModelContractError, MultiBranchModel, SingleHeadModel,
                       check_model)
from .registry import MODELS, UnknownModelError, build_model, build_seeded, count_parameters, register
from .resnet import CifarResNet

__all__ = ["MODELS", "UnknownModelError", "build_model", "build_seeded", "count_parameters", "register", "CifarResNet",
           "FEATURES", "LOGITS", "TAP_NAMES", "Model", "ModelContractError", "MultiBranchModel", "SingleHeadModel",
           "check_model"]
