"""Several networks evaluated as one module returning the (M, B, K) logits of its M members.

Why: an ensemble's inference time is a result (the paper's Table 2), so it runs in the fastest form that computes
the same logits. Members of one architecture run as one batched computation instead of a Python loop over
models: on a GPU, CIFAR ResNets are fused into one network of grouped convolutions (`models.fused`, one kernel
launch per layer for all members); other architectures are stacked and evaluated by one `torch.func.vmap` over
`functional_call`. On a CPU, CIFAR ResNets run as a loop over their inference forms (BatchNorm folded,
channels-last: `models.frozen.inference_form`), which `bench/ensemble_inference.py` measured faster there than
the fused network (oneDNN's grouped convolutions are slower than the dense ones). The plain loop stays, for
members of different architectures and as the baseline of the bench.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap

from .frozen import inference_form
from .fused import FusedResNetEnsemble


class StackedEnsemble(nn.Module):
    """Members of one architecture evaluated in one vmap'ed call over stacked parameters."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        params, buffers = stack_module_state(members)
        self.params = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(v, requires_grad=False)
                                        for k, v in params.items()})
        for k, v in buffers.items():
            self.register_buffer("buf__" + k.replace(".", "__"), v)
        self._names = list(params), list(buffers)
        self._base = [copy.deepcopy(members[0]).to("meta")]  # a list: not registered as a submodule

    def forward(self, x):
        """(B, ...) -> (M, B, K) logits of every member."""
        params = {k: self.params[k.replace(".", "__")] for k in self._names[0]}
        buffers = {k: getattr(self, "buf__" + k.replace(".", "__")) for k in self._names[1]}
        base = self._base[0]

        def one(p, b, inp):
            out = functional_call(base, (p, b), (inp,))
            return out[0] if isinstance(out, tuple) else out

        return vmap(one, in_dims=(0, 0, None))(params, buffers, x)


class LoopEnsemble(nn.Module):
    """The plain way, kept for members of different architectures and as the baseline of the benchmark."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        outs = [m(x) for m in self.members]
        return torch.stack([o[0] if isinstance(o, tuple) else o for o in outs])


class FoldedLoopEnsemble(LoopEnsemble):
    """The loop over the members' inference forms (CIFAR ResNets with BatchNorm folded, channels-last)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__([inference_form(m) for m in members])


def _same_architecture(members: list[nn.Module]) -> bool:
    first = {k: (v.shape, v.dtype) for k, v in members[0].state_dict().items()}
    return all(type(m) is type(members[0]) and {k: (v.shape, v.dtype) for k, v in m.state_dict().items()} == first
               for m in members[1:])


def build_ensemble(members: list[nn.Module], batched: bool = True) -> nn.Module:
    """The members as one module returning (M, B, K) logits: in their fastest exact form when `batched` and they
    share an architecture (see the module docstring), else the plain loop."""
    members = [m.eval() for m in members]
    if batched and _same_architecture(members):
        if FusedResNetEnsemble.supports(members):
            if next(members[0].parameters()).device.type == "cpu":
                return FoldedLoopEnsemble(members).eval()
            return FusedResNetEnsemble(members).eval()
        return StackedEnsemble(members).eval()
    return LoopEnsemble(members).eval()
