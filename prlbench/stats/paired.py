"""Paired tests over seeds: t-test and Wilcoxon signed-rank (scipy underneath)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from prlbench.stats import _checks


@dataclass(frozen=True)
class TestResult:
    """A test statistic, its p value (two-sided for a difference; for an equivalence test the
    larger one-sided p) and, for the t-tests, the degrees of freedom (nan otherwise)."""

    __test__ = False  # not a pytest test class, despite the name

    statistic: float
    p: float
    df: float = float("nan")


def paired_ttest(a, b) -> TestResult:
    """Two-sided paired t-test of mean(a - b) == 0 (``scipy.stats.ttest_rel``).

    n < 2 -> nan, nan. Differences all equal: all zero -> statistic 0, p 1 (no evidence of a
    difference); a non-zero constant -> statistic +-inf, p nan: the variance is zero, so the test
    is undefined (scipy's limit p = 0 would call two seeds whose AUCs moved by the same step, as
    AUCs on few positives do, infinitely significant).
    """
    a, b = _checks.same_length(a, b, ("a", "b"))
    d = a - b
    if len(d) < 2:
        return TestResult(float("nan"), float("nan"))
    # Equal up to rounding (AUC steps computed from different totals differ in the last bits);
    # the same tolerance says whether they are all zero.
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if np.ptp(d) <= tol:
        if np.abs(d).max() <= tol:
            return TestResult(0.0, 1.0)
        return TestResult(float(np.copysign(np.inf, d.mean())), float("nan"))
    res = stats.ttest_rel(a, b)
    return TestResult(float(res.statistic), float(res.pvalue), float(len(d) - 1))


def wilcoxon_signed_rank(a, b) -> TestResult:
    """Two-sided Wilcoxon signed-rank test of paired differences a - b (``scipy.stats.wilcoxon``).

    Zero differences are dropped (Wilcoxon's convention); scipy's ``method="auto"`` gives the
    exact distribution for small samples. The statistic is min(W+, W-). No pairs -> nan, nan;
    all differences zero -> statistic 0, p 1. With k non-zero differences the smallest
    two-sided p is ``min_wilcoxon_p(k)`` = 2 / 2**k: six seeds or more to reach p < 0.05.
    """
    a, b = _checks.same_length(a, b, ("a", "b"))
    d = a - b
    if len(d) == 0:
        return TestResult(float("nan"), float("nan"))
    if np.all(d == 0):
        return TestResult(0.0, 1.0)
    res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="auto")
    return TestResult(float(res.statistic), float(res.pvalue))


def min_wilcoxon_p(n: int) -> float:
    """Smallest two-sided exact Wilcoxon p with n non-zero differences: 2 / 2**n (at most 1).

    All n differences of one sign is the most extreme outcome; it has probability 1 / 2**n
    under the null, doubled for two sides. n = 5 -> 0.0625, n = 6 -> 0.03125.
    """
    return min(1.0, 2.0 / 2.0 ** int(n))
