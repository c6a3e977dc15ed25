"""DeLong's test for two correlated ROC AUCs (same rows, two scores).

``fast_delong`` is the O(n log n) midrank algorithm of Sun & Xu (IEEE SPL 21(11), 2014); the
tests compare it with the textbook O(m * n) form of DeLong, DeLong & Clarke-Pearson (1988)
(``delong_slow`` in ``tests/_reference.py``), which gives the same numbers up to rounding.

With m positives and n negatives, each positive i gets V10_i = the fraction of negatives it
outranks (ties 1/2) and each negative j gets V01_j = the fraction of positives that outrank it.
AUC = mean(V10) = mean(V01), and for D = V(score 1) - V(score 2) per row
var(AUC1 - AUC2) = var(D over positives) / m + var(D over negatives) / n (sample variances).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from prlbench.stats import _checks
from prlbench.stats._sort import argsort_scores


@dataclass(frozen=True)
class DelongResult:
    """Two correlated AUCs and DeLong's z test of their difference (all plain floats)."""

    auc1: float
    auc2: float
    diff: float  # auc1 - auc2
    var: float  # estimated variance of diff
    z: float  # diff / sqrt(var)
    p: float  # two-sided p value from the standard normal


def fast_delong(y, s1, s2) -> DelongResult:
    """DeLong's test of AUC(s1) == AUC(s2) on the same rows, O(n log n) (Sun & Xu 2014).

    Conventions: one class only -> every field nan; fewer than two rows in a class -> AUCs and
    diff are given, var, z and p are nan; var == 0 -> z = 0 and p = 1 when diff == 0, else
    z = +-inf and p = 0 (the scores differ in the same way for every row). Cost: one argsort
    per score; a few seconds for 10 M rows.
    """
    pos = _checks.labels(y)
    s1 = _checks.scores(s1, len(pos), "s1")
    s2 = _checks.scores(s2, len(pos), "s2")
    if pos.all() or not pos.any():  # one class (or no rows): no AUC
        return DelongResult(*([float("nan")] * 6))
    return _result(pos, _placements(pos, s1), _placements(pos, s2))


def _placements(pos: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per-row placement values in input order: V10 for positives, V01 for negatives.

    Needs both classes present. Midranks without ranks: after one argsort, each tie block of
    equal scores gets the count of positives and of negatives at or below it (cumulative sums);
    ties count 1/2.
    """
    m = int(np.count_nonzero(pos))
    n = len(pos) - m
    order = argsort_scores(s)
    s_sorted = s[order]
    pos_sorted = pos[order]
    new_block = np.concatenate(([True], s_sorted[1:] != s_sorted[:-1]))
    ends = np.append(np.flatnonzero(new_block)[1:], len(s)) - 1  # last row of each tie block
    pos_upto = np.cumsum(pos_sorted, dtype=np.int64)[ends]  # positives in blocks <= this one
    neg_upto = ends + 1 - pos_upto
    # Ties count 1/2: the mean of "strictly below" (previous block's count) and "at or below".
    v10 = (neg_upto + np.concatenate(([0], neg_upto[:-1]))) / (2.0 * n)  # negatives below
    v01 = (2 * m - pos_upto - np.concatenate(([0], pos_upto[:-1]))) / (2.0 * m)  # pos. above
    # Table [block, label] -> value; one gather per row instead of a where over two gathers.
    table = np.stack([v01, v10], axis=1).reshape(-1)
    block = np.cumsum(new_block) - 1
    out = np.empty(len(s))
    out[order] = table[2 * block + pos_sorted]
    return out


def _result(pos: np.ndarray, v1: np.ndarray, v2: np.ndarray) -> DelongResult:
    """AUCs, difference, DeLong variance, z and p from the placement values of two scores."""
    m = int(np.count_nonzero(pos))
    n = len(pos) - m
    if m == 0 or n == 0:
        return DelongResult(*([float("nan")] * 6))
    a1, a2 = float(v1[pos].mean()), float(v2[pos].mean())
    diff = a1 - a2
    if m < 2 or n < 2:
        return DelongResult(a1, a2, diff, float("nan"), float("nan"), float("nan"))
    d = v1 - v2
    var = float(np.var(d[pos], ddof=1) / m + np.var(d[~pos], ddof=1) / n)
    if var > 0:
        z = diff / np.sqrt(var)
    else:
        z = 0.0 if diff == 0 else float(np.copysign(np.inf, diff))
    return DelongResult(a1, a2, diff, var, float(z), float(2 * norm.sf(abs(z))))
