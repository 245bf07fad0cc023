"""Ensembles of distilled students (Kang & Gwak 2020, section 3.3), recorded like runs.

An ensemble is a run of kind `ensemble`: its spec's method is the ensemble's key (`ens-at-logits`), its
hyperparameters are its members (method name and run id: the id makes the ensemble content-addressed) and the
voting rule. Executing it trains nothing: it loads the members' best-epoch and last-epoch weights, votes on the test split, measures,
and writes `final.json` like any run, so states, launchers, summaries and tables treat it the same way.

Voting (`voting`):
- `logits`: y = argmax_i sum_j z_ij, the sum of the members' last-layer outputs (the paper's eq. 9; default);
- `probs`:  argmax of the mean of the members' softmax probabilities (the averaging the paper's text describes);
- `hard`:   majority vote of the members' top-1 predictions (ties broken by the summed logits); top-k for
            k > 1 ranks classes by vote count, then by summed logits.

Inference runs the members in their fastest exact form when they share an architecture (`models.ensemble`: fused
on a GPU, a loop over BatchNorm-folded members on a CPU). Every ensemble run times that form and the plain loop,
and `bench/ensemble_inference.py` compares them.
"""
from __future__ import annotations

import torch

from core.errors import UserError
from data import dataset_info
from methods.ensembles import combine
from models import count_parameters
from models.ensemble import FoldedLoopEnsemble, build_ensemble
from models.fused import FusedResNetEnsemble
from models.pretrained import load_teacher

from .env import RunEnv, test_loader
from .evaluate import topk_accuracy
from .folder import RunFolder
from .measure import measure, save_measurement
from .spec import RunSpec
from .store import write_json_checked


@torch.inference_mode()
def ensemble_topk(ensemble: torch.nn.Module, loader, voting: str) -> dict[str, float]:
    scores, labels = [], []
    for batch in loader:
        scores.append(combine(ensemble(batch.x).float(), voting))
        labels.append(batch.y)
    return topk_accuracy(torch.cat(scores), torch.cat(labels))


def measure_ensemble(members: list[torch.nn.Module], inputs: torch.Tensor, voting: str, repeats: int) -> dict:
    """Time the ensemble in its fast form (`build_ensemble`; the row's time) and, for comparison, the plain loop
    over its members as built."""
    params = sum(count_parameters(m) for m in members)
    batched, loop = build_ensemble(members, batched=True), build_ensemble(members, batched=False)
    record = measure(lambda x: combine(batched(x), voting), inputs, params, repeats=repeats)
    record["inference_time_loop_s"] = measure(lambda x: combine(loop(x), voting), inputs, params,
                                              repeats=repeats)["inference_time_s"]
    record["batched"] = type(batched).__name__
    record["form"] = "bn-folded" if isinstance(batched, (FoldedLoopEnsemble, FusedResNetEnsemble)) else "as-built"
    return record


def _members(spec: RunSpec, env: RunEnv, which: str) -> list:
    """The members' networks: 'best' (best-epoch weights) or 'last'; each member run must be DONE."""
    ds = dataset_info(spec.data.dataset)
    models = []
    for method, run_id in spec.hparams["members"]:
        folder = RunFolder(env.results_dir, run_id)
        path = folder.best_model if which == "best" else folder.model
        if not path.is_file():
            raise UserError(f"ensemble member {method} ({run_id}) has no {path.name}: finish that run first")
        models.append(load_teacher(path, ds.num_classes, (ds.mean, ds.std))[0].to(torch.device(env.device)))
    return models


def execute(spec: RunSpec, env: RunEnv, info: dict, claim=None) -> dict:
    """The `ensemble` kind: vote with the members' best-epoch and last-epoch weights on the test split."""
    folder = RunFolder(env.results_dir, spec.run_id)
    done = folder.read_final()
    if done is not None and done.get("status") == "done":
        return done
    folder.write_spec(spec, {"role": "ensemble", **(info or {})})
    voting = spec.hparams["voting"]
    loader = test_loader(spec.data, env)
    result, members = {}, None
    for which in ("best", "last"):
        members = _members(spec, env, which)
        acc = ensemble_topk(build_ensemble(members), loader, voting)
        result.update({f"{which}_top{k}": acc[f"top{k}"] for k in range(1, 6)})
    final = {"status": "done", "run_id": spec.run_id, "dataset": spec.data.label, "method": spec.method,
             "seed": spec.seed, "student": spec.student, "teacher": None, "role": "ensemble", "epochs": 0,
             **result, "params": sum(count_parameters(m) for m in members), "extra_params": 0,
             "train_time_s": 0.0, "voting": voting}
    if env.measure_repeats:
        m = measure_ensemble(members, torch.cat([b.x for b in loader]), voting, env.measure_repeats)
        m.update(run_id=spec.run_id, method=spec.method, dataset=spec.data.label, seed=spec.seed, role="ensemble")
        save_measurement(folder.path, m)
    write_json_checked(folder.final, final)
    env.log(f"[{spec.run_id} {spec.method}] top1 best {final['best_top1']:.2f} last {final['last_top1']:.2f}")
    return final


def remeasure(folder: RunFolder, spec: RunSpec, info: dict, final: dict, env: RunEnv) -> list[dict]:
    """Time the ensemble of the members' last-epoch weights again on this machine."""
    inputs = torch.cat([b.x for b in test_loader(spec.data, env)])
    record = measure_ensemble(_members(spec, env, "last"), inputs, spec.hparams["voting"], env.measure_repeats or 3)
    return [{**record, "role": "ensemble"}]
