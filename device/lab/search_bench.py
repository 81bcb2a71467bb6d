"""Search benchmark: facegate's index against faiss, on the same vectors, in one run.

For each gallery size: seeded random unit vectors (dimension 128 by default), and
queries of two kinds — *probes*, noisy copies of gallery rows (cosine 0.86–0.98 to
their source, like a second photo of an enrolled person), and *strangers*, random
unit vectors (whose top-1 is a near tie among unrelated faces). Every method answers
every query; queries are timed one at a time, each round in a fresh random order of
the methods, so that background load on a shared machine falls on all of them alike.
Recall@1 is against an exact float64 search over the same float32 vectors.

``facegate-int8-rerank`` is the int8 index with its exact re-rank: the float32 rows
sit in a row file on disk (a temporary directory, or ``row_dir``), memory-mapped;
its ``index_mb`` is what it holds in RAM (codes, scales, ids), ``disk_mb`` the file.
The file is in the page cache after the build (it was just written), as it would be
on a device that searches continuously; a search reads only its candidates' pages.

The **memory floor** is the time to stream the float32 matrix through memory once,
measured in the same rounds as the methods by two read-only passes; the faster p50
is the floor:

* ``floor-read``: a compiled sum over the matrix, split across the same threads and
  slices as a search (reads every byte, writes one float per slice);
* ``floor-blas``: BLAS ``sgemv`` with a vector of ones (OpenBLAS's own threads).

A float32 search cannot be faster than one read of its matrix; ``p50 / floor`` says
how close it gets.

faiss is imported only here, and only when asked for: it is a bench dependency.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from device.errors import DeviceError
from device.gallery.search.index import (
    PARALLEL_MIN_ROWS_F32,
    GalleryIndex,
    Precision,
    default_threads,
)
from device.gallery.search.kernels import load_kernels
from device.gallery.search.parallel import run_sliced

logger = logging.getLogger(__name__)

#: Rows generated, normalised and reference-scored per step.
CHUNK = 65_536

Progress = Callable[[str, int], Any]
"""``progress(label, total)`` returns a context manager yielding ``update(n)``."""


@dataclass(frozen=True, slots=True)
class BenchRow:
    """One method at one gallery size.

    Attributes:
        size: Gallery rows.
        method: ``floor``, ``facegate-f32``, ``facegate-int8``, ``facegate-int8-rerank``,
            ``faiss-flat``, ``faiss-sq8``.
        p50_ms: Median single-query time.
        p95_ms: 95th-percentile single-query time.
        vs_floor: ``p50_ms`` over the floor's ``p50_ms``.
        recall_probes: Recall@1 on probes (noisy copies of gallery rows).
        recall_strangers: Recall@1 on strangers (random queries).
        recall_all: Recall@1 on all queries.
        index_mb: Bytes the index holds in RAM for its vectors and ids (MiB).
        build_s: Seconds to build the index.
        note: What the row measures (for the floor: which pass and the bandwidth; for
            the re-rank: fallbacks and rows re-scored per query).
        disk_mb: Bytes the index keeps on disk and maps (the re-rank's row file).
    """

    size: int
    method: str
    p50_ms: float
    p95_ms: float
    vs_floor: float
    recall_probes: float | None
    recall_strangers: float | None
    recall_all: float | None
    index_mb: float | None
    build_s: float | None
    note: str = ""
    disk_mb: float | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "size": self.size, "method": self.method,
            "p50_ms": round(self.p50_ms, 3), "p95_ms": round(self.p95_ms, 3),
            "vs_floor": round(self.vs_floor, 3),
            "recall_probes": self.recall_probes, "recall_strangers": self.recall_strangers,
            "recall_all": self.recall_all,
            "index_mb": None if self.index_mb is None else round(self.index_mb, 1),
            "build_s": None if self.build_s is None else round(self.build_s, 2),
            "disk_mb": None if self.disk_mb is None else round(self.disk_mb, 1),
            "note": self.note,
        }


def import_faiss() -> ModuleType:
    """faiss, or a :class:`DeviceError` that says how to get it.

    Raises:
        DeviceError: faiss is not installed.
    """
    try:
        return importlib.import_module("faiss")
    except ImportError as exc:
        raise DeviceError(
            "faiss is not installed; it is a bench-only dependency: "
            "`.venv/bin/pip install faiss-cpu` (or `pip install -e '.[dev]'`), "
            "or run with --no-faiss") from exc


def make_gallery(size: int, dim: int, seed: int) -> npt.NDArray[np.float32]:
    """Seeded random unit vectors, ``(size, dim)`` float32, normalised in float64."""
    rng = np.random.default_rng(seed)
    out = np.empty((size, dim), dtype=np.float32)
    for lo in range(0, size, CHUNK):
        hi = min(lo + CHUNK, size)
        v = rng.standard_normal((hi - lo, dim))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[lo:hi] = v
    return out


def make_queries(
    gallery: npt.NDArray[np.float32], n: int, strangers: float, seed: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Probes (noisy copies of random gallery rows) then strangers (random vectors).

    Returns:
        ``(n, dim)`` unit float32 queries and a mask that is true for strangers.
    """
    rng = np.random.default_rng(seed + 1)
    dim = gallery.shape[1]
    n_str = round(n * strangers)
    n_probe = n - n_str
    src = rng.integers(0, gallery.shape[0], n_probe)
    noise = rng.standard_normal((n_probe, dim))
    # Noise of norm 0.2–0.6 on a unit vector: cosine 0.86–0.98 to the source.
    noise *= (rng.uniform(0.2, 0.6, n_probe) / np.linalg.norm(noise, axis=1))[:, None]
    probes = gallery[src].astype(np.float64) + noise
    strange = rng.standard_normal((n_str, dim))
    q = np.vstack([probes, strange])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    mask = np.zeros(n, dtype=bool)
    mask[n_probe:] = True
    return q.astype(np.float32), mask


def exact_top1(gallery: npt.NDArray[np.float32], queries: npt.NDArray[np.float32]) -> np.ndarray:
    """Row of the best float64 inner product for each query (ground truth)."""
    q64 = queries.astype(np.float64)
    best = np.full(q64.shape[0], -np.inf)
    arg = np.zeros(q64.shape[0], dtype=np.int64)
    for lo in range(0, gallery.shape[0], CHUNK):
        s = gallery[lo:lo + CHUNK].astype(np.float64) @ q64.T
        i = s.argmax(axis=0)
        v = s[i, np.arange(q64.shape[0])]
        better = v > best
        best[better] = v[better]
        arg[better] = lo + i[better]
    return arg


class _Stream:
    """The read-only passes that define the floor."""

    def __init__(self, matrix: npt.NDArray[np.float32], threads: int) -> None:
        self.matrix = matrix
        self.ones = np.ones(matrix.shape[1], dtype=np.float32)
        self.out = np.empty(matrix.shape[0], dtype=np.float32)
        self.threads = threads
        self.kernels = load_kernels()
        self.pool = ThreadPoolExecutor(threads - 1) if threads > 1 else None
        if self.kernels is not None:
            self.kernels.read_rows(matrix, 0, min(16, matrix.shape[0]))  # compile now

    def blas(self) -> None:
        np.dot(self.matrix, self.ones, out=self.out)

    def read(self) -> None:
        # The same on-demand slicing as a search, with a kernel that only reads.
        assert self.kernels is not None
        read, m = self.kernels.read_rows, self.matrix
        run_sliced(lambda lo, hi: read(m, lo, hi), m.shape[0], self.pool, self.threads,
                   min_rows=PARALLEL_MIN_ROWS_F32)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


@contextmanager
def _no_progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    del label, total
    yield lambda n: None


def run(
    sizes: list[int],
    *,
    k: int = 1,
    queries: int = 200,
    strangers: float = 0.2,
    dim: int = 128,
    seed: int = 0,
    with_faiss: bool = True,
    warmup: int = 5,
    progress: Progress = _no_progress,
    row_dir: str | os.PathLike[str] | None = None,
) -> list[BenchRow]:
    """Benchmark every method at every size.

    Args:
        sizes: Gallery sizes.
        k: Results per query (recall is judged on the first).
        queries: Timed queries per size.
        strangers: Share of the queries that are random (not from the gallery).
        dim: Embedding dimension.
        seed: Seed for vectors and queries.
        with_faiss: Include faiss ``IndexFlatIP`` and ``IndexScalarQuantizer(QT_8bit)``.
        warmup: Untimed queries per method before timing.
        progress: Progress-bar factory for building indexes.
        row_dir: Where the re-rank's row file goes (a temporary directory in it,
            removed afterwards); ``None``: the system's temporary directory.

    Returns:
        Rows: per size, the floor then each method.

    Raises:
        DeviceError: ``with_faiss`` and faiss is not installed.
    """
    faiss = import_faiss() if with_faiss else None
    threads = default_threads()
    rows: list[BenchRow] = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="facegate-rows-", dir=row_dir) as tmp:
            rows.extend(_run_size(size, k, queries, strangers, dim, seed, faiss, threads,
                                  warmup, progress, os.path.join(tmp, "rows.f32")))
        gc.collect()
    return rows


