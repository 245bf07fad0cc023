"""Ensembles of distilled students (Kang & Gwak 2020, section 3.3), recorded like runs.

An ensemble is a run folder whose spec has method `ensemble` and, as hyperparameters, its display name, its
members (method name and run id: the id makes the ensemble content-addressed) and the voting rule. Executing it
trains nothing: it loads the members' best-epoch and last-epoch weights, votes on the test split, measures,
and writes `final.json` like any run, so states, launchers, summaries and tables treat it the same way.

Voting (`voting`):
- `logits`: y = argmax_i sum_j z_ij, the sum of the members' last-layer outputs (the paper's eq. 9; default);
- `probs`:  argmax of the mean of the members' softmax probabilities (the averaging the paper's text describes);
- `hard`:   majority vote of the members' top-1 predictions (ties broken by the summed logits); top-k for
            k > 1 ranks classes by vote count, then by summed logits.

Inference runs the members as one batched computation when they share an architecture, instead of a Python
loop over models: CIFAR ResNets (every ensemble of the paper) are fused into one network of grouped
convolutions with BatchNorm folded in (`models.fused`); other architectures are stacked and evaluated by one
`torch.func.vmap` over `functional_call`. Every ensemble run times both the batched and the loop way, and
`bench/ensemble_inference.py` compares them.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from data import EvalLoader, dataset_info
from models import count_parameters
from models.fused import FusedResNetEnsemble
from models.pretrained import load_teacher

from core.errors import UserError
from .evaluate import topk_accuracy
from .folder import RunFolder
from .measure import measure, save_measurement
from .spec import RunSpec
from .store import write_json_checked

VOTING = ("logits", "probs", "hard")
PAPER_ENSEMBLES = {"ens-at-logits": ("at", "logits"), "ens-rkd-logits": ("rkd", "logits"),
                   "ens-at-rkd": ("at", "rkd"), "ens-all": ("at", "logits", "rkd")}


def ensemble_name(members: tuple[str, ...]) -> str:
    for name, combo in PAPER_ENSEMBLES.items():
        if sorted(combo) == sorted(members):
            return name
    return "ens-" + "-".join(members)


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


def _same_architecture(members: list[nn.Module]) -> bool:
    first = {k: (v.shape, v.dtype) for k, v in members[0].state_dict().items()}
    return all(type(m) is type(members[0]) and {k: (v.shape, v.dtype) for k, v in m.state_dict().items()} == first
               for m in members[1:])


def build_ensemble(members: list[nn.Module], batched: bool = True) -> nn.Module:
    """The members as one module returning (M, B, K) logits: batched when they share an architecture."""
    members = [m.eval() for m in members]
    if batched and _same_architecture(members):
        if FusedResNetEnsemble.supports(members):
            return FusedResNetEnsemble(members).eval()
        return StackedEnsemble(members).eval()
    return LoopEnsemble(members).eval()


@torch.inference_mode()
def ensemble_topk(ensemble: nn.Module, loader, voting: str) -> dict[str, float]:
    scores, labels = [], []
    for batch in loader:
        scores.append(combine(ensemble(batch.x).float(), voting))
        labels.append(batch.y)
    return topk_accuracy(torch.cat(scores), torch.cat(labels))


def measure_ensemble(members: list[nn.Module], inputs: torch.Tensor, voting: str, repeats: int) -> dict:
    """Time the batched ensemble (the row's time) and, for comparison, the loop over its members."""
    params = sum(count_parameters(m) for m in members)
    batched, loop = build_ensemble(members, batched=True), build_ensemble(members, batched=False)
    record = measure(lambda x: combine(batched(x), voting), inputs, params, repeats=repeats)
    record["inference_time_loop_s"] = measure(lambda x: combine(loop(x), voting), inputs, params,
                                              repeats=repeats)["inference_time_s"]
    record["batched"] = type(batched).__name__
    return record


def execute_ensemble(spec: RunSpec, env, info: dict | None = None) -> dict:
    """Evaluate (or skip if done) one ensemble spec; its members must be DONE."""
    from .train import cached_splits

    folder = RunFolder(env.results_dir, spec.run_id)
    done = folder.read_final()
    if done is not None and done.get("status") == "done":
        return done
    folder.write_spec(spec, {"role": "ensemble", **(info or {})})
    hp = spec.hparams
    ds = dataset_info(spec.data.dataset)
    norm = (ds.mean, ds.std)
    device = torch.device(env.device)
    _, test = cached_splits(spec.data, env.data_dir, env.download)
    loader = EvalLoader(test, env.test_batch_size, *norm, device=device)
    result, last_members = {}, None
    for which, attr in (("best", "best_model"), ("last", "model")):
        models = []
        for method, run_id in hp["members"]:
            path = getattr(RunFolder(env.results_dir, run_id), attr)
            if not path.is_file():
                raise UserError(f"ensemble member {method} ({run_id}) has no {path.name}: finish that run first")
            models.append(load_teacher(path, ds.num_classes, norm)[0].to(device))
        acc = ensemble_topk(build_ensemble(models), loader, hp["voting"])
        result.update({f"{which}_top{k}": acc[f"top{k}"] for k in range(1, 6)})
        last_members = models
    params = sum(count_parameters(m) for m in last_members)
    final = {"status": "done", "run_id": spec.run_id, "dataset": spec.data.label, "method": hp["name"],
             "seed": spec.seed, "student": spec.student, "teacher": None, "role": "ensemble", "epochs": 0,
             **result, "params": params, "extra_params": 0, "train_time_s": 0.0, "voting": hp["voting"]}
    if env.measure_repeats:
        m = measure_ensemble(last_members, torch.cat([b.x for b in loader]), hp["voting"], env.measure_repeats)
        m.update(run_id=spec.run_id, method=hp["name"], dataset=spec.data.label, seed=spec.seed, role="ensemble")
        save_measurement(folder.path, m)
    write_json_checked(folder.final, final)
    env.log(f"[{spec.run_id} {hp['name']}] top1 best {final['best_top1']:.2f} last {final['last_top1']:.2f}")
    return final
