#!/usr/bin/env python
"""Students side by side: K same-architecture students trained as one grouped network vs one after another.

Why (issue 12, item 4): a cohort (runner/cohort.py) trains K students over one batch stream, each a separate
ResNet-20 with its own SGD, so a step is K small forwards and backwards of narrow convolutions. The K networks can
run as one, as the ensemble fusion does for inference (models/fused.py): member j owns channel group j of every
layer (the stem is one convolution with K x 16 outputs over the shared input, every later one has `groups=K`,
BatchNorm runs over K x C channels, the heads are one batched matrix product), and one SGD steps everything. It is
exact, not an approximation: the loss is the sum of the members' losses, so each member's gradient is its own;
BatchNorm statistics are per channel; SGD with momentum, Nesterov and weight decay is elementwise, so one
optimiser over the concatenated tensors is K optimisers. The other way is `torch.func`: `stack_module_state` +
`vmap(functional_call)`. Both are checked first (members' weights and buffers after a few steps from the same
start on the same batches; float64 for exactness, float32 against float32's own rounding error;
tests/test_side_by_side.py), then one CE training step of each way is timed, in alternating rounds. Memory: one
network holds all K members' activations at once, separate ones one member's at a time (`--memory` measures it).

    python bench/side_by_side.py                                   # K = 1,2,4,8, batch 128, CPU
    python bench/side_by_side.py --ks 1,2,4,8 --memory --json side_by_side.json
    python bench/side_by_side.py --device cuda --ks 1,2,4,8,16     # channels-last by default there, as runs are

Build it into the cohort only if the ratio wins on the target device. Time only on a quiet machine: a figure
taken on a loaded machine is not a result.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import CifarResNet, build_seeded  # noqa: E402
from models.fused import GroupedBlock  # noqa: E402
from runner.measure import device_name  # noqa: E402

SGD = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)  # the protocol's (runner/spec.py)
CLASSES = 10


class GroupedConvBN(nn.Module):
    """Member j's conv + BatchNorm, for every j, as one convolution (`groups=K`, or 1 over a shared input) and
    one BatchNorm over the K x C channels; `names` are the members' (conv, bn) module names, to unstack."""

    def __init__(self, pairs, names: tuple[str, str], shared_input: bool = False):
        super().__init__()
        conv, bn = pairs[0]
        assert conv.bias is None and conv.groups == 1
        self.names, self.stride, self.padding = names, conv.stride, conv.padding
        self.groups = 1 if shared_input else len(pairs)
        self.weight = nn.Parameter(torch.cat([c.weight.detach() for c, _ in pairs]))
        self.bn = nn.BatchNorm2d(len(pairs) * bn.num_features, bn.eps, bn.momentum, device=bn.weight.device,
                                 dtype=bn.weight.dtype)
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(self.bn, key).data.copy_(torch.cat([getattr(b, key).detach() for _, b in pairs]))
        self.bn.num_batches_tracked.copy_(bn.num_batches_tracked)

    def forward(self, x):
        return self.bn(F.conv2d(x, self.weight, None, self.stride, self.padding, groups=self.groups))


def trainable_conv(prefix: str):
    """`models.fused.GroupedBlock`'s layer builder for block `prefix` ("layer1.0"): trainable conv + BatchNorm,
    named as the members' modules so that `member_state` can unstack them."""
    return lambda pairs, names: GroupedConvBN(pairs, tuple(f"{prefix}.{n}" for n in names))