def _run_size(
    size: int, k: int, n_queries: int, strangers: float, dim: int, seed: int,
    faiss: ModuleType | None, threads: int, warmup: int, progress: Progress,
    row_file: str,
) -> list[BenchRow]:
    with progress(f"{size:,} vectors", size) as update:
        gallery = make_gallery(size, dim, seed)
        update(size)
    qs, stranger = make_queries(gallery, n_queries, strangers, seed)
    truth = exact_top1(gallery, qs)
    face_ids = np.arange(size, dtype=np.int64)
    # Four faces per identity, so identity ids are realistic strings.
    identities = [f"id{i // 4}" for i in range(size)]

    methods: dict[str, Callable[[np.ndarray], int]] = {}
    info: dict[str, tuple[float, float]] = {}  # method -> (index MiB, build s)
    disk: dict[str, float] = {}  # method -> MiB on disk
    indexes: dict[str, GalleryIndex] = {}

    builds: list[tuple[str, Precision, str | None]] = [
        ("facegate-f32", "float32", None), ("facegate-int8", "int8", None),
        ("facegate-int8-rerank", "int8", row_file)]
    for name, precision, path in builds:
        t0 = time.perf_counter()
        with progress(f"build {name}", size) as update:
            index = GalleryIndex.build(face_ids, identities, gallery, precision=precision,
                                       progress=update, row_file=path)
        snap = index.snapshot()
        info[name] = (snap.nbytes / 2**20, time.perf_counter() - t0)
        if snap.disk_nbytes:
            disk[name] = snap.disk_nbytes / 2**20
        indexes[name] = index
        methods[name] = _facegate_search(index, k)

    if faiss is not None:
        t0 = time.perf_counter()
        flat = faiss.IndexFlatIP(dim)
        with progress("build faiss-flat", size) as update:
            for lo in range(0, size, CHUNK):
                flat.add(gallery[lo:lo + CHUNK])
                update(min(CHUNK, size - lo))
        info["faiss-flat"] = (size * dim * 4 / 2**20, time.perf_counter() - t0)
        methods["faiss-flat"] = _faiss_search(flat, k)
        t0 = time.perf_counter()
        sq = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit,
                                        faiss.METRIC_INNER_PRODUCT)
        with progress("build faiss-sq8", size) as update:
            sq.train(gallery)
            for lo in range(0, size, CHUNK):
                sq.add(gallery[lo:lo + CHUNK])
                update(min(CHUNK, size - lo))
        info["faiss-sq8"] = (size * sq.sa_code_size() / 2**20, time.perf_counter() - t0)
        methods["faiss-sq8"] = _faiss_search(sq, k)

    stream = _Stream(gallery, threads)
    floors: dict[str, Callable[[], None]] = {"floor-blas": stream.blas}
    if stream.kernels is not None:
        floors["floor-read"] = stream.read
    names = list(floors) + list(methods)
    times: dict[str, list[float]] = {m: [] for m in names}
    found: dict[str, list[int]] = {m: [] for m in methods}
    order_rng = np.random.default_rng(seed + 2)
    try:
        for i in range(-warmup, n_queries):
            q = qs[i % n_queries]
            # A fresh order each round: no method always follows the same other one
            # (OpenBLAS's and faiss's threads spin for a while after each call).
            for j in order_rng.permutation(len(names)):
                m = names[j]
                t0 = time.perf_counter()
                if m in floors:
                    floors[m]()
                    dt = time.perf_counter() - t0
                else:
                    row = methods[m](q)
                    dt = time.perf_counter() - t0
                    if i >= 0:
                        found[m].append(row)
                if i >= 0:
                    times[m].append(dt * 1e3)
    finally:
        stream.close()
        for index in indexes.values():
            index.close()
    notes: dict[str, str] = {}
    for name, index in indexes.items():
        if index.refine:
            st = index.refine_stats()
            notes[name] = (f"re-rank: {st.fallbacks} of {st.queries} queries fell back, "
                           f"{st.rescored / max(st.queries, 1):.1f} rows re-scored per query "
                           f"(row file {disk[name]:.0f} MiB on disk, mapped)")

    floor_p50 = {m: float(np.median(times[m])) for m in floors}
    best = min(floor_p50, key=lambda m: floor_p50[m])
    floor = floor_p50[best]
    nbytes = gallery.nbytes
    out = [BenchRow(
        size, "floor", floor, float(np.percentile(times[best], 95)), 1.0, None, None, None,
        nbytes / 2**20, None,
        note=f"{best} ({nbytes / floor / 1e6:.1f} GB/s); "
        + ", ".join(f"{m} p50 {v:.2f} ms" for m, v in floor_p50.items()))]
    for m in methods:
        got = np.array(found[m])
        hit = got == truth
        t = np.array(times[m])
        mb, build_s = info[m]
        out.append(BenchRow(
            size, m, float(np.median(t)), float(np.percentile(t, 95)),
            float(np.median(t)) / floor,
            _mean(hit[~stranger]), _mean(hit[stranger]), _mean(hit), mb, build_s,
            note=notes.get(m, ""), disk_mb=disk.get(m)))
    return out


def _mean(a: np.ndarray) -> float | None:
    return round(float(a.mean()), 4) if a.size else None


def _facegate_search(index: GalleryIndex, k: int) -> Callable[[np.ndarray], int]:
    def search(q: np.ndarray) -> int:
        hits = index.search(q, k)
        return hits[0].face_id if hits else -1
    return search


def _faiss_search(index: Any, k: int) -> Callable[[np.ndarray], int]:
    def search(q: np.ndarray) -> int:
        _, ids = index.search(q[None, :], k)
        return int(ids[0, 0])
    return search
