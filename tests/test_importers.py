"""Teachers of the other CIFAR-100 benchmarks load through `load_teacher`: HobbitLong/RepDistiller and
megvii-research/mdistiller checkpoints (models/pretrained.py, `REPDISTILLER_KEYS`).

No checkpoint of theirs is stored here, so each test writes one from a network of our zoo: its weights (with
random BatchNorm statistics, so that a BN read into the wrong layer shows) renamed into RepDistiller's key
names by `to_repdistiller` below - written from RepDistiller's `models/*.py`, independently of the importer's
rules, and pinned by literal key names of their modules - wrapped as their scripts wrap it and saved with
torch.save. Imported, it must give our network's logits on the same images: the original fed the images
normalised as RepDistiller trains (its CIFAR-100 statistics), the import fed them normalised with the
benchmark's statistics (the importer adds the exact renormalisation).
"""
from __future__ import annotations

import argparse
import re

import pytest
import torch

from core.errors import UserError
from data import DATASETS
from models import build_seeded
from models.pretrained import REPDISTILLER_NORM, Renormalize, load_teacher

C100 = DATASETS["cifar100"]
NORM = (C100.mean, C100.std)


pytestmark = pytest.mark.usefixtures("one_thread")  # small batches: threads only add overhead (conftest)


# --- RepDistiller's names, from its models/*.py ----------------------------------------------------------------

_MV2 = {"conv1": 0, "bn1": 1, "conv2": 3, "bn2": 4, "conv3": 6, "bn3": 7}  # InvertedResidual.conv (Sequential)
RULES = {  # ours -> theirs
    "resnet": [(r"\.shortcut\.", ".downsample."), (r"^linear\.", "fc.")],
    "wrn": [(r"^layer(\d)\.", r"block\1.layer."), (r"\.shortcut\.", ".convShortcut."), (r"^bn\.", "bn1."),
            (r"^linear\.", "fc.")],
    "vgg": [(r"^blocks\.(\d+)\.convs\.(\d+)\.", lambda m: f"block{m[1]}.{3 * int(m[2])}."),
            (r"^blocks\.(\d+)\.bns\.(\d+)\.", lambda m: f"block{m[1]}.{3 * int(m[2]) + 1}."),
            (r"^linear\.", "classifier.")],
    "mobilenetv2": [(r"^conv1\.", "conv1.0."), (r"^bn1\.", "conv1.1."), (r"^conv2\.", "conv2.0."),
                    (r"^bn2\.", "conv2.1."), (r"^linear\.", "classifier.0."),
                    (r"^(blocks\.\d+\.\d+)\.(conv\d|bn\d)\.", lambda m: f"{m[1]}.conv.{_MV2[m[2]]}.")],
    "shufflenet": [(r"^stem\.", "")],
    "resnet50": [(r"^layers\.(\d+)\.", lambda m: f"layer{int(m[1]) + 1}.")],
}
FAMILY = {"resnet20": "resnet", "resnet32": "resnet", "resnet56": "resnet", "resnet110": "resnet",
          "resnet8x4": "resnet", "resnet32x4": "resnet", "wrn_40_2": "wrn", "wrn_16_2": "wrn", "wrn_40_1": "wrn",
          "vgg13": "vgg", "vgg8": "vgg", "mobilenetv2": "mobilenetv2", "shufflev1": "shufflenet",
          "shufflev2": "shufflenet", "resnet50": "resnet50"}
# names their modules give (read off RepDistiller's model code): the renaming above must produce them
THEIR_KEYS = {
    "resnet56": ["conv1.weight", "bn1.running_mean", "layer1.8.conv2.weight", "layer2.0.downsample.0.weight",
                 "layer2.0.downsample.1.running_var", "layer3.8.bn2.bias", "fc.weight", "fc.bias"],
    "resnet32x4": ["layer1.0.downsample.0.weight", "layer3.4.conv1.weight", "fc.weight"],
    "wrn_40_2": ["conv1.weight", "block1.layer.0.convShortcut.weight", "block1.layer.5.bn1.running_var",
                 "block3.layer.0.convShortcut.weight", "bn1.weight", "bn1.running_mean", "fc.weight"],
    "vgg13": ["block0.0.weight", "block0.0.bias", "block0.1.running_mean", "block0.3.weight", "block0.4.weight",
              "block4.4.running_var", "classifier.weight"],
    "mobilenetv2": ["conv1.0.weight", "conv1.1.running_mean", "blocks.0.0.conv.0.weight", "blocks.6.0.conv.7.weight",
                    "conv2.0.weight", "conv2.1.bias", "classifier.0.weight", "classifier.0.bias"],
    "shufflev1": ["conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer3.3.bn3.weight", "linear.weight"],
    "shufflev2": ["conv1.weight", "layer1.0.conv5.weight", "layer3.3.bn3.bias", "conv2.weight", "bn2.weight"],
    "resnet50": ["layer1.0.shortcut.0.weight", "layer4.2.conv3.weight", "layer4.0.shortcut.1.running_var",
                 "linear.weight"],
}
NOT_THEIR_KEYS = {"resnet56": ["layer1.0.downsample.0.weight"], "wrn_40_1": ["block1.layer.0.convShortcut.weight"]}


