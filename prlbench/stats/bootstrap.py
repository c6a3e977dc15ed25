"""Percentile bootstrap confidence interval of a mean, e.g. over seeds (expanded percentile
interval, Hesterberg 2015)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from prlbench.errors import DataError


class MeanCI(NamedTuple):
    """Mean and its percentile bootstrap interval; unpacks as ``mean, lo, hi``."""

    mean: float
    lo: float
    hi: float


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
