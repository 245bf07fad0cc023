"""CIFAR ResNets: parameter counts of the paper (Table 2), features, shortcuts, registry."""
import pytest
import torch

from models import MODELS, UnknownModelError, build_model, count_parameters


@pytest.mark.parametrize("name,classes,millions", [
    ("resnet20", 10, 0.27), ("resnet110", 10, 1.73), ("resnet20", 100, 0.28), ("resnet110", 100, 1.74)])
def test_parameter_counts_match_paper_table2(name, classes, millions):
    # Table 2 of Kang & Gwak lists millions of parameters, rounded to two decimals
    assert round(count_parameters(build_model(name, classes)) / 1e6, 2) == millions


def test_option_a_counts_match_published_checkpoints():
    # akamaster/pytorch_resnet_cifar10 README: ResNet-20 0.27M (269,722), ResNet-56 0.85M (853,018)
    assert count_parameters(build_model("resnet20_a", 10)) == 269_722
    assert count_parameters(build_model("resnet56_a", 10)) == 853_018


def test_features_and_shapes():
    model = build_model("resnet20", 10).eval()
    logits, feats = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    shapes = {k: tuple(v.shape) for k, v in feats.items()}
    assert shapes["stem"] == (2, 16, 32, 32)
    assert shapes["stage1"] == shapes["stage1_pre"] == (2, 16, 32, 32)
    assert shapes["stage2"] == (2, 32, 16, 16) and shapes["stage3"] == (2, 64, 8, 8)
    assert shapes["pool"] == (2, 64)
    torch.testing.assert_close(feats["stage3"], feats["stage3_pre"].relu())
    assert (feats["stage3_pre"] < 0).any(), "pre-activations keep their negative part"
    torch.testing.assert_close(model.linear(feats["pool"]), logits)


def test_all_depths_registered_and_bad_names_rejected():
    for d in (8, 14, 20, 32, 44, 56, 110):
        assert f"resnet{d}" in MODELS and f"resnet{d}_a" in MODELS
    with pytest.raises(UnknownModelError, match="known models"):
        build_model("resnet21", 10)
