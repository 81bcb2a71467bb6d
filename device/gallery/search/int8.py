"""Int8 storage for the search index: quantisation and scoring.

Each stored unit vector ``x`` is kept as int8 codes with **one scale per vector**,
optionally after subtracting a fixed ``center`` (the gallery's mean embedding):

* ``r = x - center``; ``scale = max|r| / 127``; ``codes = round(r / scale)``;
* ``x̂ = center + scale · codes`` is the decoded vector and ``inv_norm = 1 / ‖x̂‖``;
* a query ``q`` scores ``(q·center + scale · (codes·q)) · inv_norm`` — the cosine
  between ``q`` and the decoded direction, so similarities stay in ``[-1, 1]``.

Why per vector and not per dimension (faiss ``QT_8bit`` trains a min/max per dimension):
a per-vector scale needs no training, so incremental adds quantise exactly as well as
the first bulk load, and it adapts to each vector's own range. A one-off measurement
on 200k vectors with 1,000 probes (noisy copies of gallery rows) and 1,000 strangers
(random queries, whose top-1 is a near tie), recall@1 against exact float64 search:

=========================================  ==========  ==============
scheme                                     isotropic   dlib-like
=========================================  ==========  ==============
per-vector scale, renormalised             97.9 %      96.2 %
per-vector scale, not renormalised         98.0 %      88.3 %
per-dimension symmetric scale              96.6 %      87.3 %
faiss ``QT_8bit`` (per-dimension min/max)  96.8 %      92.6 %
per-vector, renormalised, centered         98.9 %      98.0 %
=========================================  ==========  ==============

(strangers; every scheme kept 100 % of the probes, the case that decides a match).
"dlib-like" vectors were drawn from the mean and covariance of dlib embeddings of
1,500 LFW faces — tightly clustered after normalisation: their mean has norm 0.92 —
which is where renormalising and centering pay.

The query stays float32 (only the gallery is quantised), so no query rounding error
is added.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from device.types import FloatArray

Int8Array = npt.NDArray[np.int8]

#: Rows converted to float32 per step of the blockwise path: 2,048 × 128 floats is
#: 1 MiB of scratch, which stays in L2 on a Pi 4/5 and on x86.
BLOCK_ROWS = 2048



@dataclass(frozen=True, slots=True)
class Quantized:
    """Int8 codes of a batch of vectors and the per-row factors that decode them."""

    codes: Int8Array
    scale: FloatArray
    inv_norm: FloatArray


def quantize(vectors: npt.NDArray[np.float64], center: npt.NDArray[np.float64]) -> Quantized:
    """Quantise unit vectors to int8 codes with one symmetric scale per vector.

    Args:
        vectors: ``(m, dim)`` float64, finite, L2-normalised.
        center: ``(dim,)`` float64 vector subtracted before quantising (zeros for none).

    Returns:
        The codes, scales and inverse norms of the decoded vectors.
    """
    resid = vectors - center
    amax = np.abs(resid).max(axis=1)
    # A vector equal to the center has no residual: any scale decodes it exactly.
    scale = np.where(amax > 0.0, amax / 127.0, 1.0)
    codes = np.clip(np.rint(resid / scale[:, None]), -127, 127).astype(np.int8)
    decoded = center + codes.astype(np.float64) * scale[:, None]
    norm = np.linalg.norm(decoded, axis=1)
    # ‖x̂‖ is ≈ 1 for a unit x; guard the degenerate case all the same.
    inv_norm = np.where(norm > 0.0, 1.0 / np.maximum(norm, 1e-30), 0.0)
    return Quantized(codes, scale.astype(np.float32), inv_norm.astype(np.float32))


def dequantize(q: Quantized, center: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The unit vectors that the codes stand for (decoded, then renormalised).

    Args:
        q: Codes and factors from :func:`quantize`.
        center: The same center they were quantised with.

    Returns:
        ``(m, dim)`` float64.
    """
    decoded = center + q.codes.astype(np.float64) * q.scale.astype(np.float64)[:, None]
    out: npt.NDArray[np.float64] = decoded * q.inv_norm.astype(np.float64)[:, None]
    return out


def score_blockwise(
    codes: Int8Array, scale: FloatArray, inv_norm: FloatArray,
    queries: FloatArray, q_center: FloatArray, out: FloatArray,
) -> None:
    """Scores of every row for a batch of queries, one cache-sized block at a time.

    Each block of int8 rows is widened to float32 in a scratch buffer and multiplied by
    the queries with BLAS, so memory traffic is the int8 bytes plus a block that stays
    in cache. This serves batches (sgemm amortises the widening over the queries) and
    is the single-query path when the compiled kernels are unavailable.

    Args:
        codes: ``(n, dim)`` int8.
        scale: ``(n,)`` float32 per-row scale.
        inv_norm: ``(n,)`` float32 inverse norm of each decoded row.
        queries: ``(b, dim)`` float32 unit queries.
        q_center: ``(b,)`` float32 dot product of each query with the center.
        out: ``(b, n)`` float32, written.
    """
    n, dim = codes.shape
    b = queries.shape[0]
    block = min(BLOCK_ROWS, max(n, 1))
    scratch = np.empty((block, dim), dtype=np.float32)
    part = np.empty((block, b), dtype=np.float32)
    qt = np.ascontiguousarray(queries.T)
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        m = hi - lo
        np.copyto(scratch[:m], codes[lo:hi], casting="unsafe")
        np.matmul(scratch[:m], qt, out=part[:m])
        part[:m] *= scale[lo:hi, None]
        part[:m] += q_center[None, :]
        part[:m] *= inv_norm[lo:hi, None]
        out[:, lo:hi] = part[:m].T
