"""Percentile bootstrap confidence intervals: AUC difference over rows, mean over seeds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from prlbench.errors import DataError
from prlbench.stats import _checks
from prlbench.stats._sort import argsort_scores


@dataclass(frozen=True)
class BootstrapResult:
    """Point estimate on the full data and the percentile interval [lo, hi]."""

    diff: float
    lo: float
    hi: float


class MeanCI(NamedTuple):
    """Mean and its percentile bootstrap interval; unpacks as ``mean, lo, hi``."""

    mean: float
    lo: float
    hi: float


def paired_bootstrap_auc_diff(y, s1, s2, *, n_boot: int = 1000, seed: int = 0,
                              alpha: float = 0.05) -> BootstrapResult:
    """Paired, class-stratified percentile bootstrap CI of AUC(s1) - AUC(s2).

    Each replicate redraws the positives among the positives and the negatives among the
    negatives (so both classes are always present and their counts fixed), the same rows for
    both scores. Exact and O(n) per replicate: the scores are sorted once and a replicate only
    re-weights the rows by how often they were drawn. Cost O(n log n + n_boot * n), about
    50 ms per replicate per million rows on one core: ~10 s for 1 M rows and 200 replicates,
    ~8 min for 10 M rows and 1000 (use fewer replicates or fast_delong there).
    One class only -> all nan.
    """
    _check_boot(n_boot, alpha)
    pos = _checks.labels(y)
    scores = [_checks.scores(s, len(pos), name) for name, s in (("s1", s1), ("s2", s2))]
    m = int(np.count_nonzero(pos))
    n = len(pos) - m
    if m == 0 or n == 0:
        return BootstrapResult(float("nan"), float("nan"), float("nan"))
    ranked = [_Ranked(s[pos], s[~pos]) for s in scores]
    ones_pos, ones_neg = np.ones(m), np.ones(n)
    diff = ranked[0].auc(ones_pos, ones_neg, m, n) - ranked[1].auc(ones_pos, ones_neg, m, n)
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        # How often each positive / negative is drawn in this replicate (within its class).
        w_pos = np.bincount(rng.integers(0, m, m), minlength=m).astype(np.float64)
        w_neg = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        boots[b] = ranked[0].auc(w_pos, w_neg, m, n) - ranked[1].auc(w_pos, w_neg, m, n)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(float(diff), float(lo), float(hi))


class _Ranked:
    """One score, sorted once; then the AUC under any row weights costs O(n).

    Stores where each positive falls among the sorted negatives: ``below`` negatives strictly
    lower and ``upto`` negatives lower or tied (ties count 1/2).
    """

    def __init__(self, s_pos: np.ndarray, s_neg: np.ndarray):
        self.neg_order = argsort_scores(s_neg)
        self.pos_order = argsort_scores(s_pos)
        neg_sorted = s_neg[self.neg_order]
        pos_sorted = s_pos[self.pos_order]  # sorted queries keep searchsorted cache-friendly
        self.below = np.searchsorted(neg_sorted, pos_sorted, side="left")
        upto = np.searchsorted(neg_sorted, pos_sorted, side="right")
        self.upto = None if np.array_equal(upto, self.below) else upto  # None: no ties

    def auc(self, w_pos: np.ndarray, w_neg: np.ndarray, m: int, n: int) -> float:
        """AUC when positive i counts w_pos[i] times and negative j w_neg[j] times.

        The weights sum to m (positives) and n (negatives), as in the data.
        """
        cum = np.empty(len(w_neg) + 1)
        cum[0] = 0.0
        np.cumsum(w_neg[self.neg_order], out=cum[1:])  # cum[k]: weight of the k lowest negatives
        credit = 2 * cum[self.below] if self.upto is None else cum[self.below] + cum[self.upto]
        # (a * b).sum(), not np.dot: BLAS threads make dot 20x slower on a busy machine.
        return float((w_pos[self.pos_order] * credit).sum() / (2.0 * m * n))


def bootstrap_mean_ci(values, *, n_boot: int = 10000, seed: int = 0,
                      alpha: float = 0.05) -> MeanCI:
    """Mean of ``values`` (e.g. per-seed paired AUC deltas) with an expanded percentile
    bootstrap CI (Hesterberg 2015): the percentile interval at the level whose normal quantile
    equals sqrt(n / (n - 1)) times Student's t quantile with n - 1 degrees of freedom. The plain
    percentile interval is too narrow with few values (it covers ~88 % instead of 95 % at n = 8
    on normal data); the expansion brings it to ~95 % from n = 6 on.

    Empty input -> all nan; one value -> (v, v, v). NaN values raise DataError. No bootstrap
    interval can leave the range of the values, which caps its coverage at 1 - 2**(1 - n):
    50 % at n = 2, 75 % at 3, 87.5 % at 4, 93.75 % at 5.
    """
    _check_boot(n_boot, alpha)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isnan(v).any():
        raise DataError("bootstrap_mean_ci: values contain NaN; drop the failed runs first")
    if len(v) == 0:
        return MeanCI(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    chunk = max(1, 2**22 // len(v))  # replicates per draw: bounds memory at ~32 MB of indices
    means = np.empty(n_boot)
    for i in range(0, n_boot, chunk):
        k = min(chunk, n_boot - i)
        means[i:i + k] = v[rng.integers(0, len(v), (k, len(v)))].mean(axis=1)  # [k]
    level = expanded_alpha(len(v), alpha)
    lo, hi = np.quantile(means, [level / 2, 1 - level / 2])
    return MeanCI(float(v.mean()), float(lo), float(hi))


def expanded_alpha(n: int, alpha: float = 0.05) -> float:
    """The tail level of the expanded percentile interval for n values (alpha itself for n < 2)."""
    from scipy import stats

    if n < 2:
        return alpha
    z = np.sqrt(n / (n - 1)) * stats.t.ppf(1 - alpha / 2, n - 1)
    return float(2 * stats.norm.sf(z))


def _check_boot(n_boot: int, alpha: float) -> None:
    if int(n_boot) < 1:
        raise DataError(f"n_boot must be a positive integer; got {n_boot}")
    if not 0 < alpha < 1:
        raise DataError(f"alpha must lie in (0, 1), e.g. 0.05 for a 95 % interval; got {alpha}")
