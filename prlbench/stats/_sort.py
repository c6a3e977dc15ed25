"""argsort for scores, ~3x faster than np.argsort when the scores are float32 values.

Models write float32 predictions; converted to float64 they are still exactly float32. Then
each row packs into one int64 key (order-preserving 32-bit image of the score << 32 | row),
and numpy's SIMD sort of plain int64 keys beats its argsort of float64 by about 3x.
"""

from __future__ import annotations

import numpy as np


def argsort_scores(s: np.ndarray) -> np.ndarray:
    """Indices [N] int64 that sort float64 ``s`` (no NaN) ascending; ties in row order."""
    f = s.astype(np.float32)
    if len(s) >= 2**31 or not np.array_equal(f, s):
        return np.argsort(s)  # float64 precision needed: the general (slower) path
    i = f.view(np.int32)
    # IEEE bits read as int32 order non-negative floats; flipping the low 31 bits of the
    # negative ones reverses their order too, so the int32 order is the float order.
    i = i ^ ((i >> 31) & np.int32(0x7FFFFFFF))
    key = i.astype(np.int64)
    key <<= 32
    key |= np.arange(len(s), dtype=np.int64)
    key.sort()
    key &= 0xFFFFFFFF
    return key
