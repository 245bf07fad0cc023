"""Contrastive representation distillation (Tian, Krishnan & Isola, "Contrastive Representation Distillation",
ICLR 2020).

Per-element losses (KL, L2) treat every output dimension as independent; CRD instead maximises a lower bound on
the mutual information between teacher and student representations by *contrasting*: the student's embedding of
an image must be close to the teacher's embedding of the same image (the positive) and far from the teacher's
embeddings of N other images (negatives), and symmetrically with the teacher as anchor. The NCE form of the
bound (paper Eq. 18, the "noise contrastive estimation" of Wu et al. 2018) needs many negatives, which are read
from memory banks holding a slowly updated embedding of every training image instead of being recomputed.

Reference conventions (AberHu/Knowledge-Distillation-Zoo `kd_losses/crd.py`, `train_crd.py`, `dataset.py`;
the same as RepDistiller's `crd/`), kept on purpose:
* embeddings: Linear(pooled feature -> feat_dim) then L2 normalisation, one for the student and one for the
  teacher, both trained with the student (PyTorch's default Linear initialisation);
* two memory banks [n_data, feat_dim], uniform in +-1/sqrt(feat_dim/3) (random, not zero: AberHu#4);
  `memory_t` holds teacher embeddings and is the student anchor's contrast set, `memory_s` the reverse;
* P(i | v) = exp(<m_i, v> / T) / Z with Z = mean(exp(.)) * n_data over the *first* batch, then frozen;
* per anchor: -(sum log(P_pos / (P_pos + N/M + eps)) + sum log((N/M) / (P_neg + N/M + eps))) / B, eps 1e-7;
  loss = student-anchor part + teacher-anchor part;
* 'exact' positives (the sample's own memory row); N = 16384 negatives per sample drawn uniformly from the
  *other classes*, without replacement when the class has enough negatives, with replacement otherwise;
* after the loss, the batch's memory rows move to momentum * row + (1 - momentum) * embedding and are
  re-normalised, without gradient.

Implementation choice (same value and gradient as the reference): the reference gathers the B x (N+1)
memory rows into a [B, N+1, feat_dim] tensor and multiplies (1 GiB per bank at B=128, N=16384, feat_dim=128,
float32). Here the scores of all rows are computed as one matrix product emb @ memory.T ([B, n_data], 25 MB for
CIFAR) and the needed B x (N+1) scores are gathered from it: three times the multiply-adds at n_data=50000,
but as a dense GEMM it is faster than the memory-bound gather and uses 40x less memory on each of the two banks.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from core.seeding import method_generator

from .base import Method


# ---- the loss as pure functions -----------------------------------------------------------------------------
def crd_exp_scores(emb: torch.Tensor, memory: torch.Tensor, sample_idx: torch.Tensor, nce_t: float) -> torch.Tensor:
    """[B, K] unnormalised exp(<memory[sample_idx[b, k]], emb[b]> / T); the memory is a constant.

    All n_data scores are one GEMM and the K wanted ones are gathered (see the module docstring for why)."""
    scores = emb @ memory.detach().t()
    return torch.exp(scores.gather(1, sample_idx) / nce_t)


def crd_normaliser(exp_scores: torch.Tensor, n_data: int) -> torch.Tensor:
    """Z = mean(exp scores) * n_data, the reference's one-batch Monte-Carlo estimate of the partition function."""
    return (exp_scores.mean() * n_data).detach()


def nce_contrast_loss(probs: torch.Tensor, n_data: int, eps: float = 1e-7) -> torch.Tensor:
    """NCE loss of one anchor side: column 0 of `probs` [B, 1+N] is the positive, the rest are noise samples,
    each with noise probability 1/M, so N/M is the prior odds of noise (paper Eq. 18 with h = P / (P + N/M))."""
    b, n = probs.shape[0], probs.shape[1] - 1
    noise = n / float(n_data)
    pos, neg = probs[:, 0], probs[:, 1:]
    log_pos = torch.log(pos / (pos + noise + eps))
    log_neg = torch.log(noise / (neg + noise + eps))
    return -(log_pos.sum() + log_neg.sum()) / b