def to_repdistiller(state: dict, family: str) -> dict:
    out = {}
    for key, value in state.items():
        for pattern, repl in RULES[family]:
            key = re.sub(pattern, repl, key)
        out[key] = value.clone()
    return out


def network(arch: str, classes: int = 100, seed: int = 0) -> torch.nn.Module:
    """A zoo network with random BatchNorm parameters and statistics (a fresh one has weight 1, bias 0, mean 0,
    variance 1 everywhere: a BN read into the wrong layer would not change a thing)."""
    model = build_seeded(arch, classes, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 0.5 + 0.75)
            elif isinstance(m, torch.nn.Linear):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return model.eval()


def repdistiller_file(path, model, arch, layout="teacher_epoch", prefix=""):
    """`model` saved the way RepDistiller / mdistiller save a network of `arch`."""
    weights = {prefix + k: v for k, v in to_repdistiller(model.state_dict(), FAMILY[arch]).items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4).state_dict()
    ckpt = {"teacher_epoch": {"epoch": 240, "model": weights, "accuracy": torch.tensor(72.34),
                              "optimizer": optimizer},  # train_teacher.py, ckpt_epoch_240.pth
            "teacher_best": {"epoch": 236, "model": weights, "best_acc": torch.tensor(72.41),
                             "optimizer": optimizer},  # train_teacher.py, <model>_best.pth
            "mdistiller_student": {"model": weights},  # mdistiller trainer, student_best
            }[layout]
    torch.save(ckpt, path)
    return path


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def normalised(x: torch.Tensor, norm) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in norm)
    return (x - mean) / std


# --- every CRD network, imported exactly --------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["resnet56", "resnet32x4", "wrn_40_2", "vgg13", "shufflev1", "mobilenetv2",
                                  "resnet110", "resnet50", "resnet20", "resnet32", "resnet8x4", "wrn_16_2",
                                  "wrn_40_1", "vgg8", "shufflev2"])
def test_repdistiller_teacher_gives_our_logits(tmp_path, arch):
    model = network(arch)
    path = repdistiller_file(tmp_path / "ckpt_epoch_240.pth", model, arch)
    saved = torch.load(path, weights_only=True)["model"]
    assert len(saved) == len(model.state_dict())
    assert all(k in saved for k in THEIR_KEYS.get(arch, [])), [k for k in THEIR_KEYS[arch] if k not in saved]
    assert not any(k in saved for k in NOT_THEIR_KEYS.get(arch, []))

    imported, got = load_teacher(path, 100, NORM)
    assert got == arch and isinstance(imported, Renormalize) and not imported.training
    x = images()
    with torch.no_grad():
        want = model(normalised(x, REPDISTILLER_NORM))[0]
        have = imported(normalised(x, NORM))[0]
    assert want.abs().max() > 0.1  # the probe reaches the classifier
    torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_repdistiller_normalisation_is_theirs_and_adapted_exactly(tmp_path):
    """RepDistiller's and mdistiller's CIFAR-100 transforms normalise with (0.5071, 0.4867, 0.4408) / (0.2675,
    0.2565, 0.2761): no wrapper under exactly those statistics, an affine Renormalize under the benchmark's."""
    assert REPDISTILLER_NORM == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
    assert NORM != REPDISTILLER_NORM  # the benchmark's CIFAR-100 statistics differ in the 4th decimal
    model = network("resnet20")
    path = repdistiller_file(tmp_path / "resnet20_best.pth", model, "resnet20", "teacher_best")
    plain, arch = load_teacher(path, 100, REPDISTILLER_NORM)
    assert arch == "resnet20" and not isinstance(plain, Renormalize)
    x = normalised(images(), REPDISTILLER_NORM)
    with torch.no_grad():
        torch.testing.assert_close(plain(x)[0], model(x)[0])
    wrapped, _ = load_teacher(path, 100, NORM)
    scale = torch.tensor(NORM[1]) / torch.tensor(REPDISTILLER_NORM[1])
    shift = (torch.tensor(NORM[0]) - torch.tensor(REPDISTILLER_NORM[0])) / torch.tensor(REPDISTILLER_NORM[1])
    torch.testing.assert_close(wrapped.scale.flatten(), scale)
    torch.testing.assert_close(wrapped.shift.flatten(), shift)