class GroupedResNet(nn.Module):
    """K CIFAR ResNets of one architecture as one trainable network: (B, 3, H, W) -> (K, B, classes) logits."""

    def __init__(self, members: list[CifarResNet]):
        super().__init__()
        assert all(type(m) is CifarResNet for m in members), "CIFAR ResNets only (models/resnet.py)"
        self.k = len(members)
        self.stem = GroupedConvBN([(m.conv1, m.bn1) for m in members], ("conv1", "bn1"), shared_input=True)
        self.blocks = nn.Sequential(*[GroupedBlock(list(blocks), trainable_conv(f"{layer}.{i}"))
                                      for layer in ("layer1", "layer2", "layer3")
                                      for i, blocks in enumerate(zip(*(getattr(m, layer) for m in members)))])
        self.fc_weight = nn.Parameter(torch.stack([m.linear.weight.detach() for m in members]))  # (K, classes, C)
        self.fc_bias = nn.Parameter(torch.stack([m.linear.bias.detach() for m in members]))      # (K, classes)

    def forward(self, x):
        out = self.blocks(F.relu(self.stem(x)))
        pooled = out.mean((2, 3)).reshape(len(x), self.k, -1).transpose(0, 1)  # (K, B, C)
        return torch.baddbmm(self.fc_bias.unsqueeze(1), pooled, self.fc_weight.transpose(1, 2))

    def member_state(self, j: int) -> dict[str, torch.Tensor]:
        """Member j's state dict, named as a CifarResNet's."""
        out = {"linear.weight": self.fc_weight[j], "linear.bias": self.fc_bias[j]}
        for mod in self.modules():
            if isinstance(mod, GroupedConvBN):
                (conv, bn), c = mod.names, mod.bn.num_features // self.k
                out[f"{conv}.weight"] = mod.weight[j * c:(j + 1) * c]
                for key in ("weight", "bias", "running_mean", "running_var"):
                    out[f"{bn}.{key}"] = getattr(mod.bn, key)[j * c:(j + 1) * c]
                out[f"{bn}.num_batches_tracked"] = mod.bn.num_batches_tracked
        return {k: v.detach() for k, v in out.items()}


class VmapEnsemble(nn.Module):
    """The torch.func way: stacked parameters and buffers, one vmap'ed `functional_call` of the architecture."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        params, buffers = stack_module_state(members)
        self.params = nn.ParameterList(params.values())
        self.bufs = list(buffers.values())  # BatchNorm updates them in place, through vmap
        self.names = list(params), list(buffers)
        self._base = [copy.deepcopy(members[0]).to("meta").train()]  # a list: not a submodule

    def forward(self, x):
        state = dict(zip(self.names[0], self.params)), dict(zip(self.names[1], self.bufs))
        return vmap(lambda p, b, inp: functional_call(self._base[0], (p, b), (inp,))[0],
                    in_dims=(0, 0, None), randomness="error")(*state, x)

    def member_state(self, j: int) -> dict[str, torch.Tensor]:
        return {k: v[j].detach() for k, v in zip(self.names[0] + self.names[1], [*self.params, *self.bufs])}


class Arm:
    """One way of taking a CE training step of K members: 'separate' (K networks, K SGDs, one after another, as
    the cohort does), 'grouped' (GroupedResNet, one SGD) or 'vmap' (VmapEnsemble, one SGD)."""

    def __init__(self, way: str, nets: list[nn.Module], sgd: dict = SGD, channels_last: bool = False):
        nets = [copy.deepcopy(m) for m in nets]
        self.way, self.k = way, len(nets)
        self.nets = nets if way == "separate" else [{"grouped": GroupedResNet, "vmap": VmapEnsemble}[way](nets)]
        if channels_last and way != "vmap":  # (vmap's stacked weights are 5-D; its input is channels-last)
            self.nets = [m.to(memory_format=torch.channels_last) for m in self.nets]
        self.opts = [torch.optim.SGD(m.parameters(), **sgd) for m in self.nets]

    def step(self, x, y) -> None:
        for net, opt in zip(self.nets, self.opts):
            out = net(x)
            if self.way == "separate":
                loss = F.cross_entropy(out[0], y)
            else:  # the sum of the members' mean losses: each member's gradient is its own
                loss = F.cross_entropy(out.flatten(0, 1), y.repeat(self.k)) * self.k
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def member_state(self, j: int) -> dict[str, torch.Tensor]:
        return self.nets[j].state_dict() if self.way == "separate" else self.nets[0].member_state(j)


def members(arch: str, k: int, dtype=torch.float32, device="cpu") -> list[nn.Module]:
    """K members from distinct seeds (a mix-up of members would show), in train mode."""
    return [build_seeded(arch, CLASSES, seed).to(device, dtype).train() for seed in range(k)]


def batches(n: int, batch: int, channels_last=False, seed: int = 0, dtype=torch.float32, device="cpu"):
    gen, fmt = torch.Generator().manual_seed(seed), torch.channels_last if channels_last else torch.contiguous_format
    return [(torch.randn(batch, 3, 32, 32, generator=gen).to(device, dtype).contiguous(memory_format=fmt),
             torch.randint(0, CLASSES, (batch,), generator=gen).to(device)) for _ in range(n)]


def trained(ways, nets, data, sgd: dict = SGD, channels_last: bool = False) -> dict[str, Arm]:
    """Each way built from the same members and stepped over the same batches."""
    arms = {w: Arm(w, nets, sgd, channels_last) for w in ways}
    for x, y in data:
        for arm in arms.values():
            arm.step(x, y)
    return arms


def max_abs_diff(arm: Arm, reference: Arm) -> float:
    """The largest |difference| over every member's parameters and buffers (the same names required)."""
    diff = 0.0
    for j in range(reference.k):
        a, b = arm.member_state(j), reference.member_state(j)
        assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
        diff = max(diff, *((a[n].double() - b[n].double()).abs().max().item() for n in b))
    return diff