def crd_loss(emb_s: torch.Tensor, emb_t: torch.Tensor, memory_s: torch.Tensor, memory_t: torch.Tensor,
             sample_idx: torch.Tensor, nce_t: float = 0.1, z_s=None, z_t=None, n_data: int | None = None,
             eps: float = 1e-7) -> torch.Tensor:
    """Both anchors' NCE losses, summed. `emb_*` are unit-norm embeddings [B, D]; `sample_idx` [B, 1+N] holds
    memory rows (column 0 the positive). Z constants default to the ones a fresh module fixes on this batch."""
    n_data = memory_s.shape[0] if n_data is None else n_data
    p_s = crd_exp_scores(emb_s, memory_t, sample_idx, nce_t)  # student anchor, teacher memory
    p_t = crd_exp_scores(emb_t, memory_s, sample_idx, nce_t)  # teacher anchor, student memory
    z_s = crd_normaliser(p_s, n_data) if z_s is None else z_s
    z_t = crd_normaliser(p_t, n_data) if z_t is None else z_t
    return nce_contrast_loss(p_s / z_s, n_data, eps) + nce_contrast_loss(p_t / z_t, n_data, eps)


# ---- modules --------------------------------------------------------------------------------------------------
class Embed(nn.Module):
    """Linear projection onto the unit sphere, where inner products are cosine similarities."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), p=2, dim=1)


class ContrastMemory(nn.Module):
    """The two memory banks and the frozen Z constants, as buffers: saved with the method, moved with it, never
    optimised. Z = 0 means "not fixed yet" (a fixed Z is a mean of exponentials, so always > 0)."""

    def __init__(self, n_data: int, feat_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(feat_dim / 3.0)  # each coordinate has variance 1/feat_dim: rows of norm ~1
        self.register_buffer("memory_s", torch.rand(n_data, feat_dim) * (2 * bound) - bound)
        self.register_buffer("memory_t", torch.rand(n_data, feat_dim) * (2 * bound) - bound)
        self.register_buffer("z_s", torch.zeros(()))
        self.register_buffer("z_t", torch.zeros(()))

    @torch.no_grad()
    def update(self, idx: torch.Tensor, emb_s: torch.Tensor, emb_t: torch.Tensor, momentum: float) -> None:
        """Momentum update of the batch's rows, re-normalised. Out of place: the scores of this step were computed
        from the current banks and autograd still needs them for the backward pass."""
        for name, emb in (("memory_s", emb_s), ("memory_t", emb_t)):
            bank = getattr(self, name)
            rows = bank.index_select(0, idx) * momentum + emb.detach().to(bank.dtype) * (1.0 - momentum)
            setattr(self, name, bank.index_copy(0, idx, F.normalize(rows, p=2, dim=1)))


class NegativeSampler:
    """Draws, for each sample, nce_n memory rows of *other* classes (CRD's dataset-side sampling), on the CPU
    from the method's own generator so the global RNG and the data order are untouched and resumes are exact.

    Like the reference, a class with at least nce_n negatives is sampled without replacement (uniform random
    subset: the nce_n smallest of uniform keys), a smaller one with replacement."""

    def __init__(self, labels: torch.Tensor, nce_n: int):
        labels = labels.detach().cpu().long()
        self.labels, self.nce_n, self.n = labels, nce_n, len(labels)
        num_classes = int(labels.max()) + 1 if len(labels) else 0
        self.order = torch.argsort(labels, stable=True)  # class c occupies order[start[c]:start[c]+count[c]]
        self.count = torch.bincount(labels, minlength=num_classes)
        self.start = torch.cumsum(self.count, 0) - self.count
        self.n_neg = self.n - self.count

    def __call__(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """[B, 1 + nce_n] int64 (CPU): column 0 the sample itself ('exact' positive), then its negatives."""
        idx = idx.detach().cpu().long()
        y = self.labels[idx]
        if bool((self.n_neg[y] == 0).any()):
            raise ValueError("crd: a class has no samples of other classes to contrast with")
        neg = torch.empty(len(idx), self.nce_n, dtype=torch.long)
        enough = self.n_neg[y] >= self.nce_n
        rows = enough.nonzero().flatten()
        chunk = max(1, (1 << 24) // max(self.n, 1))  # bounds the [rows, n_data] keys to 64 MB
        for i in range(0, len(rows), chunk):
            r = rows[i:i + chunk]
            keys = torch.rand(len(r), self.n, generator=generator)
            keys.masked_fill_(self.labels[None, :] == y[r, None], 2.0)  # own class: never among the smallest
            neg[r] = torch.topk(keys, self.nce_n, dim=1, largest=False, sorted=False).indices
        rows = (~enough).nonzero().flatten()
        if len(rows):
            yr = y[rows]
            n_neg = self.n_neg[yr][:, None]
            rank = (torch.rand(len(rows), self.nce_n, dtype=torch.float64, generator=generator) * n_neg).long()
            rank = torch.minimum(rank, n_neg - 1)
            rank = rank + (rank >= self.start[yr][:, None]) * self.count[yr][:, None]  # skip the own class
            neg[rows] = self.order[rank]
        return torch.cat([idx[:, None], neg], dim=1)


# ---- the method ----------------------------------------------------------------------------------------------
class CRD(Method):
    name = "crd"
    display_name = "CRD"
    kind = "relation"
    description = "contrastive (NCE) loss between student and teacher embeddings with memory-bank negatives"
    citation = "Tian, Krishnan & Isola, ICLR 2020"
    defaults = {"weight": 0.2, "feat_dim": 128, "nce_n": 16384, "nce_t": 0.1, "nce_mom": 0.5, "eps": 1e-7}
    dataset_weights = {"cifar10": 0.2, "cifar100": 0.8}  # train_crd.py / README of the reference
    student_taps = teacher_taps = ("pool",)
    loss_fn = staticmethod(crd_loss)

    @classmethod
    def reference_call(cls, inputs: dict, hparams: dict):
        if hparams.get("variant") == "post_embed":
            emb_s, emb_t = inputs["emb_s"], inputs["emb_t"]
        else:
            embs = []
            for side, dim in (("s", hparams["s_dim"]), ("t", hparams["t_dim"])):
                with torch.device("meta"):  # structure only: parameters come from the inputs
                    module = Embed(dim, hparams["feat_dim"])
                prefix = f"embed_{side}."
                params = {k: inputs[prefix + k] for k, _ in module.named_parameters()}
                embs.append(functional_call(module, params, (inputs[f"feat_{side}"],)))
            emb_s, emb_t = embs
        return cls.loss_fn(emb_s, emb_t, inputs["memory_s"], inputs["memory_t"], inputs["sample_idx"],
                           hparams.get("nce_t", 0.1), n_data=hparams.get("n_data"), eps=hparams.get("eps", 1e-7))

    @classmethod
    def resolve_hparams(cls, overrides: dict, dataset: str) -> dict:
        hp = super().resolve_hparams(overrides, dataset)
        if "weight" not in overrides:
            hp["weight"] = cls.dataset_weights.get(dataset, cls.defaults["weight"])
        return hp

    def __init__(self, student, teacher, hparams, ctx):
        super().__init__(student, teacher, hparams, ctx)
        if ctx.generator is None:  # the runner always gives one; kept in ctx so its state is checkpointed
            ctx.generator = method_generator(ctx.seed, self.name)
        self._z_fixed = False  # host-side cache of "Z buffers are set" (avoids a device sync per step)

    def setup(self, s_feats, t_feats):
        n_data, dim = len(self.ctx.train_labels), self.hp["feat_dim"]
        self.sampler = NegativeSampler(self.ctx.train_labels, self.hp["nce_n"])
        self.extra["embed_s"] = Embed(s_feats["pool"].flatten(1).shape[1], dim)
        self.extra["embed_t"] = Embed(t_feats["pool"].flatten(1).shape[1], dim)
        # drawn on the CPU (same banks whatever the device), then moved to the training device
        self.extra["memory"] = ContrastMemory(n_data, dim).to(self.ctx.device)
        self._z_fixed = False

    def distill(self, s_logits, s_feats, t_logits, t_feats, batch, info):
        hp, mem = self.hp, self.extra["memory"]
        emb_s = self.extra["embed_s"](s_feats["pool"])
        emb_t = self.extra["embed_t"](t_feats["pool"].detach())
        sample_idx = self.sampler(batch.idx, self.ctx.generator).to(mem.memory_s.device)
        n_data = mem.memory_s.shape[0]
        p_s = crd_exp_scores(emb_s, mem.memory_t, sample_idx, hp["nce_t"])
        p_t = crd_exp_scores(emb_t, mem.memory_s, sample_idx, hp["nce_t"])
        if not self._z_fixed:
            if not bool(mem.z_s > 0):  # first batch of the run: fix the normalisers for good
                mem.z_s.copy_(crd_normaliser(p_s, n_data))
                mem.z_t.copy_(crd_normaliser(p_t, n_data))
            self._z_fixed = True
        loss = (nce_contrast_loss(p_s / mem.z_s, n_data, hp["eps"])
                + nce_contrast_loss(p_t / mem.z_t, n_data, hp["eps"]))
        if self.extra.training:
            mem.update(batch.idx.to(mem.memory_s.device), emb_s, emb_t, hp["nce_mom"])
        return {"crd": hp["weight"] * loss}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._z_fixed = False  # re-read from the loaded buffers on the next step
