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
import pickle
import re
from pathlib import Path

import torch
import torch.nn as nn

from core.errors import UserError

from .registry import MODELS, build_model

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


def _one_line(e: BaseException, limit: int = 200) -> str:
    """Why torch.load failed, in one line (its weights-only refusals span many lines of advice)."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text[text.index(marker) + len(marker):].strip().split("\n")[0].split(". ")[0]
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read(path: Path):
    if not path.is_file():
        raise UserError(f"teacher checkpoint {path} does not exist; give the path of a model.pt of a finished "
                        "run or of a published CIFAR ResNet checkpoint")
    try:
        # weights only: a checkpoint from elsewhere is never unpickled with code execution
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "WeightsUnpickler error" in str(e):
            raise UserError(f"teacher checkpoint {path} was refused by the safe loader ({_one_line(e)}): only "
                            "tensors and plain types are read, other Python objects are never unpickled as that "
                            "could run code; save only the weights (torch.save({'state_dict': "
                            "model.state_dict()}, path)) or use the model.pt of a finished run") from None
        raise UserError(f"teacher checkpoint {path} cannot be read (UnpicklingError: {_one_line(e)}); it is "
                        "truncated or not a PyTorch checkpoint: download or copy it again") from None
    except Exception as e:  # truncated or not a torch file
        raise UserError(f"teacher checkpoint {path} cannot be read ({type(e).__name__}: {_one_line(e)}); "
                        "it is truncated or not a PyTorch checkpoint: download or copy it again") from None


def akamaster_arch(state_dict: dict) -> str:
    """Infer `resnet<depth>_a` from the number of blocks in `layer1`."""
    blocks = {int(m.group(1)) for k in state_dict for m in [re.match(r"layer1\.(\d+)\.", k)] if m}
    if not blocks:
        raise UserError("checkpoint has no layer1 blocks: it is not a CIFAR ResNet checkpoint")
    return f"resnet{6 * (max(blocks) + 1) + 2}_a"


def _is_norm(norm) -> bool:
    """`((mean r, g, b), (std r, g, b))` of numbers."""
    return isinstance(norm, (list, tuple)) and len(norm) == 2 and all(
        isinstance(v, (list, tuple)) and len(v) == 3 and
        all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v) for v in norm)


def _layout(path: Path, ckpt) -> tuple[str, dict, object]:
    """(arch, state dict, input normalisation) of a loaded checkpoint, or a UserError saying what is wrong."""
    retry = ("give the model.pt of a finished run or a published CIFAR ResNet checkpoint (a dict with "
             "'state_dict')")
    if not isinstance(ckpt, dict):
        raise UserError(f"teacher checkpoint {path} holds a {type(ckpt).__name__}, not a dict of weights: {retry}")
    if ckpt.get("format") == "kd-bench-model":
        arch, state, norm = ckpt.get("arch"), ckpt.get("state_dict"), ckpt.get("input_norm")
        if arch is None:
            raise UserError(f"teacher checkpoint {path} is a kd-bench model.pt without an 'arch' (damaged or not "
                            "written by a kd-bench run): use the model.pt of a finished run, or train the teacher "
                            "again")
        if not isinstance(arch, str) or arch not in MODELS:
            known = ", ".join(sorted(MODELS))
            raise UserError(f"teacher checkpoint {path} names an unknown architecture {arch!r}: use a checkpoint "
                            f"of a known one ({known}) or register the model before loading it")
        if not isinstance(state, dict):
            raise UserError(f"teacher checkpoint {path} is a kd-bench model.pt without a 'state_dict' dict "
                            "(damaged or not written by a kd-bench run): use the model.pt of a finished run, or "
                            "train the teacher again")
        if norm is not None and not _is_norm(norm):
            raise UserError(f"teacher checkpoint {path} has a malformed 'input_norm' (want ((3 means), (3 stds))): "
                            "use the model.pt of a finished run, or train the teacher again")
    elif isinstance(ckpt.get("state_dict"), dict):
        bad = [k for k in ckpt["state_dict"] if not isinstance(k, str)]
        if bad:
            raise UserError(f"teacher checkpoint {path} has a state_dict key {bad[0]!r} that is not a name: {retry}")
        state = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
        try:
            arch = akamaster_arch(state)
        except UserError as e:
            raise UserError(f"teacher checkpoint {path}: {e}; {retry}") from None
        norm = IMAGENET_NORM
    else:
        raise UserError(f"teacher checkpoint {path} is neither a kd-bench model.pt nor an akamaster-style checkpoint "
                        f"(a dict with 'state_dict'): {retry}")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise UserError(f"teacher checkpoint {path}: state_dict entry {not_tensors[0]!r} is a "
                        f"{type(state[not_tensors[0]]).__name__}, not a tensor (damaged or not a model's weights): "
                        f"{retry}")
    return arch, state, norm


def _check_finite_outputs(path: Path, model: nn.Module) -> None:
    """Refuse a teacher whose outputs on a probe batch (2 random images, eval mode) are NaN or infinite: it would
    turn every distillation loss into NaN, and the student run would fail only after its first epoch."""
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # never touches the global RNG
    with torch.no_grad():
        out = model.eval()(x)
    logits, feats = (out[0], out[1]) if isinstance(out, tuple) else (out, {})
    tensors = [("logits", logits)] + [(f"feature {k!r}", v) for k, v in (feats.items() if isinstance(feats, dict)
                                                                           else []) if isinstance(v, torch.Tensor)]
    bad = [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise UserError(f"teacher checkpoint {path} gives non-finite outputs (NaN or inf in its {bad[0]}) on a "
                        "probe batch: its weights or BatchNorm statistics are broken; retrain the teacher or use "
                        "another checkpoint")


def load_teacher(path: str | Path, num_classes: int, dataset_norm) -> tuple[nn.Module, str]:
    """Return `(model in eval mode, arch name)`; raise UserError (one line naming the file and what to do) on a
    checkpoint that does not fit: unreadable, not weights only, unknown layout or architecture, missing or
    misshapen tensors, non-finite weights, or non-finite outputs on a probe batch. Every teacher of the benchmark
    (runs, ensembles, published checkpoints, planning) is loaded here."""
    path = Path(path)
    arch, state, norm = _layout(path, _read(path))
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise UserError(f"teacher checkpoint {path} holds non-finite weights (NaN or inf in {nonfinite[0]!r}"
                        f"{f' and {len(nonfinite) - 1} more' if len(nonfinite) > 1 else ''}): the teacher diverged "
                        "or the file is damaged; retrain the teacher or use another checkpoint")
    # the classifier: `linear`, or in a multi-branch student (OEC-KD, EKD) each branch's `branches.<j>.linear`
    heads = [v for k, v in state.items() if k == "linear.weight" or k.endswith(".linear.weight")]
    head = heads[-1] if heads else None
    if head is None:
        raise UserError(f"{path} has no 'linear.weight': not a CIFAR ResNet classifier")
    if head.dim() != 2:
        raise UserError(f"teacher checkpoint {path}: its classifier weight has shape {tuple(head.shape)}, not "
                        "(classes, features): the file is damaged; use another checkpoint")
    if head.shape[0] != num_classes:
        raise UserError(f"teacher checkpoint {path} predicts {head.shape[0]} classes but the dataset has "
                        f"{num_classes}: use a teacher trained on this dataset")
    model = build_model(arch, num_classes)
    expected = model.state_dict()
    misshapen = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if misshapen:
        k = misshapen[0]
        raise UserError(f"teacher checkpoint {path} does not fit architecture {arch}: tensor {k!r} has shape "
                        f"{tuple(state[k].shape)} where {arch} has {tuple(expected[k].shape)}"
                        f"{f' ({len(misshapen) - 1} more misshapen)' if len(misshapen) > 1 else ''}; the file is "
                        "damaged or of another network: use a checkpoint of this architecture")
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise UserError(f"teacher checkpoint {path} does not match architecture {arch}: missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}; the file is damaged or of another network: use a checkpoint "
                        "of this architecture")
    model.load_state_dict(state, strict=False)
    if norm is not None and tuple(map(tuple, norm)) != tuple(map(tuple, dataset_norm)):
        model = Renormalize(model, dataset_norm, norm)
    _check_finite_outputs(path, model)
    return model.eval(), arch
