"""CIFAR ResNets: the exact layout of the paper's student, and the registry. Parameter counts, feature names and
the classifier of every registered model are checked in tests/test_model_contract.py."""
import pytest
import torch

from models import MODELS, UnknownModelError, build_model


def test_resnet20_feature_shapes():
    # widths 16/32/64 at 32/16/8 (He et al. 2016, section 4.2)
    model = build_model("resnet20", 10).eval()
    with torch.no_grad():
        _, feats = model(torch.randn(2, 3, 32, 32))
    shapes = {k: tuple(v.shape) for k, v in feats.items()}
    assert shapes["stem"] == shapes["stem_pre"] == (2, 16, 32, 32)
    assert shapes["stage1"] == shapes["stage1_pre"] == (2, 16, 32, 32)
    assert shapes["stage2"] == (2, 32, 16, 16) and shapes["stage3"] == (2, 64, 8, 8)
    assert shapes["pool"] == (2, 64)


def test_all_depths_registered_and_bad_names_rejected():
    for d in (8, 14, 20, 32, 44, 56, 110):
        assert f"resnet{d}" in MODELS and f"resnet{d}_a" in MODELS
    with pytest.raises(UnknownModelError, match="known models"):
        build_model("resnet21", 10)
