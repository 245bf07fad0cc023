"""Ensembles of distilled students: the paper's four, their names, and the voting rules. Their one home.

Kang & Gwak (2020, section 3.3) combine the students of AT, Logits and RKD by soft voting. An ensemble is keyed
`ens-<member>-<member>...`; the paper's four have fixed keys and printed names ("Ens-all" = AT + Logits + RKD),
and an ensemble of the same members in another order is the same ensemble (`ensemble_name`). The planner
(`runner.plan`), the ensemble runs (`runner.ensemble`) and the tables (`report.paper`) all read them from here.

Voting (`combine`, `VOTING`):
- `logits`: y = argmax_i sum_j z_ij, the sum of the members' last-layer outputs (the paper's eq. 9; default);
- `probs`:  argmax of the mean of the members' softmax probabilities (the averaging the paper's text describes);
- `hard`:   majority vote of the members' top-1 predictions (ties broken by the summed logits); top-k for
            k > 1 ranks classes by vote count, then by summed logits.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from core.errors import UserError

from .registry import REGISTRY

PREFIX = "ens-"
VOTING = ("logits", "probs", "hard")


class PaperEnsemble(NamedTuple):
    name: str                  # as the paper prints it
    members: tuple[str, ...]   # method keys of the registry


# The paper's soft-voting ensembles, in its row order: key -> (printed name, member methods).
ENSEMBLES: dict[str, PaperEnsemble] = {
    "ens-at-logits": PaperEnsemble("Ens-AT-Logits", ("at", "logits")),
    "ens-rkd-logits": PaperEnsemble("Ens-RKD-Logits", ("rkd", "logits")),
    "ens-at-rkd": PaperEnsemble("Ens-AT-RKD", ("at", "rkd")),
    "ens-all": PaperEnsemble("Ens-all", ("at", "logits", "rkd")),
}
# key -> member methods: the view the planner iterates over
PAPER_ENSEMBLES: dict[str, tuple[str, ...]] = {key: e.members for key, e in ENSEMBLES.items()}


def ensemble_name(members: tuple[str, ...]) -> str:
    """The key of the ensemble of `members`: the paper's key for its members in any order, else
    `ens-<m1>-<m2>...` in the given order."""
    for name, combo in PAPER_ENSEMBLES.items():
        if sorted(combo) == sorted(members):
            return name
    return PREFIX + "-".join(members)


def ensemble_members(key: str) -> tuple[str, ...] | None:
    """The member methods an ensemble key names, or None if `key` is not the key of an ensemble
    (a paper key, or `ens-` followed by registered method names joined by `-`)."""
    if key in ENSEMBLES:
        return ENSEMBLES[key].members
    if not key.startswith(PREFIX):
        return None
    parts = tuple(key[len(PREFIX):].split("-"))
    return parts if all(p in REGISTRY for p in parts) else None


def combine(member_logits: torch.Tensor, voting: str) -> torch.Tensor:
    """(M, B, K) member outputs -> (B, K) ensemble scores whose ranking is the ensemble's prediction."""
    summed = member_logits.sum(0)
    if voting == "logits":
        return summed
    if voting == "probs":
        return F.softmax(member_logits, dim=-1).mean(0)
    if voting == "hard":
        votes = F.one_hot(member_logits.argmax(-1), member_logits.shape[-1]).sum(0).float()
        ranked = summed.argsort(-1).argsort(-1).float()  # 0..K-1 rank of the summed logits, breaks ties
        return votes * member_logits.shape[-1] + ranked
    raise UserError(f"unknown voting {voting!r}; choose one of {', '.join(VOTING)}")
