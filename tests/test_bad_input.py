"""Every bad input through the real command line ends the same way: the documented exit code (2), a one-line
message naming the problem, no traceback, and nothing recorded as a result (no final.json anywhere).

Each case is (id, command-line arguments, a regular expression the message must match). `{data:<kind>}` in the
arguments is replaced by a small array-file data folder of that kind (see `DATA`), `{ckpt:<kind>}` by a
teacher checkpoint of that kind (see `CKPT`), `{tmp}` by the case's own temporary folder.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import benchmark
from models import build_model

SMOKE = ["--preset", "smoke", "--methods", "st", "--teacher", "resnet8", "--epochs", "1",
         "--train-size", "64", "--test-size", "32"]
DISK = ["--preset", "paper", "--methods", "st", "--teacher", "resnet8", "--epochs", "1"]


def _good(n: int, seed: int):
    g = np.random.default_rng(seed)
    return g.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), g.integers(0, 10, n).astype(np.int64)


def _data_kind(kind: str):
    """(train images, train labels, test images, test labels) of a small data folder, damaged as named."""
    (xi, yi), (xt, yt) = _good(300, 0), _good(100, 1)
    if kind == "float":
        xi = xi.astype(np.float32) / 255
    elif kind == "wide":
        xi = xi.astype(np.int64) + 200
    elif kind == "nchw":
        xi = xi.transpose(0, 3, 1, 2).copy()
    elif kind == "neglabel":
        yt = yt.copy()
        yt[3] = -1
    elif kind == "biglabel":
        yi = yi.copy()
        yi[0] = 10
    elif kind == "label2d":
        yi = np.stack([yi, yi], 1)
    elif kind == "floatlabel":
        yi = yi.astype(np.float32)
    elif kind == "emptytest":
        xt, yt = xt[:0], yt[:0]
    elif kind == "short":
        yi = yi[:-5]
    return xi, yi, xt, yt


def make_data(root, kind: str):
    folder = root / f"data-{kind}"
    folder.mkdir()
    xi, yi, xt, yt = _data_kind(kind)
    np.savez(folder / "data_batch_1.npz", images=xi, labels=yi)
    if kind == "notest":
        return folder
    np.savez(folder / "test_batch.npz", images=xt, labels=yt)
    if kind == "truncated":
        path = folder / "test_batch.npz"
        path.write_bytes(path.read_bytes()[:200])
    return folder


def make_ckpt(root, kind: str):
    path = root / f"teacher-{kind}.pt"
    model = build_model("resnet8", 100 if kind == "cifar100" else 10)
    payload = {"format": "kd-bench-model", "arch": "resnet8", "num_classes": 10, "state_dict": model.state_dict(),
               "input_norm": ((0.5,) * 3, (0.25,) * 3)}
    if kind == "noarch":
        del payload["arch"]
    elif kind == "unknownarch":
        payload["arch"] = "resnet9000"
    elif kind == "wrongshape":
        payload["state_dict"] = {**payload["state_dict"], "conv1.weight": torch.zeros(3, 3, 3, 3)}
    elif kind == "nan":
        payload["state_dict"] = {k: (v.fill_(float("nan")) if k == "linear.weight" else v)
                                 for k, v in payload["state_dict"].items()}
    elif kind == "cifar100":
        payload["num_classes"] = 100
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint" * 10)
    else:
        torch.save(payload, path)
    return path


CASES = [
    # what to run
    ("nothing-to-run", [], r"say what to run"),
    ("unknown-method", ["--methods", "nosuch", "--preset", "smoke"], r"unknown method 'nosuch'"),
    ("empty-methods", ["--methods", "", "--preset", "smoke"], r"--methods names no method"),
    ("unknown-dataset", ["--dataset", "cifar1000", *SMOKE], r"unknown dataset 'cifar1000'"),
    ("unknown-preset", ["--methods", "st", "--preset", "nosuch"], r"unknown preset 'nosuch'"),
    ("unknown-teacher", ["--methods", "st", "--preset", "smoke", "--teacher", "resnet9000"],
     r"unknown teacher model 'resnet9000'"),
    ("unknown-student", ["--methods", "st", "--preset", "smoke", "--student", "nosuchnet"],
     r"unknown student model 'nosuchnet'"),
    ("ensemble-unplanned", [*SMOKE, "--ensemble", "st,crd"], r"not planned: crd"),
    ("ensemble-of-one", [*SMOKE, "--ensemble", "st"], r"at least two"),
    ("bad-pad-mode", [*SMOKE, "--pad-mode", "mirror"], r"invalid choice: 'mirror'"),
    ("bad-voting", [*SMOKE, "--voting", "median"], r"invalid choice: 'median'"),
    # numbers
    ("seeds-empty", [*SMOKE, "--seeds", ","], r"--seeds names no seed"),
    ("seeds-negative", [*SMOKE, "--seeds=-1"], r"--seeds must be 0 or more"),
    ("seeds-twice", [*SMOKE, "--seeds", "1,1"], r"names a seed twice"),
    ("seeds-not-numbers", [*SMOKE, "--seeds", "a,b"], r"comma-separated list of int"),
    ("epochs-zero", [*SMOKE, "--epochs", "0"], r"--epochs must be at least 1"),
    ("epochs-negative", [*SMOKE, "--epochs=-3"], r"--epochs must be at least 1"),
    ("train-size-zero", [*SMOKE, "--train-size", "0"], r"train.*size"),
    ("train-size-negative", [*SMOKE, "--train-size=-5"], r"train.*size"),
    ("test-size-zero", [*SMOKE, "--test-size", "0"], r"test.*size"),
    ("train-size-too-big", [*DISK, "--data-dir", "{data:good}", "--train-size", "100000"], r"300"),
    ("workers-zero", [*SMOKE, "--launcher", "local", "--workers", "0"], r"--workers must be at least 1"),
    ("runs-per-gpu-zero", [*SMOKE, "--runs-per-gpu", "0"], r"--runs-per-gpu must be at least 1"),
    ("retries-negative", [*SMOKE, "--retries=-1"], r"--retries must be at least 0"),
    ("gpus-negative", [*SMOKE, "--gpus=-1"], r"--gpus must list GPU indices"),
    # the machine
    ("device-unknown", [*SMOKE, "--device", "foo"], r"--device 'foo' is not a device"),
    ("device-cuda-absent", [*SMOKE, "--device", "cuda"], r"no usable CUDA GPU"),
    ("device-tpu", [*SMOKE, "--device", "meta"], r"runs on cpu or cuda"),
    # SLURM settings
    ("slurm-no-profile", [*SMOKE, "--launcher", "slurm"], r"needs --cluster-profile"),
    ("slurm-unknown-profile", [*SMOKE, "--launcher", "slurm", "--cluster-profile", "nosuch"], r"not found"),
    ("slurm-set-bad-yaml", [*SMOKE, "--launcher", "slurm", "--cluster-profile", "local", "--slurm-set", "setup=[a"],
     r"not valid YAML"),
    ("slurm-set-no-equals", [*SMOKE, "--launcher", "slurm", "--cluster-profile", "local", "--slurm-set", "qos"],
     r"expects KEY=VALUE"),
    ("slurm-set-unknown-key", [*SMOKE, "--launcher", "slurm", "--cluster-profile", "local", "--slurm-set", "gpu=1"],
     r"unknown cluster profile setting 'gpu'"),
    ("slurm-timeout-zero", [*SMOKE, "--launcher", "slurm", "--cluster-profile", "local", "--timeout-min", "0"],
     r"timeout_min=0.*at least 1"),
    ("slurm-cpus-bool", [*SMOKE, "--launcher", "slurm", "--cluster-profile", "local", "--slurm-set",
                         "cpus_per_run=true"], r"cpus_per_run=True"),
    # data on disk
    ("data-missing", [*DISK, "--data-dir", "{tmp}/nowhere"], r"no cifar10 data found"),
    ("data-float-images", [*DISK, "--data-dir", "{data:float}"], r"uint8.*astype\(np.uint8\)"),
    ("data-wide-pixels", [*DISK, "--data-dir", "{data:wide}"], r"uint8"),
    ("data-nchw", [*DISK, "--data-dir", "{data:nchw}"], r"transpose"),
    ("data-negative-label", [*DISK, "--data-dir", "{data:neglabel}"], r"test.*-1"),
    ("data-label-too-big", [*DISK, "--data-dir", "{data:biglabel}"], r"train.*10"),
    ("data-2d-labels", [*DISK, "--data-dir", "{data:label2d}"], r"shape \(300, 2\).*argmax"),
    ("data-float-labels", [*DISK, "--data-dir", "{data:floatlabel}"], r"integer"),
    ("data-empty-test", [*DISK, "--data-dir", "{data:emptytest}"], r"empty"),
    ("data-length-mismatch", [*DISK, "--data-dir", "{data:short}"], r"300.*295|295.*300"),
    ("data-no-test-split", [*DISK, "--data-dir", "{data:notest}"], r"test"),
    ("data-truncated", [*DISK, "--data-dir", "{data:truncated}"], r"truncated|cannot be read"),
    # teacher checkpoints
    ("ckpt-missing", [*SMOKE, "--teacher-checkpoint", "{tmp}/none.pt"], r"does not exist"),
    ("ckpt-garbage", [*SMOKE, "--teacher-checkpoint", "{ckpt:garbage}"], r"cannot be read"),
    ("ckpt-no-arch", [*SMOKE, "--teacher-checkpoint", "{ckpt:noarch}"], r"arch"),
    ("ckpt-unknown-arch", [*SMOKE, "--teacher-checkpoint", "{ckpt:unknownarch}"], r"resnet9000"),
    ("ckpt-wrong-shape", [*SMOKE, "--teacher-checkpoint", "{ckpt:wrongshape}"], r"conv1.weight|shape"),
    ("ckpt-nan-weights", [*SMOKE, "--teacher-checkpoint", "{ckpt:nan}"], r"not finite|NaN|nan"),
    ("ckpt-other-classes", [*SMOKE, "--teacher-checkpoint", "{ckpt:cifar100}"], r"100 classes"),
    # output folders
    ("results-dir-is-a-file", [*SMOKE, "--results-dir", "{tmp}/afile"], r"not writable|Not a directory"),
    ("table-into-a-file", ["table", "--preset", "smoke", "--results-dir", "{tmp}/afile"],
     r"Not a directory|not writable|File exists"),
    ("plot-label-outside", ["plot", "--preset", "smoke", "--cifar10-label", "../../escape"],
     r"not a plain folder name"),
]


def _expand(args: list[str], tmp) -> list[str]:
    out = []
    for a in args:
        a = a.replace("{tmp}", str(tmp))
        m = re.fullmatch(r"\{(data|ckpt):(\w+)\}", a)
        if m:
            a = str(make_data(tmp, m.group(2)) if m.group(1) == "data" else make_ckpt(tmp, m.group(2)))
        out.append(a)
    return out


@pytest.mark.parametrize("case_id,args,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_exit_2_a_message_and_no_result(case_id, args, message, tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "afile").write_text("a file where a folder is expected")
    argv = _expand(args, tmp_path)
    if "--results-dir" not in argv:
        argv += ["--results-dir", str(tmp_path / "results")]
    try:
        code = benchmark.main(argv)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}, stderr: {err}"
    assert "Traceback" not in err
    assert re.search(message, err), f"message does not name the problem: {err!r}"
    assert len([line for line in err.strip().splitlines() if line.startswith("error:")]) <= 1
    assert not list(tmp_path.glob("**/final.json")), "nothing may be recorded as a result"


def test_the_suite_is_broad():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
