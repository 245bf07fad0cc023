"""The models added for the other systems (KDFM, OEC-KD, EKD): their layouts (last maps, width rule, member
views) and weights that save and load like every other model of the zoo. Their parameter counts (published and
pinned), feature names and classifiers are checked for every registered model in tests/test_model_contract.py."""
from __future__ import annotations

import pytest
import torch

from models import MODELS, build_model, count_parameters
from models.branches import MultiBranchNet, ScaledResNet, oeckd_densenet_bc
from models.pretrained import load_teacher
from runner.train import save_model

NORM = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
# the smaller members of each new family (the 100-layer DenseNets share their code with these)
NEW_PLAIN = ("densenet40", "densenet_bc40", "mobilenet", "cnn4", "resnet8_w80", "resnet14_w20", "densenet_bc100_w20")


def test_mobilenet_is_under_half_of_densenet100():
    # KDFM's abstract: "MobileNet is under half the size of DenseNet-100"
    assert count_parameters(build_model("mobilenet", 100)) < 0.5 * count_parameters(build_model("densenet100", 100))


def test_teacher_last_map_channels():
    # paper-notes §3.3: the channels KDFM's adapter maps to, at 8x8
    channels = {name: build_model(name, 100).out_channels for name in ("densenet40", "densenet_bc100", "densenet100")}
    assert channels == {"densenet40": 448, "densenet_bc100": 342, "densenet100": 1168}
    with torch.no_grad():
        _, feats = build_model("densenet40", 100).eval()(torch.randn(1, 3, 32, 32))
    assert tuple(feats["stage3"].shape) == (1, 448, 8, 8)


def test_last_maps_of_the_kdfm_students():
    shapes = {}
    for name in ("mobilenet", "cnn4"):
        _, feats = build_model(name, 100).eval()(torch.randn(2, 3, 32, 32))
        shapes[name] = tuple(feats["stage3"].shape[1:])
    assert shapes == {"mobilenet": (1024, 2, 2), "cnn4": (256, 8, 8)}


@pytest.mark.parametrize("name", NEW_PLAIN)
def test_model_pt_loads_as_a_teacher(tmp_path, name):
    model = build_model(name, 10).eval()
    save_model(model, name, 10, NORM, tmp_path / "model.pt")
    loaded, arch = load_teacher(tmp_path / "model.pt", 10, NORM)
    assert arch == name
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x)[0], model(x)[0])


def test_full_width_scaled_resnet_is_the_option_b_resnet():
    ref = build_model("resnet20", 10)
    same = ScaledResNet(20, (16, 32, 64), 10)
    assert set(same.state_dict()) == set(ref.state_dict())
    same.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(same.eval()(x)[0], ref.eval()(x)[0])


def test_width_rule_names():
    # w<p>: every stage at int(C * p / 100), the stem kept at 16 channels
    widths = {p: tuple(build_model(f"resnet20_w{p}", 10).widths) for p in (80, 60, 40, 20)}
    assert widths == {80: (12, 25, 51), 60: (9, 19, 38), 40: (6, 12, 25), 20: (3, 6, 12)}
    assert build_model("resnet20_w20", 10).conv1.out_channels == 16
    growth = {p: build_model(f"densenet_bc100_w{p}", 10).growth for p in (80, 60, 40, 20)}
    assert growth == {80: 9, 60: 7, 40: 4, 20: 2}
    assert build_model("densenet_bc100_w20", 10).conv1.out_channels == 24


@pytest.mark.parametrize("name", ["oeckd_resnet8", "ekd3_resnet8", "oeckd_densenet_bc40"])
def test_member_view_shares_the_weights_and_counts_stem_and_branch(name):
    net = (oeckd_densenet_bc(40, 10) if name == "oeckd_densenet_bc40" else build_model(name, 10)).eval()
    assert isinstance(net, MultiBranchNet)
    view = net.member(1)
    assert view.branch is net.branches[1] and view.stem is net.stem
    assert count_parameters(view) == count_parameters(net.stem) + count_parameters(net.branches[1])


def test_registry_holds_every_new_family():
    for name in ("densenet40", "densenet100", "densenet_bc40", "densenet_bc100", "mobilenet", "cnn4",
                 "oeckd_resnet110", "oeckd_densenet_bc100", "ekd3_resnet8", "resnet110_w20", "densenet_bc100_w80"):
        assert name in MODELS
