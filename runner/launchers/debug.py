"""The `debug` launcher: every run in this process, one after the other (tests, debugging with pdb)."""
from __future__ import annotations

import time

from ..execute import execute
from ..plan import PlannedRun
from .base import Launcher, decide, flatten, log_waiting, report_skip

POLL_S = 2.0  # how often to look at runs held by other processes


class DebugLauncher(Launcher):
    name = "debug"

    def launch(self, stages: list[list[PlannedRun]]) -> list[dict]:
        env = self.env
        queue, records, said = flatten(stages), [], set()
        while queue:
            progressed = False
            for run in list(queue):
                decision = decide(run, env.results_dir, self.retries, {r.run_id for r in queue} - {run.run_id})
                if decision.action == "wait":
                    continue
                queue.remove(run)
                progressed = True
                if decision.action == "skip":
                    report_skip(env, run, decision.record)
                    records.append(decision.record)
                    continue
                record = execute(run.spec, env, run.info, retries=self.retries)
                if record["status"] == "busy":  # claimed elsewhere between the check and the claim
                    queue.append(run)
                else:
                    records.append(record)
            if queue and not progressed:
                log_waiting(env, queue, said)
                time.sleep(POLL_S)
        return records
