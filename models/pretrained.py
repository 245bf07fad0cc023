"""Loading teachers from published checkpoints and from the project's own runs.

Three layouts are understood:
- the project's `model.pt` (written at the end of each run): `{"format": "kd-bench-model", "arch", "num_classes",
  "state_dict", "input_norm"}`;
- akamaster/pytorch_resnet_cifar10 (`{"best_prec1", "state_dict"}` with `module.` keys and a `linear` head,
  option-A shortcuts, trained on ImageNet-normalised inputs);
- HobbitLong/RepDistiller and megvii-research/mdistiller, the CRD benchmark's CIFAR-100 networks: a dict with
  `'model'` (RepDistiller `train_teacher.py`: `{'epoch', 'model', 'accuracy', 'optimizer'}` as
  `<name>_vanilla/ckpt_epoch_240.pth`, `{'epoch', 'model', 'best_acc', 'optimizer'}` as `<model>_best.pth`;
  mdistiller's `cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth` are those files, its own runs write
  `student_best` = `{'model'}`), keys named after RepDistiller's model classes (`REPDISTILLER_KEYS` below),
  trained on inputs normalised with RepDistiller's CIFAR-100 statistics (`REPDISTILLER_NORM`). The
  architecture is read from the keys and shapes (`repdistiller_arch`), the keys renamed to the zoo's.
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
# RepDistiller `dataset/cifar100.py` and mdistiller `mdistiller/dataset/cifar100.py`: transforms.Normalize of both
# the training and the test transform (the benchmark's own CIFAR-100 statistics differ in the 4th decimal)
REPDISTILLER_NORM = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


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
                        "run or of a published CIFAR checkpoint (akamaster, RepDistiller, mdistiller)")
    try:
        # weights only: a checkpoint from elsewhere is never unpickled with code execution
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "WeightsUnpickler error" in str(e) and "argparse.Namespace" in str(e):
            raise UserError(f"teacher checkpoint {path} was refused by the safe loader ({_one_line(e)}): it "
                            "stores an argparse.Namespace, as RepDistiller's <model>_last.pth does (its 'opt'); "
                            "use ckpt_epoch_<last epoch>.pth or <model>_best.pth of the same run instead (the "
                            "same format without the options; ckpt_epoch_240.pth holds the last weights)") from None
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


# --- RepDistiller / mdistiller ----------------------------------------------------------------------------------
#
# The key names of RepDistiller's `models/*.py` (mdistiller's `mdistiller/models/cifar/*.py` are copies with the
# same module names) and the zoo's, per family (`<i>`, `<j>`, `<k>` = indices kept as they are):
#   resnet<d>, resnet<d>x4 (models/resnet.py `ResNet`):  layer<i>.<j>.downsample.{0,1} -> layer<i>.<j>.shortcut.{0,1};
#       fc -> linear; conv1, bn1, layer<i>.<j>.{conv1,bn1,conv2,bn2} unchanged
#   wrn_<d>_<k> (models/wrn.py `WideResNet`):  block<i>.layer.<j>. -> layer<i>.<j>.; .convShortcut -> .shortcut;
#       bn1 (the final BN) -> bn; fc -> linear; conv1 and each block's bn1/conv1/bn2/conv2 unchanged
#   vgg8, vgg13 (models/vgg.py `VGG`, the `_bn` variants): block<j>.<3k> (k-th conv) -> blocks.<j>.convs.<k>,
#       block<j>.<3k+1> (its BN) -> blocks.<j>.bns.<k>; classifier -> linear
#   mobilenetv2 (models/mobilenetv2.py `mobile_half`):  conv1.{0,1} -> conv1, bn1; conv2.{0,1} -> conv2, bn2;
#       blocks.<g>.<b>.conv.{0,1,3,4,6,7} -> blocks.<g>.<b>.{conv1,bn1,conv2,bn2,conv3,bn3}; classifier.0 -> linear
#   shufflev1, shufflev2 (models/ShuffleNetv1.py `ShuffleV1`, ShuffleNetv2.py `ShuffleV2`):  conv1, bn1 (the
#       stem) -> stem.conv1, stem.bn1; layer<i>..., conv2, bn2 (v2's head), linear unchanged
#   resnet50 (models/resnetv2.py `ResNet50`):  layer<i>. -> layers.<i-1>.; everything else unchanged
_MV2_CONV = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}


def _vgg_key(m: re.Match) -> str:
    j, i, rest = m.group(1), int(m.group(2)), m.group(3)
    kind = {0: "convs", 1: "bns"}.get(i % 3)
    return f"blocks.{j}.{kind}.{i // 3}.{rest}" if kind else m.group(0)  # a ReLU has no weights


REPDISTILLER_KEYS: dict[str, list[tuple[str, object]]] = {
    "resnet": [(r"\.downsample\.", ".shortcut."), (r"^fc\.", "linear.")],
    "wrn": [(r"^block(\d+)\.layer\.", r"layer\1."), (r"\.convShortcut\.", ".shortcut."), (r"^bn1\.", "bn."),
            (r"^fc\.", "linear.")],
    "vgg": [(r"^block(\d+)\.(\d+)\.(.*)$", _vgg_key), (r"^classifier\.", "linear.")],
    "mobilenetv2": [(r"^conv1\.0\.", "conv1."), (r"^conv1\.1\.", "bn1."), (r"^conv2\.0\.", "conv2."),
                    (r"^conv2\.1\.", "bn2."), (r"^classifier\.0\.", "linear."),
                    (r"^(blocks\.\d+\.\d+)\.conv\.(\d+)\.",
                     lambda m: f"{m.group(1)}.{_MV2_CONV.get(m.group(2), 'conv.' + m.group(2))}.")],
    "shufflenet": [(r"^conv1\.", "stem.conv1."), (r"^bn1\.", "stem.bn1.")],
    "resnet50": [(r"^layer(\d+)\.", lambda m: f"layers.{int(m.group(1)) - 1}.")],
}


def repdistiller_keys(state: dict, family: str) -> dict:
    """RepDistiller's key names of `family` renamed to the zoo's (see `REPDISTILLER_KEYS`)."""
    rules = REPDISTILLER_KEYS[family]
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def _blocks(state: dict, prefix: str) -> tuple[int, ...]:
    """The block indices `<i>` of keys `<prefix>.<i>.…`, sorted."""
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return tuple(sorted({int(m.group(1)) for k in state for m in [pat.match(k)] if m}))


def _shape(state: dict, key: str) -> tuple[int, ...]:
    return tuple(state[key].shape)


def repdistiller_arch(state: dict) -> tuple[str, str]:
    """`(zoo arch, key family)` of a RepDistiller/mdistiller state dict (its own key names), read from its keys and
    shapes; a UserError names a network of theirs that the zoo lacks, or says that none fits."""
    has = state.__contains__
    if has("classifier.0.weight") and has("conv1.0.weight"):  # MobileNetV2 (mobile_half / mobile_full)
        width = _shape(state, "conv1.0.weight")[0] / 32
        expand = (_shape(state, "blocks.1.0.conv.0.weight")[0] / _shape(state, "blocks.1.0.conv.0.weight")[1]
                  if has("blocks.1.0.conv.0.weight") else 0)
        if (width, expand) != (0.5, 6):
            raise UserError(f"it is a MobileNetV2 at width {width:g}, expansion {expand:g} (RepDistiller "
                            f"{'mobile_full' if width == 1 else 'mobilenetv2_T_w'}); the zoo has only mobile_half "
                            "(mobilenetv2: width 0.5, expansion 6)")
        return "mobilenetv2", "mobilenetv2"
    if has("classifier.weight") and has("block0.0.weight"):  # VGG
        if not has("block0.1.running_mean"):
            raise UserError("it is a VGG without BatchNorm; the zoo's vgg8/vgg13 are RepDistiller's _bn variants")
        cfg = tuple(tuple(_shape(state, f"block{j}.{i}.weight")[0] for i in range(0, 3 * 9, 3)
                          if has(f"block{j}.{i}.weight")) for j in range(5))
        from .vgg import CONFIGS

        theirs = {((64,), (128,), (256, 256), (512, 512), (512, 512)): "vgg11",
                  ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3): "vgg16",
                  ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4): "vgg19"}
        arch = {tuple(map(tuple, v)): k for k, v in CONFIGS.items()}.get(cfg)
        if arch is None:
            raise UserError(f"it is RepDistiller's {theirs.get(cfg, f'VGG with widths {cfg}')}, which the zoo "
                            "lacks (it has vgg8 and vgg13)")
        return arch, "vgg"
    if has("fc.weight") and has("block1.layer.0.conv1.weight"):  # WideResNet
        n = len(_blocks(state, "block1.layer"))
        widen = _shape(state, "block1.layer.0.conv1.weight")[0] // 16
        return f"wrn_{6 * n + 4}_{widen}", "wrn"
    if has("fc.weight") and has("layer1.0.conv1.weight") and has("conv1.weight"):  # CIFAR ResNet (models/resnet.py)
        if has("layer1.0.conv3.weight"):
            raise UserError("it is the bottleneck variant of RepDistiller's CIFAR ResNet, which the zoo lacks")
        depth = 6 * len(_blocks(state, "layer1")) + 2
        stem = _shape(state, "conv1.weight")[0]
        if stem not in (16, 32):
            raise UserError(f"it is a CIFAR ResNet with a {stem}-channel stem; the zoo has RepDistiller's "
                            "resnet<depth> (16) and resnet<depth>x4 (32)")
        return f"resnet{depth}" + ("x4" if stem == 32 else ""), "resnet"
    if has("linear.weight") and has("layer4.0.conv1.weight"):  # models/resnetv2.py
        blocks = tuple(len(_blocks(state, f"layer{i}")) for i in range(1, 5))
        bottleneck = has("layer1.0.conv3.weight")
        if (blocks, bottleneck) != ((3, 4, 6, 3), True):
            name = {((2, 2, 2, 2), False): "ResNet18", ((3, 4, 6, 3), False): "ResNet34",
                    ((3, 4, 23, 3), True): "ResNet101", ((3, 8, 36, 3), True): "ResNet152"}.get((blocks, bottleneck))
            raise UserError(f"it is RepDistiller's {name or f'resnetv2 with blocks {blocks}'}, which the zoo lacks "
                            "(it has ResNet50 as resnet50)")
        return "resnet50", "resnet50"
    if has("linear.weight") and has("layer1.0.conv5.weight") and has("conv2.weight"):  # ShuffleNetV2
        width = _shape(state, "conv2.weight")[1]
        if width != 464:
            raise UserError(f"it is a ShuffleNetV2 whose last stage has {width} channels; the zoo has only "
                            "RepDistiller's ShuffleV2 (net size 1: 116, 232, 464)")
        return "shufflev2", "shufflenet"
    if (has("linear.weight") and has("layer1.0.conv3.weight") and has("conv1.weight")
            and _shape(state, "conv1.weight")[2:] == (1, 1)):  # ShuffleNetV1 (1x1 stem)
        return "shufflev1", "shufflenet"
    raise UserError("its keys match none of RepDistiller's/mdistiller's CIFAR networks (resnet<d>, resnet<d>x4, "
                    "ResNet50, wrn_<d>_<k>, vgg<n>, mobile_half, ShuffleV1, ShuffleV2)")


def _is_norm(norm) -> bool:
    """`((mean r, g, b), (std r, g, b))` of numbers."""
    return isinstance(norm, (list, tuple)) and len(norm) == 2 and all(
        isinstance(v, (list, tuple)) and len(v) == 3 and
        all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v) for v in norm)


def _tensor_dict(path: Path, state: dict, retry: str) -> None:
    """Refuse a state dict with a key that is not a name or a value that is not a tensor."""
    bad = [k for k in state if not isinstance(k, str)]
    if bad:
        raise UserError(f"teacher checkpoint {path} has a state_dict key {bad[0]!r} that is not a name: {retry}")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise UserError(f"teacher checkpoint {path}: state_dict entry {not_tensors[0]!r} is a "
                        f"{type(state[not_tensors[0]]).__name__}, not a tensor (damaged or not a model's weights): "
                        f"{retry}")


def _repdistiller(path: Path, weights: dict, retry: str) -> tuple[str, dict]:
    """(zoo arch, state dict under the zoo's names) of the `'model'` of a RepDistiller/mdistiller checkpoint."""
    _tensor_dict(path, weights, retry)
    state = {k.removeprefix("module."): v for k, v in weights.items()}  # saved from an nn.DataParallel
    if any(k.startswith(("student.", "teacher.")) for k in state):
        raise UserError(f"teacher checkpoint {path} is an mdistiller distiller checkpoint (latest/best/epoch_<n>: "
                        "student, teacher and the method's modules in one 'model'): give the run's student_best "
                        "(or student_latest), which holds the student alone, or the teacher's own "
                        "cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth")
    try:
        arch, family = repdistiller_arch(state)
    except UserError as e:
        raise UserError(f"teacher checkpoint {path} holds a 'model' dict as RepDistiller/mdistiller write it, "
                        f"but {e}") from None
    except (IndexError, ZeroDivisionError):  # a tensor of the wrong rank where a weight is read for its shape
        raise UserError(f"teacher checkpoint {path} holds a 'model' dict as RepDistiller/mdistiller write it, but "
                        "a weight has an impossible shape: the file is damaged; download it again") from None
    if arch not in MODELS:
        raise UserError(f"teacher checkpoint {path} holds RepDistiller's {arch}, which the zoo lacks: use a "
                        "checkpoint of one of its CRD networks (resnet20/32/56/110, resnet8x4, resnet32x4, "
                        "resnet50, wrn_40_2, wrn_16_2, wrn_40_1, vgg8, vgg13, mobilenetv2, shufflev1, shufflev2)")
    state = repdistiller_keys(state, family)
    head = state.get("linear.weight")
    if head is not None and head.dim() == 2 and head.shape[0] != 100:
        raise UserError(f"teacher checkpoint {path} is a RepDistiller/mdistiller {arch} with {head.shape[0]} "
                        "classes: those repositories train on CIFAR-100 only, so the input normalisation it was "
                        "trained with is unknown; save it as a kd-bench model.pt with its 'input_norm' instead")
    return arch, state


def _layout(path: Path, ckpt) -> tuple[str, dict, object]:
    """(arch, state dict, input normalisation) of a loaded checkpoint, or a UserError saying what is wrong."""
    retry = ("give the model.pt of a finished run or a published CIFAR checkpoint (akamaster: a dict with "
             "'state_dict'; RepDistiller/mdistiller: a dict with 'model')")
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
    elif isinstance(ckpt.get("model"), dict):
        arch, state = _repdistiller(path, ckpt["model"], retry)
        norm = REPDISTILLER_NORM
    else:
        raise UserError(f"teacher checkpoint {path} is neither a kd-bench model.pt nor a published checkpoint "
                        f"(akamaster: a dict with 'state_dict'; RepDistiller/mdistiller: a dict with 'model'): "
                        f"give the model.pt of a finished run or such a checkpoint")
    _tensor_dict(path, state, retry)
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


def load_teacher(path: str | Path, num_classes: int, dataset_norm, arch: str | None = None
                 ) -> tuple[nn.Module, str]:
    """Return `(model in eval mode, arch name)`; raise UserError (one line naming the file and what to do) on a
    checkpoint that does not fit: unreadable, not weights only, unknown layout or architecture, missing or
    misshapen tensors, non-finite weights, or non-finite outputs on a probe batch. Every teacher of the benchmark
    (runs, ensembles, published checkpoints, planning) is loaded here.

    The architecture is read from the file (a model.pt names it; akamaster's and RepDistiller's/mdistiller's are
    inferred from their keys and shapes, never ambiguously). `arch`, if given (the user's `--teacher`), must be
    what the file holds: a mismatch is refused rather than silently overridden."""
    path = Path(path)
    found, state, norm = _layout(path, _read(path))
    if arch is not None and arch != found:
        raise UserError(f"teacher checkpoint {path} holds a {found}, not the {arch} asked for (--teacher): name "
                        f"--teacher {found} or leave --teacher out with --teacher-checkpoint, or use a checkpoint "
                        f"of {arch}")
    arch = found
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise UserError(f"teacher checkpoint {path} holds non-finite weights (NaN or inf in {nonfinite[0]!r}"
                        f"{f' and {len(nonfinite) - 1} more' if len(nonfinite) > 1 else ''}): the teacher diverged "
                        "or the file is damaged; retrain the teacher or use another checkpoint")
    # the classifier: `linear`, or in a multi-branch student (OEC-KD, EKD) each branch's `branches.<j>.linear`
    heads = [v for k, v in state.items() if k == "linear.weight" or k.endswith(".linear.weight")]
    head = heads[-1] if heads else None
    if head is None:
        raise UserError(f"{path} has no 'linear.weight': not a CIFAR classifier of the zoo")
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
