"""Data: readers of every layout, synthetic data, and the device-resident augmentation."""
import io
import lzma
import pickle

import numpy as np
import pytest
import torch

from conftest import shared_path
from data import DATASETS, Split, TrainLoader, load_splits
from data import synthetic
from core.errors import UserError

C10 = DATASETS["cifar10"]


def _fake_split(n, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, classes, n)


def test_official_pickle_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    expected = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = _fake_split(20, seed=len(expected))
        expected.append((x, y))
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x.transpose(0, 3, 1, 2).reshape(20, -1), b"labels": y.tolist()}, f)
    train, test = load_splits("cifar10", "disk", str(tmp_path))
    assert len(train) == 100 and len(test) == 20
    assert np.array_equal(train.images[:20].numpy(), expected[0][0])
    assert np.array_equal(test.labels.numpy(), expected[-1][1])


def test_cifar100_pickle_layout(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        x, y = _fake_split(10, classes=100)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x.transpose(0, 3, 1, 2).reshape(10, -1), b"fine_labels": y.tolist()}, f)
    train, test = load_splits("cifar100", "disk", str(tmp_path))
    assert len(train) == len(test) == 10


def test_array_layout_and_truncation(tmp_path):
    for name in ("data_batch_1", "test_batch"):
        x, y = _fake_split(8)
        buf = io.BytesIO()
        np.savez(buf, images=x, labels=y)
        (tmp_path / f"{name}.npz.xz").write_bytes(lzma.compress(buf.getvalue()))
    train, test = load_splits("cifar10", "disk", str(tmp_path))
    assert len(train) == 8 and len(test) == 8
    raw = (tmp_path / "test_batch.npz.xz").read_bytes()
    (tmp_path / "test_batch.npz.xz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_splits("cifar10", "disk", str(tmp_path))


def test_missing_dataset_names_path_and_flag(tmp_path):
    with pytest.raises(UserError) as e:
        load_splits("cifar10", "disk", str(tmp_path / "nothing"))
    assert "cifar-10-batches-py" in str(e.value) and "--download" in str(e.value)


def test_real_cifar10_arrays():
    train, test = load_splits("cifar10", "disk", str(shared_path("data", "cifar10")))
    assert (len(train), len(test)) == (50_000, 10_000)
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # README of the arrays
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def make_splits(num_classes, train_size, test_size):
    return tuple(Split(*s) for s in synthetic.make_splits(num_classes, train_size, test_size))


def test_synthetic_is_deterministic_and_learnable():
    a, _ = make_splits(10, 500, 100)
    b, _ = make_splits(10, 500, 100)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.dtype == torch.uint8 and a.images.shape == (500, 32, 32, 3)
    assert torch.bincount(a.labels, minlength=10).min() == 50
    # learnable: a nearest-class-mean classifier on raw pixels is far above chance
    train, test = make_splits(10, 2000, 500)
    x, xt = train.images.float().flatten(1), test.images.float().flatten(1)
    means = torch.stack([x[train.labels == c].mean(0) for c in range(10)])
    acc = (torch.cdist(xt, means).argmin(1) == test.labels).float().mean()
    assert acc > 0.3, acc
    c100, _ = make_splits(100, 300, 10)
    assert int(c100.labels.max()) == 99


def _loader(split, seed=0, **kw):
    return TrainLoader(split, 32, C10.mean, C10.std, seed=seed, **kw)


def test_augmentation_stream_depends_only_on_seed_and_epoch():
    split, _ = make_splits(10, 100, 10)
    a = list(_loader(split).epoch(3))
    b = list(_loader(split).epoch(3))
    c = list(_loader(split).epoch(4))
    assert all(torch.equal(p.x, q.x) and torch.equal(p.idx, q.idx) for p, q in zip(a, b))
    assert not torch.equal(a[0].idx, c[0].idx)
    idx = torch.cat([batch.idx for batch in a])
    assert sorted(idx.tolist()) == list(range(100)), "every sample once per epoch, with its index"
    assert all(torch.equal(batch.y, split.labels[batch.idx]) for batch in a)


@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
def test_crop_and_flip_are_real_crops(pad_mode):
    """Each augmented image equals a 32x32 window of the padded original, possibly mirrored."""
    split, _ = make_splits(10, 64, 10)
    loader = _loader(split, pad_mode=pad_mode)
    batch = next(loader.epoch(0))
    std = torch.tensor(C10.std).view(3, 1, 1)
    mean = torch.tensor(C10.mean).view(3, 1, 1)
    mode = "constant" if pad_mode == "zeros" else "reflect"
    flipped = shifted = 0
    for x, i in zip(batch.x, batch.idx):
        pixels = ((x * std + mean) * 255).round()
        orig = split.images[i].permute(2, 0, 1).float()
        padded = torch.nn.functional.pad(orig[None], (4, 4, 4, 4), mode=mode)[0]
        found = False
        for dy in range(9):
            for dx in range(9):
                window = padded[:, dy:dy + 32, dx:dx + 32]
                for flip in (False, True):
                    if torch.equal(window.flip(2) if flip else window, pixels):
                        found, flipped, shifted = True, flipped + flip, shifted + ((dy, dx) != (4, 4))
        assert found
    assert 0 < flipped < len(batch.x) and shifted > 0


def test_split_validation():
    with pytest.raises(UserError):
        Split(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
