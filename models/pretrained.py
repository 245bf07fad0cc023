"""Loading teachers from published checkpoints and from the project's own runs.

Two layouts are understood:
- the project's `model.pt` (written at the end of each run): `{"format": "kd-bench-model", "arch", "num_classes",
  "state_dict", "input_norm"}`;
- akamaster/pytorch_resnet_cifar10 (`{"best_prec1", "state_dict"}` with `module.` keys and a `linear` head,
  option-A shortcuts, trained on ImageNet-normalised inputs).
Inputs of the benchmark are normalised with the dataset's own statistics; a teacher trained under another
normalisation is wrapped in `Renormalize`, an exact affine map between the two, so its accuracy is unchanged.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
import torch.nn as nn

from core.errors import UserError

from .registry import build_model

IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class Renormalize(nn.Module):
    """Feed a model trained with normalisation `target` from inputs normalised with `source`."""

    def __init__(self, model: nn.Module, source, target):
        super().__init__()
        self.model = model
        s_mean, s_std = (torch.tensor(v).view(1, 3, 1, 1) for v in source)
        t_mean, t_std = (torch.tensor(v).view(1, 3, 1, 1) for v in target)
        self.register_buffer("scale", s_std / t_std)
        self.register_buffer("shift", (s_mean - t_mean) / t_std)

    @property
    def num_classes(self):
        return self.model.num_classes

    def forward(self, x):
        return self.model(x * self.scale + self.shift)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read(path: Path):
    if not path.is_file():
        raise UserError(f"teacher checkpoint {path} does not exist; give the path of a model.pt of a finished "
                        "run or of a published CIFAR ResNet checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or not a torch file
        raise UserError(f"teacher checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                        "it is truncated or not a PyTorch checkpoint: download or copy it again") from None


def akamaster_arch(state_dict: dict) -> str:
    """Infer `resnet<depth>_a` from the number of blocks in `layer1`."""
    blocks = {int(m.group(1)) for k in state_dict for m in [re.match(r"layer1\.(\d+)\.", k)] if m}
    if not blocks:
        raise UserError("checkpoint has no layer1 blocks: it is not a CIFAR ResNet checkpoint")
    return f"resnet{6 * (max(blocks) + 1) + 2}_a"


def load_teacher(path: str | Path, num_classes: int, dataset_norm) -> tuple[nn.Module, str]:
    """Return `(model in eval mode, arch name)`; raise UserError on a checkpoint that does not fit."""
    path = Path(path)
    ckpt = _read(path)
    if isinstance(ckpt, dict) and ckpt.get("format") == "kd-bench-model":
        arch, state, norm = ckpt["arch"], ckpt["state_dict"], ckpt.get("input_norm")
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        state = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
        arch, norm = akamaster_arch(state), IMAGENET_NORM
    else:
        raise UserError(f"{path} is neither a kd-bench model.pt nor an akamaster-style checkpoint "
                        "(a dict with 'state_dict')")
    # the classifier: `linear`, or in a multi-branch student (OEC-KD, EKD) each branch's `branches.<j>.linear`
    heads = [v for k, v in state.items() if k == "linear.weight" or k.endswith(".linear.weight")]
    head = heads[-1] if heads else None
    if head is None:
        raise UserError(f"{path} has no 'linear.weight': not a CIFAR ResNet classifier")
    if head.shape[0] != num_classes:
        raise UserError(f"teacher checkpoint {path} predicts {head.shape[0]} classes but the dataset has "
                        f"{num_classes}: use a teacher trained on this dataset")
    model = build_model(arch, num_classes)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(f"{path} does not match architecture {arch}: missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}")
    if norm is not None and tuple(map(tuple, norm)) != tuple(map(tuple, dataset_norm)):
        model = Renormalize(model, dataset_norm, norm)
    return model.eval(), arch
