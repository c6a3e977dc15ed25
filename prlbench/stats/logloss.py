"""Log loss, per row and pooled, with the probabilities clipped to [eps, 1 - eps]."""

from __future__ import annotations

import numpy as np

EPS = 1e-7  # the clip of every logloss prlbench reports


def row_logloss(y, p, eps: float = EPS) -> np.ndarray:
    """Each row's log loss -(y log p + (1 - y) log(1 - p)), p clipped to [eps, 1 - eps]
    (float64)."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(y, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def logloss(y, p, eps: float = EPS) -> float:
    """Mean log loss; nan with no rows."""
    if len(y) == 0:
        return float("nan")
    return float(np.mean(row_logloss(y, p, eps)))
