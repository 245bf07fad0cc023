#!/usr/bin/env python
"""kd-bench command line: plan, launch, status, collect, list.

    python benchmark.py --all --dataset cifar10            # teacher, student baseline, every method
    python benchmark.py --all --preset smoke                # minutes on a CPU, synthetic data
    python benchmark.py status --all --preset smoke         # NEW / PARTIAL / DONE / FAILED
    python benchmark.py collect                             # rebuild results/<data>/summary.csv
    python benchmark.py --list                              # the registered methods
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

COMMANDS = ("run", "status", "collect", "list")


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}")
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark.py", description="kd-bench: knowledge-distillation benchmark on CIFAR-10/100 "
        "(Kang & Gwak 2020 protocol).", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("command", nargs="?", default="run", choices=COMMANDS,
                   help="run (default): plan and launch; status; collect; list")
    what = p.add_argument_group("what to run")
    what.add_argument("--all", action="store_true", help="teacher, student baseline and every registered method")
    what.add_argument("--methods", type=_csv(str), help="comma-separated method names (the teacher and the "
                      "student baseline are always planned)")
    what.add_argument("--list", action="store_true", help="list the registered methods and exit")
    what.add_argument("--dataset", default="cifar10", help="cifar10 (default) or cifar100")
    what.add_argument("--preset", default="paper", help="paper (default, 200 epochs) or smoke (minutes on CPU)")
    what.add_argument("--seeds", type=_csv(int), default=[0], help="comma-separated seeds (default 0)")
    what.add_argument("--epochs", type=int, help="override the preset's epochs (teachers included)")
    what.add_argument("--teacher", help="teacher architecture (default from the preset: resnet110)")
    what.add_argument("--student", help="student architecture (default from the preset: resnet20)")
    what.add_argument("--teacher-checkpoint", help="use this published or earlier teacher (model.pt or an "
                      "akamaster-style .th) instead of training one")
    what.add_argument("--pad-mode", choices=("zeros", "reflect"), help="crop padding (paper: zeros)")
    data = p.add_argument_group("data")
    data.add_argument("--data-dir", default=os.environ.get("KDBENCH_DATA", "./datasets"),
                      help="folder with cifar-10-batches-py / cifar-100-python or array files (default "
                      "./datasets or $KDBENCH_DATA)")
    data.add_argument("--download", action="store_true", help="download CIFAR through torchvision if missing")
    data.add_argument("--synthetic", action="store_true", default=None,
                      help="use the project's synthetic CIFAR-shaped data")
    data.add_argument("--train-size", type=int, help="use a fixed subset of the training split")
    data.add_argument("--test-size", type=int, help="use a fixed subset of the test split")
    ex = p.add_argument_group("execution (not part of a run's identity)")
    ex.add_argument("--launcher", default="debug", choices=("debug", "local"),
                    help="debug: in this process (default); local: a pool of worker processes")
    ex.add_argument("--workers", type=int, help="local launcher, CPU: number of worker processes")
    ex.add_argument("--gpus", type=_csv(int), help="local launcher: GPU ids (default: all visible with --device cuda)")
    ex.add_argument("--runs-per-gpu", type=int, default=1, help="local launcher: runs packed on each GPU")
    ex.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ex.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower on GPU)")
    ex.add_argument("--results-dir", default="results", help="where run folders and summaries live")
    return p


def plan_request(args):
    from runner.plan import PlanRequest

    if args.methods is None and not args.all:
        raise SystemExit("say what to run: --all, or --methods a,b (see --list)")
    return PlanRequest(dataset=args.dataset, preset=args.preset, methods=None if args.all else args.methods,
                       seeds=args.seeds, epochs=args.epochs, teacher_checkpoint=args.teacher_checkpoint,
                       teacher=args.teacher, student=args.student, synthetic=args.synthetic,
                       train_size=args.train_size, test_size=args.test_size, pad_mode=args.pad_mode)


def cmd_list(args) -> int:
    from methods import REGISTRY, get_method

    rows = [(n, get_method(n).kind, get_method(n).description, get_method(n).paper) for n in REGISTRY]
    width = max(len(r[0]) for r in rows)
    for name, kind, desc, paper in rows:
        print(f"{name:<{width}}  {kind:<9}  {desc}  [{paper}]")
    return 0


def _check_results_dir(path: str) -> None:
    from runner.errors import UserError

    p = Path(path)
    try:
        (p / "runs").mkdir(parents=True, exist_ok=True)
        probe = p / "runs" / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"results folder {p} is not writable ({e.strerror}): pass --results-dir with a "
                        "folder you can write to")


def cmd_status(args) -> int:
    from runner.folder import RunFolder, State
    from runner.plan import plan

    stages = plan(plan_request(args))
    counts = {s: 0 for s in State}
    for stage in stages:
        for run in stage:
            folder = RunFolder(args.results_dir, run.run_id)
            state = folder.state()
            counts[state] += 1
            detail = ""
            if state == State.PARTIAL:
                detail = f"epoch {len(folder.read_epochs())}"
            elif state == State.FAILED:
                detail = folder.read_final().get("error", "")
            print(f"{state.value:<8} {run.role:<8} {run.spec.describe()} {detail}")
    print("  ".join(f"{s.value} {n}" for s, n in counts.items()))
    return 0


def cmd_collect(args) -> int:
    from report.collect import markdown_overview, run_rows, write_summaries

    written = write_summaries(args.results_dir)
    for label, path in written.items():
        print(f"wrote {path}")
    print(markdown_overview(run_rows(args.results_dir)))
    return 0


def cmd_run(args) -> int:
    from runner.launch import launch_debug, launch_local
    from runner.plan import plan
    from runner.train import RunEnv, cached_splits

    stages = plan(plan_request(args))
    _check_results_dir(args.results_dir)
    env = RunEnv(results_dir=args.results_dir, data_dir=args.data_dir, download=args.download,
                 device=args.device, deterministic=args.deterministic)
    data = stages[0][0].spec.data
    cached_splits(data, env.data_dir, env.download)  # a missing dataset fails here, before any run starts
    n = sum(len(s) for s in stages)
    print(f"planned {n} runs on {data.label} ({', '.join(f'{len(s)} {s[0].role}s' for s in stages)}), "
          f"launcher {args.launcher}")
    if args.launcher == "local":
        records = launch_local(stages, env, workers=args.workers, gpus=args.gpus, runs_per_gpu=args.runs_per_gpu)
    else:
        records = launch_debug(stages, env)
    failed = [r for r in records if r["status"] != "done"]
    cmd_collect(args)
    if failed:
        print(f"{len(failed)} run(s) did not finish: " + "; ".join(f"{r['run_id']}: {r.get('error')}"
                                                                 for r in failed), file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    from runner.errors import UserError

    args = build_parser().parse_args(argv)
    if args.list:
        args.command = "list"
    try:
        return {"run": cmd_run, "status": cmd_status, "collect": cmd_collect, "list": cmd_list}[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
