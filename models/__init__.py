"""CIFAR model zoo: every model returns `(logits, features)` with named features for distillation taps."""
from .contract import (FEATURES, LOGITS, TAP_NAMES, Model, ModelContractError, MultiBranchModel, SingleHeadModel,
                       check_model)
from .registry import MODELS, UnknownModelError, build_model, build_seeded, count_parameters, register
from .mobilenetv2 import CifarMobileNetV2, mobilenetv2
from .resnet import CifarResNet
from .resnet_bottleneck import CifarBottleneckResNet
from .shufflenet import ShuffleNetV1, ShuffleNetV2
from .vgg import CifarVGG
from .wrn import WideResNet

__all__ = ["MODELS", "UnknownModelError", "build_model", "build_seeded", "count_parameters", "register", "CifarResNet",
           "FEATURES", "LOGITS", "TAP_NAMES", "Model", "ModelContractError", "MultiBranchModel", "SingleHeadModel",
           "check_model", "CifarBottleneckResNet", "CifarMobileNetV2", "CifarVGG", "ShuffleNetV1", "ShuffleNetV2",
           "WideResNet", "mobilenetv2"]
