"""Compiled scoring kernels (numba), imported only through :func:`load_kernels`.

Kept in their own module so that importing the gallery never imports numba when it
is not wanted, and so a missing numba only disables these (callers fall back to
numpy/BLAS). Compiled once per process and cached on disk (``NUMBA_CACHE_DIR``
moves the cache when the package directory is read-only). Each kernel scores rows
``lo..hi-1`` and releases the GIL, so a query can be split across threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np

_njit: Callable[..., Any] = numba.njit
_OPTIONS = {"nogil": True, "fastmath": True, "cache": True, "boundscheck": False,
            "error_model": "numpy"}


def _score_int8(
    codes: Any, scale: Any, inv_norm: Any, query: Any, q_center: Any, out: Any,
    lo: int, hi: int,
) -> None:
    # out[i] = (q_center + scale[i] * sum_j codes[i, j] * query[j]) * inv_norm[i]
    # Under fastmath the inner loop vectorises (int8 → float32 widening + FMA): one
    # pass over the int8 bytes, no temporaries.
    dim = codes.shape[1]
    for i in range(lo, hi):
        acc = np.float32(0.0)
        for j in range(dim):
            acc += np.float32(codes[i, j]) * query[j]
        out[i] = (q_center + scale[i] * acc) * inv_norm[i]


def _score_int8_top(
    codes: Any, scale: Any, inv_norm: Any, query: Any, q_center: Any, out: Any,
    lo: int, hi: int, top_rows: Any, top_scores: Any, slot: int,
) -> float:
    # score_int8 over rows lo..hi-1 that also keeps, in top_rows[slot] and
    # top_scores[slot], the m = top_rows.shape[1] best rows of the slice (unordered;
    # unused entries get row -1). Returns the slice's m-th best score (every row of the
    # slice left out scores at most that), or -1e30 when the slice has fewer than m
    # rows (nothing left out). A row enters only when it beats the current m-th best,
    # which after the first few thousand rows is rare, so the scan stays one pass over
    # the int8 bytes. No infinities: fastmath lets the compiler assume there are none.
    dim = codes.shape[1]
    m = top_rows.shape[1]
    count = 0
    worst = np.float32(-1e30)
    worst_at = 0
    for i in range(lo, hi):
        acc = np.float32(0.0)
        for j in range(dim):
            acc += np.float32(codes[i, j]) * query[j]
        s = (q_center + scale[i] * acc) * inv_norm[i]
        out[i] = s
        if count < m:
            top_rows[slot, count] = i
            top_scores[slot, count] = s
            count += 1
            if count < m:
                continue
        elif s > worst:
            top_rows[slot, worst_at] = i
            top_scores[slot, worst_at] = s
        else:
            continue
        worst = top_scores[slot, 0]
        worst_at = 0
        for c in range(1, m):
            if top_scores[slot, c] < worst:
                worst = top_scores[slot, c]
                worst_at = c
    for c in range(count, m):
        top_rows[slot, c] = -1
        top_scores[slot, c] = np.float32(-1e30)
    if count < m:
        return -1e30
    return float(worst)


def _score_f32(vectors: Any, query: Any, out: Any, lo: int, hi: int) -> None:
    # out[i] = sum_j vectors[i, j] * query[j]: the float32 matrix-vector product.
    dim = vectors.shape[1]
    for i in range(lo, hi):
        acc = np.float32(0.0)
        for j in range(dim):
            acc += vectors[i, j] * query[j]
        out[i] = acc


def _read_rows(matrix: Any, lo: int, hi: int) -> float:
    # Sum of rows lo..hi-1: reads every byte, writes nothing (the bench's memory floor).
    acc = np.float32(0.0)
    dim = matrix.shape[1]
    for i in range(lo, hi):
        for j in range(dim):
            acc += matrix[i, j]
    return float(acc)


#: ``score_int8(codes, scale, inv_norm, query, q_center, out, lo, hi)``
score_int8: Callable[..., None] = _njit(**_OPTIONS)(_score_int8)
#: ``score_int8_top(codes, scale, inv_norm, query, q_center, out, lo, hi, top_rows,
#: top_scores, slot) -> float``
score_int8_top: Callable[..., float] = _njit(**_OPTIONS)(_score_int8_top)
#: ``score_f32(vectors, query, out, lo, hi)``
score_f32: Callable[..., None] = _njit(**_OPTIONS)(_score_f32)
#: ``read_rows(matrix, lo, hi) -> float``
read_rows: Callable[..., float] = _njit(**_OPTIONS)(_read_rows)
