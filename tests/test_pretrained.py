"""Published CIFAR-10 checkpoints load through the importer and score their published accuracy on the real
CIFAR-10 test set (akamaster/pytorch_resnet_cifar10 README: ResNet-20 91.73%, ResNet-56 93.39%)."""
import pytest
import torch

from conftest import shared_path
from data import DATASETS, EvalLoader, load_splits
from models.pretrained import load_teacher
from core.errors import UserError
from runner.evaluate import evaluate

C10 = DATASETS["cifar10"]
NORM = (C10.mean, C10.std)


@pytest.fixture(scope="module")
def cifar10_test():
    return load_splits("cifar10", "disk", str(shared_path("data", "cifar10")))[1]


@pytest.mark.parametrize("file,arch,published", [
    ("akamaster_cifar10_resnet20-12fca82f.th", "resnet20_a", 91.73),
    ("akamaster_cifar10_resnet56-4bfd9763.th", "resnet56_a", 93.39)])
def test_published_accuracy(cifar10_test, file, arch, published):
    model, got_arch = load_teacher(shared_path("weights", file), 10, NORM)
    assert got_arch == arch
    acc = evaluate(model, EvalLoader(cifar10_test, 1000, *NORM))
    assert len(cifar10_test) == 10_000
    assert acc["top1"] == pytest.approx(published, abs=0.005)


def test_wrong_number_of_classes_is_refused():
    with pytest.raises(UserError, match="predicts 10 classes but the dataset has 100"):
        load_teacher(shared_path("weights", "akamaster_cifar10_resnet20-12fca82f.th"), 100, NORM)


def test_truncated_checkpoint_is_refused(tmp_path):
    src = shared_path("weights", "akamaster_cifar10_resnet20-12fca82f.th").read_bytes()
    bad = tmp_path / "cut.th"
    bad.write_bytes(src[: len(src) // 2])
    with pytest.raises(UserError, match="truncated"):
        load_teacher(bad, 10, NORM)
    with pytest.raises(UserError, match="does not exist"):
        load_teacher(tmp_path / "none.th", 10, NORM)


def test_own_model_roundtrip(tmp_path):
    from models import build_model
    from runner.train import save_model

    model = build_model("resnet8", 10).eval()
    save_model(model, "resnet8", 10, NORM, tmp_path / "model.pt")
    loaded, arch = load_teacher(tmp_path / "model.pt", 10, NORM)
    x = torch.randn(2, 3, 32, 32)
    assert arch == "resnet8"
    torch.testing.assert_close(loaded(x)[0], model(x)[0])
