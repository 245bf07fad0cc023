"""The `debug` launcher: every run in this process, one after the other (tests, debugging with pdb)."""
from __future__ import annotations

import dataclasses
import time

from ..execute import execute
from ..plan import PlannedRun
from ..progress import Sweep
from .base import (Launcher, decide, describe_job, execute_job, flatten, jobs, log_waiting, report_skip,
                   stage_index)

POLL_S = 2.0  # how often to look at runs held by other processes


class DebugLauncher(Launcher):
    name = "debug"

    def launch(self, stages: list[list[PlannedRun]]) -> list[dict]:
        env = self.env
        queue, records, said = flatten(stages), [], set()
        stage_of, cohort = stage_index(stages), self.options.cohort
        sweep = Sweep(queue, env.results_dir, slots=1)
        while queue:
            progressed = False
            ready = []  # with cohorts: the runs that may run now, executed together after this pass
            for run in list(queue):
                pending = {r.run_id for r in queue} | {r.run_id for r in ready}
                decision = decide(run, env.results_dir, self.retries, pending - {run.run_id})
                if decision.action == "wait":
                    continue
                queue.remove(run)
                progressed = True
                if decision.action == "skip":
                    report_skip(env, run, decision.record)
                    records.append(decision.record)
                    continue
                if cohort:
                    ready.append(run)
                    continue
                run_env = dataclasses.replace(env, progress=sweep.position([run]))
                record = execute(run.spec, run_env, run.info, retries=self.retries)
                if record["status"] == "busy":  # claimed elsewhere between the check and the claim
                    queue.append(run)
                else:
                    records.append(record)
            for job in jobs(ready, stage_of, cohort):
                if len(job) > 1:
                    env.log(f"start {describe_job(job)}")
                job_env = dataclasses.replace(env, progress=sweep.position(job))
                for run, record in zip(job, execute_job(job, job_env, self.retries)):
                    if record["status"] == "busy":
                        queue.append(run)
                    else:
                        records.append(record)
            if queue and not progressed:
                log_waiting(env, queue, said)
                time.sleep(POLL_S)
        return records
