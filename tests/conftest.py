"""Shared test helpers. `../shared` (golden vectors, real CIFAR-10, published weights) sits beside the checkout
in CI; in a user's clone it is absent and the tests that need it skip, saying so."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("KDBENCH_SHARED", ROOT.parent / "shared"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def md_row(text: str, name: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is `name` (the first such row: the first panel)."""
    for line in text.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if parts and parts[0] == name:
            return parts[1:]
    raise AssertionError(f"no row {name!r}")


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: these checks need the project's ../shared folder "
                    "(present in CI; set KDBENCH_SHARED to its location)")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny batches (2-4 images): intra-op threads only add overhead there, and on a busy 2-core
    machine two threads spin-wait on each other. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`;
    torch's thread count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
