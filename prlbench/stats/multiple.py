"""Multiple-comparison adjustments of p values: Holm (FWER) and Benjamini-Hochberg (FDR)."""

from __future__ import annotations

import numpy as np

from prlbench.errors import DataError


def holm(pvals) -> np.ndarray:
    """Holm's step-down adjusted p values (controls the family-wise error rate).

    Sorted ascending p_(1..k): adj_(i) = max over j <= i of min(1, (k - j + 1) * p_(j)).
    Same shape as the input; NaN entries stay NaN and do not count in k.
    """
    p, ok = _valid(pvals)
    q = p[ok]
    k = len(q)
    if k:
        order = np.argsort(q, kind="stable")
        adj = np.maximum.accumulate((k - np.arange(k)) * q[order])
        q[order] = np.minimum(adj, 1.0)
        p[ok] = q
    return p


def benjamini_hochberg(pvals) -> np.ndarray:
    """Benjamini-Hochberg adjusted p values (q values; controls the false discovery rate).

    Sorted ascending p_(1..k): q_(i) = min over j >= i of min(1, k * p_(j) / j).
    Same shape as the input; NaN entries stay NaN and do not count in k.
    """
    p, ok = _valid(pvals)
    q = p[ok]
    k = len(q)
    if k:
        order = np.argsort(q, kind="stable")
        adj = q[order] * k / np.arange(1, k + 1)
        adj = np.minimum.accumulate(adj[::-1])[::-1]
        q[order] = np.minimum(adj, 1.0)
        p[ok] = q
    return p


def _valid(pvals) -> tuple[np.ndarray, np.ndarray]:
    """A float64 copy of the p values and the mask of the non-NaN ones (checked in [0, 1])."""
    p = np.array(pvals, dtype=np.float64)  # a copy: the caller's array is never changed
    ok = ~np.isnan(p)
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise DataError("p values must lie in [0, 1] (or be NaN for a missing test)")
    return p, ok