@pytest.mark.parametrize("layout,prefix", [("teacher_epoch", ""), ("teacher_best", ""), ("mdistiller_student", ""),
                                           ("teacher_epoch", "module.")],
                         ids=["ckpt_epoch_240", "model_best", "mdistiller-student_best", "dataparallel"])
def test_layouts(tmp_path, layout, prefix):
    model = network("resnet20", seed=3)
    path = repdistiller_file(tmp_path / "teacher.pth", model, "resnet20", layout, prefix)
    imported, arch = load_teacher(path, 100, NORM)
    x = images(seed=1)
    with torch.no_grad():
        torch.testing.assert_close(imported(normalised(x, NORM))[0], model(normalised(x, REPDISTILLER_NORM))[0],
                                   rtol=1e-4, atol=1e-4)
    assert arch == "resnet20"


def test_arch_hint_must_agree(tmp_path):
    path = repdistiller_file(tmp_path / "ckpt_epoch_240.pth", network("resnet20"), "resnet20")
    assert load_teacher(path, 100, NORM, arch="resnet20")[1] == "resnet20"
    with pytest.raises(UserError, match="holds a resnet20, not the resnet110 asked for") as e:
        load_teacher(path, 100, NORM, arch="resnet110")
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# --- what does not fit is refused in one line --------------------------------------------------------------------

def _saved(path, ckpt):
    torch.save(ckpt, path)
    return path


def _theirs(model, family):
    return to_repdistiller(model.state_dict(), family)


def test_refusals(tmp_path):
    from models.shufflenet import ShuffleNetV2
    from models.vgg import CifarVGG
    from models.wrn import WideResNet

    cases = [
        # their networks the zoo lacks
        ({"model": _theirs(WideResNet(16, 1, 100), "wrn")}, "RepDistiller's wrn_16_1, which the zoo lacks"),
        ({"model": _theirs(CifarVGG(((64,), (128,), (256, 256), (512, 512), (512, 512)), 100), "vgg")},
         "RepDistiller's vgg11, which the zoo lacks"),
        ({"model": _theirs(ShuffleNetV2(100, widths=(48, 96, 192)), "shufflenet")},
         "ShuffleNetV2 whose last stage has 192 channels"),
        # mdistiller's latest/best: the whole distiller
        ({"epoch": 240, "best_acc": torch.tensor(71.0),
          "model": {f"module.{who}.{k}": v for who in ("student", "teacher")
                    for k, v in _theirs(network("resnet20"), "resnet").items()}}, "mdistiller distiller checkpoint"),
        # RepDistiller trains CIFAR-100 only: a 10-class file has an unknown normalisation
        ({"model": _theirs(network("resnet20", classes=10), "resnet")}, "CIFAR-100 only"),
        ({"model": {"features.0.weight": torch.zeros(8, 3, 3, 3)}}, "match none of RepDistiller's"),
        ({"model": {**_theirs(network("resnet20"), "resnet"), "fc.weight": "weights"}}, "'fc.weight' is a str"),
    ]
    for i, (ckpt, says) in enumerate(cases):
        path = _saved(tmp_path / f"case{i}.pth", ckpt)
        with pytest.raises(UserError) as e:
            load_teacher(path, 100, NORM)
        message = str(e.value)
        assert says in message and str(path) in message and "\n" not in message, (says, message)