def check(arch: str, k: int, ways, steps: int, batch: int, channels_last=False, device="cpu") -> dict[str, float]:
    """Float64, '<way> vs separate': exactness (~1e-15 if the way is the same computation). Float32, '<way> f32
    error': distance to the float64 separate run. Float32 training amplifies rounding (a fresh ResNet at lr 0.1
    turns another summation order into ~1e-3 within a few steps), so its yardstick is 'separate f32 error'."""
    run = {dt: trained(["separate", *ways], members(arch, k, dt, device),
                       batches(steps, batch, channels_last, 1, dt, device), channels_last=channels_last)
           for dt in (torch.float64, torch.float32)}
    truth = run[torch.float64]["separate"]
    return {**{f"{w} vs separate": max_abs_diff(run[torch.float64][w], truth) for w in ways},
            **{f"{w} f32 error": max_abs_diff(run[torch.float32][w], truth) for w in ["separate", *ways]}}


def timed(arm: Arm, x, y, n: int) -> list[float]:
    times, sync = [], torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        arm.step(x, y)
        sync()
        times.append(time.perf_counter() - t0)
    return times


def step_peak_mb(arm: Arm, x, y) -> float:
    """How far memory rises over two steps above what the arm holds after one: on a GPU the allocator's peak, on
    the CPU (Linux) the resident high-water mark, reset first (/proc/self/clear_refs)."""
    timed(arm, x, y, 1)  # momentum buffers, lazily built kernels
    if x.is_cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        timed(arm, x, y, 2)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kb("VmRSS:")
    timed(arm, x, y, 2)
    return (_status_kb("VmHWM:") - before) / 1024


def _status_kb(field: str) -> int:
    return int(next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(field)).split()[1])


def peak_mb(way: str, k: int, arch: str, batch: int, channels_last: bool, device: str, fresh: bool = True) -> float:
    """`step_peak_mb` of one arm; on the CPU in a fresh process, so that no other arm's freed memory is reused."""
    if fresh and not device.startswith("cuda"):
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import side_by_side as s; "
                f"s.torch.set_num_threads({torch.get_num_threads()}); "
                f"print(s.peak_mb({way!r}, {k}, {arch!r}, {batch}, {channels_last}, {device!r}, fresh=False))")
        return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    arm = Arm(way, members(arch, k, device=device), channels_last=channels_last)
    return step_peak_mb(arm, *batches(1, batch, channels_last, device=device)[0])


def cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in (info.read_text().splitlines() if info.exists() else [])
             if ln.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def table(cols: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(cols) + " |\n|" + "---:|" * len(cols))
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", default="1,2,4,8", help="numbers of members (comma-separated)")
    p.add_argument("--ways", default="grouped,vmap", help="timed against 'separate' (comma-separated)")
    p.add_argument("--arch", default="resnet20", help="a CIFAR ResNet (resnet<depth>[_a])")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2, help="in each round every arm warms up, then is timed")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--check-steps", type=int, default=3, help="steps of the equivalence check (0: no check)")
    p.add_argument("--check-batch", type=int, default=16, help="batch of the equivalence check (float64 is slow)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="networks and batches channels-last (default: on CUDA only, as runner/env.py)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--memory", action="store_true", help="also each arm's peak memory (CPU: fresh processes)")
    p.add_argument("--json", help="also write the rows, the check and the environment to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.channels_last is None:
        args.channels_last = args.device.startswith("cuda")
    ks, ways = [int(k) for k in args.ks.split(",")], args.ways.split(",")
    arms = ["separate", *ways]
    env = {"torch": torch.__version__, "device": device_name(torch.device(args.device)), "cpu": cpu_model(),
           "threads": torch.get_num_threads(), "python": platform.python_version(), "host": platform.node(),
           "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"K x {args.arch}, one CE step at batch {args.batch}, SGD {SGD}; {env['device']} ({env['cpu']}), "
          f"{env['threads']} threads, torch {env['torch']}, {'channels-last, ' if args.channels_last else ''}"
          f"{env['when']}")
    checks = {}
    if args.check_steps:  # equivalence first: the other ways are execution modes only if it holds
        checks = {k: check(args.arch, k, ways, args.check_steps, args.check_batch, args.channels_last, args.device)
                  for k in ks}
        print(f"\nMax |member weight or buffer difference| after {args.check_steps} steps at batch "
              f"{args.check_batch}: float64 '<way> vs separate' (exactness); float32 '<way> f32 error' (distance "
              "to the float64 separate run; 'separate f32 error' is float32's own)\n")
        cols = list(checks[ks[0]])
        table(["K", *cols], [[k, *(f"{checks[k][c]:.1e}" for c in cols)] for k in ks])
    (x, y), = batches(1, args.batch, args.channels_last, device=args.device)
    built = {(a, k): Arm(a, members(args.arch, k, device=args.device), channels_last=args.channels_last)
             for k in ks for a in arms}
    times = {key: [] for key in built}
    for r in range(args.rounds):
        for k in ks:
            for a in (arms if r % 2 == 0 else arms[::-1]):  # alternate the order: no arm always goes first
                timed(built[a, k], x, y, args.warmup)
                times[a, k] += timed(built[a, k], x, y, args.repeats)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    rows = []
    for k in ks:
        row = {"k": k, **{f"{a}_ms": 1e3 * statistics.median(times[a, k]) for a in arms}}
        row.update({f"{w}_ratio": row[f"{w}_ms"] / row["separate_ms"] for w in ways})
        row.update({f"{a}_peak_mb": peak_mb(a, k, args.arch, args.batch, args.channels_last, args.device)
                    for a in arms} if args.memory else {})
        rows.append(row)
    print(f"\nOne CE training step (forward, loss, backward, SGD step) of K x {args.arch}, batch {args.batch}, "
          f"median of {args.rounds} x {args.repeats} steps after warm-up\n")
    mem = [f"{a} peak MB" for a in arms] if args.memory else []
    table(["K", *(f"{a} ms/step" for a in arms), *(f"{w} / separate" for w in ways), *mem],
          [[r["k"], *(f"{r[f'{a}_ms']:.1f}" for a in arms), *(f"{r[f'{w}_ratio']:.2f}" for w in ways),
            *(f"{r[f'{a}_peak_mb']:.0f}" for a in arms if mem)] for r in rows])
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "args": vars(args), "check": checks,
                                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
