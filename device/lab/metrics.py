"""Verification metrics from genuine and impostor similarity scores.

Pure functions over score arrays (higher = more alike). A pair is *accepted* at
threshold ``t`` when its score is **strictly greater** than ``t``; so:

* FMR(t), the false match rate: share of impostor scores ``> t``;
* TAR(t), the true accept rate: share of genuine scores ``> t``; FNMR = 1 - TAR.

Each array is sorted once and every count is a binary search, so millions of
impostor scores (every cross-person pair of a few thousand images) cost a sort and
a few ``searchsorted`` calls, with memory linear in the number of scores.

TAR at a target FMR is the empirical, conservative value: the threshold is the
lowest one whose measured FMR does not exceed the target (no interpolation), so the
reported FMR is never flattering. It is only meaningful when there are enough
impostor scores: with ``n`` of them, the smallest FMR that can be told apart from
zero is ``1 / n``, so a target below it is *not resolvable*
(:attr:`OperatingPoint.resolvable`; reports print the reason, never the rate), as
``eval identify`` does for FPIR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray64 = npt.NDArray[np.float64]

#: Thresholds evaluated per step when sweeping every score.
_CHUNK = 1 << 20


def _sorted_scores(scores: npt.ArrayLike, what: str) -> FloatArray64:
    arr = np.asarray(scores, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"no {what} scores")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} scores must be finite")
    return np.sort(arr, kind="stable")


@dataclass(frozen=True)
class OperatingPoint:
    """One threshold and the rates it gives.

    Attributes:
        threshold: Accept a pair when its score is strictly greater than this.
        tar: True accept rate at the threshold.
        fmr: False match rate measured at the threshold (``<=`` the target).
        resolvable: False when the impostors cannot measure the target (fewer than
            ``1 / target`` of them): the figures above then say nothing about it.
        impostors: Impostor scores behind the point.
    """

    threshold: float
    tar: float
    fmr: float
    resolvable: bool = True
    impostors: int = 0

    @property
    def reason(self) -> str | None:
        """Why the point is not reported (None when it is resolvable)."""
        if self.resolvable:
            return None
        return f"not resolvable ({self.impostors} impostor pairs)"


@dataclass(frozen=True)
class Verification:
    """Summary of a verification experiment.

    Attributes:
        genuine: Number of genuine (same-person) scores.
        impostors: Number of impostor (different-person) scores.
        at_fmr: Target FMR → operating point at the lowest threshold meeting it.
        eer: Equal error rate (where FMR and FNMR cross).
        eer_threshold: Threshold at the EER.
        best_accuracy: Highest ``(accepted genuine + rejected impostors) / all``
            over every threshold (an oracle threshold: an upper bound, not a
            cross-validated figure).
        best_accuracy_threshold: The threshold achieving it.
    """

    genuine: int
    impostors: int
    at_fmr: dict[float, OperatingPoint] = field(default_factory=dict)
    eer: float = math.nan
    eer_threshold: float = math.nan
    best_accuracy: float = math.nan
    best_accuracy_threshold: float = math.nan


def fmr_label(fmr: float) -> str:
    """``1e-2``-style key for a target FMR (as used in JSON output)."""
    mantissa, exponent = f"{fmr:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _accepted(sorted_scores: FloatArray64, thresholds: FloatArray64) -> npt.NDArray[np.int64]:
    """How many scores are strictly greater than each threshold."""
    return sorted_scores.size - np.searchsorted(sorted_scores, thresholds, side="right")


def operating_point(genuine: FloatArray64, impostor: FloatArray64, fmr: float) -> OperatingPoint:
    """TAR at the lowest threshold whose FMR is ``<= fmr`` (both arrays sorted ascending).

    Raises:
        ValueError: ``fmr`` is not in ``[0, 1]``.
    """
    if not 0.0 <= fmr <= 1.0:
        raise ValueError(f"target FMR must be within [0, 1], got {fmr}")
    n = impostor.size
    allowed = math.floor(fmr * n + 1e-9)  # impostors that may be accepted
    # Resolvable when at least one impostor may be accepted (the rule of eval identify).
    if allowed >= n:
        threshold = float(min(impostor[0], genuine[0])) - 1.0  # accept everything
    else:
        # Accepting only scores > impostor[n - 1 - allowed] accepts at most `allowed`.
        threshold = float(impostor[n - 1 - allowed])
    t = np.array([threshold])
    return OperatingPoint(
        threshold=threshold,
        tar=float(_accepted(genuine, t)[0] / genuine.size),
        fmr=float(_accepted(impostor, t)[0] / n),
        resolvable=allowed >= 1,
        impostors=int(n),
    )


def verification(
    genuine_scores: npt.ArrayLike,
    impostor_scores: npt.ArrayLike,
    fmrs: Sequence[float] = (1e-2, 1e-3),
) -> Verification:
    """TAR at each target FMR, EER and best accuracy.

    Raises:
        ValueError: Either array is empty or holds non-finite values, or a target
            FMR is outside ``[0, 1]``.
    """
    gen = _sorted_scores(genuine_scores, "genuine")
    imp = _sorted_scores(impostor_scores, "impostor")
    at_fmr = {f: operating_point(gen, imp, f) for f in fmrs}
    # Every score is a candidate threshold (plus "accept all"): the rates only change
    # there. Evaluated in chunks, so memory stays linear in the scores.
    best_gap, eer, eer_threshold = math.inf, math.nan, math.nan
    best_correct, best_threshold = -1, math.nan
    floor = np.array([min(gen[0], imp[0]) - 1.0])
    for source in (floor, gen, imp):
        for start in range(0, source.size, _CHUNK):
            candidates = source[start : start + _CHUNK]
            tp = _accepted(gen, candidates)
            fp = _accepted(imp, candidates)
            fmr_curve = fp / imp.size
            fnmr = 1.0 - tp / gen.size
            # EER: where FMR (falling) and FNMR (rising) are closest; report their mean.
            gap = np.abs(fmr_curve - fnmr)
            k = int(np.argmin(gap))
            if gap[k] < best_gap:
                best_gap = float(gap[k])
                eer = float((fmr_curve[k] + fnmr[k]) / 2.0)
                eer_threshold = float(candidates[k])
            correct = tp + (imp.size - fp)
            j = int(np.argmax(correct))
            if correct[j] > best_correct:
                best_correct, best_threshold = int(correct[j]), float(candidates[j])
    return Verification(
        genuine=int(gen.size),
        impostors=int(imp.size),
        at_fmr=at_fmr,
        eer=eer,
        eer_threshold=eer_threshold,
        best_accuracy=best_correct / (gen.size + imp.size),
        best_accuracy_threshold=best_threshold,
    )


def roc_points(
    genuine_scores: npt.ArrayLike, impostor_scores: npt.ArrayLike, points: int = 400
) -> tuple[FloatArray64, FloatArray64]:
    """``(fmr, tar)`` samples of the ROC curve, log-spaced in FMR, for plotting.

    FMR runs from ``1 / len(impostor)`` to 1 in at most ``points`` steps.

    Raises:
        ValueError: Either array is empty or holds non-finite values.
    """
    gen = _sorted_scores(genuine_scores, "genuine")
    imp = _sorted_scores(impostor_scores, "impostor")
    n = imp.size
    accepted = np.unique(np.round(np.logspace(0, math.log10(n), points)).astype(np.int64))
    thresholds = imp[n - accepted]  # accepting > imp[n-k] accepts fewer than k impostors
    thresholds = np.concatenate([thresholds, [min(gen[0], imp[0]) - 1.0]])
    tar = _accepted(gen, thresholds) / gen.size
    fmr = _accepted(imp, thresholds) / n
    return fmr.astype(np.float64), tar.astype(np.float64)


def cosine_matrix(a: npt.ArrayLike, b: npt.ArrayLike | None = None) -> npt.NDArray[np.float32]:
    """Cosine similarity of every row of ``a`` with every row of ``b`` (default ``a``).

    Raises:
        ValueError: Not 2-D arrays of the same width, or a zero row.
    """
    x = np.asarray(a, dtype=np.float32)
    y = x if b is None else np.asarray(b, dtype=np.float32)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected two (N, D) arrays of equal D, got {x.shape} and {y.shape}")
    nx = np.linalg.norm(x, axis=1, keepdims=True)
    ny = np.linalg.norm(y, axis=1, keepdims=True)
    if (nx == 0).any() or (ny == 0).any():
        raise ValueError("cannot take the cosine of a zero vector")
    out: npt.NDArray[np.float32] = (x / nx) @ (y / ny).T
    return out


def pair_scores_by_label(
    similarity: npt.NDArray[np.float32], labels: Sequence[str]
) -> tuple[FloatArray64, FloatArray64]:
    """Every unordered pair of a square similarity matrix split by label.

    Genuine: pairs of two different items with the same label; impostor: pairs with
    different labels. The diagonal (an item with itself) is never used.

    Raises:
        ValueError: The matrix is not square or does not match ``labels``.
    """
    n = len(labels)
    if similarity.shape != (n, n):
        raise ValueError(f"similarity {similarity.shape} does not match {n} labels")
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    gen_parts: list[npt.NDArray[np.float32]] = []
    imp_parts: list[npt.NDArray[np.float32]] = []
    for i in range(n - 1):  # row by row: no n*n boolean masks in memory
        row = similarity[i, i + 1 :]
        same = codes[i + 1 :] == codes[i]
        gen_parts.append(row[same])
        imp_parts.append(row[~same])
    genuine = np.concatenate(gen_parts).astype(np.float64) if gen_parts else np.empty(0)
    impostor = np.concatenate(imp_parts).astype(np.float64) if imp_parts else np.empty(0)
    return genuine, impostor
