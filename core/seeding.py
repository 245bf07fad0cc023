"""Seeds derived from names, so that every random choice of a run is a function of (seed, what it is for).

Why: the comparison between methods is paired only if every student of one seed starts from the same weights
and sees the same batches, whichever method trains it and in whichever process; a method's own randomness
(CRD's negatives, BSS's attack classes) must not disturb that stream either.
"""
from __future__ import annotations

import contextlib
import hashlib
import json

import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of parts (e.g. (seed, 'init', arch)), stable across processes."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextlib.contextmanager
def seeded(*parts):
    """Run the block with torch's CPU generator seeded from `parts`, restoring the caller's state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(*parts))
        yield


def method_generator(seed: int, method: str) -> torch.Generator:
    """A method's own generator, seeded from (seed, method): its draws never move the shared stream."""
    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, "method", method))
