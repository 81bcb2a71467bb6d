"""In-memory search index over a gallery's L2-normalised face embeddings.

The gallery is one ``(rows, dim)`` matrix — float32, or int8 with one scale per row
(:mod:`device.gallery.search.int8`) — searched by inner product, which for unit vectors is
cosine similarity. One query costs one streaming pass over the matrix — a compiled
kernel (numba) over row slices that a few threads take on demand — plus an ``argmax``
or ``argpartition`` over the scores. Batches go through BLAS ``sgemm``.

Why not BLAS for one query too: OpenBLAS splits ``sgemv`` into one fixed share per
thread and hands off through its own thread pool; on a shared machine (a Pi also
running the detector) one descheduled thread stalls the whole product. Measured on
the 2-core dev machine under other load (``facegate bench search``), 10k × 128:
``sgemv`` p50 10–16 ms against 0.5 ms for a sliced read of the same matrix.

Concurrency: one writer, many readers, no reader locks. Readers search an immutable
:class:`IndexSnapshot`, taken with a single attribute read; a write builds the next
snapshot and publishes it with a single attribute write, so a reader sees every row
of an :meth:`GalleryIndex.add` or :meth:`GalleryIndex.remove` call or none of them.
Rows are appended into spare capacity past the rows any published snapshot can see,
and a removal only marks its rows dead in the next snapshot, so published rows are
never written again; compaction and growth copy into fresh buffers (old snapshots keep
the old ones alive until their readers finish — budget for two copies during a
rebuild).

Float32 results are exact: candidates within the float32 rounding bound of the k-th
score are re-scored in float64, so the top-k equals that of a float64 search over the
stored rows. Int8 results are the int8 index's own scores, unless the index keeps a
*row file* (:mod:`device.gallery.search.rowfile`): the float32 rows on disk, memory-mapped
read-only. Then a search re-ranks (``refine``): the int8 scan keeps each slice's
:data:`REFINE_CANDIDATES` best rows, the few whose int8 score is within the provable
int8 error bound ``eps`` of the k-th best exact score are re-scored in float64 from the
file, and the answer — faces, order and similarities — is that of the float32 index.
The proof, per query (:meth:`IndexSnapshot.int8_error_bound`): every row's int8 score
is within ``eps`` of its exact score; a row outside the kept ones scores at most ``T``
(the largest slice threshold) in int8, so at most ``T + eps`` exactly; when that is
below the k-th best exact score found, no row outside can enter the top k. When it is
not (a dense band of near-ties, or many removed rows among the kept ones), the search
falls back to every row whose int8 score is within ``eps`` of that k-th best (one pass
over the per-row scores, not the codes) and counts it (:meth:`GalleryIndex.refine_stats`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

import numpy as np
import numpy.typing as npt

from device.errors import GalleryError
from device.gallery.search import int8 as q8
from device.gallery.search.kernels import load_kernels
from device.gallery.search.parallel import plan_slices, run_sliced
from device.gallery.search.rowfile import RowFile, RowView
from device.types import FloatArray

logger = logging.getLogger(__name__)

Precision = Literal["float32", "int8"]
PRECISIONS: tuple[Precision, ...] = ("float32", "int8")

Int64Array = npt.NDArray[np.int64]
Int32Array = npt.NDArray[np.int32]
Float64Array = npt.NDArray[np.float64]

#: Rows normalised/quantised per step of an add, to bound float64 temporaries.
ADD_CHUNK_ROWS = 65_536
#: Upper bound on the score matrix of one step of a batch search.
BATCH_SCORE_BYTES = 64 * 2**20
#: Compact when at least this share of rows is dead (and at least MIN_DEAD_TO_COMPACT).
COMPACT_DEAD_FRACTION = 0.125
MIN_DEAD_TO_COMPACT = 1024
#: Below these many rows one thread scans alone (~4 MiB of matrix: a hand-off to
#: another thread costs more than it saves).
PARALLEL_MIN_ROWS_F32 = 8192
PARALLEL_MIN_ROWS_INT8 = 32_768
#: A stored vector whose norm is within this of 1 is kept bit-for-bit.
UNIT_TOLERANCE = 1e-6
#: Best int8 rows each slice of a refined scan keeps for the exact re-rank. Searches
#: for more results than this (or without the compiled kernels) take the fallback.
REFINE_CANDIDATES = 64
#: Absolute slack added to the int8 error bound for what the bound's terms leave out:
#: stored rows' norms (within UNIT_TOLERANCE... of 1 only to float32 precision), the
#: float32 rounding of the query, scale, inverse norm and query·center (each < 1e-6).
REFINE_SLACK = 1e-5


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result.

    Attributes:
        face_id: The face (gallery row id).
        identity_id: The identity the face belongs to.
        similarity: Cosine similarity to the query, in ``[-1, 1]``.
    """

    face_id: int
    identity_id: str
    similarity: float

    def to_json(self) -> dict[str, object]:
        return {"face_id": self.face_id, "identity_id": self.identity_id,
                "similarity": round(self.similarity, 6)}


def default_threads() -> int:
    """Cores this process may run on, capped at 4 (the Pi's count)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))


class _Engine:
    """What the snapshots of one index share: threads, kernels, scratch buffers."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.kernels = load_kernels()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self.refine_counters = _Counters()

    def executor(self) -> ThreadPoolExecutor | None:
        if self.threads <= 1 or self.kernels is None:
            return None
        with self._lock:
            if self._executor is None and not self._closed:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.threads - 1, thread_name_prefix="gallery-index")
            return self._executor

    def scratch(self, n: int) -> FloatArray:
        """A per-thread ``(1, n)`` float32 buffer, reused across this thread's searches."""
        buf: FloatArray | None = getattr(self._local, "buf", None)
        if buf is None or buf.shape[0] < n:
            buf = np.empty(max(n, 1024), dtype=np.float32)
            self._local.buf = buf
        return buf[:n].reshape(1, n)

    def candidates(self, slots: int, m: int) -> tuple[Int64Array, FloatArray]:
        """Per-thread ``(slots, m)`` row and score buffers for a refined scan."""
        bufs: tuple[Int64Array, FloatArray] | None = getattr(self._local, "cand", None)
        if bufs is None or bufs[0].shape[0] < slots or bufs[0].shape[1] != m:
            bufs = (np.empty((slots, m), dtype=np.int64), np.empty((slots, m), dtype=np.float32))
            self._local.cand = bufs
        return bufs[0][:slots], bufs[1][:slots]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


