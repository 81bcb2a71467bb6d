"""The compiled scoring kernels, when numba is usable here.

Without numba the index still works: float32 falls back to BLAS ``sgemv`` (which
uses its own threads) and int8 to the blockwise numpy path, both slower.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Kernels:
    """Row-range kernels; each releases the GIL (see ``_numba_kernels``).

    Attributes:
        score_int8: ``(codes, scale, inv_norm, query, q_center, out, lo, hi)``.
        score_int8_top: ``(codes, scale, inv_norm, query, q_center, out, lo, hi,
            top_rows, top_scores, slot) -> float``: ``score_int8`` that also keeps
            the slice's best rows in row ``slot`` of the two ``(slices, m)`` buffers
            and returns the slice's ``m``-th best score (``-1e30`` if it has fewer).
        score_f32: ``(vectors, query, out, lo, hi)``.
        read_rows: ``(matrix, lo, hi) -> float``; a read-only pass (bench floor).
    """

    score_int8: Callable[..., None]
    score_int8_top: Callable[..., float]
    score_f32: Callable[..., None]
    read_rows: Callable[..., float]


def load_kernels() -> Kernels | None:
    """The compiled kernels, or ``None`` (logged once per call) when numba is unusable.

    Returns:
        The kernels, or ``None``.
    """
    try:
        module = importlib.import_module("device.gallery.search._numba_kernels")
    except (ImportError, RuntimeError, OSError) as exc:
        # RuntimeError: numba found no writable cache directory.
        logger.warning(
            "gallery search falls back to slower numpy/BLAS paths (%s: %s); install "
            "numba, and set NUMBA_CACHE_DIR if the package directory is read-only",
            type(exc).__name__, exc)
        return None
    return Kernels(module.score_int8, module.score_int8_top, module.score_f32,
                   module.read_rows)
