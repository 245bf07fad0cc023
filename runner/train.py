"""The `train` kind: build the networks, train through the method's stages, evaluate every epoch, checkpoint, finish.

Resuming is exact: the checkpoint holds every weight, buffer, optimiser state, RNG state and (fp16) the gradient
scaler's state, and the batch stream depends only on (seed, epoch), so a run killed at any point and resumed ends
with the same metrics as one never interrupted (in deterministic mode; on CPU that is the default behaviour of the
kernels used).
"""
from __future__ import annotations

import io
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from core.errors import Diverged, UserError
from core.seeding import method_generator, seeded
from data import EvalLoader, TrainLoader, dataset_info
from methods import get_method
from methods.base import Context, Precision, StepInfo, make_optimizer
from models import build_seeded, count_parameters
from models.branches import MultiBranchNet
from models.frozen import frozen_teacher
from models.pretrained import file_sha256, load_teacher

from .env import ChannelsLast, RunEnv, cached_splits, check_compile, set_deterministic, test_loader
from .evaluate import evaluate
from .folder import RunFolder
from .measure import measure, save_measurement
from .progress import Pace
from .spec import RunSpec, member_run_id
from .store import CorruptFile, describe_error, load_checked, save_checked, write_atomic, write_json_checked



def teacher_path(spec: RunSpec, info: dict, results_dir: str) -> Path | None:
    if spec.teacher is None:
        return None
    if "run" in spec.teacher:
        return RunFolder(results_dir, spec.teacher["run"]).model
    if "sha256" in spec.teacher:
        return Path(info["teacher_path"])
    return None  # only extra teachers


