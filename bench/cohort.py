#!/usr/bin/env python
"""Cohort training (runner/cohort.py) against separate runs: the student baseline and the paper's 20 methods of
one seed, trained once as separate runs, one after the other, and once as a cohort (one process, one batch
stream, one teacher forward per batch; the methods that run apart, `runner.cohort.APART`, run separately in
both arms), on the same data for the same epochs, in one invocation. Prints the wall time of each arm, their
ratio (separate / cohort) for the cohort's members and for everything, and whether every run ended with the
same model.pt in both arms (it must, in deterministic mode).

The teacher is trained first (not timed) and copied into both arms' results folders. Measurements at the end of
a run are off (`measure_repeats` 0) in both arms: only training and the per-epoch evaluation are timed.

    python bench/cohort.py                                   # ce + the paper's 20, synthetic 512/256, smoke epochs
    python bench/cohort.py --methods ce,st,at --epochs 1 --train-size 128
    python bench/cohort.py --train-size 50000 --epochs 5 --device cuda --preset paper --data-dir /data/cifar

Defaults are small (synthetic data, few epochs) so that it runs anywhere; the ratio that matters is the one at
the real sizes on the real device. Time only on a quiet machine: a figure taken on a loaded machine is not a
result.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods import default_methods  # noqa: E402
from runner import cohort  # noqa: E402
from runner.env import RunEnv  # noqa: E402
from runner.execute import execute  # noqa: E402
from runner.folder import RunFolder  # noqa: E402
from runner.plan import PlanRequest, plan  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", help="comma-separated (default: the paper's 20); the student baseline (ce) is "
                    "always included")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="smoke", help="protocol preset (configs/presets.yaml), default smoke")
    ap.add_argument("--epochs", type=int, help="epochs of every run, the teacher's included (default: the "
                    "preset's, whose teacher protocol gives every method a teacher it can learn from; a teacher "
                    "of 2 epochs on 512 images is still at chance, and FSP diverges on it)")
    ap.add_argument("--train-size", type=int, default=512)
    ap.add_argument("--test-size", type=int, default=256)
    ap.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=True,
                    help="the project's synthetic data (default) or --no-synthetic with --data-dir")
    ap.add_argument("--data-dir")
    ap.add_argument("--teacher", default="resnet110")
    ap.add_argument("--student", default="resnet20")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--no-deterministic", dest="deterministic", action="store_false",
                    help="allow non-deterministic kernels (then the arms' model.pt may differ)")
    ap.add_argument("--results-dir", help="keep the runs here (default: a temporary folder, removed)")
    ap.add_argument("--verbose", action="store_true", help="print the runs' logs")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods.split(",") if args.methods else default_methods()
    req = PlanRequest(methods=methods, preset=args.preset, seeds=[args.seed], epochs=args.epochs,
                      teacher=args.teacher, student=args.student, synthetic=args.synthetic,
                      train_size=args.train_size, test_size=args.test_size, data_dir=args.data_dir)
    stages = plan(req)
    teachers = [r for r in stages[0] if r.role == "teacher"] if len(stages) > 1 else []
    students = [r for stage in stages for r in stage if r.role == "student"]
    base = Path(args.results_dir) if args.results_dir else Path(tempfile.mkdtemp(prefix="kd-cohort-bench-"))
    log = print if args.verbose else (lambda msg: None)

    def env(arm: str) -> RunEnv:
        return RunEnv(results_dir=str(base / arm), data_dir=args.data_dir, device=args.device,
                      deterministic=args.deterministic, measure_repeats=0, log=log)

    try:
        print(f"{len(students)} student runs ({', '.join(r.spec.method for r in students)}) on "
              f"{students[0].spec.data.label}, {students[0].spec.protocol.epochs} epoch(s), {args.student} from {args.teacher}; "
              f"{args.device}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
              f"{platform.processor() or platform.machine()}")
        t0 = time.perf_counter()
        for run in teachers:
            record = execute(run.spec, env("teacher"), run.info)
            if record["status"] != "done":
                print(f"teacher failed: {record.get('error')}")
                return 1
        print(f"teacher(s) trained in {time.perf_counter() - t0:.1f} s (not timed)")
        for arm in ("separate", "cohort"):
            for run in teachers:
                shutil.copytree(RunFolder(base / "teacher", run.run_id).path, RunFolder(base / arm, run.run_id).path)

        # separate runs, one after the other
        separate, t_separate = {}, time.perf_counter()
        for run in students:
            t = time.perf_counter()
            record = execute(run.spec, env("separate"), run.info)
            separate[run.run_id] = (record, time.perf_counter() - t)
        t_separate = time.perf_counter() - t_separate

        # the cohort, then the runs that run apart from it
        members = [r for r in students if cohort.joins(r.spec)]
        apart = [r for r in students if not cohort.joins(r.spec)]
        t = time.perf_counter()
        got = cohort.execute([r.spec for r in members], env("cohort"), [r.info for r in members]) if members else []
        t_cohort = time.perf_counter() - t
        in_cohort = dict(zip((r.run_id for r in members), got))
        t = time.perf_counter()
        for run in apart:
            in_cohort[run.run_id] = execute(run.spec, env("cohort"), run.info)
        t_apart = time.perf_counter() - t

        print(f"\n{'run':<24}{'separate s':>11}  {'status':<8}{'same model.pt':>14}")
        same_all = True
        for run in students:
            rec_s, secs = separate[run.run_id]
            rec_c = in_cohort[run.run_id]
            same = rec_s.get("model_sha256") is not None and rec_s.get("model_sha256") == rec_c.get("model_sha256")
            same_all &= same
            where = "cohort" if cohort.joins(run.spec) else "apart"
            print(f"{run.spec.method + ' (' + where + ')':<24}{secs:>11.2f}  {rec_c['status']:<8}"
                  f"{'yes' if same else 'NO':>14}")
        t_members_separate = sum(separate[r.run_id][1] for r in members)
        t_apart_separate = sum(separate[r.run_id][1] for r in apart)
        print()
        if members:
            print(f"cohort of {len(members)}: separately {t_members_separate:.1f} s, as a cohort {t_cohort:.1f} s, "
                  f"ratio {t_members_separate / t_cohort:.2f}x")
        if apart:
            print(f"apart ({', '.join(r.spec.method for r in apart)}): {t_apart_separate:.1f} s and "
                  f"{t_apart:.1f} s")
        print(f"all {len(students)} runs: separately {t_separate:.1f} s, with the cohort {t_cohort + t_apart:.1f} s, "
              f"ratio {t_separate / (t_cohort + t_apart):.2f}x")
        print("every run identical in both arms" if same_all else "SOME RUNS DIFFER between the arms")
        return 0 if same_all or not args.deterministic else 1
    finally:
        if not args.results_dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
