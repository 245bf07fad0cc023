"""Statistics that say when a difference between a method and the student trained alone is real.

Pure functions on plain numbers (no pandas): the tables (report/tables.py) and plots (report/plots.py) call
them on the per-seed values of one column (e.g. `best_top1`) and only format what comes back.

What is computed, exactly:

- `summarize(values)`: one table cell. Mean, sample standard deviation (ddof=1, None below n=2), n, and for
  n >= 3 the two-sided 95 % confidence interval of the mean from Student's t with n-1 degrees of freedom:
  mean ± t_{0.975, n-1} · std / √n. (At n=2 the interval would be mean ± 12.7 · std/√2: true, but too wide
  to say anything, so a cell shows it from n=3 on.)
- `paired_difference(method, baseline)`: the seeds of a method paired with the student baseline's. Every
  student of a seed starts from the same initial weights and sees the same batch stream (README, "Identical
  initial weights and batch stream"), so d_s = method_s − baseline_s removes the seed's own luck from the
  comparison. Only seeds with a value on both sides are used; a seed with a value on one side only is left
  out and counted (`only_method`, `only_baseline`). Reported: the mean difference, its sample std, the 95 %
  interval mean(d) ± t_{0.975, n-1} · std(d) / √n for n >= 2 pairs, and `excludes_zero` when that interval
  lies entirely above or below 0. With all differences equal the interval has zero width (it is then
  "excluded" exactly when the common difference is not 0).
- `paired_p(d)`: the two-sided p-value of the paired t-test of H0: E[d] = 0 (t = mean(d) / (std(d)/√n),
  n-1 df), the test that matches the interval: p < 0.05 exactly when the 95 % interval excludes 0. Zero
  spread is handled as the interval is: p = 0 for a nonzero common difference, 1 for all differences 0.
- `holm(p)`: Holm's step-down adjustment of a family of m p-values: sorted ascending p_(1) <= ... <= p_(m),
  adjusted p_(i) = max_{j<=i} min(1, (m-j+1) · p_(j)), returned in the input order; H0_i is rejected at
  level alpha when its adjusted p <= alpha. This controls the family-wise error rate (the chance of calling
  any method different from the student when none is) at alpha, for any dependence between the tests.
  `holm_paired_tests` applies it to one family: the paired t-tests of several methods against the same
  baseline (the tables use one family per dataset and metric column; see report/tables.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Mapping, Sequence

LEVEL = 0.95
ALPHA = 0.05
MIN_N_CI = 3        # a cell shows the interval of its mean from this many values on
MIN_N_PAIRED = 2    # a paired difference gets an interval (and a test) from this many pairs on


def _t_quantile(q: float, df: int) -> float:
    from scipy.stats import t
    return float(t.ppf(q, df))


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1); (None, None) for no values, std None for one."""
    n = len(values)
    if not n:
        return None, None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def t_interval(mean: float, std: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Two-sided `level` confidence interval of a mean from n >= 2 values: mean ± t_{(1+level)/2, n-1}·std/√n."""
    if n < 2:
        raise ValueError("a t interval needs at least 2 values")
    half = _t_quantile((1 + level) / 2, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


@dataclass(frozen=True)
class Summary:
    """One cell: mean ± sample std over n values, and the CI of the mean when n >= `min_n_ci`."""
    mean: float | None
    std: float | None
    n: int
    lo: float | None = None
    hi: float | None = None


def summarize(values: Iterable[float], level: float = LEVEL, min_n_ci: int = MIN_N_CI) -> Summary:
    """Mean, sample std (ddof=1), n and, for n >= `min_n_ci`, the Student-t `level` interval of the mean.
    Missing or non-finite values (None, NaN) are ignored."""
    v = [float(x) for x in values if _finite(x)]
    mean, std = mean_std(v)
    lo = hi = None
    if len(v) >= max(2, min_n_ci):
        lo, hi = t_interval(mean, std, len(v), level)
    return Summary(mean, std, len(v), lo, hi)


def paired_p(diffs: Sequence[float]) -> float | None:
    """Two-sided p of the paired t-test of mean difference 0 (None below 2 pairs). Equals
    scipy.stats.ttest_rel(method, baseline).pvalue, except that zero spread gives 0 or 1 instead of NaN."""
    n = len(diffs)
    if n < 2:
        return None
    mean, std = mean_std(diffs)
    if std == 0:
        return 0.0 if mean != 0 else 1.0
    from scipy.stats import t
    return float(2 * t.sf(abs(mean) / (std / math.sqrt(n)), n - 1))


@dataclass(frozen=True)
class PairedDiff:
    """Method − baseline over the seeds both have; the seeds only one side has are listed, not used."""
    mean: float | None               # mean difference over the paired seeds (None without pairs)
    std: float | None                # sample std of the differences (n >= 2)
    n: int                           # paired seeds
    lo: float | None = None          # `level` interval of the mean difference (n >= min_n)
    hi: float | None = None
    p: float | None = None           # two-sided paired t-test p-value (n >= min_n), unadjusted
    seeds: tuple = ()                # the paired seeds, sorted
    only_method: tuple = ()          # seeds with a method value but no baseline value
    only_baseline: tuple = ()        # seeds with a baseline value but no method value
    diffs: tuple = field(default=(), repr=False)  # the per-seed differences, in `seeds` order

    @property
    def unpaired(self) -> int:
        """Seeds left out because only one side has a value."""
        return len(self.only_method) + len(self.only_baseline)

    @property
    def excludes_zero(self) -> bool:
        """The interval lies strictly above or strictly below 0 (False without an interval)."""
        return self.lo is not None and (self.lo > 0 or self.hi < 0)


def _sort_key(seed) -> tuple:
    try:
        return (0, float(seed), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(seed))


def paired_difference(method: Mapping[Hashable, float], baseline: Mapping[Hashable, float],
                      level: float = LEVEL, min_n: int = MIN_N_PAIRED) -> PairedDiff:
    """`method` and `baseline` map seed -> value (one value per seed; None/NaN = no value). The difference
    is method − baseline per shared seed; mean, std, the Student-t interval and the paired t-test p from
    `min_n` (>= 2) pairs on."""
    m = {s: float(v) for s, v in method.items() if _finite(v)}
    b = {s: float(v) for s, v in baseline.items() if _finite(v)}
    seeds = tuple(sorted(set(m) & set(b), key=_sort_key))
    diffs = tuple(m[s] - b[s] for s in seeds)
    mean, std = mean_std(diffs)
    lo = hi = p = None
    if len(diffs) >= max(2, min_n):
        lo, hi = t_interval(mean, std, len(diffs), level)
        p = paired_p(diffs)
    return PairedDiff(mean, std, len(diffs), lo, hi, p, seeds,
                      tuple(sorted(set(m) - set(b), key=_sort_key)),
                      tuple(sorted(set(b) - set(m), key=_sort_key)), diffs)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order: with p sorted ascending,
    p_adj(i) = max_{j<=i} min(1, (m-j+1)·p(j)). Reject H0_i at level alpha when p_adj(i) <= alpha.
    Example: (0.01, 0.04, 0.03) -> (0.03, 0.06, 0.06)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class HolmResult:
    p: float          # the unadjusted two-sided paired t-test p
    p_holm: float     # Holm-adjusted over the family
    reject: bool      # p_holm <= alpha
    m: int            # size of the family


def holm_paired_tests(diffs: Mapping[Hashable, PairedDiff], alpha: float = ALPHA) -> dict[Hashable, HolmResult]:
    """One family of paired t-tests, each method against the same baseline: every entry of `diffs` with a
    p-value (n >= 2 pairs) is tested, Holm-adjusted over those m tests. Entries without a test are left out."""
    names = [k for k, d in diffs.items() if d.p is not None]
    adjusted = holm([diffs[k].p for k in names])
    return {k: HolmResult(diffs[k].p, a, a <= alpha, len(names)) for k, a in zip(names, adjusted)}
