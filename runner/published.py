"""A published teacher (`--teacher-checkpoint`) as a run that trains nothing: its row in the tables.

Why: students distilled from a published checkpoint are only half a result without the teacher's own accuracy,
size and speed measured on the same test split and machine. The run's spec names the checkpoint by its sha256
(the path lives in the run's info, like the students'), so another file under the same path is another run;
the file is checked against that hash before it is evaluated. Best and last epoch are the same single
evaluation; the run is planned once per dataset (seed 0), since nothing in it depends on a seed.
"""
from __future__ import annotations

import torch

from data import EvalLoader, dataset_info
from models import count_parameters
from models.pretrained import file_sha256, load_teacher

from core.errors import UserError
from .evaluate import evaluate
from .folder import RunFolder
from .measure import measure, save_measurement
from .spec import RunSpec
from .store import write_json_checked

METHOD = "published"


def checkpoint_path(spec: RunSpec, info: dict | None) -> str:
    path = (info or {}).get("teacher_path")
    if not path:
        raise UserError(f"run {spec.run_id} evaluates a published teacher but its path is not known: plan it "
                        "again with --teacher-checkpoint")
    if file_sha256(path) != spec.teacher["sha256"]:
        raise UserError(f"{path} has changed since run {spec.run_id} was planned (sha256 differs): plan again "
                        "with the checkpoint you mean")
    return path


def execute_published(spec: RunSpec, env, info: dict | None = None) -> dict:
    """Evaluate (or skip if done) a published teacher on the run's test split, and measure it."""
    from .train import cached_splits

    folder = RunFolder(env.results_dir, spec.run_id)
    done = folder.read_final()
    if done is not None and done.get("status") == "done":
        return done
    folder.write_spec(spec, {"role": "teacher", **(info or {})})
    ds = dataset_info(spec.data.dataset)
    model = load_teacher(checkpoint_path(spec, info), ds.num_classes, (ds.mean, ds.std))[0]
    model = model.to(torch.device(env.device))
    _, test = cached_splits(spec.data, env.data_dir, env.download)
    loader = EvalLoader(test, env.test_batch_size, ds.mean, ds.std, device=torch.device(env.device))
    acc = evaluate(model, loader)
    final = {"status": "done", "run_id": spec.run_id, "dataset": spec.data.label, "method": METHOD,
             "seed": spec.seed, "student": spec.student, "teacher": None, "role": "teacher", "epochs": 0,
             **{f"{which}_top{k}": acc[f"top{k}"] for which in ("best", "last") for k in range(1, 6)},
             "best_epoch": 0, "params": count_parameters(model), "extra_params": 0, "train_time_s": 0.0,
             "teacher_sha256": spec.teacher["sha256"]}
    if env.measure_repeats:
        m = measure(model, torch.cat([b.x for b in loader]), final["params"], repeats=env.measure_repeats)
        m.update({k: final[k] for k in ("run_id", "method", "dataset", "seed", "role")})
        save_measurement(folder.path, m)
    write_json_checked(folder.final, final)
    env.log(f"[{spec.run_id} {METHOD}] {spec.student}: top1 {final['best_top1']:.2f}")
    return final
