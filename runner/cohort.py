"""Cohort training: an execution mode, not a kind of result. The planned `train` runs that share data, seed,
teacher and protocol train in one process over one batch stream, with one teacher forward per batch shared by
every member that asks for it, and end exactly as they would have separately.

Why it is exact: the batch stream depends only on (data, seed, protocol, epoch) (data/loader.py), so one
`TrainLoader.epoch(e)` serves every member; the teacher is frozen and in eval mode, so its no_grad forward on a
batch is the same tensor whoever computes it. Everything else stays each member's own: its run folder, run id,
spec.json, epochs.jsonl, checkpoints, best.pt/model.pt, final.json, log and claim (runner/claims.py); its networks,
extra modules, optimiser, stages (FSP/AB's init stage, FT's paraphraser pre-training) and method generator
(`ctx.generator`: CRD's negatives, BSS's attack classes); and its process-wide RNG state (torch CPU and CUDA,
python, numpy), which is swapped in around every piece of the member's work and swapped out after, so a
member's draws from the global generators (none in the built-in methods; a method with dropout would) are the
ones it would make alone. `runner.train.Run` does one epoch in three steps (`begin_epoch`, `train_batch` per
batch, `end_epoch`), which a separate run calls in a row and a cohort interleaves.

The shared teacher forward (`TeacherCache`) is the `Method.teacher_forward` hook: per batch, the first member
asking for the teacher's output on that batch's images computes it (no_grad, eval mode); the others get the same
tensors (a fresh dict of the same feature tensors each). It is lazy: a batch on which no member needs the teacher
(only CE members, FSP/AB past their init stage) costs no teacher forward at all. A forward on any other input (BSS's
adversarial samples) is not the cached batch and runs as it would alone.

Precision and layout: members share the protocol, so also its precision (`stream_key`: bf16 and fp16 runs form
cohorts of their own, never with fp32 runs); each member steps under its own autocast and keeps its own gradient
scaler (fp16), and the shared teacher forward runs inside the first asking member's step, under that same
autocast. The env's memory layout and `--compile` apply to every member alike; with channels-last, the shared
loader converts each batch once (`runner.env.ChannelsLast`), so the members still receive one tensor per batch.

Who joins (`JOIN`), and who runs apart (`APART`), per method:
- join, sharing the teacher forward through the hook: logits, st, at, fitnet, nst, pkt, rkd, sp, cc, irg, vid,
  ofd, afd, crd, dkd, dist, lskd, reviewkd; the staged fsp and ab (teacher in their init stage only: afterwards
  they ignore the cache) and ft (teacher in its paraphraser pre-training and in its main stage); bss (its clean
  forward comes from the cache; its attack and the teacher's outputs on the attacked images are its own passes
  on other inputs, with its own generator: unchanged);
- join without needing the teacher: ce (the student baseline: a cohort may hold it; the launchers do not send
  it, since its spec has no teacher to share);
- apart: sobolev (its teacher pass differentiates the target logit with respect to the input: a no_grad
  forward cannot serve it, so a cohort would share nothing), dml and oeckd (no teacher: they train their own
  networks, a ResNet-110 peer, five students), ekd (its three teachers, two of them extra teacher runs, are run
  directly by its step, not through the hook), kdfm (runs the teacher inside its own `train_step`, beside a
  discriminator with its own Adam optimiser). Each could be made identical in a cohort (its own passes and RNG
  are untouched), but it would share nothing there, only lose the parallelism of a separate run. Methods
  registered at run time (methods.register) run apart too: their steps were never checked in a cohort.
Given such specs anyway, `execute` runs them apart, one after the other, after the cohort.

Failures and resume, per member, as for a separate run (runner/execute.py, whose pieces are reused): a member
that diverges or crashes is recorded FAILED in its own folder and leaves the cohort, the others go on; a crash
with retries left is tried again apart, from its checkpoint, after the cohort; a member taken over by another
process (ClaimLost) stops; a DONE member is skipped; a PARTIAL one joins at its own epoch: the cohort runs
epochs from the earliest member's, and a member that is ahead waits until the cohort reaches its epoch.
A bad input (UserError) ends its member without recording anything and is raised once the others are done.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass

from core.errors import UserError

from .claims import Claim, ClaimLost
from .claims import describe as describe_claim
from .env import RunEnv
from .execute import execute as execute_one
from .execute import execute_claimed, lost_record, open_folder, record_failure, reopen_failed, run_note
from .folder import RunFolder
from .spec import RunSpec

JOIN = frozenset({"ce", "logits", "st", "at", "fitnet", "nst", "pkt", "fsp", "ft", "rkd", "ab", "sp", "bss", "cc",
                  "irg", "vid", "ofd", "afd", "crd", "dkd", "dist", "lskd", "reviewkd"})
APART = {
    "sobolev": "its teacher pass needs input gradients, which a shared no_grad forward cannot give",
    "dml": "needs no teacher and trains its own peer network",
    "oeckd": "needs no teacher and trains its own multi-branch network",
    "ekd": "runs its own three teachers directly",
    "kdfm": "runs the teacher inside its own step beside its own discriminator",
}


def joins(spec: RunSpec) -> bool:
    """Whether this run trains in a cohort (else apart): a `train` run of a method in JOIN, no extra teachers."""
    return spec.kind == "train" and spec.method in JOIN and not (spec.teacher or {}).get("extra")


def why_apart(spec: RunSpec) -> str | None:
    if joins(spec):
        return None
    if spec.kind != "train":
        return f"a {spec.kind} run trains nothing"
    if (spec.teacher or {}).get("extra"):
        return "it needs extra teachers"
    return APART.get(spec.method, "a method registered at run time")


def _canon(value) -> str:
    return json.dumps(value, sort_keys=True)


def stream_key(spec: RunSpec) -> tuple:
    """What the batch stream depends on: runs of one cohort share it (and the protocol's precision with it)."""
    return (_canon(spec.to_dict()["data"]), spec.seed, _canon(spec.to_dict()["protocol"]))


def cohort_key(spec: RunSpec) -> tuple | None:
    """The key launchers group ready runs by (with their stage): (data, seed, protocol, teacher); None for a run
    that runs apart, or that has no teacher to share (the student baseline, CE teachers)."""
    if not joins(spec) or spec.teacher is None:
        return None
    return stream_key(spec) + (_canon(spec.teacher),)


def group(runs: list, stage_of=lambda run: 0) -> list[list]:
    """The jobs for planned runs that are ready together, in their order: one list per cohort (at least two runs
    of one stage with one `cohort_key`), a list of one for every other run."""
    jobs, cohorts = [], {}
    for run in runs:
        key = cohort_key(run.spec)
        if key is None:
            jobs.append([run])
            continue
        key = (stage_of(run),) + key
        if key not in cohorts:
            cohorts[key] = []
            jobs.append(cohorts[key])
        cohorts[key].append(run)
    return [job for cohort in jobs for job in ([cohort] if len(cohort) > 1 else [[r] for r in cohort])]


def check_cohort(specs: list[RunSpec]) -> None:
    """A cohort's members (the specs that join) share data, seed and protocol, and have one teacher (or none);
    ValueError if not."""
    specs = [s for s in specs if joins(s)]
    if len({stream_key(s) for s in specs}) > 1:
        raise ValueError("a cohort's runs must share data, seed and protocol: "
                         + ", ".join(s.describe() for s in specs))
    teachers = {_canon(s.teacher) for s in specs if s.teacher is not None}
    if len(teachers) > 1:
        raise ValueError("a cohort's runs must share their teacher: " + ", ".join(s.describe() for s in specs))


class TeacherCache:
    """The teacher's forward on the current batch, computed once on first request (no_grad, eval mode).
    Installed as `Method.teacher_cache`; `time` is what the forward cost, `users` who read it."""

    def __init__(self, teacher):
        self.teacher = teacher
        self.new_batch(None)

    def new_batch(self, x) -> None:
        self.x, self.out, self.time, self.first, self.users = x, None, 0.0, None, []

    def __call__(self, method, x):
        if x is not self.x or self.x is None:
            return None
        if self.out is None:
            import torch

            t0 = time.perf_counter()
            self.teacher.eval()
            with torch.no_grad():
                self.out = self.teacher(x)
            self.time, self.first = time.perf_counter() - t0, method
        if all(m is not method for m in self.users):
            self.users.append(method)
        logits, feats = self.out
        return logits, (dict(feats) if isinstance(feats, dict) else feats)


@dataclass
class Member:
    spec: RunSpec
    info: dict
    folder: RunFolder
    claim: Claim | None = None
    note: object = None
    run: object = None             # runner.train.Run, while training
    rng: object = None             # its process-wide RNG state while another member runs
    record: dict | None = None     # its outcome, once it has one
    retry: bool = False            # crashed with retries left: tried again apart after the cohort
    user_error: UserError | None = None
    time: float = 0.0              # training time of the current epoch

    @property
    def live(self) -> bool:
        return self.run is not None and self.record is None and not self.retry and self.user_error is None


class Cohort:
    def __init__(self, specs: list[RunSpec], env: RunEnv, infos: list[dict], retries: int):
        from . import train

        self.train = train
        self.env, self.retries = env, retries
        self.members = [Member(s, dict(info or {}), RunFolder(env.results_dir, s.run_id))
                        for s, info in zip(specs, infos)]
        self.loaders = None
        self.cache = None
        self.start_rng = train._global_rng()

    # ---- each member's own RNG ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def own_rng(self, m: Member):
        self.train._set_global_rng(m.rng)
        try:
            yield
        finally:
            m.rng = self.train._global_rng()

    def attempt(self, m: Member, what, *args):
        """`what(*args)` as member `m`, under its RNG; a failure ends that member only (recorded as for a
        separate run). Returns what `what` returned, None after a failure. KeyboardInterrupt stops everyone."""
        try:
            with self.own_rng(m):
                return what(*args)
        except UserError as e:  # bad input: nothing recorded in its folder, raised when the others are done
            m.user_error = e
            self.env.log(f"[{m.spec.run_id}] stopped: {e}")
        except ClaimLost as e:
            m.record = lost_record(m.spec, self.env, m.folder, e)
        except Exception as e:  # noqa: BLE001 - Diverged included: recorded FAILED, never a result
            record = record_failure(m.spec, self.env, m.info, m.folder, m.note, e, self.retries)
            if record is None:
                m.retry = True
            else:
                m.record = record
        self.drop(m)
        return None

    def drop(self, m: Member) -> None:
        """A member leaving the cohort frees its networks (and its claim, unless it is retried apart)."""
        m.run = None
        if not m.retry and m.claim is not None:
            m.claim.release()

    # ---- joining ----------------------------------------------------------------------------------------------
    def join(self, m: Member) -> None:
        env, spec = self.env, m.spec
        m.claim = Claim(m.folder.path, log=lambda msg: env.log(f"[{spec.run_id}] {msg}"))
        if not m.claim.acquire():
            env.log(f"[{spec.run_id}] busy: executed by {describe_claim(m.claim.holder)}")
            m.record = {"status": "busy", "run_id": spec.run_id, "holder": m.claim.holder}
            m.claim = None
            return
        m.note = run_note(spec, env, m.folder)
        m.rng = self.start_rng
        m.run = self.train.Run(spec, env, m.info, m.claim)
        if self.loaders is not None:
            m.run.train_loader, m.run.test_loader = self.loaders
        try:
            open_folder(m.folder, m.note)
            reopen_failed(m.folder, m.note)
        except Exception as e:  # noqa: BLE001
            self.attempt(m, _raise, e)
            return
        done = self.attempt(m, m.run.prepare)
        if m.run is None:
            return
        if done is not None:
            m.record = done
            self.drop(m)
            return
        if self.loaders is None:
            self.loaders = (m.run.train_loader, m.run.test_loader)
        if m.run.epoch >= m.run.total:  # every epoch done, not finished (killed writing model.pt, final.json)
            self.finish(m)
            return
        method = m.run.method
        if method.teacher is not None:
            if self.cache is None:
                self.cache = TeacherCache(method.teacher)
            method.teacher_cache = self.cache

    # ---- training ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        live = [m for m in self.members if m.live]
        if live:
            names = ", ".join(m.spec.method for m in live)
            for m in live:
                m.run.log(f"cohort: training with {len(live)} member(s) over one batch stream ({names})")
        while True:
            live = [m for m in self.members if m.live]
            if not live:
                return
            epoch = min(m.run.epoch for m in live)
            self.run_epoch(epoch, [m for m in live if m.run.epoch == epoch])

    def run_epoch(self, epoch: int, now: list[Member]) -> None:
        """One epoch of the cohort: the members at this epoch step on every batch in turn, then each one ends
        its epoch (evaluation, checkpoint) and finishes if it was its last."""
        for m in now:
            m.time = 0.0
            self.attempt(m, m.run.begin_epoch)
        loader = self.loaders[0]
        t_batch = time.perf_counter()
        for step, batch in enumerate(loader.epoch(epoch)):
            active = [m for m in now if m.live]
            if not active:
                break
            shared = (time.perf_counter() - t_batch) / len(active)  # the batch itself, one share each
            if self.cache is not None:
                self.cache.new_batch(batch.x)
            for m in active:
                t0 = time.perf_counter()
                self.attempt(m, m.run.train_batch, step, batch)
                m.time += time.perf_counter() - t0 + shared
            cache = self.cache
            if cache is not None and cache.users:  # the teacher forward: one share per member that read it
                share = cache.time / len(cache.users)
                for m in active:
                    if m.run is not None and m.run.method is cache.first:
                        m.time -= cache.time
                    if m.run is not None and any(u is m.run.method for u in cache.users):
                        m.time += share
            t_batch = time.perf_counter()
        if self.cache is not None:
            self.cache.new_batch(None)  # hold no batch between epochs
        for m in now:
            if not m.live:
                continue
            self.attempt(m, m.run.end_epoch, max(m.time, 0.0))
            if m.live and m.run.epoch >= m.run.total:
                self.finish(m)

    def finish(self, m: Member) -> None:
        record = self.attempt(m, m.run.finish)
        if record is not None:
            m.record = record
            self.drop(m)

    # ---- after the cohort -------------------------------------------------------------------------------------
    def retry_apart(self) -> None:
        for m in self.members:
            if not m.retry:
                continue
            try:
                with self.own_rng(m):
                    m.record = execute_claimed(m.spec, self.env, m.info, self.retries, m.claim)
            except UserError as e:
                m.user_error = e
            finally:
                m.retry = False
                m.claim.release()

    def release(self) -> None:
        for m in self.members:
            m.run = None
            if m.claim is not None:
                m.claim.release()


def _raise(error: BaseException):
    raise error


def execute(specs: list[RunSpec], env: RunEnv, infos: list[dict] | None = None, retries: int = 0,
            raise_user_errors: bool = True) -> list[dict]:
    """Train `specs` as one cohort (those that `joins`; the others apart, after it) and return one record per
    spec, in order, as `runner.execute.execute` would for each: done, failed, busy or environment. A bad input
    (UserError) of a member is raised once every other member is done (or, without `raise_user_errors`,
    returned as that member's failed record, recording nothing in its folder, as the local launcher does)."""
    specs = list(specs)
    infos = list(infos) if infos is not None else [{} for _ in specs]
    if len(infos) != len(specs):
        raise ValueError(f"{len(specs)} specs but {len(infos)} infos")
    if len({s.run_id for s in specs}) != len(specs):
        raise ValueError("a cohort holds each run once")
    check_cohort(specs)
    inside = [i for i, s in enumerate(specs) if joins(s)]
    records: list[dict | None] = [None] * len(specs)
    errors: list[UserError] = []
    if inside:
        cohort = Cohort([specs[i] for i in inside], env, [infos[i] for i in inside], retries)
        try:
            for m in cohort.members:
                cohort.join(m)
            cohort.run()
            cohort.retry_apart()
        finally:
            cohort.release()
        for i, m in zip(inside, cohort.members):
            if m.user_error is not None:
                errors.append(m.user_error)
                records[i] = {"status": "failed", "run_id": m.spec.run_id, "error": str(m.user_error)}
            else:
                records[i] = m.record
    for i, spec in enumerate(specs):
        if records[i] is None:
            env.log(f"[{spec.run_id}] runs apart from its cohort: {why_apart(spec)}")
            try:
                records[i] = execute_one(spec, env, infos[i], retries=retries)
            except UserError as e:
                errors.append(e)
                records[i] = {"status": "failed", "run_id": spec.run_id, "error": str(e)}
    if errors and raise_user_errors:
        raise errors[0]
    return records
