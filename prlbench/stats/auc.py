"""ROC AUC, group AUC and RelaImpr, vectorised with numpy (O(n log n), no per-row Python).

AUC here is the Mann-Whitney probability P(s+ > s-) + 1/2 P(s+ == s-), i.e. ties count one
half (midranks), which is what scikit-learn's ``roc_auc_score`` computes.
"""

from __future__ import annotations

import numpy as np

from prlbench.errors import DataError
from prlbench.stats import _checks
from prlbench.stats._sort import argsort_scores


def auc(y, score) -> float:
    """ROC AUC of ``score`` for binary labels ``y`` (ties count 1/2).

    Returns ``nan`` when ``y`` holds a single class (AUC is undefined there) rather than
    raising, so that a table cell can show "n/a". Cost: two sorts (one per class) and a merge
    by ``searchsorted``; ~1 s for 10 M rows. NaN scores raise DataError.
    """
    pos = _checks.labels(y)
    s = _checks.scores(score, len(pos))
    m = int(np.count_nonzero(pos))
    n = len(pos) - m
    if m == 0 or n == 0:
        return float("nan")
    s_pos = np.sort(s[pos])
    s_neg = np.sort(s[~pos])
    # For each positive: negatives strictly below (left) and at most equal (right); the
    # queries are sorted, which keeps numpy's binary search cache-friendly.
    below = np.searchsorted(s_neg, s_pos, side="left").sum(dtype=np.int64)
    below_or_tied = np.searchsorted(s_neg, s_pos, side="right").sum(dtype=np.int64)
    return float((below + below_or_tied) / 2 / m / n)


def group_auc(y, score, groups, *, weight: str = "impressions") -> float:
    """Group AUC: the weighted mean of per-group AUCs (e.g. one group per ``search_id``).

    Only groups holding both classes count (a one-class group has no AUC). Weighting:
    ``"impressions"`` (default) weights each group by its number of rows, the common
    definition (Zhou et al., DIN, KDD 2018); ``"uniform"`` gives every group weight 1.
    Returns ``nan`` when no group has both classes. ``groups`` may be any 1-D array (ints are
    fastest). One argsort of the scores, one sort of packed 64-bit keys; no per-group loop.
    """
    if weight not in ("impressions", "uniform"):
        raise DataError(f"group_auc: weight must be 'impressions' or 'uniform', not {weight!r}")
    pos = _checks.labels(y)
    s = _checks.scores(score, len(pos))
    g = np.asarray(groups)
    if g.shape != pos.shape:
        raise DataError(f"groups must have one entry per row ({len(pos)}); got shape {g.shape}")
    if len(pos) == 0:
        return float("nan")
    grp, npos, nneg, contrib = _group_sorted_blocks(pos, s, g)
    gpos = np.bincount(grp, weights=npos)
    gneg = np.bincount(grp, weights=nneg)
    gsum = np.bincount(grp, weights=contrib)
    ok = (gpos > 0) & (gneg > 0)
    if not ok.any():
        return float("nan")
    aucs = gsum[ok] / (gpos[ok] * gneg[ok])
    w = gpos[ok] + gneg[ok] if weight == "impressions" else np.ones(len(aucs))
    return float((w * aucs).sum() / w.sum())


def _group_sorted_blocks(pos: np.ndarray, s: np.ndarray, g: np.ndarray):
    """Sort rows by (group, score) and summarise each tie block (rows equal in both).

    Returns per block: group index (0..G-1), positives, negatives, and the positives' summed
    Mann-Whitney credit within the group (negatives strictly below + 1/2 tied negatives).
    """
    order = argsort_scores(s)
    s_sorted = s[order]
    # Dense score rank (ties share one) in [0, n): lets (group, rank, label) fit one int64.
    rank = np.cumsum(s_sorted[1:] != s_sorted[:-1], dtype=np.int64)
    rank = np.concatenate(([0], rank))
    rbits = int(rank[-1]).bit_length()
    code = _group_codes(g, 62 - rbits)[order]
    key = (code << (rbits + 1)) | (rank << 1) | pos[order]
    key.sort()  # in place: an unstable sort of unique-enough keys, far faster than lexsort
    label = key & 1
    block = key >> 1
    starts = np.flatnonzero(np.concatenate(([True], block[1:] != block[:-1])))
    size = np.diff(np.append(starts, len(key)))
    npos = np.add.reduceat(label, starts)
    nneg = size - npos
    bgroup = key[starts] >> (rbits + 1)
    new_group = np.concatenate(([True], bgroup[1:] != bgroup[:-1]))
    grp = np.cumsum(new_group) - 1  # group index of each block
    neg_before = np.cumsum(nneg) - nneg  # negatives in all earlier blocks
    neg_before -= neg_before[new_group][grp]  # ... restricted to this block's group
    contrib = npos * (neg_before + 0.5 * nneg)
    return grp, npos, nneg, contrib


def _group_codes(g: np.ndarray, max_bits: int) -> np.ndarray:
    """Non-negative int64 codes, order-preserving, below 2**max_bits (shifted ids if they fit)."""
    if np.issubdtype(g.dtype, np.integer):
        lo, hi = int(g.min()), int(g.max())
        if (hi - lo).bit_length() <= max_bits:
            g = g if g.dtype.itemsize == 8 else g.astype(np.int64)  # no int8 wrap-around
            return (g - g.min()).astype(np.int64)  # uint64 ids above 2**63 stay exact
    return np.unique(g, return_inverse=True)[1].astype(np.int64).reshape(-1)


def relaimpr(auc_value: float, auc_base: float) -> float:
    """RelaImpr in percent: ((AUC - 0.5) / (AUC_base - 0.5) - 1) * 100 (Yan et al., 2014).

    Measures the gain over the base model's lift above random guessing. ``nan`` when the base
    AUC is 0.5 or below (no lift to compare against: the ratio would be meaningless or have the
    wrong sign) or either input is nan.
    """
    a, b = float(auc_value), float(auc_base)
    if not b > 0.5 or np.isnan(a):
        return float("nan")
    return ((a - 0.5) / (b - 0.5) - 1.0) * 100.0
