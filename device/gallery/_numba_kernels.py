"""Compiled int8 scoring kernel (numba). Imported only by :mod:`device.gallery.int8`.

Kept in its own module so that importing the gallery never imports numba: the
float32 index does not need it, and numba's import costs a few hundred ms on a Pi.
The kernel is compiled once per process and cached on disk (``NUMBA_CACHE_DIR``
moves the cache when the package directory is read-only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np

_njit: Callable[..., Any] = numba.njit


def _score_rows(
    codes: Any, scale: Any, inv_norm: Any, query: Any, q_center: Any, out: Any,
    lo: int, hi: int,
) -> None:
    # out[i] = (q_center + scale[i] * sum_j codes[i, j] * query[j]) * inv_norm[i]
    # for rows lo..hi-1. Under fastmath the inner loop vectorises (int8 → float32
    # widening + FMA): one pass over the int8 bytes, no temporaries.
    dim = codes.shape[1]
    for i in range(lo, hi):
        acc = np.float32(0.0)
        for j in range(dim):
            acc += np.float32(codes[i, j]) * query[j]
        out[i] = (q_center + scale[i] * acc) * inv_norm[i]


#: ``score_rows(codes, scale, inv_norm, query, q_center, out, lo, hi)``; releases the GIL.
score_rows: Callable[..., None] = _njit(
    nogil=True, fastmath=True, cache=True, boundscheck=False, error_model="numpy"
)(_score_rows)
