#!/usr/bin/env python
"""One training step of every registered method, timed against this project's own CE student step.

The harness is the one the step-time targets are stated in (issue "the whole table for a fraction of its
cost"), so its ratios carry across machines:
- one fixed batch of N(0, 1) images with random labels (batch 128 by default);
- the teacher's BatchNorm statistics from one train-mode pass over that batch (well scaled, as a trained
  teacher's would be), then the teacher in eval mode;
- FSP and AB timed in their init stage, FT in its main stage, every other method in its main stage;
- BSS with the labels set to the teacher's predictions and the student first fitted to them, so that its
  attack actually runs (it attacks only samples both networks classify correctly), and timed at its first
  epoch past the warm-up (its loss weight is 0 before, and then no attack is made);
- the methods are measured in rounds, method after method, `--rounds` times: each round gives every method
  `--warmup` steps, then `--repeats` timed steps; the figure is the median over all timed steps. Alternating
  keeps a slow drift of the machine from landing on one method.
The printed ratio is method step / CE step measured in this run. Peak memory: `torch.cuda.max_memory_allocated`
on a GPU; on the CPU, with `--memory`, how far the resident memory of a fresh process rises over two steps
above what it holds after a first one (the resident high-water mark, reset before the two steps).

    python bench/step_time.py [--methods logits,at,crd] [--batch 128] [--device cuda] [--memory]

Time only on a quiet machine: nothing else running (2 cores here). A figure taken on a loaded machine is not a
result.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import Batch  # noqa: E402
from methods import get_method, method_names  # noqa: E402
from methods.base import Context, StepInfo  # noqa: E402
from models import build_seeded  # noqa: E402
from runner.spec import Protocol  # noqa: E402
from models.frozen import frozen_teacher  # noqa: E402
from runner.train import build_method, make_optimizer  # noqa: E402

STAGE_ROLE = {"fsp": "init", "ab": "init"}  # timed in this stage; every other method in its main stage
NUM_CLASSES = 10


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Harness:
    """One method on the fixed batch, ready to step."""

    def __init__(self, name: str, args, device: torch.device):
        cls = get_method(name)
        hp = cls.resolve_hparams({}, "cifar10")
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, 3, 32, 32, generator=gen).to(device)
        y = torch.randint(0, NUM_CLASSES, (args.batch,), generator=gen).to(device)
        student = build_seeded(cls.student_arch(hp, args.student), NUM_CLASSES, 0).to(device)
        teacher = None
        if cls.needs_teacher:
            teacher = build_seeded(args.teacher, NUM_CLASSES, 1).to(device)
            with torch.no_grad():
                teacher.train()(x)  # BatchNorm statistics of this batch
            teacher = frozen_teacher(teacher.eval(), device)  # as the runner prepares a loaded teacher
            if name == "bss":  # labels the teacher gets right, and a student that agrees: the attack runs
                with torch.no_grad():
                    y = teacher(x)[0].argmax(1)
                self._fit(student, x, y)
        extra = {a: frozen_teacher(build_seeded(a, NUM_CLASSES, 2).to(device).eval(), device)
                 for a in cls.teacher_archs(hp)}
        n_train = 50_000
        ctx = Context(num_classes=NUM_CLASSES, dataset="cifar10", seed=0, device=device,
                      train_labels=torch.randint(0, NUM_CLASSES, (n_train,), generator=gen).to(device),
                      epochs=200, generator=torch.Generator().manual_seed(3), extra_teachers=extra)
        self.method = build_method(name, hp, student, teacher, ctx, x[:2])
        protocol = Protocol()
        stages = self.method.stages(protocol)
        role = STAGE_ROLE.get(name, "main")
        index = next(i for i, s in enumerate(stages) if s.role == role)
        stage = stages[index]
        start = sum(s.epochs for s in stages[:index])
        total = sum(s.epochs for s in stages)
        self.info = StepInfo(start, total, stage, 0)
        if hasattr(self.method, "weight_at"):  # BSS: no attack in its warm-up; time its first epoch with one
            first = next(e for e in range(total) if self.method.weight_at(StepInfo(e, total, stage, e)) > 0)
            self.info = StepInfo(first, total, stage, first)
        self.optimizer = make_optimizer(list(self.method.stage_parameters(stage)), protocol, stage)
        self.batch = Batch(x, y, torch.randperm(n_train, generator=gen)[: args.batch].to(device))
        self.device = device
        self.method.train(True)

    @staticmethod
    def _fit(student, x, y, steps: int = 60) -> None:
        opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(student(x)[0], y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    def steps(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            _sync(self.device)
            t0 = time.perf_counter()
            self.method.train_step(self.batch, self.info, self.optimizer)
            _sync(self.device)
            times.append(time.perf_counter() - t0)
        return times


def peak_rss_mb(name: str, args) -> float:
    """CPU: how far a fresh process's resident memory rises while `name` takes two steps, above what it holds after
    a first step (which builds momentum buffers and kernels): the resident high-water mark is reset before the two
    steps (/proc/self/clear_refs, as bench/side_by_side.py does), so the import and build peaks are not counted."""
    code = ("import sys; from pathlib import Path; "
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            "import argparse, step_time as st; from side_by_side import _status_kb; "
            f"a = argparse.Namespace(**{vars(args)!r}); "
            f"h = st.Harness({name!r}, a, st.torch.device('cpu')); h.steps(1); "
            "Path('/proc/self/clear_refs').write_text('5'); before = _status_kb('VmRSS:'); h.steps(2); "
            "print((_status_kb('VmHWM:') - before) / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return max(0.0, float(out.stdout.strip().splitlines()[-1]))


def environment(device: torch.device) -> dict:
    return {"torch": torch.__version__, "device": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or platform.machine(), "threads": torch.get_num_threads(), "python": platform.python_version(),
            "host": platform.node(), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", help="comma-separated (default: every registered method)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--student", default="resnet20")
    p.add_argument("--teacher", default="resnet110")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--memory", action="store_true", help="CPU: also measure each method's peak memory")
    p.add_argument("--json", help="also write the rows and the environment to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = args.methods.split(",") if args.methods else method_names(include_baseline=True)
    if "ce" not in names:
        names = ["ce", *names]
    print(f"building {len(names)} pairs ({args.teacher} -> {args.student}, batch {args.batch}) ...", file=sys.stderr)
    harnesses = {n: Harness(n, args, device) for n in names}
    times = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            harnesses[n].steps(args.warmup)
            times[n] += harnesses[n].steps(args.repeats)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    ce = statistics.median(times["ce"])
    rows = []
    for n in names:
        row = {"method": n, "step_s": statistics.median(times[n]), "ratio_to_ce": statistics.median(times[n]) / ce}
        if device.type == "cuda":
            row["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        elif args.memory:
            row["peak_mb"] = peak_rss_mb(n, args)
        rows.append(row)
    env = environment(device)
    print(f"\nOne training step, {args.teacher} -> {args.student}, batch {args.batch}, "
          f"median of {args.rounds}x{args.repeats} steps after warm-up; {env['device_name']}, "
          f"{env['threads']} threads, torch {env['torch']}, {env['when']}\n")
    mem = "peak_mb" in rows[0]
    print("| method | step (s) | step / CE step |" + (" peak memory of the step (MB) |" if mem else ""))
    print("|---|---:|---:|" + ("---:|" if mem else ""))
    for row in rows:
        print(f"| {row['method']} | {row['step_s']:.4f} | {row['ratio_to_ce']:.2f} |"
              + (f" {row['peak_mb']:.0f} |" if mem else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
