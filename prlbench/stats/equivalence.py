"""Equivalence tests (TOST, two one-sided tests) over seeds: is the paired difference inside
(-margin, margin)? The t and Wilcoxon forms of the paired tests in ``paired.py``.

Equivalence at level alpha is declared when both one-sided tests reject, i.e. when
p = max(p_lower, p_upper) < alpha, where p_lower tests H0: Delta <= -margin against
Delta > -margin and p_upper tests H0: Delta >= margin against Delta < margin (Schuirmann 1987).
A small p says "the difference is smaller than the margin", not "no difference": failing to
reject the ordinary test is no evidence of equivalence. ``two_level_bootstrap(..., margin=)``
in ``twolevel.py`` gives the bootstrap form, with the test-row noise included.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from prlbench.errors import DataError
from prlbench.stats import _checks
from prlbench.stats.paired import TestResult


def tost_ttest(d, margin: float) -> TestResult:
    """Paired t TOST on per-seed differences ``d``: equivalent at alpha when p < alpha.

    p = max of the one-sided one-sample t-test p values of mean(d) > -margin and
    mean(d) < margin (``scipy.stats.ttest_1samp``, n - 1 degrees of freedom). statistic =
    min(t_lower, -t_upper) with t_lower = (mean + margin) / se and t_upper = (mean - margin) / se:
    large means equivalent, and p = the t survival function of it. n < 2 -> nan, nan; all
    differences equal (zero variance) -> statistic +-inf, p nan: undefined, as in
    ``paired_ttest`` (AUCs over few positives move in equal steps). The margin must be finite
    and > 0; NaN differences raise DataError.
    """
    d = _check(d, margin, "tost_ttest")
    if len(d) < 2:
        return TestResult(float("nan"), float("nan"))
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if np.ptp(d) <= tol:
        inside = abs(float(d.mean())) < margin
        return TestResult(float(np.inf if inside else -np.inf), float("nan"))
    lower = stats.ttest_1samp(d, -margin, alternative="greater")
    upper = stats.ttest_1samp(d, margin, alternative="less")
    return TestResult(float(min(lower.statistic, -upper.statistic)),
                      float(max(lower.pvalue, upper.pvalue)))


def tost_wilcoxon(d, margin: float) -> TestResult:
    """Wilcoxon signed-rank TOST on per-seed differences ``d``: equivalent at alpha when
    p < alpha.

    Two one-sided signed-rank tests (``scipy.stats.wilcoxon``, ``method="auto"``: exact for
    small n): of d + margin with alternative "greater" and of d - margin with alternative
    "less"; p = the larger of the two p values. Zero differences are dropped (Wilcoxon's
    convention); a side whose differences are all zero has p 1. statistic = the smaller of
    W+(d + margin) and W-(d - margin), the rank sums that count for equivalence. The smallest
    p with n non-zero differences on both sides is 1 / 2**n: five seeds or more to reach
    p < 0.05. n < 2 -> nan, nan. The margin must be finite and > 0.
    """
    d = _check(d, margin, "tost_wilcoxon")
    if len(d) < 2:
        return TestResult(float("nan"), float("nan"))
    w_lo, p_lo = _one_sided_wilcoxon(d + margin, "greater")
    w_up, p_up = _one_sided_wilcoxon(d - margin, "less")
    return TestResult(float(min(w_lo, w_up)), float(max(p_lo, p_up)))


def _one_sided_wilcoxon(x: np.ndarray, alternative: str) -> tuple[float, float]:
    """(rank sum of the favoured sign, p) of a one-sided signed-rank test that x's centre is
    > 0 ("greater") or < 0 ("less")."""
    x = x[x != 0]
    if len(x) == 0:
        return 0.0, 1.0
    res = stats.wilcoxon(x, zero_method="wilcox", alternative=alternative, method="auto")
    w_plus = float(res.statistic)  # scipy's one-sided statistic is the positive-rank sum
    return (w_plus if alternative == "greater" else len(x) * (len(x) + 1) / 2 - w_plus,
            float(res.pvalue))


def _check(d, margin, name: str) -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 1:
        raise DataError(f"{name}: d must be a 1-D array of per-seed differences; got shape "
                        f"{d.shape}")
    if np.isnan(d).any():
        raise DataError(f"{name}: d contains NaN; drop the failed runs first")
    _checks.margin(margin, name)
    return d


# ------------------------------------------------------------------------------ margins
# The metric kinds an equivalence margin can be given for, and the largest margin accepted for
# each: an equivalence margin is the smallest difference that would matter, and the gains the
# multi-task literature reports are a few thousandths of AUC (and of logloss); a margin above
# 0.02 would call differences "equivalent" that papers report as gains (at a margin of 1, any
# non-significant cell would pass).
MARGIN_KINDS = ("auc", "logloss")
MAX_MARGIN = {"auc": 0.02, "logloss": 0.02}


def parse_margins(value) -> dict[str, float] | None:
    """Equivalence margins per metric kind from --equivalence: None (no test); a number, or
    text holding one ("0.002": the AUC margin; loglosses are not tested, an AUC margin does not
    apply to them); "auc=0.002,logloss=0.0005"; or a dict {kind: margin}. Each margin must be
    finite, > 0 and at most MAX_MARGIN of its kind; anything else raises DataError saying why.
    """
    if value is None:
        return None
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [("auc", value)]
    else:
        text = str(value).strip()
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise DataError("--equivalence is empty: give an AUC margin (0.002) or margins per "
                            "metric kind (auc=0.002,logloss=0.0005)")
        items = []
        for part in parts:
            kind, sep, number = part.partition("=")
            if not sep:
                kind, number = "auc", part
                if len(parts) > 1:
                    raise DataError(f"--equivalence {text!r}: with several margins name each "
                                    "kind, as in auc=0.002,logloss=0.0005")
            items.append((kind.strip(), number.strip()))
    margins: dict[str, float] = {}
    for kind, number in items:
        if kind not in MARGIN_KINDS:
            raise DataError(f"--equivalence: unknown metric kind {kind!r}; margins are given "
                            f"per kind: {', '.join(MARGIN_KINDS)} (auc=0.002,logloss=0.0005)")
        if kind in margins:
            raise DataError(f"--equivalence: the {kind} margin is given twice")
        try:
            m = float(number)
        except (TypeError, ValueError):
            raise DataError(f"--equivalence: the {kind} margin {number!r} is not a number "
                            "(e.g. 0.002 AUC points)") from None
        if not (np.isfinite(m) and m > 0):
            raise DataError(f"--equivalence: the {kind} margin must be a finite number > 0 in "
                            f"the metric's units (e.g. 0.002); got {number!r}")
        if m > MAX_MARGIN[kind]:
            raise DataError(
                f"--equivalence: an {kind} margin of {m:g} is above the bound "
                f"{MAX_MARGIN[kind]:g}: an equivalence margin is the smallest difference that "
                "matters, and multi-task papers report gains of a few thousandths, so such a "
                "margin would call reported gains 'equivalent'. Choose it before looking at "
                "the results (e.g. 0.001-0.005)")
        margins[kind] = m
    return margins


def margins_text(margins: dict[str, float]) -> str:
    """{"auc": 0.002, "logloss": 0.001} -> "auc=0.002,logloss=0.001" (parse_margins reads it)."""
    return ",".join(f"{k}={margins[k]:g}" for k in MARGIN_KINDS if k in margins)
