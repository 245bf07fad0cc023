"""The CIFAR networks of the CRD benchmark: Tian, Krishnan & Isola, "Contrastive Representation Distillation",
ICLR 2020, as its code defines them (github:HobbitLong/RepDistiller, `models/`: resnet.py, wrn.py, vgg.py,
mobilenetv2.py, ShuffleNetv1.py, ShuffleNetv2.py, resnetv2.py).

Parameter counts at 100 classes are RepDistiller's, exactly (its `model_dict` names in brackets where they
differ from ours: `vgg13`/`vgg8` are its `vgg13_bn`/`vgg8_bn`, `mobilenetv2` its `mobile_half`, `shufflev1`/
`shufflev2` its `ShuffleV1`/`ShuffleV2`, `resnet50` its `ResNet50`). The stage maps are RepDistiller's feature
maps (f<j> of `is_feat=True`) chosen by the contract's rule (models/contract.py): stage1 the last 32x32 map,
stage2 the last 16x16 map, stage3 the map the pooling reads. The contract itself (names, ReLU twins, pool,
classifier) is checked for every registered model in tests/test_model_contract.py.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn

from models import MODELS, count_parameters

# RepDistiller's parameter counts at 100 classes
COUNTS = {
    "wrn_40_2": 2_255_156, "wrn_16_2": 703_284, "wrn_40_1": 569_780,
    "resnet56": 861_620, "resnet110": 1_736_564, "resnet20": 278_324, "resnet32": 472_756,
    "resnet32x4": 7_433_860, "resnet8x4": 1_233_540,
    "vgg13": 9_462_180, "vgg8": 3_965_028,
    "mobilenetv2": 812_836,
    "shufflev1": 949_258, "shufflev2": 1_355_528,
    "resnet50": 23_705_252,
}

# (C, H, W) of stage1, stage2, stage3 for a 32x32 input, and the pooled width
STAGES = {
    # RepDistiller's f1, f2, f3; pool f4
    "resnet20": ((16, 32, 32), (32, 16, 16), (64, 8, 8)),
    "resnet32": ((16, 32, 32), (32, 16, 16), (64, 8, 8)),
    "resnet56": ((16, 32, 32), (32, 16, 16), (64, 8, 8)),
    "resnet110": ((16, 32, 32), (32, 16, 16), (64, 8, 8)),
    "resnet32x4": ((64, 32, 32), (128, 16, 16), (256, 8, 8)),
    "resnet8x4": ((64, 32, 32), (128, 16, 16), (256, 8, 8)),
    # relu(BN(f<i>)): f1, f2, f3 through the BN that follows them; 16k, 32k, 64k channels
    "wrn_40_2": ((32, 32, 32), (64, 16, 16), (128, 8, 8)),
    "wrn_16_2": ((32, 32, 32), (64, 16, 16), (128, 8, 8)),
    "wrn_40_1": ((16, 32, 32), (32, 16, 16), (64, 8, 8)),
    # f0 (block 0), f1 (block 1), f4 (block 4)
    "vgg13": ((64, 32, 32), (128, 16, 16), (512, 4, 4)),
    "vgg8": ((64, 32, 32), (128, 16, 16), (512, 4, 4)),
    # f1 (layer1), f2 (layer2), f4 (layer4)
    "resnet50": ((256, 32, 32), (512, 16, 16), (2048, 4, 4)),
    # f0 (the stem), f1 (stage 1), f3 (stage 3) / the 1x1 head conv on f3
    "shufflev1": ((24, 32, 32), (240, 16, 16), (960, 4, 4)),
    "shufflev2": ((24, 32, 32), (116, 16, 16), (1024, 4, 4)),
    # f1 (block group 1), f2 (block group 2), the 1x1 head conv on f4: stride-2 stem, no 32x32 map
    "mobilenetv2": ((12, 16, 16), (16, 8, 8), (1280, 2, 2)),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # small batches: threads only add overhead (conftest)


@functools.cache
def built(name: str) -> nn.Module:
    """One 100-class instance per network for the whole file (ResNet-50 alone is 23.7 M parameters)."""
    return MODELS[name](100).eval()


@functools.cache
def probe(name: str):
    with torch.no_grad():
        return built(name)(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def test_every_network_is_registered_under_its_name():
    assert set(COUNTS) == set(STAGES)
    assert set(COUNTS) <= set(MODELS)


@pytest.mark.parametrize("name", list(COUNTS))
def test_parameter_count_at_100_classes_is_repdistillers(name):
    assert count_parameters(built(name)) == COUNTS[name]


@pytest.mark.parametrize("name", list(STAGES))
def test_logits_and_stage_shapes(name):
    logits, feats = probe(name)
    assert tuple(logits.shape) == (2, 100)
    for i, shape in enumerate(STAGES[name], start=1):
        assert tuple(feats[f"stage{i}"].shape) == (2, *shape), f"stage{i}"
        assert feats[f"stage{i}_pre"].shape == feats[f"stage{i}"].shape
    assert tuple(feats["pool"].shape) == (2, STAGES[name][-1][0])
    assert built(name).linear.in_features == STAGES[name][-1][0]


def test_repdistiller_resnets_are_the_option_b_resnets():
    # its resnet20..110 (filters 16, 16, 32, 64) are ours; the x4 ones have a 32-channel stem and so a projection
    # shortcut in the first block (32 -> 64)
    for d in (20, 32, 56, 110):
        assert built(f"resnet{d}").shortcut_option == "B"
    for name in ("resnet32x4", "resnet8x4"):
        net = built(name)
        assert net.conv1.out_channels == 32 and isinstance(net.layer1[0].shortcut, nn.Sequential)
    _, feats = probe("resnet8x4")
    assert tuple(feats["stem"].shape) == (2, 32, 32, 32)


def test_stems_without_activation_and_shared_stages():
    _, wrn = probe("wrn_40_1")
    assert wrn["stem"] is wrn["stem_pre"] and tuple(wrn["stem"].shape) == (2, 16, 32, 32)  # pre-activation WRN
    for name in ("shufflev1", "shufflev2"):  # the stem is a ShuffleNet's only 32x32 map
        _, feats = probe(name)
        assert feats["stage1"] is feats["stem"] and feats["stage1_pre"] is feats["stem_pre"]
    _, vgg8 = probe("vgg8")  # block 0 of vgg8 is a single conv: its stem is its stage1
    torch.testing.assert_close(vgg8["stem"], vgg8["stage1"])


def test_initialisation_as_repdistiller():
    with torch.no_grad():
        vgg = built("vgg8")
        assert all(not m.bias.any() for m in vgg.modules() if isinstance(m, nn.Conv2d))  # conv bias 0
        for net in (vgg, built("mobilenetv2")):  # classifier normal(0, 0.01), zero bias
            assert not net.linear.bias.any() and 0.005 < float(net.linear.weight.std()) < 0.015
        wrn = built("wrn_16_2")
        assert not wrn.linear.bias.any()
        conv = wrn.layer2[0].conv1  # He normal, fan-out: std sqrt(2 / (9 * 64))
        assert abs(float(conv.weight.std()) / (2 / (9 * 64)) ** 0.5 - 1) < 0.1
        bns = [m for m in wrn.modules() if isinstance(m, nn.BatchNorm2d)]
        assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in bns)