def _rng_state(method) -> dict:
    """Every RNG state a resumed run needs, as tensors and plain types only (checkpoints are read by the
    weights-only unpickler, see store.load_checked): python's `random` state tuple becomes a dict of ints and a
    list, numpy's legacy state (a tuple holding an ndarray) a dict with its key as an int64 tensor."""
    version, internal, gauss = random.getstate()
    bit_generator, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {"torch": torch.get_rng_state(),
             "python": {"version": int(version), "internal": [int(v) for v in internal],
                        "gauss": None if gauss is None else float(gauss)},
             "numpy": {"bit_generator": str(bit_generator), "key": torch.from_numpy(key.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(cached_gaussian)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if method.ctx.generator is not None:
        state["method"] = method.ctx.generator.get_state()
    return state


def _byte_state(value, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.dim() != 1:
        raise ValueError(f"rng state {what!r} is not a 1-d uint8 tensor")
    return value.cpu()  # generators take CPU tensors, whatever the checkpoint was mapped to


def _native_rng_state(method, state: dict) -> dict:
    """The stored form of `_rng_state` in the forms the generators take; ValueError (or the generators' own
    errors, when applied) if it is malformed. Nothing is applied here."""
    if not isinstance(state, dict):
        raise ValueError("rng state is not a dict")
    py, npy = state["python"], state["numpy"]
    internal, gauss = py["internal"], py["gauss"]
    if type(py["version"]) is not int or not isinstance(internal, list) or len(internal) != 625 or \
            not all(type(v) is int for v in internal) or not (gauss is None or type(gauss) is float):
        raise ValueError("python rng state is malformed")
    key = npy["key"]
    if not isinstance(key, torch.Tensor) or key.dtype != torch.int64 or tuple(key.shape) != (624,) or \
            not bool(((key >= 0) & (key < 2 ** 32)).all()) or not isinstance(npy["bit_generator"], str) or \
            not all(type(npy[k]) is int for k in ("pos", "has_gauss")) or type(npy["gauss"]) is not float:
        raise ValueError("numpy rng state is malformed")
    native = {"torch": _byte_state(state["torch"], "torch"),
              "python": (py["version"], tuple(internal), gauss),
              "numpy": (npy["bit_generator"], key.cpu().numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                        npy["gauss"])}
    if "cuda" in state:
        if not isinstance(state["cuda"], list):
            raise ValueError("cuda rng state is not a list")
        native["cuda"] = [_byte_state(t, "cuda") for t in state["cuda"]]
    if ("method" in state) != (method.ctx.generator is not None):
        raise ValueError("rng state does not match the method's generator")
    if "method" in state:
        native["method"] = _byte_state(state["method"], "method")
    return native


def _set_rng_state(method, state: dict) -> None:
    native = _native_rng_state(method, state)  # all checked and converted before anything is applied
    torch.set_rng_state(native["torch"])
    random.setstate(native["python"])
    np.random.set_state(native["numpy"])
    if "cuda" in native and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(native["cuda"])
    if "method" in native:
        method.ctx.generator.set_state(native["method"])


def _global_rng():
    """The process-wide generators' states, to undo a partly applied checkpoint."""
    return (torch.get_rng_state(), random.getstate(), np.random.get_state(),
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_global_rng(saved) -> None:
    torch.set_rng_state(saved[0])
    random.setstate(saved[1])
    np.random.set_state(saved[2])
    if saved[3] is not None:
        torch.cuda.set_rng_state_all(saved[3])


_NUMBER = (int, float)


def _is_number(v) -> bool:
    return isinstance(v, _NUMBER) and not isinstance(v, bool)


def _check_topk(d, what: str) -> None:
    if not isinstance(d, dict) or not all(_is_number(d.get(f"top{k}")) for k in range(1, 6)):
        raise ValueError(f"{what} lacks top1..top5")


def _check_rows(rows, epoch: int, member_keys: set) -> None:
    """The checkpoint's epoch rows: one per epoch done, each with what the log, the summary and `_finish` read."""
    if not isinstance(rows, list) or len(rows) != epoch:
        raise ValueError(f"{len(rows) if isinstance(rows, list) else type(rows).__name__} rows for {epoch} epochs")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or r.get("epoch") != i + 1 or not isinstance(r.get("stage"), str) or \
                not _is_number(r.get("lr")) or not _is_number(r.get("train_time")) or \
                not isinstance(r.get("losses"), dict) or not all(_is_number(v) for v in r["losses"].values()):
            raise ValueError(f"row {i + 1} is malformed")
        _check_topk(r.get("test"), f"row {i + 1}")
        if member_keys:
            members = r.get("members")
            if not isinstance(members, dict) or not member_keys <= set(members):
                raise ValueError(f"row {i + 1} lacks members {sorted(member_keys)}")
            for key in member_keys:
                _check_topk(members[key], f"row {i + 1} member {key}")
        json.dumps(r)  # written to epochs.jsonl again


def _group_settings(optimizer) -> list[dict]:
    return [{k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")} for g in optimizer.param_groups]


def _check_optimizer(optimizer, settings: list[dict], what: str) -> None:
    """After `load_state_dict`: the settings are those of this run (`settings`, taken before) and every state
    tensor of a parameter has its shape (torch checks neither until a step fails)."""
    if _group_settings(optimizer) != settings:
        raise ValueError(f"{what} settings differ from this run's")
    for group in optimizer.param_groups:
        if not _is_number(group.get("lr")):
            raise ValueError(f"{what} learning rate is not a number")
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                    raise ValueError(f"{what} state {key!r} has shape {tuple(value.shape)}, its parameter "
                                     f"{tuple(p.shape)}")


def summarize(rows: list[dict]) -> dict:
    """Best (per-k maximum over epochs, as the paper collects 'the highest top-k accuracy') and last epoch."""
    out = {}
    for k in range(1, 6):
        values = [r["test"][f"top{k}"] for r in rows]
        out[f"best_top{k}"] = max(values)
        out[f"last_top{k}"] = values[-1]
    out["best_epoch"] = 1 + max(range(len(rows)), key=lambda i: rows[i]["test"]["top1"])
    return out


def build_method(name: str, hparams: dict, student, teacher, ctx: Context, probe_x: torch.Tensor):
    """Instantiate a method and build its extra modules from one dry-run forward (eval mode, so no BatchNorm
    statistics move). Extra modules are initialised from (seed, method): identical across resumes."""
    method = get_method(name)(student, teacher, hparams, ctx)
    with torch.no_grad():
        student.eval()
        _, s_feats = student(probe_x)
        t_feats = teacher(probe_x)[1] if teacher is not None else None
    with seeded(ctx.seed, "extra", name):
        method.setup(s_feats, t_feats)
    method.extra.to(ctx.device)
    return method


class Run:
    def __init__(self, spec: RunSpec, env: RunEnv, info: dict | None = None, claim=None):
        self.spec, self.env, self.claim = spec, env, claim
        self.folder = RunFolder(env.results_dir, spec.run_id)
        self.info = dict(info or {})
        self.device = torch.device(env.device)
        # the batch streams: built by `_build` unless given before (a cohort shares one pair among its members);
        # they hold no state, so a rebuild after an unusable checkpoint keeps them
        self.train_loader: TrainLoader | None = None
        self.test_loader: EvalLoader | None = None

    def log(self, msg: str) -> None:
        line = f"[{self.spec.run_id} {self.spec.method}] {msg}"
        self.env.log(line)
        with open(self.folder.log, "a") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")

    # ---- set-up --------------------------------------------------------------------------------------------

    def _build(self):
        spec, info_ds = self.spec, dataset_info(self.spec.data.dataset)
        norm = (info_ds.mean, info_ds.std)
        train, test = cached_splits(spec.data, self.env.data_dir, self.env.download)
        student = build_seeded(spec.student, info_ds.num_classes, spec.seed).to(self.device)
        teacher = None
        path = teacher_path(spec, self.info, self.env.results_dir)
        if path is not None:
            sha = file_sha256(path) if path.is_file() else None
            expected = spec.teacher.get("sha256") or self.info.get("teacher_sha256")
            if sha is None:
                raise UserError(f"teacher model {path} is missing: finish the teacher run first "
                                "(python benchmark.py --all plans it) or pass --teacher-checkpoint")
            if expected and sha != expected:
                raise UserError(f"teacher model {path} changed since this run started (sha256 {sha[:12]} != "
                                f"{expected[:12]}): delete this run folder to retrain against the new teacher")
            self.info["teacher_sha256"] = sha
            teacher, _ = load_teacher(path, info_ds.num_classes, norm)
            teacher = frozen_teacher(teacher.to(self.device), self.device)
        extra_teachers = {}
        for ref in (spec.teacher or {}).get("extra", []):
            t_path = RunFolder(self.env.results_dir, ref["run"]).model
            if not t_path.is_file():
                raise UserError(f"teacher model {t_path} ({ref['arch']}) is missing: finish that teacher run first")
            extra = load_teacher(t_path, info_ds.num_classes, norm)[0].to(self.device)
            extra_teachers[ref["arch"]] = frozen_teacher(extra, self.device)
        gen = method_generator(spec.seed, spec.method)
        # a fresh precision (and gradient scaler) with every build: a rebuilt run starts over from scratch
        self.precision = Precision(spec.protocol.precision, self.device)
        ctx = Context(num_classes=info_ds.num_classes, dataset=spec.data.dataset, seed=spec.seed,
                      device=self.device, train_labels=train.labels.to(self.device),
                      epochs=spec.protocol.epochs, generator=gen, extra_teachers=extra_teachers,
                      precision=self.precision)
        probe = next(iter(EvalLoader(test, 2, *norm, device=self.device))).x
        method = build_method(spec.method, spec.hparams, student, teacher, ctx, probe)
        self._apply_execution(method)
        if self.train_loader is None:
            p = spec.protocol
            self.train_loader = TrainLoader(train, p.batch_size, *norm, seed=spec.seed, device=self.device,
                                            padding=p.padding, pad_mode=p.pad_mode, flip=p.flip)
            self.test_loader = EvalLoader(test, self.env.eval_batch_size, *norm, device=self.device)
            if self.env.uses_channels_last:
                self.train_loader, self.test_loader = ChannelsLast(self.train_loader), ChannelsLast(self.test_loader)
        self.norm = norm
        self.method = method

    def _apply_execution(self, method) -> None:
        """The env's execution settings, which change no result beyond float rounding: channels-last memory
        format for every network (the batches follow in `_build`), torch.compile of the student's forward (in
        place, `nn.Module.compile`: its state_dict keys, checkpoints and model.pt stay those of the plain module)."""
        if self.env.uses_channels_last:
            nets = [method.student, method.extra, method.teacher, *method.ctx.extra_teachers.values()]
            for net in nets:
                if net is not None:
                    net.to(memory_format=torch.channels_last)
        if self.env.compile:
            check_compile(self.env.compile, self.env.device)
            if method.no_compile is None:
                method.student.compile(backend=self.env.compile)
            else:
                self.log(f"--compile: not applied to {self.spec.method} ({method.no_compile}): it trains eagerly")

    # ---- the loop ------------------------------------------------------------------------------------------
    def _resume(self):
        """(epochs done, rows, optimizer state) from a good checkpoint, or a fresh start.

        The checkpoint is read without executing anything (store.load_checked) and checked before it is trusted:
        one that is damaged, refused by the safe loader or does not fit this run (missing keys, wrong shapes or
        types) is named in one line of the log, deleted, and the run starts over from freshly built networks."""
        if not self.folder.ckpt.exists():
            return 0, [], None
        saved_rng = _global_rng()
        try:
            ckpt = load_checked(self.folder.ckpt, map_location=self.device)
            epoch, rows, opt_state = self._restore(ckpt)
        except Exception as e:  # a damaged or unfitting checkpoint is never trusted: start over
            reason = str(e) if isinstance(e, CorruptFile) else f"content does not fit this run: {describe_error(e)}"
            self.log(f"checkpoint unusable ({reason}); restarting the run from scratch")
            self.folder.ckpt.unlink(missing_ok=True)
            self._build()  # a partly loaded checkpoint leaves no trace: fresh networks, method and generator
            _set_global_rng(saved_rng)
            return 0, [], None
        self.log(f"resumed after epoch {epoch}")
        return epoch, rows, opt_state

    def _restore(self, ckpt) -> tuple[int, list, dict]:
        """Check a loaded checkpoint against this run and load it into the built one; raises if it does not fit
        (the caller rebuilds, so a partial load does not matter)."""
        if not isinstance(ckpt, dict):
            raise ValueError(f"the payload is a {type(ckpt).__name__}, not a dict")
        missing = {"epoch", "rows", "student", "method", "optimizer", "rng"} - set(ckpt)
        if missing:
            raise ValueError(f"missing {sorted(missing)}")
        self.precision.load_state_dict(ckpt.get("scaler"))  # fp16: its gradient scaler; the others have none
        stages = self.method.stages(self.spec.protocol)
        starts = np.cumsum([0] + [s.epochs for s in stages]).tolist()
        epoch, rows, opt_state = ckpt["epoch"], ckpt["rows"], ckpt["optimizer"]
        if type(epoch) is not int or not 1 <= epoch <= starts[-1]:
            raise ValueError(f"epoch {epoch!r} is not within 1..{starts[-1]}")
        _check_rows(rows, epoch, set(self.method.member_models()))
        self.method.student.load_state_dict(ckpt["student"])  # strict: every key, every shape
        own = {k: (v, _group_settings(v)) for k, v in vars(self.method).items()
               if isinstance(v, torch.optim.Optimizer)}  # a method's own optimiser (KDFM's discriminator)
        self.method.load_state_dict(ckpt["method"])
        for name, (opt, settings) in own.items():
            _check_optimizer(opt, settings, f"method optimizer {name!r}")
        if not isinstance(opt_state, dict):
            raise ValueError("optimizer state is not a dict")
        if epoch < starts[-1]:
            si = max(i for i in range(len(stages)) if starts[i] <= epoch)
            if epoch > starts[si]:  # the loop will load it into this stage's optimiser: try that now
                stage = stages[si]
                trial = make_optimizer(self.method.stage_parameters(stage), self.spec.protocol, stage)
                settings = _group_settings(trial)
                trial.load_state_dict(opt_state)
                _check_optimizer(trial, settings, "optimizer")
        _set_rng_state(self.method, ckpt["rng"])
        return epoch, rows, opt_state

    def _save(self, epoch: int, rows: list[dict], optimizer) -> None:
        ckpt = {"epoch": epoch, "rows": rows, "student": self.method.student.state_dict(),
                "method": self.method.state_dict(), "optimizer": optimizer.state_dict(), "rng": _rng_state(self.method)}
        if self.precision.scaler is not None:
            ckpt["scaler"] = self.precision.state_dict()
        save_checked(ckpt, self.folder.ckpt)
        write_atomic(self.folder.epochs, "".join(json.dumps(r) + "\n" for r in rows).encode())

    # One epoch in three steps, so that a cohort (runner/cohort.py) can drive the epochs of several runs over one
    # batch stream: `begin_epoch`, `train_batch` for every batch of `train_loader.epoch(self.epoch)`, `end_epoch`.
    # A separate run does exactly the same through `run_epoch`.

    def prepare(self) -> dict | None:
        """Record the spec; return the record of a DONE run, or build, resume and return None: then `epoch`
        (epochs done), `total` and `rows` say where the run is."""
        spec = self.spec
        self.info = self.folder.write_spec(spec, self.info)
        done = self.folder.read_final()
        if done is not None and done.get("status") == "done":
            return done
        set_deterministic(self.env.deterministic)
        self._build()
        self.stages = self.method.stages(spec.protocol)
        self.starts = np.cumsum([0] + [s.epochs for s in self.stages]).tolist()
        self.total = self.starts[-1]
        self.epoch, self.rows, self._opt_state = self._resume()
        self.pace = Pace(self.epoch)
        if self.rows and len(self.folder.read_epochs()) != len(self.rows):
            # killed between the checkpoint and the epoch log: the checkpoint's rows are the truth
            write_atomic(self.folder.epochs, "".join(json.dumps(r) + "\n" for r in self.rows).encode())
        self.optimizer, self._opt_stage = None, None
        self.log(f"training {spec.student} on {spec.data.label}: {self.total} epochs in stages "
                 f"{[(s.name, s.epochs) for s in self.stages]}")
        return None

    def begin_epoch(self) -> None:
        """The optimiser of epoch `self.epoch`'s stage (a new one at a stage switch, the checkpoint's state
        loaded when resuming inside a stage), its learning rate, the method in train mode."""
        si = max(i for i in range(len(self.stages)) if self.starts[i] <= self.epoch)
        stage, stage_epoch = self.stages[si], self.epoch - self.starts[si]
        if self._opt_stage != si:
            self.optimizer = make_optimizer(self.method.stage_parameters(stage), self.spec.protocol, stage)
            if self._opt_state is not None and stage_epoch > 0:
                self.optimizer.load_state_dict(self._opt_state)
            self._opt_state, self._opt_stage = None, si
        self.lr = stage.lr_at(stage_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.step_info = StepInfo(self.epoch, self.total, stage, stage_epoch)
        self._sums = {}
        self.method.train(True)

    def train_batch(self, step: int, batch) -> None:
        """One update on one batch of `train_loader.epoch(self.epoch)`."""
        self.step_info.step = step
        if self.precision.reduced:
            with self.precision.autocast():
                losses = self.method.train_step(batch, self.step_info, self.optimizer)
            losses = {k: v.float() for k, v in losses.items()}  # epoch sums in fp32
        else:
            losses = self.method.train_step(batch, self.step_info, self.optimizer)
        for k, v in losses.items():
            self._sums[k] = self._sums.get(k, 0.0) + v

    def _train_epoch(self, epoch, total, stage, stage_epoch, optimizer) -> tuple[dict, int]:
        """A separate run's epoch, set up by `begin_epoch` (whose epoch, stage and optimiser these are): every batch
        of the epoch's stream, then the mean losses and the number of samples seen."""
        seen = 0
        for step, batch in enumerate(self.train_loader.epoch(epoch)):
            self.train_batch(step, batch)
            seen += len(batch.y)
        return self.epoch_losses(), seen

    def epoch_losses(self) -> dict:
        """The mean of each loss over the epoch's batches; Diverged if one is not finite (nothing of the epoch is
        saved then)."""
        means = {k: float(v) / len(self.train_loader) for k, v in self._sums.items()}
        bad = {k: v for k, v in means.items() if not np.isfinite(v)}
        if bad:
            raise Diverged(f"loss diverged at epoch {self.epoch + 1}: {bad}")
        return means

    def end_epoch(self, train_time: float, means: dict | None = None) -> None:
        """The epoch's mean losses (`epoch_losses` unless given), evaluation, best-epoch weights, checkpoint and
        epoch log."""
        if means is None:
            means = self.epoch_losses()
        stage, lr, rows = self.step_info.stage, self.lr, self.rows
        with self.precision.autocast():  # evaluated as trained: fp32, or under the run's autocast
            test = evaluate(self.method.eval_model(), self.test_loader)
        row = {"epoch": self.epoch + 1, "stage": stage.name, "lr": lr, "losses": means, "test": test,
               "train_time": round(train_time, 3)}
        if self.claim is not None:
            self.claim.check()  # taken over while this process was frozen: stop, write nothing more
        members = self.method.member_models()
        if members:
            with self.precision.autocast():
                row["members"] = {k: evaluate(m, self.test_loader) for k, m in members.items()}
        if not rows or test["top1"] > max(r["test"]["top1"] for r in rows):
            # the best-epoch weights, for ensembles of best-epoch members (written before the checkpoint:
            # a crash in between redoes this epoch and rewrites the same file)
            self._save_model(self.folder.best_model)
        rows.append(row)
        self.epoch += 1
        self._save(self.epoch, rows, self.optimizer)
        loss_txt = " ".join(f"{k}={v:.4g}" for k, v in means.items())
        where = self.pace.where(self.spec.run_id, self.epoch, self.total, self.env.progress)
        self.log(f"{where} [{stage.name}] lr={lr:g} {loss_txt} top1={test['top1']:.2f} ({train_time:.1f}s train)")

    def run_epoch(self) -> None:
        self.begin_epoch()
        info = self.step_info
        t0 = time.perf_counter()
        means, _ = self._train_epoch(self.epoch, self.total, info.stage, info.stage_epoch, self.optimizer)
        self.end_epoch(time.perf_counter() - t0, means)

    def finish(self) -> dict:
        return self._finish(self.rows)

    def execute(self) -> dict:
        done = self.prepare()
        if done is not None:
            return done
        while self.epoch < self.total:
            self.run_epoch()
        return self.finish()

    def _save_model(self, path: Path) -> None:
        save_model(self.method.eval_model(), self.spec.student, self.method.ctx.num_classes, self.norm, path)

    def _measure(self, model, record: dict) -> None:
        model.eval()
        inputs = torch.cat([b.x for b in self.test_loader])
        m = measure(model, inputs, record["params"], record["extra_params"], repeats=self.env.measure_repeats,
                    precision=self.precision.name)
        m.update({k: record[k] for k in ("run_id", "method", "dataset", "seed", "role")})
        save_measurement(self.folder.path, m)

    def _finish(self, rows: list[dict]) -> dict:
        model = self.method.eval_model()
        self._save_model(self.folder.model)
        record = {
            "status": "done", "run_id": self.spec.run_id, "dataset": self.spec.data.label,
            "method": self.spec.method, "seed": self.spec.seed, "student": self.spec.student,
            "teacher": (self.spec.teacher or {}).get("arch"), "teacher_sha256": self.info.get("teacher_sha256"),
            "epochs": len(rows), **summarize(rows),
            "params": count_parameters(model),
            "extra_params": sum(p.numel() for p in self.method.extra.parameters()),
            "train_time_s": round(sum(r["train_time"] for r in rows), 2),
            "model_sha256": file_sha256(self.folder.model),
            "role": self.info.get("role", "method"),
            "precision": self.precision.name,  # of training and of every evaluation (test accuracy)
        }
        if self.env.measure_repeats:
            self._measure(model, record)
        members = self.method.member_models()
        if members:
            record["members"] = {}
            for key, member in members.items():
                record["members"][key] = entry = {
                    **summarize([{"test": r["members"][key]} for r in rows]), "params": count_parameters(member),
                    "student": self.method.member_arch(key) or self.spec.student,
                    "run_id": member_run_id(self.spec.run_id, key), "method": f"{self.spec.method}-{key}"}
                if self.env.measure_repeats:
                    self._measure(member, {**record, **entry, "extra_params": 0, "role": "member"})
        write_json_checked(self.folder.final, record)
        self.folder.ckpt.unlink(missing_ok=True)
        self.log(f"done: best top1 {record['best_top1']:.2f}, last top1 {record['last_top1']:.2f}")
        return record


def save_model(model, arch, num_classes, norm, path: Path) -> None:
    """The deliverable of a run, loadable as a teacher by `models.pretrained.load_teacher`."""
    buf = io.BytesIO()
    torch.save({"format": "kd-bench-model", "arch": arch, "num_classes": num_classes,
                "state_dict": model.state_dict(), "input_norm": norm}, buf)
    write_atomic(path, buf.getvalue())



def execute(spec: RunSpec, env: RunEnv, info: dict, claim) -> dict:
    """The `train` kind: train (or resume, or return the record of) one run, as the holder of its claim."""
    return Run(spec, env, info, claim).execute()


def remeasure(folder: RunFolder, spec: RunSpec, info: dict, final: dict, env: RunEnv) -> list[dict]:
    """Time the delivered network again on this machine, and each member network it delivers besides."""
    ds = dataset_info(spec.data.dataset)
    inputs = torch.cat([b.x for b in test_loader(spec.data, env)])
    model = load_teacher(folder.model, ds.num_classes, (ds.mean, ds.std))[0].to(inputs.device)
    repeats, precision = env.measure_repeats or 3, spec.protocol.precision
    records = [{**measure(model, inputs, count_parameters(model), final.get("extra_params", 0), repeats=repeats,
                          precision=precision),
                "role": final.get("role", info.get("role", "method"))}]
    if isinstance(model, MultiBranchNet):
        # `<letter><j>` is stem + branch j (OEC-KD's s1.., EKD's b1..), any other key the whole network
        for key in final.get("members") or {}:
            member = model.member(int(key[1:]) - 1) if key[1:].isdigit() else model
            records.append({**measure(member, inputs, count_parameters(member), repeats=repeats, precision=precision),
                            "run_id": member_run_id(folder.run_id, key), "method": f"{final['method']}-{key}",
                            "role": "member"})
    return records
