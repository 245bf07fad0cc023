"""What a run is: `Protocol` (training settings), `DataSpec`, `RunSpec`, and the run id (a hash of the spec).

The protocol is the only home of the training settings, so every method is trained identically by
construction. Paths, launcher, device, threads, determinism, memory layout and compilation are not part of a spec
and not in its hash. The numeric precision is (it changes results): `Protocol.precision`, hashed only when it is
not fp32, so every fp32 run keeps the id it had before the setting existed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field


# How training computes (methods/base.py `Precision`): fp32 (the paper's), or autocast to bfloat16 / float16
# (float16 with a gradient scaler). Evaluation runs under the same autocast.
PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_PRECISION = "fp32"


@dataclass(frozen=True)
class Protocol:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    padding: int = 4
    pad_mode: str = "zeros"  # the paper says "pad 4"; the reference code pads by reflection ("reflect")
    flip: bool = True
    precision: str = DEFAULT_PRECISION  # fp32 | bf16 | fp16; in the run id only when not fp32 (`RunSpec.to_dict`)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class DataSpec:
    dataset: str = "cifar10"   # cifar10 | cifar100: classes and normalisation
    source: str = "disk"       # disk (official layout or array files) | synthetic
    train_size: int | None = None  # a fixed subset of the training split (None = all)
    test_size: int | None = None
    # what the data is (data/fingerprint.py): a hash of the arrays of the data folder (or of the generated data)
    # with the subset sizes and rule, 16 hex digits. Two folders of one shape never share a run id or a summary.
    # The planner always sets it; "" only in hand-made specs (tests).
    fingerprint: str = ""

    def __post_init__(self):
        if self.fingerprint and not re.fullmatch(r"[0-9a-f]{16}", self.fingerprint):
            raise ValueError(f"data fingerprint must be 16 hex digits, got {self.fingerprint!r}")

    @property
    def label(self) -> str:
        """Folder name for summaries and the tables' name of the data: results of different data never mix.
        `cifar10-<fingerprint>`, `cifar10-synthetic-n1024-512-<fingerprint>`."""
        label = self.dataset + ("-synthetic" if self.source == "synthetic" else "")
        if self.train_size is not None or self.test_size is not None:
            label += f"-n{self.train_size or 'all'}-{self.test_size or 'all'}"
        return label + (f"-{self.fingerprint}" if self.fingerprint else "")


# What a run does with its spec (runner/kinds.py maps each to the module that executes and measures it):
# train a network with a method; evaluate an ensemble of finished runs; evaluate a published checkpoint.
RUN_KINDS = ("train", "ensemble", "published")


@dataclass(frozen=True)
class RunSpec:
    data: DataSpec
    method: str | None  # the method (train), the ensemble's key (ensemble), None (published)
    student: str
    seed: int
    protocol: Protocol
    hparams: dict = field(default_factory=dict)
    teacher: dict | None = None  # {"run": id, "arch": name} or {"sha256": ..., "arch": name}; None without teacher
    kind: str = "train"

    def __post_init__(self):
        if self.kind not in RUN_KINDS:
            raise ValueError(f"unknown run kind {self.kind!r}; known: {', '.join(RUN_KINDS)}")

    def to_dict(self) -> dict:
        """The spec as plain values: what spec.json records and the run id hashes. The protocol's precision is
        left out when it is the default (fp32), so fp32 runs keep the ids (and folders) they had before the
        setting existed; `from_dict` reads its absence as fp32."""
        d = dataclasses.asdict(self)
        if d["protocol"]["precision"] == DEFAULT_PRECISION:
            del d["protocol"]["precision"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        return cls(data=DataSpec(**d["data"]), method=d["method"], student=d["student"], seed=d["seed"],
                   protocol=Protocol(**d["protocol"]), hparams=d.get("hparams", {}), teacher=d.get("teacher"),
                   kind=d["kind"])

    @property
    def run_id(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def what(self) -> str:
        """What the run is, in words: 'at resnet20', 'ensemble ens-at-logits', 'published resnet56_a'."""
        if self.kind == "train":
            return f"{self.method} {self.student}"
        if self.kind == "ensemble":
            return f"ensemble {self.method} ({self.hparams.get('voting')} voting)"
        return f"{self.kind} {self.student}"

    def describe(self) -> str:
        return f"{self.data.label} {self.what} seed={self.seed} [{self.run_id}]"



def member_run_id(run_id: str, key: str) -> str:
    """The id of a member's rows and measurements: its run's id and its key (the run folder is the run's)."""
    return f"{run_id}/{key}"
