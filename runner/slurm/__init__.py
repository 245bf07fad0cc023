"""The SLURM launcher: the plan's stages as job arrays through submitit, with dependencies between them.

- The executor is `submitit.AutoExecutor(folder=..., cluster="slurm")`: the cluster is named, never detected.
- Settings come from a cluster profile (`slurm/profiles/<name>.yaml`, see `example.yaml`), with command-line
  overrides on top.
- One job array per stage and dependency set, through `executor.batch()`: the teachers are one array; the
  students of one teacher are one array depending `afterok` on exactly that teacher's task, so a sweep over
  datasets and seeds is a handful of arrays and a student never waits for (or dies with) another seed's
  teacher. Later stages (ensembles) depend on their members' tasks the same way. `--kill-on-invalid-dep=yes`
  makes SLURM cancel the dependants of a failed job instead of leaving them pending forever.
- What a job runs is `SlurmRun`, a `submitit.helpers.Checkpointable` whose whole state is the path of the run's
  spec.json: on a timeout or a preemption submitit requeues it, and the new incarnation resumes from ckpt.pt
  (written atomically every epoch), so at most the current epoch is lost.
- SLURM's stdout and stderr of each job are linked into the run folder (`slurm-<job>.out/.err`), next to
  log.txt; `slurm.json` there records which job runs it, for `status` and `cancel`.
- Nothing twice: runs already DONE, or queued or running under an earlier submission, are not submitted
  again (the submission itself holds a lock on the results folder), and inside the job the run folder's claim
  (runner/claims.py) keeps any other launcher off it.

Modules, one job each: `profile` (cluster settings), `queue` (squeue/sacct, job records, wait, cancel),
`job` (the callable a job runs), `launcher` (submission).
"""
from .profile import executor_parameters, load_profile, parse_set, profile_names
from .queue import cancel, slurm_status

__all__ = ["cancel", "executor_parameters", "load_profile", "parse_set", "profile_names", "slurm_status"]