@dataclass(frozen=True, slots=True)
class RefineStats:
    """Counters of the exact re-rank, since the index was made.

    Attributes:
        queries: Re-ranked searches (one per query, batch queries included).
        fallbacks: Searches that could not prove the kept candidates enough and
            re-scored every row within the bound of the k-th best (batches, searches
            without the compiled kernels or for more than ``REFINE_CANDIDATES``
            results always do).
        rescored: Float32 rows read from the row file and re-scored, in total.
    """

    queries: int
    fallbacks: int
    rescored: int


class _Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = [0, 0, 0]

    def add(self, fallback: bool, rescored: int) -> None:
        with self._lock:
            self._values[0] += 1
            self._values[1] += int(fallback)
            self._values[2] += rescored

    def read(self) -> RefineStats:
        with self._lock:
            return RefineStats(*self._values)


@dataclass(frozen=True, slots=True, eq=False)
class IndexSnapshot:
    """An immutable view of the index at one version; safe to search from any thread.

    The arrays are read-only views of rows that are never written again. Identity
    names are kept in a list shared with later snapshots, which only ever appends;
    this snapshot reads only the names its rows refer to.

    Attributes:
        dim: Embedding dimension.
        precision: ``"float32"`` or ``"int8"``.
        version: Increases by one with every published change.
        rows: Rows in the matrix, dead ones included.
        live: Rows that are searchable (``rows - len(dead)``).
        face_ids: ``(rows,)`` face id of each row.
        identity_codes: ``(rows,)`` index into ``identity_names`` of each row.
        identity_names: Identity id for each code.
        dead: Sorted rows removed since the last compaction.
        vectors: ``(rows, dim)`` float32 unit vectors (float32 precision only).
        codes: ``(rows, dim)`` int8 codes (int8 precision only).
        scale: ``(rows,)`` float32 per-row scale (int8 only).
        inv_norm: ``(rows,)`` float32 inverse norm of each decoded row (int8 only).
        center: ``(dim,)`` vector subtracted before quantising (int8 only).
        exact_rows: The float32 rows on disk (int8 with a row file only).
        refine: Whether searches re-rank against ``exact_rows``.
        error_scale: Largest scale of a row whose codes are not all zero (int8 only;
            the int8 error bound is proportional to it).
        max_inv_norm: Largest ``inv_norm`` (int8 only).
    """

    dim: int
    precision: Precision
    version: int
    rows: int
    live: int
    face_ids: Int64Array = field(repr=False)
    identity_codes: Int32Array = field(repr=False)
    identity_names: Sequence[str] = field(repr=False)
    dead: Int64Array = field(repr=False)
    vectors: FloatArray | None = field(repr=False)
    codes: q8.Int8Array | None = field(repr=False)
    scale: FloatArray | None = field(repr=False)
    inv_norm: FloatArray | None = field(repr=False)
    center: Float64Array | None = field(repr=False)
    exact_rows: RowView | None = field(repr=False)
    refine: bool
    error_scale: float
    max_inv_norm: float
    _engine: _Engine = field(repr=False)

    def __len__(self) -> int:
        return self.live

    @property
    def nbytes(self) -> int:
        """Bytes of the matrix and per-row arrays this snapshot searches, in RAM."""
        parts = (self.vectors, self.codes, self.scale, self.inv_norm,
                 self.face_ids, self.identity_codes)
        return sum(int(a.nbytes) for a in parts if a is not None)

    @property
    def disk_nbytes(self) -> int:
        """Bytes of the row file this snapshot re-ranks against (0 without one).

        On disk, not in RAM: a search reads only its candidates' pages.
        """
        return 0 if self.exact_rows is None else self.exact_rows.nbytes

    def int8_error_bound(self, q64: Float64Array) -> float:
        """A bound on ``|int8 score - exact score|`` of every row for unit query ``q64``.

        Row ``x`` (unit) is coded as ``x̂ = center + scale·codes`` with each entry of
        ``δ = x̂ - x`` at most ``scale/2``, and scored ``q·x̂ / ‖x̂‖``. Then
        ``q·x̂/‖x̂‖ - q·x = (q·x)(1/‖x̂‖ - 1) + q·δ/‖x̂‖``, and ``|1 - ‖x̂‖| ≤ ‖δ‖₂``,
        so the difference is at most ``inv_norm·(scale/2)·(√dim + ‖q‖₁)``. The float32
        arithmetic of the kernel adds at most ``(dim + 8)·2⁻²³`` of the magnitudes it
        sums (any summation order, with or without FMA); :data:`REFINE_SLACK` covers
        the remaining roundings. The largest scale and inverse norm make it one bound
        for every row (rows far from the center would deserve a looser one alone).

        Args:
            q64: ``(dim,)`` unit query.

        Returns:
            The bound (0 for a float32 snapshot).
        """
        if self.center is None:
            return 0.0
        q1 = float(np.abs(q64).sum())
        qc = abs(float(q64 @ self.center))
        s, inv = self.error_scale, self.max_inv_norm
        quant = inv * (s / 2.0) * (np.sqrt(self.dim) + q1)
        arith = (self.dim + 8) * 2.0**-23 * inv * (127.0 * s * q1 + qc + 1.0)
        return float(quant + arith + REFINE_SLACK)

    def live_face_ids(self) -> Int64Array:
        """Face ids of the searchable rows, in row order."""
        if self.dead.size == 0:
            return self.face_ids.copy()
        keep = np.ones(self.rows, dtype=bool)
        keep[self.dead] = False
        out: Int64Array = self.face_ids[keep]
        return out

    # ---- search -------------------------------------------------------------------

    def search(self, query: npt.ArrayLike, k: int = 1) -> tuple[Hit, ...]:
        """The ``k`` faces most similar to ``query``, best first.

        Args:
            query: ``(dim,)`` embedding; normalised here.
            k: How many faces; fewer come back when the index holds fewer.

        Returns:
            Up to ``k`` hits, highest similarity first (ties: lower row first).

        Raises:
            GalleryError: ``query`` has the wrong shape, is not finite or is zero,
                or ``k < 1``.
        """
        q32, q64 = self._queries(query, batch=False)
        _check_k(k)
        if self.live == 0:
            return ()
        scores = self._engine.scratch(self.rows)
        pool = self._score(q32, scores)
        rows, sims = self._top_rows(scores[0], q64[0], min(k, self.live), pool)
        return self._hits(rows, sims)

    def search_identities(self, query: npt.ArrayLike, k: int = 1) -> tuple[Hit, ...]:
        """The ``k`` identities most similar to ``query``, each by its best face.

        Args:
            query: ``(dim,)`` embedding; normalised here.
            k: How many identities.

        Returns:
            One hit per identity (its best face), highest similarity first.

        Raises:
            GalleryError: As :meth:`search`.
        """
        q32, q64 = self._queries(query, batch=False)
        _check_k(k)
        if self.live == 0:
            return ()
        scores = self._engine.scratch(self.rows)
        pool = self._score(q32, scores)
        return self._identities(scores[0], q64[0], k, pool)

    def search_batch(self, queries: npt.ArrayLike, k: int = 1) -> tuple[tuple[Hit, ...], ...]:
        """:meth:`search` for each row of ``queries``, sharing passes over the matrix.

        Args:
            queries: ``(b, dim)`` embeddings.
            k: Faces per query.

        Returns:
            One tuple of hits per query, in query order.

        Raises:
            GalleryError: As :meth:`search`, for any query.
        """
        return self._batch(queries, k, identities=False)

    def search_identities_batch(
        self, queries: npt.ArrayLike, k: int = 1
    ) -> tuple[tuple[Hit, ...], ...]:
        """:meth:`search_identities` for each row of ``queries``.

        Args:
            queries: ``(b, dim)`` embeddings.
            k: Identities per query.

        Returns:
            One tuple of hits per query, in query order.

        Raises:
            GalleryError: As :meth:`search`, for any query.
        """
        return self._batch(queries, k, identities=True)

    def _batch(
        self, queries: npt.ArrayLike, k: int, *, identities: bool
    ) -> tuple[tuple[Hit, ...], ...]:
        q32, q64 = self._queries(queries, batch=True)
        _check_k(k)
        b = q32.shape[0]
        if self.live == 0:
            return tuple(() for _ in range(b))
        group = max(1, min(b, BATCH_SCORE_BYTES // (4 * self.rows)))
        scores = np.empty((group, self.rows), dtype=np.float32)
        out: list[tuple[Hit, ...]] = []
        for lo in range(0, b, group):
            hi = min(lo + group, b)
            block = scores[: hi - lo]
            self._score(q32[lo:hi], block)
            for i in range(hi - lo):
                if identities:
                    out.append(self._identities(block[i], q64[lo + i], k))
                else:
                    rows, sims = self._top_rows(block[i], q64[lo + i], min(k, self.live))
                    out.append(self._hits(rows, sims))
        return tuple(out)

    def _queries(self, query: npt.ArrayLike, *, batch: bool) -> tuple[FloatArray, Float64Array]:
        """Validated, normalised ``(b, dim)`` float32 and float64 copies of the queries."""
        try:
            arr = np.asarray(query, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise GalleryError(f"query is not a numeric array: {exc}") from exc
        want = f"(n, {self.dim})" if batch else f"({self.dim},)"
        if (batch and arr.ndim != 2) or (not batch and arr.ndim != 1) or arr.shape[-1] != self.dim:
            raise GalleryError(
                f"query has shape {arr.shape}, the index expects {want} "
                f"(embeddings of dimension {self.dim})")
        arr = arr.reshape(-1, self.dim)
        if not np.isfinite(arr).all():
            raise GalleryError("query contains NaN or infinity; refusing to search")
        norms = np.linalg.norm(arr, axis=1)
        if (norms == 0.0).any():
            raise GalleryError("query is the zero vector; it has no direction to compare")
        q64 = arr / norms[:, None]
        return q64.astype(np.float32), q64

    def _score(self, q32: FloatArray, out: FloatArray) -> _Pool | None:
        """``out[t, i]`` = similarity of query ``t`` to row ``i``; dead rows get ``-inf``.

        One query: a compiled kernel over row slices shared by ``threads`` threads
        (memory-bound, one pass over the matrix). Several: BLAS ``sgemm`` (float32) or
        blockwise widening + ``sgemm`` (int8), which amortise the pass over queries.
        Without numba a single query takes the batch path.

        Returns:
            For one query on a re-ranked int8 snapshot, the best rows each slice kept
            (found in the same pass); otherwise ``None``.
        """
        pool: _Pool | None = None
        eng = self._engine
        kern = eng.kernels
        single = q32.shape[0] == 1 and kern is not None
        if self.vectors is not None:
            if single:
                assert kern is not None
                vec, q, o = self.vectors, q32[0], out[0]
                run_sliced(lambda lo, hi: kern.score_f32(vec, q, o, lo, hi), self.rows,
                           eng.executor(), eng.threads, min_rows=PARALLEL_MIN_ROWS_F32)
            else:
                np.matmul(q32, self.vectors.T, out=out)
        else:
            codes, scale, inv = self.codes, self.scale, self.inv_norm
            assert codes is not None and scale is not None and inv is not None
            assert self.center is not None
            q_center = (q32.astype(np.float64) @ self.center).astype(np.float32)
            if single and self.refine:
                assert kern is not None
                pool = self._scan_int8_top(kern.score_int8_top, q32[0], q_center[0], out[0])
            elif single:
                assert kern is not None
                q, qc, o = q32[0], q_center[0], out[0]
                run_sliced(lambda lo, hi: kern.score_int8(codes, scale, inv, q, qc, o, lo, hi),
                           self.rows, eng.executor(), eng.threads,
                           min_rows=PARALLEL_MIN_ROWS_INT8)
            else:
                q8.score_blockwise(codes, scale, inv, q32, q_center, out)
        if self.dead.size:
            out[:, self.dead] = -np.inf
        return pool

    def _scan_int8_top(
        self, kernel: Callable[..., float], q: FloatArray, qc: np.float32, out: FloatArray
    ) -> _Pool:
        """The int8 scan of one query that also keeps each slice's best rows."""
        eng = self._engine
        codes, scale, inv = self.codes, self.scale, self.inv_norm
        executor = eng.executor()
        step, slots = plan_slices(self.rows, executor, eng.threads,
                                  min_rows=PARALLEL_MIN_ROWS_INT8)
        top_rows, top_scores = eng.candidates(slots, REFINE_CANDIDATES)
        limits = [0.0] * slots

        def scan(lo: int, hi: int) -> None:
            slot = lo // step
            limits[slot] = kernel(codes, scale, inv, q, qc, out, lo, hi,
                                  top_rows, top_scores, slot)

        run_sliced(scan, self.rows, executor, eng.threads, min_rows=PARALLEL_MIN_ROWS_INT8)
        return _Pool(top_rows.ravel().copy(), top_scores.ravel().copy(), max(limits))

    def _top_rows(
        self, scores: FloatArray, q64: Float64Array, m: int, pool: _Pool | None = None
    ) -> tuple[Int64Array, Float64Array]:
        """Rows of the ``m`` best scores (``m <= live``) and their similarities, best first."""
        if self.refine:
            return self._refined_top_rows(scores, q64, m, pool)
        n = scores.shape[0]
        if m == 1:
            cand: Int64Array = np.array([int(np.argmax(scores))], dtype=np.int64)
        elif m >= n:
            cand = np.arange(n, dtype=np.int64)
        else:
            cand = np.argpartition(scores, n - m)[n - m:].astype(np.int64)
        if self.vectors is not None:
            # Any row whose float64 score could beat the m-th is within the float32
            # rounding bound of it; re-score those in float64 for an exact top-m.
            floor = float(scores[cand].min()) - _f32_dot_error(self.dim)
            cand = np.flatnonzero(scores >= floor).astype(np.int64)
            # Row-wise products summed per row: the same bits for a row whatever the
            # other candidates are (a BLAS product may change with the batch shape).
            sims: Float64Array = (self.vectors[cand].astype(np.float64) * q64).sum(axis=1)
        else:
            sims = scores[cand].astype(np.float64)
        order = np.lexsort((cand, -sims))[:m]
        return cand[order], sims[order]

    def _refined_top_rows(
        self, scores: FloatArray, q64: Float64Array, m: int, pool: _Pool | None
    ) -> tuple[Int64Array, Float64Array]:
        """The exact top ``m`` of an int8 snapshot, re-ranked against the row file.

        See the module docstring for why the answer equals the float32 index's.
        """
        assert self.exact_rows is not None
        eps = self.int8_error_bound(q64)
        counters = self._engine.refine_counters
        if pool is not None and m <= REFINE_CANDIDATES:
            keep = pool.rows >= 0
            if self.dead.size:
                keep &= ~np.isin(pool.rows, self.dead, assume_unique=False)
            rows, int8 = pool.rows[keep], pool.scores[keep]
            if rows.size >= m:
                # The m best by int8 give a first m-th best exact score; only rows whose
                # int8 score is within eps of it can reach it.
                first = rows[np.argpartition(-int8, m - 1)[:m]] if rows.size > m else rows
                floor = float(self._exact(first, q64).min()) - eps
                cand = rows[int8 >= floor]
                top, sims = self._exact_top(cand, q64, m)
                if pool.limit + eps < sims[-1]:
                    counters.add(False, int(cand.size) + m)
                    return top, sims
        # Fallback: every row whose int8 score is within eps of the m-th best exact
        # score of the int8 top m holds the exact top m.
        n = scores.shape[0]
        if m == 1:
            first_rows: Int64Array = np.array([int(np.argmax(scores))], dtype=np.int64)
        elif m >= n:
            first_rows = np.arange(n, dtype=np.int64)
        else:
            first_rows = np.argpartition(scores, n - m)[n - m:].astype(np.int64)
        floor = float(self._exact(first_rows, q64).min()) - eps
        cand = np.flatnonzero(scores >= floor).astype(np.int64)
        counters.add(True, int(cand.size) + int(first_rows.size))
        return self._exact_top(cand, q64, m)

    def _exact(self, rows: Int64Array, q64: Float64Array) -> Float64Array:
        """Float64 similarities of ``rows`` from the row file (as the float32 index)."""
        assert self.exact_rows is not None
        # Row-wise products summed per row: the same bits as the float32 index.
        sims: Float64Array = (self.exact_rows.gather(rows).astype(np.float64) * q64).sum(axis=1)
        return sims

    def _exact_top(
        self, cand: Int64Array, q64: Float64Array, m: int
    ) -> tuple[Int64Array, Float64Array]:
        cand = np.sort(cand)  # file order: neighbouring rows share pages
        sims = self._exact(cand, q64)
        order = np.lexsort((cand, -sims))[:m]
        return cand[order], sims[order]

    def _identities(
        self, scores: FloatArray, q64: Float64Array, k: int, pool: _Pool | None = None
    ) -> tuple[Hit, ...]:
        # The best identities are among the best faces: fetch 4k faces, widen if they
        # hold fewer than k identities. Any identity absent from the top m faces scores
        # at most the m-th face, so the first k distinct identities are exact.
        m = min(self.live, max(4 * k, 16))
        while True:
            rows, sims = self._top_rows(scores, q64, m, pool)
            _, first = np.unique(self.identity_codes[rows], return_index=True)
            if first.size >= k or m >= self.live:
                break
            m = min(self.live, m * 4)
        keep = np.sort(first)[:k]
        return self._hits(rows[keep], sims[keep])

    def _hits(self, rows: Int64Array, sims: Float64Array) -> tuple[Hit, ...]:
        names = self.identity_names
        return tuple(
            Hit(int(self.face_ids[r]), names[int(self.identity_codes[r])], float(s))
            for r, s in zip(rows.tolist(), sims.tolist(), strict=True)
        )


@dataclass(frozen=True, slots=True, eq=False)
class _Pool:
    """What a refined int8 scan kept: rows (``-1``: unused) and their int8 scores, and
    ``limit``, an int8 score no row left out exceeds."""

    rows: Int64Array
    scores: FloatArray
    limit: float


def _f32_dot_error(dim: int) -> float:
    # e = (dim + 1)·u bounds the error of a float32 dot product of a stored unit row
    # with the float32-rounded query (u = 2**-24: dim·u for the sum, u for rounding the
    # query). A row of the exact top-m scores at least F - 2e in float32, F being the
    # m-th best float32 score; one more u of slack.
    return 2.0 * (dim + 2) * 2.0**-24


def _check_k(k: int) -> None:
    if not isinstance(k, int | np.integer) or k < 1:
        raise GalleryError(f"k must be a positive integer, got {k!r}")


class GalleryIndex:
    """The searchable gallery: one writer, many concurrent readers.

    Args:
        dim: Embedding dimension (128 for dlib).
        precision: ``"float32"`` (exact) or ``"int8"`` (4× smaller, approximate).
        center: For int8, a vector subtracted before quantising; the gallery's mean
            embedding makes tightly clustered embeddings (dlib's) quantise ~2× more
            finely. ``None`` is zeros. :meth:`build` computes it from the data.
        threads: Threads one query is split across (default: cores, at most 4).
        row_file: For int8, a file to keep the exact float32 rows in (created or
            truncated here; one per index; a compaction replaces it by rename). RAM
            holds only the int8 codes; searches read a few rows of it to re-rank.
        refine: Re-rank int8 searches exactly against ``row_file``; default: on when
            there is a row file. Off keeps the file written but unread.

    Raises:
        GalleryError: Invalid ``dim``, ``precision``, ``center``, ``threads``,
            ``row_file`` (not int8, or cannot be created) or ``refine`` (on without a
            row file).
    """

    def __init__(
        self,
        dim: int,
        *,
        precision: Precision = "float32",
        center: npt.ArrayLike | None = None,
        threads: int | None = None,
        row_file: str | os.PathLike[str] | None = None,
        refine: bool | None = None,
    ) -> None:
        if not isinstance(dim, int | np.integer) or dim < 1:
            raise GalleryError(f"embedding dimension must be a positive integer, got {dim!r}")
        if precision not in PRECISIONS:
            raise GalleryError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if threads is not None and threads < 1:
            raise GalleryError(f"threads must be at least 1, got {threads}")
        self._dim = int(dim)
        self._precision: Precision = precision
        self._center: Float64Array | None = None
        if precision == "int8":
            self._center = _check_center(center, self._dim)
        elif center is not None:
            raise GalleryError("center applies only to precision='int8'")
        if row_file is not None and precision != "int8":
            raise GalleryError("row_file applies only to precision='int8' (float32 is exact)")
        if refine and row_file is None:
            raise GalleryError("refine needs a row_file to re-rank against")
        self._refine = row_file is not None if refine is None else bool(refine)
        self._error_scale = 0.0
        self._max_inv = 0.0
        self._engine = _Engine(threads or default_threads())
        self._lock = threading.Lock()
        self._row_of: dict[int, int] = {}
        self._code_of: dict[str, int] = {}
        self._names: list[str] = []
        self._cap = 0
        self._face_buf: Int64Array = np.empty(0, dtype=np.int64)
        self._ident_buf: Int32Array = np.empty(0, dtype=np.int32)
        self._vec_buf: FloatArray | None = None
        self._code_buf: q8.Int8Array | None = None
        self._scale_buf: FloatArray | None = None
        self._inv_buf: FloatArray | None = None
        self._row_file: RowFile | None = None
        if row_file is not None:
            self._row_file = RowFile(row_file, self._dim)
        self._alloc(0)
        self._snap = self._make_snapshot(0, np.empty(0, dtype=np.int64), version=0)

    @classmethod
    def build(
        cls,
        face_ids: npt.ArrayLike,
        identity_ids: Sequence[str] | str,
        vectors: npt.ArrayLike,
        *,
        precision: Precision = "float32",
        center: npt.ArrayLike | None = None,
        threads: int | None = None,
        progress: Callable[[int], None] | None = None,
        row_file: str | os.PathLike[str] | None = None,
        refine: bool | None = None,
    ) -> GalleryIndex:
        """An index holding a whole gallery (e.g. a ``GalleryMatrix`` from the store).

        Args:
            face_ids: ``(n,)`` unique integer face ids.
            identity_ids: The identity of each face, or one identity for all.
            vectors: ``(n, dim)`` embeddings.
            precision: As in the constructor.
            center: For int8; ``None`` uses the mean of the normalised ``vectors``.
            threads: As in the constructor.
            progress: Called with the number of rows stored after each chunk.
            row_file: As in the constructor (int8: exact re-rank from this file).
            refine: As in the constructor.

        Returns:
            The index, sized exactly for the gallery.

        Raises:
            GalleryError: As :meth:`add`, or ``vectors`` is not a 2-D array.
        """
        arr = np.asarray(vectors)
        if arr.ndim != 2:
            raise GalleryError(f"vectors must be a 2-D (n, dim) array, got shape {arr.shape}")
        if precision == "int8" and center is None and arr.shape[0] > 0:
            center = _mean_direction(arr)
        index = cls(arr.shape[1], precision=precision, center=center, threads=threads,
                    row_file=row_file, refine=refine)
        index.reserve(arr.shape[0])
        index.add(face_ids, identity_ids, arr, progress=progress)
        return index

    # ---- properties ----------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def precision(self) -> Precision:
        return self._precision

    @property
    def center(self) -> Float64Array | None:
        """The int8 quantisation center (a copy), ``None`` for float32."""
        return None if self._center is None else self._center.copy()

    def __len__(self) -> int:
        return self._snap.live

    def __contains__(self, face_id: object) -> bool:
        return face_id in self._row_of

    @property
    def refine(self) -> bool:
        """Whether int8 searches are re-ranked exactly against the row file."""
        return self._refine

    def refine_stats(self) -> RefineStats:
        """How often the re-rank ran, fell back, and how many rows it read."""
        return self._engine.refine_counters.read()

    def snapshot(self) -> IndexSnapshot:
        """The current immutable view, for several searches that must agree."""
        return self._snap

    # ---- reads (delegate to the current snapshot) -----------------------------------

    def search(self, query: npt.ArrayLike, k: int = 1) -> tuple[Hit, ...]:
        """See :meth:`IndexSnapshot.search`.

        Raises:
            GalleryError: Bad query or ``k``.
        """
        return self._snap.search(query, k)

    def search_batch(self, queries: npt.ArrayLike, k: int = 1) -> tuple[tuple[Hit, ...], ...]:
        """See :meth:`IndexSnapshot.search_batch`.

        Raises:
            GalleryError: Bad queries or ``k``.
        """
        return self._snap.search_batch(queries, k)

    def search_identities(self, query: npt.ArrayLike, k: int = 1) -> tuple[Hit, ...]:
        """See :meth:`IndexSnapshot.search_identities`.

        Raises:
            GalleryError: Bad query or ``k``.
        """
        return self._snap.search_identities(query, k)

    def search_identities_batch(
        self, queries: npt.ArrayLike, k: int = 1
    ) -> tuple[tuple[Hit, ...], ...]:
        """See :meth:`IndexSnapshot.search_identities_batch`.

        Raises:
            GalleryError: Bad queries or ``k``.
        """
        return self._snap.search_identities_batch(queries, k)

    # ---- writes ----------------------------------------------------------------------

    def reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` rows so adds up to it copy nothing.

        Args:
            capacity: Total rows to hold (live plus future adds).
        """
        with self._lock:
            if capacity > self._cap:
                self._rebuild(capacity)

    def add(
        self,
        face_ids: npt.ArrayLike,
        identity_ids: Sequence[str] | str,
        vectors: npt.ArrayLike,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Add faces; readers see all of them at once, or (on error) none.

        Args:
            face_ids: ``(m,)`` integer face ids, not already in the index.
            identity_ids: The identity of each face, or one identity for all of them.
            vectors: ``(m, dim)`` finite, non-zero embeddings; normalised here (a vector
                already of unit norm within ``1e-6`` is stored as given).
            progress: Called with the number of rows stored after each chunk.

        Raises:
            GalleryError: Wrong dimension or shape, a non-finite or zero vector, a
                duplicate or already-present face id, or mismatched lengths.
        """
        fids = _as_face_ids(face_ids)
        m = fids.size
        names = _as_identities(identity_ids, m)
        try:
            arr = np.asarray(vectors)
        except (TypeError, ValueError) as exc:
            raise GalleryError(f"vectors are not a numeric array: {exc}") from exc
        if arr.ndim != 2 or arr.shape[1] != self._dim:
            raise GalleryError(
                f"vectors have shape {arr.shape}, the index expects (n, {self._dim}) "
                f"(embeddings of dimension {self._dim})")
        if arr.shape[0] != m:
            raise GalleryError(f"{m} face ids but {arr.shape[0]} vectors")
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise GalleryError(f"vectors must be real numbers, got dtype {arr.dtype}")
        if m == 0:
            return
        finite = np.isfinite(arr).all(axis=1)
        nonzero = arr.any(axis=1)
        if not (finite.all() and nonzero.all()):
            i = int(np.flatnonzero(~(finite & nonzero))[0])
            what = "not finite" if not finite[i] else "zero"
            raise GalleryError(
                f"vector {i} (face id {int(fids[i])}) is {what}; refusing the whole add")
        if np.unique(fids).size != m:
            raise GalleryError("duplicate face ids in one add")
        with self._lock:
            present = [f for f in fids.tolist() if f in self._row_of]
            if present:
                raise GalleryError(
                    f"{len(present)} face id(s) already in the index, e.g. {present[:5]}")
            snap = self._snap
            if snap.rows + m > self._cap:
                self._rebuild(max(snap.live + m, self._cap + self._cap // 2))
                snap = self._snap
            start = snap.rows
            # Rows past snap.rows are invisible to every published snapshot, so they
            # can be written freely; a failure below leaves them unpublished.
            for lo in range(0, m, ADD_CHUNK_ROWS):
                hi = min(lo + ADD_CHUNK_ROWS, m)
                self._store_vectors(start + lo, arr[lo:hi])
                if progress is not None:
                    progress(hi - lo)
            self._face_buf[start:start + m] = fids
            codes = np.empty(m, dtype=np.int32)
            for i, name in enumerate(names):
                code = self._code_of.get(name)
                if code is None:
                    code = len(self._names)
                    self._names.append(name)
                    self._code_of[name] = code
                codes[i] = code
            self._ident_buf[start:start + m] = codes
            self._row_of.update(zip(fids.tolist(), range(start, start + m), strict=True))
            self._publish(start + m, snap.dead)
            logger.debug("added %d faces (%d live, version %d)", m, self._snap.live,
                         self._snap.version)

    def remove(self, face_ids: npt.ArrayLike) -> None:
        """Remove faces; readers see all of them gone at once, or (on error) none.

        Args:
            face_ids: Face ids in the index (repeats are fine).

        Raises:
            GalleryError: Any face id is not in the index (nothing is removed).
        """
        fids = np.unique(_as_face_ids(face_ids))
        if fids.size == 0:
            return
        with self._lock:
            missing = [f for f in fids.tolist() if f not in self._row_of]
            if missing:
                raise GalleryError(
                    f"{len(missing)} face id(s) not in the index, e.g. {missing[:5]}")
            self._remove_rows(np.array([self._row_of[f] for f in fids.tolist()], dtype=np.int64))

    def remove_identities(self, identity_ids: Iterable[str]) -> int:
        """Remove every face of the given identities at once.

        Args:
            identity_ids: Identities; ones with no faces in the index are ignored.

        Returns:
            How many faces were removed.
        """
        with self._lock:
            codes = [self._code_of[n] for n in set(identity_ids) if n in self._code_of]
            if not codes:
                return 0
            snap = self._snap
            hit = np.isin(snap.identity_codes, np.array(codes, dtype=np.int32))
            hit[snap.dead] = False
            rows = np.flatnonzero(hit).astype(np.int64)
            if rows.size:
                self._remove_rows(rows)
            return int(rows.size)

    def close(self) -> None:
        """Stop the int8 worker threads. Idempotent; searches still work, on one thread."""
        self._engine.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- internals (called with self._lock held) -------------------------------------

    def _remove_rows(self, rows: Int64Array) -> None:
        snap = self._snap
        for f in snap.face_ids[rows].tolist():
            del self._row_of[int(f)]
        dead = np.union1d(snap.dead, rows).astype(np.int64)
        if dead.size >= max(MIN_DEAD_TO_COMPACT, int(COMPACT_DEAD_FRACTION * snap.rows)):
            self._publish(snap.rows, dead)
            self._rebuild(self._cap)
        else:
            self._publish(snap.rows, dead)
        logger.debug("removed %d faces (%d live, version %d)", rows.size, self._snap.live,
                     self._snap.version)

    def _store_vectors(self, start: int, chunk: npt.NDArray[np.generic]) -> None:
        # Rows are finite and non-zero (checked by add). The norm is taken on rows
        # scaled by their largest entry so huge finite values cannot overflow.
        v64 = np.array(chunk, dtype=np.float64)  # a copy: the caller's array is untouched
        peak = np.abs(v64).max(axis=1)
        scaled_norm = np.linalg.norm(v64 / peak[:, None], axis=1)
        # Rows already of unit norm are stored bit-for-bit; others are normalised.
        fix = ~(np.abs(scaled_norm * peak - 1.0) <= UNIT_TOLERANCE)
        if fix.any():
            v64[fix] = v64[fix] / peak[fix, None] / scaled_norm[fix, None]
        end = start + v64.shape[0]
        if self._vec_buf is not None:
            self._vec_buf[start:end] = v64
        else:
            assert self._code_buf is not None and self._scale_buf is not None
            assert self._inv_buf is not None and self._center is not None
            qz = q8.quantize(v64, self._center)
            self._code_buf[start:end] = qz.codes
            self._scale_buf[start:end] = qz.scale
            self._inv_buf[start:end] = qz.inv_norm
            self._note_error_scale(qz.codes, qz.scale, qz.inv_norm)
            if self._row_file is not None:
                self._row_file.write(start, v64.astype(np.float32))

    def _note_error_scale(self, codes: q8.Int8Array, scale: FloatArray,
                          inv_norm: FloatArray) -> None:
        # Rows equal to the center (all codes zero) decode exactly whatever their scale.
        if codes.shape[0] == 0:
            return
        used = scale[codes.any(axis=1)]
        if used.size:
            self._error_scale = max(self._error_scale, float(used.max()))
        self._max_inv = max(self._max_inv, float(inv_norm.max()))

    def _alloc(self, capacity: int) -> None:
        self._cap = capacity
        self._face_buf = np.empty(capacity, dtype=np.int64)
        self._ident_buf = np.empty(capacity, dtype=np.int32)
        if self._precision == "float32":
            self._vec_buf = np.empty((capacity, self._dim), dtype=np.float32)
        else:
            self._code_buf = np.empty((capacity, self._dim), dtype=np.int8)
            self._scale_buf = np.empty(capacity, dtype=np.float32)
            self._inv_buf = np.empty(capacity, dtype=np.float32)

    def _rebuild(self, capacity: int) -> None:
        """Copy the live rows into fresh buffers of ``capacity`` and publish them."""
        snap = self._snap
        keep = np.ones(snap.rows, dtype=bool)
        keep[snap.dead] = False
        n = int(keep.sum())
        capacity = max(capacity, n)
        if self._row_file is not None:
            # First: a failure here leaves the index as it was (the old file stays).
            self._row_file.rewrite(self._live_exact_rows(snap, keep))
        old_codes = snap.identity_codes[keep]
        used, new_codes = np.unique(old_codes, return_inverse=True)
        names = [snap.identity_names[int(c)] for c in used.tolist()]
        self._alloc(capacity)
        self._face_buf[:n] = snap.face_ids[keep]
        self._ident_buf[:n] = new_codes.astype(np.int32)
        if self._vec_buf is not None:
            assert snap.vectors is not None
            np.compress(keep, snap.vectors, axis=0, out=self._vec_buf[:n])
        else:
            assert self._code_buf is not None and self._scale_buf is not None
            assert self._inv_buf is not None
            assert snap.codes is not None and snap.scale is not None
            assert snap.inv_norm is not None
            np.compress(keep, snap.codes, axis=0, out=self._code_buf[:n])
            self._scale_buf[:n] = snap.scale[keep]
            self._inv_buf[:n] = snap.inv_norm[keep]
            self._error_scale = self._max_inv = 0.0
            for lo in range(0, n, ADD_CHUNK_ROWS):
                hi = min(lo + ADD_CHUNK_ROWS, n)
                self._note_error_scale(self._code_buf[lo:hi], self._scale_buf[lo:hi],
                                       self._inv_buf[lo:hi])
        self._names = names
        self._code_of = {name: i for i, name in enumerate(names)}
        self._row_of = dict(zip(self._face_buf[:n].tolist(), range(n), strict=True))
        self._publish(n, np.empty(0, dtype=np.int64))
        logger.debug("index rebuilt: %d rows, capacity %d", n, capacity)

    @staticmethod
    def _live_exact_rows(snap: IndexSnapshot, keep: npt.NDArray[np.bool_]) -> Iterable[FloatArray]:
        if snap.exact_rows is None:
            return
        all_rows = np.arange(snap.rows, dtype=np.int64)
        for lo in range(0, snap.rows, ADD_CHUNK_ROWS):
            rows = all_rows[lo:lo + ADD_CHUNK_ROWS][keep[lo:lo + ADD_CHUNK_ROWS]]
            if rows.size:
                yield snap.exact_rows.gather(rows)

    def _publish(self, rows: int, dead: Int64Array) -> None:
        self._snap = self._make_snapshot(rows, dead, version=self._snap.version + 1)

    def _make_snapshot(self, rows: int, dead: Int64Array, *, version: int) -> IndexSnapshot:
        def view(buf: npt.NDArray[np.generic] | None) -> npt.NDArray[np.generic] | None:
            if buf is None:
                return None
            v = buf[:rows]
            v.flags.writeable = False
            return v

        dead = dead.copy()
        dead.flags.writeable = False
        return IndexSnapshot(
            dim=self._dim,
            precision=self._precision,
            version=version,
            rows=rows,
            live=rows - int(dead.size),
            face_ids=view(self._face_buf),  # type: ignore[arg-type]
            identity_codes=view(self._ident_buf),  # type: ignore[arg-type]
            identity_names=self._names,
            dead=dead,
            vectors=view(self._vec_buf),  # type: ignore[arg-type]
            codes=view(self._code_buf),  # type: ignore[arg-type]
            scale=view(self._scale_buf),  # type: ignore[arg-type]
            inv_norm=view(self._inv_buf),  # type: ignore[arg-type]
            center=self._center,
            exact_rows=None if self._row_file is None else self._row_file.view(rows),
            refine=self._refine,
            error_scale=self._error_scale,
            max_inv_norm=self._max_inv,
            _engine=self._engine,
        )


def _as_face_ids(face_ids: npt.ArrayLike) -> Int64Array:
    try:
        arr = np.asarray(face_ids)
    except (TypeError, ValueError) as exc:
        raise GalleryError(f"face ids are not an array of integers: {exc}") from exc
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise GalleryError(f"face ids must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise GalleryError(f"face ids must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _as_identities(identity_ids: Sequence[str] | str, m: int) -> list[str]:
    if isinstance(identity_ids, str):
        names = [identity_ids] * m
    else:
        names = list(identity_ids)
        if len(names) != m:
            raise GalleryError(f"{m} face ids but {len(names)} identity ids")
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise GalleryError(f"identity ids must be non-empty strings, got {bad[0]!r}")
    return names


def _check_center(center: npt.ArrayLike | None, dim: int) -> Float64Array:
    if center is None:
        return np.zeros(dim, dtype=np.float64)
    arr = np.asarray(center, dtype=np.float64)
    if arr.shape != (dim,):
        raise GalleryError(f"center has shape {arr.shape}, expected ({dim},)")
    if not np.isfinite(arr).all():
        raise GalleryError("center contains NaN or infinity")
    out = arr.copy()
    out.flags.writeable = False
    return out


def _mean_direction(vectors: npt.NDArray[np.generic]) -> Float64Array:
    """Mean of the normalised rows (non-finite or zero rows are left to :meth:`add`)."""
    total = np.zeros(vectors.shape[1], dtype=np.float64)
    count = 0
    for lo in range(0, vectors.shape[0], ADD_CHUNK_ROWS):
        v = np.asarray(vectors[lo:lo + ADD_CHUNK_ROWS], dtype=np.float64)
        norms = np.linalg.norm(v, axis=1)
        ok = np.isfinite(norms) & (norms > 0)
        total += (v[ok] / norms[ok, None]).sum(axis=0)
        count += int(ok.sum())
    out: Float64Array = total / max(count, 1)
    return out
