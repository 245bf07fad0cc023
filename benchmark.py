#!/usr/bin/env python
"""kd-bench command line: plan, launch, status, collect, list.

    python benchmark.py --all --dataset cifar10            # teacher, student baseline, the paper's 20 methods
    python benchmark.py --all --preset smoke                # minutes on a CPU, synthetic data
    python benchmark.py status --all --preset smoke         # NEW / PARTIAL / DONE / FAILED
    python benchmark.py collect                             # rebuild results/<data>/summary.csv
    python benchmark.py --all --launcher slurm --cluster-profile mycluster   # job arrays on a SLURM cluster
    python benchmark.py cancel --all                        # scancel that sweep's queued and running jobs
    python benchmark.py --list                              # the registered methods
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

COMMANDS = ("run", "status", "collect", "list", "measure", "table", "plot", "cancel")


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}")
    return parse


def _seeds(text: str) -> list[int]:
    """`--seeds 0,1,2`, `--seeds 0-4` (an inclusive range) or both: `0-2,7`. Values are checked by `check_args`."""
    import re

    out = []
    for part in (x.strip() for x in text.split(",") if x.strip()):
        one, span = re.fullmatch(r"[+-]?\d+", part), re.fullmatch(r"(\d+)-(\d+)", part)
        if one:
            out.append(int(part))
        elif span and int(span[1]) <= int(span[2]):
            out += range(int(span[1]), int(span[2]) + 1)
        else:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of int or a range low-high (0,1,2 "
                                             f"or 0-4), got {text!r}")
    return out


class _DefaultDataset(str):
    """The value of --dataset when it is not given (cifar10), told apart from `--dataset cifar10`: `--pairs`
    then trains on CIFAR-100, the data of its pairs."""


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="kd-bench: knowledge-distillation benchmark on CIFAR-10/100 "
        "(Kang & Gwak 2020 protocol).", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("command", nargs="?", default="run", choices=COMMANDS,
                   help="run (default): plan and launch; status; collect (summary CSVs); list (methods); "
                   "measure (time finished runs again on this machine); table; plot; cancel (the SLURM jobs "
                   "of the planned runs)")
    what = p.add_argument_group("what to run")
    what.add_argument("--all", action="store_true", help="the paper's Table 1: teacher, student baseline, its 20 "
                      "methods and 4 ensembles (oeckd, ekd, kdfm run when named in --methods)")
    what.add_argument("--methods", type=_csv(str), help="comma-separated method names, instead of --all's 20 (the "
                      "student baseline is always planned, the teacher when a method distils from it); a+b trains "
                      "one student with the losses of both")
    what.add_argument("--list", action="store_true", help="list the registered methods and exit")
    what.add_argument("--dataset", default=_DefaultDataset("cifar10"), help="cifar10 (default; cifar100 with "
                      "--pairs) or cifar100")
    what.add_argument("--pairs", help="teacher-student pairs: crd (the 13 of Tian et al., ICLR 2020, Tables 1 and "
                      "2) or TEACHER:STUDENT[,...]; per pair its teacher, student baseline and every method that "
                      "can run on it (Table CRD)")
    what.add_argument("--preset", default="paper", help="paper (default, 200 epochs), smoke (minutes on CPU), or a "
                      "YAML file with the same keys (a path or a name ending in .yaml, see configs/presets.yaml)")
    what.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                      help="a method's hyperparameter, typed like its default (see --list), e.g. --set st.T=2 "
                      "(repeatable; part of the run id); several values sweep, one run each: --set st.T=1,2,4,8; "
                      "in a combination: --set at+st.at.weight=500")
    what.add_argument("--plugin", action="append", default=[], metavar="FILE.py|MODULE",
                      help="import methods from a Python file or module (its Method subclasses with a `name` are "
                      "registered; repeatable); installed entry points of group kd_bench.methods load by themselves")
    what.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds or a range: 0,1,2 or "
                      "0-4 (default 0)")
    what.add_argument("--epochs", type=int, help="override the preset's epochs (teachers included)")
    what.add_argument("--teacher", help="teacher architecture (default from the preset: resnet110)")
    what.add_argument("--student", help="student architecture (default from the preset: resnet20)")
    what.add_argument("--teacher-checkpoint", help="use this published or earlier teacher instead of training "
                      "one: a kd-bench model.pt, an akamaster-style .th, or a RepDistiller/mdistiller CIFAR-100 "
                      "checkpoint (architecture read from the file)")
    what.add_argument("--pad-mode", choices=("zeros", "reflect"), help="crop padding (paper: zeros)")
    what.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                      help="numeric precision of training and evaluation, for every trained run of the sweep, "
                      "teachers included: fp32 (default, as the paper trained), bf16 (autocast; also on CPU) or "
                      "fp16 (autocast + gradient scaler; meant for CUDA, very slow on CPU). Part of the run id "
                      "(fp32 runs keep their ids); the preset's protocol may set it too")
    what.add_argument("--ensemble", type=_csv(str), action="append", default=[],
                      help="an extra ensemble of methods, e.g. at,logits,st (repeatable); the paper's four "
                      "are planned whenever their members are")
    what.add_argument("--voting", default="logits", choices=("logits", "probs", "hard"),
                      help="ensemble voting: summed logits (paper eq. 9, default), mean probabilities, majority")
    rep = p.add_argument_group("reporting")
    rep.add_argument("--select", default="best", choices=("best", "last"),
                     help="tables: best epoch on the test split (as the paper) or last epoch")
    rep.add_argument("--cifar10-label", help="tables: the results/<label> holding the CIFAR-10 column "
                     "(default: the dataset planned by the other flags)")
    rep.add_argument("--cifar100-label", help="tables: the results/<label> holding the CIFAR-100 column")
    rep.add_argument("--holm", action="store_true", help="tables: also a paired t-test of every row against the "
                     "student baseline (same seeds), with Holm's correction over the rows of each column")
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
    ex.add_argument("--launcher", default="debug", choices=("debug", "local", "slurm"),
                    help="debug: in this process (default); local: one process per run, a pool of GPUs or "
                    "CPU workers; slurm: job arrays through submitit (needs --cluster-profile)")
    ex.add_argument("--retries", type=int, default=1,
                    help="try a crashed run again at most this many times, from its last checkpoint, counted "
                    "over every sweep (default 1; a divergence is never retried)")
    ex.add_argument("--workers", type=int, help="local launcher, CPU: number of worker processes")
    ex.add_argument("--gpus", type=_csv(int), help="local launcher: GPU ids (default: all visible with --device cuda)")
    ex.add_argument("--runs-per-gpu", type=int, default=1, help="local launcher: runs packed on each GPU")
    ex.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ex.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower on GPU)")
    ex.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction, default=None,
                    help="channels-last memory format for networks and batches (default: on with CUDA, off on "
                    "CPU; --no-channels-last turns it off); changes results by float rounding only")
    ex.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                    help="torch.compile the student's forward (backend inductor unless named, e.g. aot_eager to "
                    "debug); inductor needs a C++ compiler on CPU and Triton on CUDA, refused up front otherwise")
    ex.add_argument("--results-dir", default="results", help="where run folders and summaries live")
    ex.add_argument("--no-cohort", dest="cohort", action="store_false", help="train each run alone, not in cohorts")
    sl = p.add_argument_group("slurm launcher (settings from the cluster profile, these override it)")
    sl.add_argument("--cluster-profile", help="slurm/profiles/<name>.yaml or a path to such a file "
                    "(see slurm/profiles/example.yaml)")
    sl.add_argument("--wait", action="store_true", help="stay until every submitted job has ended, then "
                    "collect (default: submit and return; follow with `status`)")
    sl.add_argument("--partition")
    sl.add_argument("--account")
    sl.add_argument("--qos")
    sl.add_argument("--timeout-min", type=int, help="time limit of one job; longer runs requeue themselves")
    sl.add_argument("--gpus-per-run", type=int)
    sl.add_argument("--cpus-per-run", type=int)
    sl.add_argument("--mem-gb", type=float)
    sl.add_argument("--constraint")
    sl.add_argument("--array-parallelism", type=int, help="at most this many runs of one array at once")
    sl.add_argument("--slurm-set", action="append", metavar="KEY=VALUE",
                    help="any other profile setting, e.g. --slurm-set setup='[module load cuda]' (repeatable)")
    return p


def slurm_profile(args) -> dict:
    from runner.slurm import load_profile, parse_set

    overrides = parse_set(args.slurm_set)
    overrides.update({k: getattr(args, k) for k in ("partition", "account", "qos", "timeout_min", "gpus_per_run",
                                                      "cpus_per_run", "mem_gb", "constraint", "array_parallelism")
                      if getattr(args, k) is not None})
    return load_profile(args.cluster_profile, overrides)


def expand_methods(names: list[str] | None) -> list[str] | None:
    """`--methods` with named sets (`modern` = dkd,dist,lskd,reviewkd) replaced by their members, each once, and
    combinations (`st+at`) named as their runs record them (`at+st`)."""
    from methods.registry import SETS, canonical_name

    if names is None:
        return None
    return list(dict.fromkeys(canonical_name(m) for name in names for m in SETS.get(name, (name,))))


def register_plugins(args) -> None:
    """The methods of installed entry points (group kd_bench.methods) and of each --plugin, registered before
    anything is listed or planned. A broken entry point is reported and skipped; a bad --plugin is an error."""
    from methods.registry import load_entry_points, load_plugin

    _, problems = load_entry_points()
    for problem in problems:
        print(f"warning: {problem}; its method is not available", file=sys.stderr)
    for target in args.plugin:
        names = load_plugin(target)
        print(f"plugin {target}: method(s) {', '.join(names)}", file=sys.stderr)


def plan_request(args):
    from core.errors import UserError
    from runner.plan import PlanRequest

    if args.methods is None and not args.all:
        raise UserError("say what to run: --all (the paper's Table 1), or --methods a,b (see --list)")
    if args.methods is not None and not args.methods:
        raise UserError("--methods names no method: give a comma-separated list (see --list)")
    methods = expand_methods(args.methods)
    pairs = None
    if getattr(args, "pairs", None):
        from runner.pairs import parse_pairs

        pairs = parse_pairs(args.pairs)
        if isinstance(args.dataset, _DefaultDataset):
            args.dataset = "cifar100"  # the pairs' data set (Tian et al.), unless --dataset says otherwise
    if args.all and methods is not None:
        print(f"--methods given: planning {','.join(methods)} instead of the paper's 20", file=sys.stderr)
    return PlanRequest(dataset=str(args.dataset), preset=args.preset, methods=methods,
                       seeds=args.seeds, epochs=args.epochs, teacher_checkpoint=args.teacher_checkpoint,
                       teacher=args.teacher, student=args.student, synthetic=args.synthetic,
                       train_size=args.train_size, test_size=args.test_size, pad_mode=args.pad_mode,
                       ensembles=[tuple(c) for c in args.ensemble], voting=args.voting,
                       data_dir=args.data_dir, download=args.download, sets=list(args.set), pairs=pairs,
                       precision=getattr(args, "precision", None))


def cmd_list(args) -> int:
    from methods import ON_REQUEST, REGISTRY, get_method
    from methods.registry import SETS, plugin_source
    from runner.plan import _flat, _show

    rows = [(n, get_method(n)) for n in REGISTRY]
    width = max(len(n) for n, _ in rows) + 1
    for name, cls in rows:
        source = plugin_source(name)
        print(f"{name + ('*' if name in ON_REQUEST else ''):<{width}}  {cls.kind:<9}  {cls.display_name}: "
              f"{cls.description}  [{cls.citation}]" + (f"  (plugin {source})" if source else ""))
        if cls.defaults:
            print(f"{'':<{width}}  --set " + " ".join(f"{name}.{k}={_show(v, True)}"
                                                for k, v in _flat(cls.defaults).items()))
    print(f"* not part of --all: run when named, e.g. --methods {','.join(ON_REQUEST)}")
    for name, members in SETS.items():
        print(f"--methods {name} = {','.join(members)}")
    print("--methods a+b trains one student with the losses of a and b (one run, one row: AT+Soft target for "
          "at+st); --set at+st.at.weight=500 sets a component's hyperparameter")
    return 0


def _check_results_dir(path: str) -> None:
    from core.errors import UserError

    p = Path(path)
    try:
        (p / "runs").mkdir(parents=True, exist_ok=True)
        probe = p / "runs" / f".write-test-{os.getpid()}"  # per process: concurrent sweeps share the folder
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"results folder {p} is not writable ({e.strerror}): pass --results-dir with a "
                        "folder you can write to")


def cmd_status(args) -> int:
    from data import dataset_info
    from runner.claims import claim_alive
    from runner.claims import describe as describe_claim
    from runner.evaluate import at_chance
    from runner.folder import RunFolder, State, UnreadableFolder
    from runner.plan import plan
    from runner.slurm import slurm_status

    stages = plan(plan_request(args))
    counts = {s: 0 for s in State}
    jobs = slurm_status(args.results_dir, [r.run_id for stage in stages for r in stage])
    states = {r.run_id: RunFolder(args.results_dir, r.run_id).state() for stage in stages for r in stage}
    for stage in stages:
        for run in stage:
            folder = RunFolder(args.results_dir, run.run_id)
            state = states[run.run_id]
            counts[state] += 1
            details = []
            failed_needs = [d for d in run.depends if states.get(d) == State.FAILED]
            if state != State.DONE and failed_needs:
                details.append(f"blocked: needs {', '.join(failed_needs)} (FAILED)")
            if state == State.DONE:
                final = folder.read_final()
                classes = dataset_info(run.spec.data.dataset).num_classes
                if at_chance(final.get("best_top1", 0.0), classes):
                    details.append(f"SUSPICIOUS: top-1 {final.get('best_top1')} is at chance level "
                                   f"({100 / classes:g} % for {classes} classes)")
            if state == State.PARTIAL:
                try:
                    folder.read_spec()
                except UnreadableFolder as e:
                    details.append(f"unreadable: {e}")
                details.append(f"epoch {len(folder.read_epochs())}")
                holder = claim_alive(folder.path)
                if holder is not None:
                    details.append(f"running: {describe_claim(holder)}")
                problem = folder.final_problem()
                if problem:
                    details.append(problem)
            elif state == State.FAILED:
                final = folder.read_final()
                details.append(f"failed {final.get('failures', 1)}x: {final.get('error', '')}")
            if run.run_id in jobs:
                details.append(f"[SLURM {jobs[run.run_id]}]")
            print(f"{state.value:<8} {run.role:<8} {run.spec.describe()} {' '.join(details)}".rstrip())
    print("  ".join(f"{s.value} {n}" for s, n in counts.items()))
    return 0


def cmd_collect(args) -> int:
    from report.collect import markdown_overview, run_rows, write_summaries

    written = write_summaries(args.results_dir)
    for label, path in written.items():
        print(f"wrote {path}")
    print(markdown_overview(run_rows(args.results_dir)))
    return 0


def _labels(args) -> dict:
    """Which results/<label> folders feed the CIFAR-10 and CIFAR-100 columns of the tables: by default the data
    the other flags (preset, sizes, --synthetic, --data-dir) would train on, fingerprint included. The dataset
    of --dataset must be readable; the other one, when its data is absent or refused, gets no column (a note
    says why; --cifar10-label/--cifar100-label name a folder instead)."""
    from core.errors import UserError
    from runner.plan import PlanRequest, data_spec

    def label(dataset):
        given = getattr(args, f"{dataset}_label")
        if given:
            return given
        try:
            return data_spec(PlanRequest(dataset=dataset, preset=args.preset, synthetic=args.synthetic,
                                         train_size=args.train_size, test_size=args.test_size,
                                         data_dir=args.data_dir,
                                         download=args.download and dataset == args.dataset)).label
        except UserError as e:
            if dataset == args.dataset:
                raise
            print(f"note: no {dataset} column in the tables: {e}", file=sys.stderr)
            return None

    return {"cifar10": label("cifar10"), "cifar100": label("cifar100")}


def cmd_table(args) -> int:
    from methods.registry import SETS
    from report.collect import measurement_rows, run_rows
    from report.table_m import write_table_m
    from report.tables import write_tables

    labels = _labels(args)
    out = Path(args.results_dir) / "tables"
    summary = run_rows(args.results_dir)
    paths = write_tables(summary, measurement_rows(args.results_dir), labels, out, args.select, holm=args.holm)
    if summary["method"].isin(SETS["modern"]).any():  # Table M: the paper's 20 beside the later methods
        paths += write_table_m(summary, labels, out, args.select)
    for path in paths:
        print(f"wrote {path}")
    if getattr(args, "pairs", None):  # Table CRD: the pairs' runs, on the pairs' data set
        from report.table_crd import write_table_crd
        dataset = "cifar100" if isinstance(args.dataset, _DefaultDataset) else args.dataset
        paths += write_table_crd(run_rows(args.results_dir), labels.get(dataset), out, args.select)
    table1 = next((p for p in paths if Path(p).name == "table1.md"), None)
    if table1:
        print(Path(table1).read_text())
    return 0


def cmd_plot(args) -> int:
    from core.errors import UserError
    from report.collect import label_folder, measurement_rows, run_rows, training_curves
    from report.plots import write_plots

    label = _labels(args)[args.dataset]
    summary = run_rows(args.results_dir)
    summary = summary[summary.dataset == label]
    meas = measurement_rows(args.results_dir)
    if not meas.empty:
        meas = meas[meas.dataset == label]
    try:
        out = label_folder(args.results_dir, label) / "plots"
    except ValueError as e:
        raise UserError(f"{e}: name the folder under {args.results_dir} that holds the summary") from None
    for path in write_plots(summary, meas, training_curves(args.results_dir, label), out):
        print(f"wrote {path}")
    return 0


def cmd_measure(args) -> int:
    from runner.env import RunEnv
    from runner.folder import RunFolder, readable_runs
    from runner.kinds import remeasure

    env = RunEnv(results_dir=args.results_dir, data_dir=args.data_dir, download=args.download,
                 device=args.device)
    if args.all or args.methods:
        from runner.plan import plan
        folders = [RunFolder(args.results_dir, r.run_id) for stage in plan(plan_request(args)) for r in stage]
    else:
        folders = [folder for folder, _, _ in readable_runs(args.results_dir)]
    n = 0
    for folder in folders:
        rec = remeasure(folder, env)
        if rec:
            n += 1
            print(f"{rec['method']:<16} seed {rec['seed']}  {rec['inference_time_s']:.3f} s  "
                  f"{rec['params'] / 1e6:.3f} M params  {rec['device_name']}")
    print(f"measured {n} finished run(s); rows are added to measurements.csv by collect")
    return cmd_collect(args)


def cmd_cancel(args) -> int:
    from runner.plan import plan
    from runner.slurm import cancel

    stages = plan(plan_request(args))
    cancel(args.results_dir, [r.run_id for stage in stages for r in stage])
    return 0


def launch_options(args):
    from runner.launchers import LaunchOptions

    profile = slurm_profile(args) if args.launcher == "slurm" else {}
    return LaunchOptions(workers=args.workers, gpus=args.gpus, runs_per_gpu=args.runs_per_gpu, profile=profile,
                         wait=args.wait, cohort=args.cohort)


def cmd_run(args) -> int:
    from runner.env import RunEnv, cached_splits, check_compile, check_device
    from runner.launchers import make_launcher
    from runner.plan import plan

    check_device(args.device)
    check_compile(args.compile, args.device)
    stages = plan(plan_request(args))
    _check_results_dir(args.results_dir)
    _warn_idle_gpus(args)
    env = RunEnv(results_dir=args.results_dir, data_dir=args.data_dir, download=args.download,
                 device=args.device, deterministic=args.deterministic, channels_last=args.channels_last,
                 compile=args.compile)
    precisions = {r.spec.protocol.precision for stage in stages for r in stage if r.spec.kind == "train"}
    if "fp16" in precisions and env.device == "cpu":
        print("note: fp16 on CPU works (autocast + gradient scaler) but is many times slower than fp32: CPUs have "
              "few float16 kernels; bf16 is the reduced precision for CPUs", file=sys.stderr)
    launcher = make_launcher(args.launcher, env, args.retries, launch_options(args))
    data = stages[0][0].spec.data
    cached_splits(data, env.data_dir, env.download)  # a missing dataset fails here, before any run starts
    n = sum(len(s) for s in stages)
    print(f"planned {n} runs on {data.label} ({', '.join(f'{len(s)} {s[0].role}s' for s in stages)}), "
          f"launcher {args.launcher}")
    records = launcher.launch(stages)
    if not launcher.ends_runs:  # submitted: only what cannot run (failed, or waiting on a failed run) is an error
        bad = [r for r in records if r["status"] not in ("done", "submitted", "queued")]
        for r in bad:
            print(f"not submitted: {r['run_id']}: {r.get('error')}", file=sys.stderr)
        return 1 if bad else 0
    failed = [r for r in records if r["status"] != "done"]
    cmd_collect(args)
    cmd_table(args)
    cmd_plot(args)
    if failed:
        print(f"{len(failed)} run(s) did not finish: " + "; ".join(f"{r['run_id']}: {r.get('error')}"
                                                                 for r in failed), file=sys.stderr)
        return 1
    return 0


def _warn_idle_gpus(args) -> None:
    """A sweep about to train on the CPU of a machine with a GPU is almost always a forgotten --device: say so
    before the first run starts (the sweep goes on: a CPU run may be what the user wants)."""
    import torch

    if args.launcher == "slurm" or args.gpus or not args.device.startswith("cpu") or not torch.cuda.is_available():
        return
    print(f"warning: this sweep trains on the CPU while {torch.cuda.device_count()} CUDA GPU(s) are visible; "
          "add --device cuda (or --gpus 0,1,...) to train on them", file=sys.stderr)


def check_args(args) -> None:
    """Numbers the parser cannot judge, refused before anything is planned or written."""
    from core.errors import UserError

    limits = {"--retries": (args.retries, 0), "--workers": (args.workers, 1), "--runs-per-gpu": (args.runs_per_gpu, 1),
              "--epochs": (args.epochs, 1)}
    for flag, (value, low) in limits.items():
        if value is not None and value < low:
            raise UserError(f"{flag} must be at least {low}, got {value}")
    if not args.seeds:
        raise UserError("--seeds names no seed: give a comma-separated list, e.g. --seeds 0,1,2")
    if any(s < 0 for s in args.seeds):
        raise UserError(f"--seeds must be 0 or more, got {args.seeds}")
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds names a seed twice: {args.seeds}")
    if args.gpus is not None and (not args.gpus or any(g < 0 for g in args.gpus)):
        raise UserError(f"--gpus must list GPU indices (0, 1, ...), got {args.gpus}")


def main(argv=None) -> int:
    from core.errors import UserError

    prog = Path(sys.argv[0]).name if argv is None else None  # `kd-bench` or `benchmark.py`, as invoked
    args = build_parser(prog).parse_args(argv)
    if args.list:
        args.command = "list"
    try:
        register_plugins(args)
        check_args(args)
        commands = {"run": cmd_run, "status": cmd_status, "collect": cmd_collect, "list": cmd_list,
                    "measure": cmd_measure, "table": cmd_table, "plot": cmd_plot, "cancel": cmd_cancel}
        return commands[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kd-bench --list | head`: the reader has gone, which is not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush of stdout must not fail again
        return 0
    except OSError as e:  # a folder the user named cannot be written (permissions, a full disk)
        print(f"error: {e.strerror or e} ({e.filename or 'a file'}): choose a folder you can write to "
              "(--results-dir) or free some space", file=sys.stderr)
        return 2
    except Exception as e:  # a bug of ours: one line for the user, the traceback in a file for the report
        print(f"error: unexpected {type(e).__name__}: {e}; the details are in {_save_traceback(args)}; "
              "please report it", file=sys.stderr)
        return 1


def _save_traceback(args) -> str:
    import tempfile
    import time
    import traceback

    text = f"kd-bench {' '.join(sys.argv[1:])}\n{traceback.format_exc()}"
    for folder in (Path(getattr(args, "results_dir", "results")) / "errors", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"kd-bench-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            path.write_text(text)
            return str(path)
        except OSError:
            continue
    return "(nowhere: no folder is writable)"


if __name__ == "__main__":
    sys.exit(main())
