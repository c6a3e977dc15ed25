"""Input checks shared by the statistics functions (numpy in, clear DataError out)."""

from __future__ import annotations

import numpy as np

from prlbench.errors import DataError


def labels(y, name: str = "y") -> np.ndarray:
    """0/1 (or bool) labels -> bool array [N]; anything else is a DataError naming the row."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{name} must be a 1-D array of 0/1 labels; got shape {y.shape}")
    if y.dtype == np.bool_:
        return y
    pos = y == 1
    bad = ~(pos | (y == 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{name} must hold only 0/1 labels; row {i} is {y[i]!r}: binarise it first")
    return pos


def scores(s, n: int, name: str = "score") -> np.ndarray:
    """Any numeric array -> float64 [n]; NaN is a DataError (it has no place in a ranking)."""
    s = np.asarray(s, dtype=np.float64)
    if s.shape != (n,):
        raise DataError(f"{name} must be a 1-D array with {n} rows (one per label); "
                        f"got shape {s.shape}")
    nan = np.isnan(s)
    if nan.any():
        i = int(np.flatnonzero(nan)[0])
        raise DataError(f"{name} is NaN at row {i}: check the model's predictions (NaN loss?)")
    return s


def same_length(a, b, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Two 1-D float64 arrays of one length (paired samples, e.g. per-seed metrics)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise DataError(f"{names[0]} and {names[1]} must be 1-D and paired (same length); "
                        f"got shapes {a.shape} and {b.shape}")
    return a, b


def margin(value, name: str) -> None:
    """An equivalence margin: a finite number > 0, in the metric's units."""
    try:
        ok = bool(np.isfinite(value) and value > 0)
    except TypeError:
        ok = False
    if not ok:
        raise DataError(f"{name}: margin must be a finite number > 0 (the equivalence bound, in "
                        f"the metric's units); got {value!r}")
