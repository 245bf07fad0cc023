"""Data identity: a run's id names the data it trains and tests on (data/fingerprint.py), so no result of one data
set is reused for or mixed with another; bad data is refused at the door (exit 2, a message that says what to do,
nothing written); pickles are read without executing anything."""
from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pandas as pd
import pytest

import benchmark
from core.errors import UserError
from data import fingerprint, load_splits
from report import tables
from runner.plan import PlanRequest, data_spec, plan

BASE = ["--methods", "ce", "--student", "resnet8", "--epochs", "1"]  # paper preset: data on disk


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test gets its own fingerprint cache."""
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))


def fake(n, seed=0, classes=10):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, classes, n)


def write_arrays(folder, train=None, test=None, seed=0):
    """An array-file folder (`data_batch_1.npz` + `test_batch.npz`), as readers.py reads it."""
    folder.mkdir(parents=True, exist_ok=True)
    train = fake(40, seed) if train is None else train
    test = fake(20, seed + 100) if test is None else test
    for name, (x, y) in (("data_batch_1", train), ("test_batch", test)):
        np.savez(folder / f"{name}.npz", images=x, labels=y)
    return folder


def cli(capsys, *args):
    capsys.readouterr()
    code = benchmark.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def run_ids(data_dir, *extra, preset="paper"):
    req = PlanRequest(preset=preset, methods=["st"], teacher="resnet8", data_dir=str(data_dir), **dict(extra))
    return [r.run_id for stage in plan(req) for r in stage]


# --- identity ------------------------------------------------------------------------------------------

def test_two_folders_of_one_shape_never_share_a_run_or_a_summary(tmp_path, capsys):
    a = write_arrays(tmp_path / "a", seed=0)
    b = write_arrays(tmp_path / "b", seed=1)  # same shapes, same dataset, other pixels and labels
    results = tmp_path / "results"
    code, out, err = cli(capsys, *BASE, "--data-dir", str(a), "--results-dir", str(results))
    assert code == 0, err
    code, out_a, _ = cli(capsys, "status", *BASE, "--data-dir", str(a), "--results-dir", str(results))
    code, out_b, _ = cli(capsys, "status", *BASE, "--data-dir", str(b), "--results-dir", str(results))
    assert out_a.startswith("DONE") and out_b.startswith("NEW"), "b does not reuse a's result"
    id_a, id_b = (out.split("[")[1].split("]")[0] for out in (out_a, out_b))
    assert id_a != id_b
    spec_a = data_spec(PlanRequest(data_dir=str(a)))
    spec_b = data_spec(PlanRequest(data_dir=str(b)))
    assert spec_a.fingerprint != spec_b.fingerprint and len(spec_a.fingerprint) == 16
    assert spec_a.label == f"cifar10-{spec_a.fingerprint}" and spec_a.label != spec_b.label
    assert [p.parent.name for p in results.glob("*/summary.csv")] == [spec_a.label]
    # the same data under another name (a copy, or as official pickles) is the same data: one identity
    c = write_arrays(tmp_path / "c", seed=0)
    assert data_spec(PlanRequest(data_dir=str(c))).fingerprint == spec_a.fingerprint


def test_pixels_alone_tell_folders_apart(tmp_path):
    x, y = fake(40)
    a = write_arrays(tmp_path / "a", train=(x, y))
    x2 = x.copy()
    x2[7, 3, 3, 1] ^= 1  # one bit of one pixel
    b = write_arrays(tmp_path / "b", train=(x2, y))
    assert set(run_ids(a)).isdisjoint(run_ids(b))


def test_a_subset_and_the_full_set_never_share_a_run_id(tmp_path):
    folder = write_arrays(tmp_path / "d")
    full = run_ids(folder)
    sub_train = run_ids(folder, ("train_size", 39))
    sub_test = run_ids(folder, ("test_size", 10))
    assert len({*full, *sub_train, *sub_test}) == 3 * len(full)
    assert data_spec(PlanRequest(data_dir=str(folder), train_size=39)).label.startswith("cifar10-n39-all-")
    # a "subset" as large as the split is the split: the same data, the same run
    assert run_ids(folder, ("train_size", 40), ("test_size", 20)) == full


def test_synthetic_data_is_identified_by_its_bytes():
    a = data_spec(PlanRequest(preset="smoke"))
    assert a.label == f"cifar10-synthetic-n1024-512-{a.fingerprint}"
    assert data_spec(PlanRequest(preset="smoke")) == a
    assert data_spec(PlanRequest(preset="smoke", train_size=1000)).fingerprint != a.fingerprint
    assert data_spec(PlanRequest(preset="smoke", dataset="cifar100")).fingerprint != a.fingerprint


# --- the cache -----------------------------------------------------------------------------------------

@pytest.fixture
def hash_calls(monkeypatch):
    calls = []
    real = fingerprint.hash_splits

    def counting(train, test):
        calls.append(len(train))
        return real(train, test)

    monkeypatch.setattr(fingerprint, "hash_splits", counting)
    return calls


def test_cache_is_used_while_nothing_changed(tmp_path, hash_calls):
    folder = write_arrays(tmp_path / "d")
    first = fingerprint.data_fingerprint("cifar10", "disk", str(folder))
    again = fingerprint.data_fingerprint("cifar10", "disk", str(folder))
    sub = fingerprint.data_fingerprint("cifar10", "disk", str(folder), train_size=10)
    assert first == again and sub.fingerprint != first.fingerprint
    assert len(hash_calls) == 1, "computed once, then read from the cache (subsets too)"
    assert (tmp_path / "cache" / "fingerprints.json").is_file()


def test_a_changed_file_is_fingerprinted_anew(tmp_path, hash_calls):
    folder = write_arrays(tmp_path / "d")
    first = fingerprint.data_fingerprint("cifar10", "disk", str(folder)).fingerprint
    # same bytes, new mtime: computed again, same fingerprint
    path = folder / "test_batch.npz"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fingerprint.data_fingerprint("cifar10", "disk", str(folder)).fingerprint == first
    assert len(hash_calls) == 2
    # other pixels (new size and mtime): another fingerprint
    x, y = fake(20, seed=5)
    np.savez(path, images=x, labels=y)
    assert fingerprint.data_fingerprint("cifar10", "disk", str(folder)).fingerprint != first
    # a file added to the folder changes what is read: computed again
    np.savez(folder / "data_batch_2.npz", images=x, labels=y)
    second = fingerprint.data_fingerprint("cifar10", "disk", str(folder))
    assert len(hash_calls) == 4 and second.fingerprint != first
    assert fingerprint.full_fingerprint("cifar10", str(folder)).train_n == 60


def test_a_cache_entry_is_trusted_only_with_the_same_stats(tmp_path, hash_calls):
    import json

    folder = write_arrays(tmp_path / "d")
    true = fingerprint.full_fingerprint("cifar10", str(folder)).fingerprint
    cache = tmp_path / "cache" / "fingerprints.json"
    d = json.loads(cache.read_text())
    (key, entry), = d["entries"].items()
    entry["fingerprint"] = "f" * 64  # forged
    cache.write_text(json.dumps(d))
    assert fingerprint.full_fingerprint("cifar10", str(folder)).fingerprint == "f" * 64, "the cache is read"
    entry["files"][0][1] += 1  # a size that is not the file's
    cache.write_text(json.dumps(d))
    assert fingerprint.full_fingerprint("cifar10", str(folder)).fingerprint == true
    cache.write_text("{not json")
    assert fingerprint.full_fingerprint("cifar10", str(folder)).fingerprint == true
    assert len(hash_calls) == 3


def test_an_unwritable_cache_only_means_computing_again(tmp_path, monkeypatch, hash_calls):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("KDBENCH_CACHE", str(blocker / "cache"))
    folder = write_arrays(tmp_path / "d")
    a = fingerprint.data_fingerprint("cifar10", "disk", str(folder))
    b = fingerprint.data_fingerprint("cifar10", "disk", str(folder))
    assert a == b and len(hash_calls) == 2


# --- the tables name the data ---------------------------------------------------------------------------

def test_tables_name_the_fingerprint_and_know_the_full_real_set():
    label = "cifar10-0123456789abcdef"
    assert tables.is_real("cifar10", label) and tables.is_real("cifar10", "cifar10")
    assert not tables.is_real("cifar10", "cifar10-synthetic-n1024-512-0123456789abcdef")
    assert not tables.is_real("cifar10", "cifar10-n500-all-0123456789abcdef")
    empty = pd.DataFrame(columns=["dataset", "method", "role", "seed", "student", "status"])
    t = tables.table1(empty, {"cifar10": label, "cifar100": None})
    assert "0123456789abcdef" in t.caption
    t2 = tables.table2(empty, None, {"cifar10": "cifar10-synthetic-n64-32-0123456789abcdef"})
    assert "cifar10-synthetic-n64-32-0123456789abcdef" in t2.caption


# --- refusals ------------------------------------------------------------------------------------------

def _flat(x):
    return x.transpose(0, 3, 1, 2).reshape(len(x), -1)


x40, y40 = fake(40)
REFUSED = {
    # name: (train, test, message pieces)
    "float images in [0, 1]": ((x40 / 255.0, y40), None, ["float64", "(x * 255).round().astype(np.uint8)"]),
    "int64 images above 255": ((x40.astype(np.int64) * 4, y40), None, ["int64", "do not fit 0..255"]),
    "int64 images within 0..255": ((x40.astype(np.int64), y40), None, ["int64", "x.astype(np.uint8)"]),
    "channels first": ((x40.transpose(0, 3, 1, 2), y40), None, ["NCHW", "transpose(0, 2, 3, 1)"]),
    "flat rows": ((_flat(x40), y40), None, ["3072", "reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)"]),
    "wrong size": ((x40[:, :28, :28], y40), None, ["(40, 28, 28, 3)", "(N, 32, 32, 3)"]),
    "float labels": ((x40, y40.astype(np.float32)), None, ["labels are float32", "astype(np.int64)"]),
    "2-D labels": ((x40, y40[:, None]), None, ["shape (40, 1)", "reshape(-1)"]),
    "fewer labels": ((x40, y40[:39]), None, ["40 images but 39 labels"]),
    "train label too large": ((x40, np.where(np.arange(40) == 5, 10, y40)), None,
                              ["train split", "label 10", "index 5", "cifar10 has 10 classes"]),
    "test label too large": (None, (fake(20)[0], np.full(20, 37)), ["test split", "label 37", "10 classes"]),
    "negative label": ((x40, np.where(np.arange(40) == 3, -1, y40)), None, ["train split", "label -1"]),
    "empty test split": (None, (np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64)),
                         ["test split", "no images"]),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_arrays_are_refused_with_what_to_do(tmp_path, capsys, case):
    train, test, pieces = REFUSED[case]
    folder = write_arrays(tmp_path / "d", train=train, test=test)
    with pytest.raises(UserError) as e:
        load_splits("cifar10", "disk", str(folder))
    assert all(p in str(e.value) for p in pieces), str(e.value)
    assert_cli_refuses(tmp_path, capsys, ["--data-dir", str(folder)], pieces)


def assert_cli_refuses(tmp_path, capsys, args, pieces):
    results = tmp_path / "results"
    code, out, err = cli(capsys, *BASE, *args, "--results-dir", str(results))
    assert code == 2, err
    assert err.startswith("error: ") and all(p in err for p in pieces), err
    assert "Traceback" not in err + out
    assert not (results / "runs").exists() or not any((results / "runs").iterdir()), "nothing written"


@pytest.mark.parametrize("flag,value,pieces", [
    ("train-size", 0, ["--train-size 0", "at least 1", "40 images"]),
    ("train-size", -5, ["--train-size -5", "at least 1"]),
    ("train-size", 100000, ["--train-size 100000", "larger than the train split", "has 40 images"]),
    ("test-size", 21, ["--test-size 21", "has 20 images"]),
])
def test_subset_sizes_outside_the_split_are_refused(tmp_path, capsys, flag, value, pieces):
    folder = write_arrays(tmp_path / "d")
    with pytest.raises(UserError) as e:
        load_splits("cifar10", "disk", str(folder), **{flag.replace("-", "_"): value})
    assert all(p in str(e.value) for p in pieces), str(e.value)
    assert_cli_refuses(tmp_path, capsys, ["--data-dir", str(folder), f"--{flag}", str(value)], pieces)


def test_synthetic_subset_size_zero_is_refused(tmp_path, capsys):
    with pytest.raises(UserError, match="at least 1"):
        load_splits("cifar10", "synthetic", None, train_size=0)
    code, _, err = cli(capsys, "--methods", "ce", "--preset", "smoke", "--train-size", "0",
                       "--results-dir", str(tmp_path / "results"))
    assert code == 2 and "--train-size 0" in err and "Traceback" not in err


def test_split_refuses_silent_casts():
    import torch

    from data import Split

    with pytest.raises(UserError, match="NCHW"):
        Split(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(UserError, match="float32"):
        Split(torch.rand(2, 32, 32, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(UserError, match="labels.long"):
        Split(torch.zeros(2, 32, 32, 3, dtype=torch.uint8), torch.zeros(2, dtype=torch.int32))


# --- official pickles: read, never executed -----------------------------------------------------------

class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote into the official batches (protocol 2): every str as BINSTRING and
    numpy's reconstructor as numpy.core.multiarray._reconstruct."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes2(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n))
                   + obj)
        self.memoize(obj)

    def save_str2(self, obj):
        self.save_bytes2(obj.encode("latin1"))

    dispatch[bytes] = save_bytes2
    dispatch[str] = save_str2

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def official_folder(root, n=6, py2=False, seed=0):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    expected = []
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        x, y = fake(n, seed + i)
        expected.append((x, y))
        batch = {b"batch_label": b"batch", b"labels": y.tolist(), b"data": _flat(x),
                 b"filenames": [b"img%d.png" % k for k in range(n)]}
        with open(folder / name, "wb") as f:
            (Py2Pickler(f, protocol=2) if py2 else pickle.Pickler(f)).dump(batch)
    return folder, expected


@pytest.mark.parametrize("py2", [False, True], ids=["pickle.dump", "as-python2-wrote-them"])
def test_official_batches_are_still_read(tmp_path, py2):
    _, expected = official_folder(tmp_path, py2=py2)
    train, test = load_splits("cifar10", "disk", str(tmp_path))
    assert np.array_equal(train.images.numpy(), np.concatenate([x for x, _ in expected[:5]]))
    assert np.array_equal(test.labels.numpy(), expected[5][1])
    # the same data as array files has the same fingerprint: identity is of the data, not of the format
    arrays = write_arrays(tmp_path / "arrays", train=(np.concatenate([x for x, _ in expected[:5]]),
                                                      np.concatenate([y for _, y in expected[:5]])),
                          test=expected[5])
    assert (fingerprint.full_fingerprint("cifar10", str(tmp_path)).fingerprint
            == fingerprint.full_fingerprint("cifar10", str(arrays)).fingerprint)


class Forged:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


class ForgedSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("forger", [Forged, ForgedSystem])
def test_a_forged_batch_is_refused_and_never_executed(tmp_path, capsys, forger):
    folder, _ = official_folder(tmp_path / "data")
    marker = tmp_path / "marker"
    x, y = fake(6)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _flat(x), b"labels": y.tolist(), b"filenames": forger(marker)}, f)
    with pytest.raises(UserError) as e:
        load_splits("cifar10", "disk", str(tmp_path / "data"))
    assert str(folder / "data_batch_3") in str(e.value) and "not an official CIFAR batch" in str(e.value)
    assert not marker.exists()
    assert_cli_refuses(tmp_path, capsys, ["--data-dir", str(tmp_path / "data")],
                       [str(folder / "data_batch_3"), "never runs code"])
    assert not marker.exists()
    # the marker really would have been made by a plain pickle.load
    with open(folder / "data_batch_3", "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_pickled_data_of_another_dtype_is_refused(tmp_path):
    folder, _ = official_folder(tmp_path)
    x, y = fake(6)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _flat(x).astype(np.float32) / 255, b"labels": y.tolist()}, f)
    with pytest.raises(UserError, match=r"test_batch: b'data' is float32"):
        load_splits("cifar10", "disk", str(tmp_path))


def test_pickled_labels_out_of_range_name_the_split(tmp_path):
    folder, _ = official_folder(tmp_path)
    x, _ = fake(6)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _flat(x), b"labels": [0, 1, 2, 3, 4, 10]}, f)
    with pytest.raises(UserError, match=r"test split .* label 10 .* 10 classes"):
        load_splits("cifar10", "disk", str(tmp_path))


def test_loading_for_a_run_proves_the_data_is_the_planned_one(tmp_path):
    folder = write_arrays(tmp_path / "d")
    spec = data_spec(PlanRequest(data_dir=str(folder), train_size=30))
    args = ("cifar10", "disk", str(folder), False, 30, None)
    train, test = fingerprint.load_verified(*args, spec.fingerprint)
    ref = load_splits("cifar10", "disk", str(folder), train_size=30)
    assert all(np.array_equal(a.images, b.images) for a, b in zip((train, test), ref))
    smoke = data_spec(PlanRequest(preset="smoke"))
    fingerprint.load_verified("cifar10", "synthetic", None, False, 1024, 512, smoke.fingerprint)
    # the folder changes after planning (the cache is not consulted): refused
    x, y = fake(20, seed=9)
    np.savez(folder / "test_batch.npz", images=x, labels=y)
    with pytest.raises(UserError, match="not the data this run was planned on"):
        fingerprint.load_verified(*args, spec.fingerprint)
