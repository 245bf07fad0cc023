"""The `published` kind: a published teacher (`--teacher-checkpoint`) as a run that trains nothing.

Why: students distilled from a published checkpoint are only half a result without the teacher's own accuracy,
size and speed measured on the same test split and machine. The run's spec names the checkpoint by its sha256
(the path lives in the run's info, like the students'), so another file under the same path is another run;
the file is checked against that hash before it is evaluated. Best and last epoch are the same single
evaluation; the run is planned once per dataset (seed 0), since nothing in it depends on a seed.
"""
from __future__ import annotations

import torch

from core.errors import UserError
from data import dataset_info
from models import count_parameters
from models.pretrained import file_sha256, load_teacher

from .env import RunEnv, test_loader
from .evaluate import evaluate
from .folder import RunFolder
from .measure import measure, save_measurement
from .spec import RunSpec
from .store import write_json_checked

ROW = "published"  # the method column of its records: the report shows it as the teacher's row


def checkpoint_path(spec: RunSpec, info: dict | None) -> str:
    path = (info or {}).get("teacher_path")
    if not path:
        raise UserError(f"run {spec.run_id} evaluates a published teacher but its path is not known: plan it "
                        "again with --teacher-checkpoint")
    if file_sha256(path) != spec.teacher["sha256"]:
        raise UserError(f"{path} has changed since run {spec.run_id} was planned (sha256 differs): plan again "
                        "with the checkpoint you mean")
    return path


def _model(spec: RunSpec, info: dict, env: RunEnv):
    ds = dataset_info(spec.data.dataset)
    model = load_teacher(checkpoint_path(spec, info), ds.num_classes, (ds.mean, ds.std))[0]
    return model.to(torch.device(env.device))


def execute(spec: RunSpec, env: RunEnv, info: dict, claim=None) -> dict:
    """Evaluate (or return the record of) a published teacher on the run's test split, and measure it."""
    folder = RunFolder(env.results_dir, spec.run_id)
    done = folder.read_final()
    if done is not None and done.get("status") == "done":
        return done
    info = folder.write_spec(spec, {"role": "teacher", **(info or {})})
    model = _model(spec, info, env)
    loader = test_loader(spec.data, env)
    acc = evaluate(model, loader)
    final = {"status": "done", "run_id": spec.run_id, "dataset": spec.data.label, "method": ROW,
             "seed": spec.seed, "student": spec.student, "teacher": None, "role": "teacher", "epochs": 0,
             **{f"{which}_top{k}": acc[f"top{k}"] for which in ("best", "last") for k in range(1, 6)},
             "best_epoch": 0, "params": count_parameters(model), "extra_params": 0, "train_time_s": 0.0,
             "teacher_sha256": spec.teacher["sha256"]}
    if env.measure_repeats:
        m = measure(model, torch.cat([b.x for b in loader]), final["params"], repeats=env.measure_repeats)
        m.update({k: final[k] for k in ("run_id", "method", "dataset", "seed", "role")})
        save_measurement(folder.path, m)
    write_json_checked(folder.final, final)
    env.log(f"[{spec.run_id} {ROW}] {spec.student}: top1 {final['best_top1']:.2f}")
    return final


def remeasure(folder: RunFolder, spec: RunSpec, info: dict, final: dict, env: RunEnv) -> list[dict]:
    """Time the checkpoint again on this machine (after checking it is still the file that was evaluated)."""
    model = _model(spec, info, env)
    inputs = torch.cat([b.x for b in test_loader(spec.data, env)])
    return [{**measure(model, inputs, count_parameters(model), repeats=env.measure_repeats or 3), "role": "teacher"}]