def test_damaged_weights_are_refused(tmp_path):
    theirs = _theirs(network("resnet20"), "resnet")
    theirs["layer2.0.downsample.0.weight"] = torch.zeros(32, 16, 3, 3)
    path = _saved(tmp_path / "ckpt.pth", {"epoch": 240, "model": theirs})
    with pytest.raises(UserError, match=r"tensor 'layer2.0.shortcut.0.weight' has shape \(32, 16, 3, 3\)"):
        load_teacher(path, 100, NORM)
    del theirs["layer2.0.downsample.0.weight"]
    path = _saved(tmp_path / "ckpt.pth", {"epoch": 240, "model": theirs})
    with pytest.raises(UserError, match=r"missing \['layer2.0.shortcut.0.weight'\]"):
        load_teacher(path, 100, NORM)


def test_last_checkpoint_with_options_is_refused_with_the_file_to_use(tmp_path):
    """RepDistiller's <model>_last.pth stores `opt`, an argparse.Namespace: never unpickled (weights only); the
    message points to ckpt_epoch_240.pth, which holds the same final weights."""
    weights = _theirs(network("resnet20"), "resnet")
    path = _saved(tmp_path / "resnet20_last.pth", {"opt": argparse.Namespace(model="resnet20", epochs=240),
                                                   "model": weights, "optimizer": {}})
    with pytest.raises(UserError) as e:
        load_teacher(path, 100, NORM)
    message = str(e.value)
    assert "refused by the safe loader" in message and "argparse.Namespace" in message
    assert "ckpt_epoch_" in message and "\n" not in message


# --- through the command line: --teacher-checkpoint with their files ----------------------------------------------

CLI = ["--dataset", "cifar100", "--preset", "smoke", "--epochs", "1", "--train-size", "64", "--test-size", "32"]


def test_repdistiller_teacher_trains_a_student_through_the_cli(tmp_path):
    """A RepDistiller checkpoint as --teacher-checkpoint: planned as a published teacher (evaluated, never trained),
    its architecture read from the file, a soft-target student distilled from it; the teacher's recorded test
    accuracy is that of our network with the same weights on the same test images."""
    import json

    import benchmark
    from runner.env import RunEnv, test_loader
    from runner.evaluate import evaluate
    from runner.folder import RunFolder

    teacher = network("resnet56")
    path = repdistiller_file(tmp_path / "ckpt_epoch_240.pth", teacher, "resnet56")
    results = tmp_path / "results"
    assert benchmark.main(["--teacher-checkpoint", str(path), "--methods", "st", *CLI,
                           "--results-dir", str(results)]) == 0
    runs = {p.name: (json.loads((p / "spec.json").read_text())["spec"], RunFolder(results, p.name).read_final())
            for p in results.glob("runs/*")}
    (published,) = [(s, f) for s, f in runs.values() if s["kind"] == "published"]
    assert published[1]["status"] == "done" and published[0]["student"] == "resnet56"
    assert {(s["method"], f["status"]) for s, f in runs.values()} >= {("st", "done"), ("ce", "done")}
    student = next(s for s, _ in runs.values() if s["method"] == "st")
    assert student["teacher"]["arch"] == "resnet56" and "sha256" in student["teacher"]
    from runner.spec import RunSpec

    loader = test_loader(RunSpec.from_dict(published[0]).data, RunEnv())
    ours = evaluate(Renormalize(teacher, REPDISTILLER_NORM, NORM), loader)
    assert [published[1][f"best_top{k}"] for k in range(1, 6)] == pytest.approx([ours[f"top{k}"] for k in range(1, 6)])


@pytest.mark.parametrize("layout", ["teacher_best", "mdistiller_student"])
def test_their_layouts_plan_through_the_cli(tmp_path, capsys, layout):
    import benchmark

    path = repdistiller_file(tmp_path / f"{layout}.pth", network("wrn_40_2"), "wrn_40_2", layout=layout)
    assert benchmark.main(["status", "--teacher-checkpoint", str(path), "--methods", "st", "--student", "wrn_16_2",
                           *CLI, "--results-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "published wrn_40_2" in out and "st wrn_16_2" in out


@pytest.mark.parametrize("extra, says", [
    (["--teacher", "resnet110"], "holds a resnet56, not the resnet110 asked for"),
    (["--dataset", "cifar10"], "100 classes"),
])
def test_a_teacher_file_that_does_not_fit_the_sweep_exits_2(tmp_path, capsys, extra, says):
    import benchmark

    path = repdistiller_file(tmp_path / "ckpt_epoch_240.pth", network("resnet56"), "resnet56")
    code = benchmark.main(["--teacher-checkpoint", str(path), "--methods", "st", *CLI, *extra,
                           "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err, err
    assert not list((tmp_path / "r").glob("runs/*/final.json"))
