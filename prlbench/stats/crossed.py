"""The crossed seeds x test-rows variance model of a mean paired delta, and the tests built on it.

One cell has S seeds; all of them are scored on one test set, so their deltas Delta_s share that
set's sampling noise. With s^2 the sample variance of the deltas (it holds the seed noise and
each seed's own test-row noise) and G the mean off-diagonal of their row covariance C (the noise
all seeds share; ``row_covariance``), the variance of the mean delta over seeds AND test sets is

    V = s^2 / S + G,   with   nu = V^2 / ((s^2 / S)^2 / (S - 1))

degrees of freedom (Satterthwaite; G is taken as known, as it sums over ~n rows). The two-level
CI (``two_level_bootstrap``, method "crossed") is drawn from this model; ``two_level_ttest`` is
its test: t = mean / sqrt(V) on nu degrees of freedom. With C = 0 it is the paired t-test over
seeds. A test over seeds alone (paired t, Wilcoxon) holds the test set fixed: when G is a
large part of V it rejects a true null far more often than its nominal rate.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats

from prlbench.errors import DataError
from prlbench.stats import _checks
from prlbench.stats.paired import TestResult


class Crossed(NamedTuple):
    """The crossed model of one cell: mean delta, s^2 / S, G (clipped at 0), V and nu."""

    mean: float
    var_seeds: float  # s^2 / S (0 with one seed)
    shared: float  # G = mean off-diagonal C[s, t], clipped at 0 (C[0, 0] with one seed)
    n_seeds: int

    @property
    def var(self) -> float:
        """V = s^2 / S + G: the variance of the mean delta over seeds and test sets."""
        return self.var_seeds + self.shared

    @property
    def se(self) -> float:
        return float(np.sqrt(self.var))

    @property
    def nu(self) -> float:
        """Satterthwaite's degrees of freedom of V (inf when the seeds do not vary)."""
        if self.n_seeds < 2 or self.var_seeds <= 0:
            return float("inf")
        if self.shared == 0:
            return float(self.n_seeds - 1)  # the paired t-test's, exactly
        return self.var**2 / (self.var_seeds**2 / (self.n_seeds - 1))

    @property
    def shared_share(self) -> float:
        """G / V: the share of V that a test over seeds alone does not see (nan if V = 0)."""
        return self.shared / self.var if self.var > 0 else float("nan")

    def tail(self, x: float) -> float:
        """One-sided p: P(T > x) for T ~ t_nu (the normal at nu = inf)."""
        return t_sf(x, self.nu)


def t_sf(x: float, nu: float) -> float:
    """P(T > x) for T ~ t_nu; the normal's at nu = inf (Satterthwaite's nu when the seeds do
    not vary, or one seed)."""
    return float(stats.norm.sf(x) if np.isinf(nu) else stats.t.sf(x, nu))


def crossed(deltas, cov, name: str = "crossed") -> Crossed:
    """The crossed model of ``deltas`` [S] (each seed's paired delta) and ``cov`` [S, S]
    (``row_covariance`` of their influence vectors). Bad input raises DataError naming
    ``name``: NaN / inf, a cov of the wrong shape, not symmetric, or with a negative diagonal."""
    d, c = check_inputs(deltas, cov, name)
    S = len(d)
    if S == 1:
        return Crossed(float(d[0]), 0.0, float(c[0, 0]), 1)
    g = float((c.sum() - np.trace(c)) / (S * (S - 1)))
    return Crossed(float(d.mean()), float(np.var(d, ddof=1)) / S, max(g, 0.0), S)


def two_level_ttest(deltas, cov) -> TestResult:
    """Two-sided test of mean Delta == 0 under the crossed model: t = mean / sqrt(s^2/S + G),
    p = 2 P(T_nu > |t|) on Satterthwaite's nu (module doc). ``cov`` = 0 gives the paired
    t-test over seeds (``paired_ttest`` of the two arms), with nu = S - 1.

    Fewer than 2 seeds -> nan, nan (no seed spread to test against). Zero variance at both
    levels: all deltas 0 -> statistic 0, p 1; equal non-zero deltas -> +-inf, p nan, as in
    ``paired_ttest``. The result's ``df`` is nu. Bad input raises DataError (``crossed``).
    """
    m = crossed(deltas, cov, "two_level_ttest")
    if m.n_seeds < 2:
        return TestResult(float("nan"), float("nan"))
    undefined = _zero_variance(m, deltas)
    if undefined is not None:
        return undefined
    t = m.mean / m.se
    return TestResult(float(t), min(1.0, 2 * m.tail(abs(t))), m.nu)


def two_level_tost(deltas, cov, margin: float) -> TestResult:
    """Equivalence (two one-sided tests) of -margin < Delta < margin under the crossed model:
    p = max(P(T_nu > (mean + margin) / se), P(T_nu > (margin - mean) / se)); equivalent at
    alpha when p < alpha. statistic = the smaller of the two t values (large: equivalent).
    Fewer than 2 seeds -> nan, nan; zero variance -> +-inf, p nan (as ``tost_ttest``). The
    margin must be finite and > 0."""
    _checks.margin(margin, "two_level_tost")
    m = crossed(deltas, cov, "two_level_tost")
    if m.n_seeds < 2:
        return TestResult(float("nan"), float("nan"))
    if m.var <= _tol(deltas) ** 2:
        inside = abs(m.mean) < margin
        return TestResult(float(np.inf if inside else -np.inf), float("nan"))
    t = min((m.mean + margin) / m.se, (margin - m.mean) / m.se)
    return TestResult(float(t), m.tail(t), m.nu)


def _tol(deltas) -> float:
    d = np.asarray(deltas, dtype=np.float64)
    return 1e-12 * max(1.0, float(np.abs(d).max()))


def _zero_variance(m: Crossed, deltas) -> TestResult | None:
    """The paired t-test's rule when neither level varies (AUC steps differ in the last bits)."""
    tol = _tol(deltas)
    if m.var > tol**2:
        return None
    if abs(m.mean) <= tol:
        return TestResult(0.0, 1.0, m.nu)
    return TestResult(float(np.copysign(np.inf, m.mean)), float("nan"), m.nu)


def check_inputs(deltas, cov, name: str) -> tuple[np.ndarray, np.ndarray]:
    """deltas [S] and cov [S, S] as float64, cov made exactly symmetric; DataError otherwise."""
    d = np.asarray(deltas, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise DataError(f"{name}: deltas must be a non-empty 1-D array (one per seed); got "
                        f"shape {d.shape}")
    if not np.isfinite(d).all():
        raise DataError(f"{name}: deltas contain NaN or inf; drop the failed seeds first")
    c = np.asarray(cov, dtype=np.float64)
    S = len(d)
    if c.shape != (S, S):
        raise DataError(f"{name}: cov must be {S} x {S} (one row per delta); got shape "
                        f"{c.shape}")
    if not np.isfinite(c).all():
        raise DataError(f"{name}: cov contains NaN or inf")
    scale = max(float(np.abs(c).max()), 1e-300)
    if np.abs(c - c.T).max() > 1e-9 * scale:
        raise DataError(f"{name}: cov must be symmetric (row_covariance's output)")
    if (np.diag(c) < 0).any():
        raise DataError(f"{name}: cov has a negative diagonal: not a covariance")
    return d, (c + c.T) / 2
