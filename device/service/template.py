"""Track templates: one probe vector from several embedded faces of one track.

In ``[decision] template = "mean"`` mode a track is searched with the
quality-weighted mean of its best ``n`` embeddings, re-normalised, instead of face by
face. A mean of ``k`` faces scores differently against strangers than one face does,
so it has its own calibration table, measured on templates of ``k`` faces
(``facegate eval templates --save-calibration``), under the id
:func:`template_table_id` (``<model_id>.template-mean-k<k>``).

The template is held in memory while its track lives and dropped with it; it is
never written anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from device.errors import ConfigError
from device.service.thresholds import (
    Threshold,
    ThresholdPolicy,
    resolve_threshold,
    table_exists,
    table_path,
)
from device.types import FloatArray


def template_table_id(model_id: str, k: int) -> str:
    """The calibration-table id of ``model_id``'s mean templates of ``k`` faces."""
    return f"{model_id}.template-mean-k{int(k)}"


def mean_template(vectors: Sequence[npt.ArrayLike] | npt.ArrayLike,
                  weights: Sequence[float] | npt.ArrayLike | None = None) -> FloatArray:
    """``normalise(sum_i w_i * v_i)``: the weighted mean direction of unit embeddings.

    Args:
        vectors: ``(k, d)`` embeddings (each L2-normalised).
        weights: ``(k,)`` non-negative weights (quality scores); equal when None or
            when they sum to zero.

    Raises:
        ValueError: No vectors, mismatched weights, a negative or non-finite weight,
            or vectors that cancel out.
    """
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError(f"a template needs a (k, d) array of embeddings, got {v.shape}")
    w = np.ones(v.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (v.shape[0],):
        raise ValueError(f"{v.shape[0]} embeddings but {w.shape} weights")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("template weights must be finite and non-negative")
    if w.sum() <= 0:
        w = np.ones(v.shape[0])
    mean = (w[:, None] * v).sum(axis=0)
    norm = float(np.linalg.norm(mean))
    if not np.isfinite(norm) or norm < 1e-12:
        raise ValueError("the embeddings cancel out: no template direction")
    out: FloatArray = (mean / norm).astype(np.float32)
    return out


def template_threshold(model_id: str, n: int, policy: ThresholdPolicy, *,
                       cache_dir: Path | None = None) -> Threshold:
    """The threshold for ``model_id``'s mean templates of ``n`` faces.

    The template table is read at the rate the policy asks for: its ``target_fmr``,
    or, with an explicit ``threshold``, that threshold's FMR (the single-face table's,
    else the stated ``threshold_fmr``), so both modes run at the same false-match rate.

    Raises:
        ConfigError: No template table (the message says how to make one), or the
            policy is unusable (as :func:`~device.service.thresholds.resolve_threshold`).
    """
    target = policy.target_fmr
    if policy.threshold is not None:
        target = resolve_threshold(model_id, policy, cache_dir=cache_dir).fmr
    table_id = template_table_id(model_id, n)
    if not table_exists(table_id, cache_dir):
        raise ConfigError(
            f'[decision] template = "mean" needs the calibration table {table_id} (templates '
            f"of {n} faces score differently from one face): measure it with `facegate eval "
            f"templates --root DIR --k {n} --save-calibration "
            f"{table_path(table_id, cache_dir)}`, or set template = \"best\"")
    return resolve_threshold(
        table_id, ThresholdPolicy(target_fmr=target, allow_unsafe=policy.allow_unsafe),
        cache_dir=cache_dir)
