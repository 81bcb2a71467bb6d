"""Exact float32 rows on disk, memory-mapped read-only, for the int8 index's re-rank.

The int8 index keeps only codes in RAM; this file keeps the float32 unit vectors it
was built from, row ``i`` of the file being row ``i`` of the index. A search re-scores
a handful of candidate rows against it, so only those rows' pages are read (through
the page cache); the file is not loaded.

Snapshot rules, the same as the in-RAM buffers: a row is written before any snapshot
can see it and never again. Appends write past the rows of every published snapshot
and publish a new, longer mapping; a compaction writes a whole new file next to the
old one and renames it over the old path, so mappings taken before keep reading the
old (now unlinked) file until their snapshots are dropped.

A mapping whose file was truncated behind the index's back would fault (SIGBUS) on
access, so every read first checks the file's current size and raises
:class:`~device.errors.GalleryError` instead. That check narrows the window but
cannot close it against a concurrent truncation: nothing but the index should write
the file.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from device.errors import GalleryError
from device.types import FloatArray

logger = logging.getLogger(__name__)

#: Bytes per float32.
F32 = 4


@dataclass(frozen=True, slots=True, eq=False)
class RowView:
    """The first ``rows`` rows of a row file, mapped read-only.

    Attributes:
        path: Where the file was when mapped (it may have been replaced since).
        rows: Rows visible through this view.
        dim: Floats per row.
    """

    path: Path
    rows: int
    dim: int
    _map: mmap.mmap | None = field(repr=False)
    _array: FloatArray = field(repr=False)

    @property
    def nbytes(self) -> int:
        """Bytes of the file this view covers (on disk, not in RAM)."""
        return self.rows * self.dim * F32

    def gather(self, rows: npt.NDArray[np.int64]) -> FloatArray:
        """Copies of the given rows (only their pages are read).

        Args:
            rows: Row numbers, each below :attr:`rows`.

        Returns:
            ``(len(rows), dim)`` float32.

        Raises:
            GalleryError: The file has been truncated below this view's rows.
        """
        if self._map is not None:
            try:
                size = self._map.size()
            except OSError as exc:
                raise GalleryError(f"row file {self.path} is unreadable: {exc}") from exc
            if size < self.nbytes:
                raise GalleryError(
                    f"row file {self.path} was truncated to {size} bytes; the index needs "
                    f"{self.nbytes} ({self.rows} rows of {self.dim} float32); rebuild the "
                    "index (nothing but the index may write this file)")
        out: FloatArray = self._array[rows]
        return out


class RowFile:
    """The writer's side of a row file: appends, views and whole-file rewrites.

    Args:
        path: The file; created (or truncated) here.
        dim: Floats per row.

    Raises:
        GalleryError: The file cannot be created.
    """

    def __init__(self, path: str | os.PathLike[str], dim: int) -> None:
        self.path = Path(path)
        self.dim = dim
        self._fh = self._create(self.path)

    @staticmethod
    def _create(path: Path) -> BinaryIO:
        try:
            return open(path, "w+b")  # kept open for appends
        except OSError as exc:
            raise GalleryError(f"cannot create row file {path}: {exc}") from exc

    def write(self, start: int, rows: FloatArray) -> None:
        """Write ``rows`` from row ``start`` on (past every published view's rows).

        Raises:
            GalleryError: The write failed (disk full, I/O error).
        """
        data = np.ascontiguousarray(rows, dtype=np.float32)
        try:
            os.pwrite(self._fh.fileno(), data.tobytes(), start * self.dim * F32)
        except OSError as exc:
            raise GalleryError(f"cannot write row file {self.path}: {exc}") from exc

    def view(self, rows: int) -> RowView:
        """A read-only mapping of the first ``rows`` rows.

        Raises:
            GalleryError: The file holds fewer rows (truncated, or a failed write).
        """
        need = rows * self.dim * F32
        try:
            size = os.fstat(self._fh.fileno()).st_size
        except OSError as exc:
            raise GalleryError(f"row file {self.path} is unreadable: {exc}") from exc
        if size < need:
            raise GalleryError(
                f"row file {self.path} holds {size} bytes, the index needs {need} "
                f"({rows} rows of {self.dim} float32)")
        if rows == 0:
            empty: FloatArray = np.empty((0, self.dim), dtype=np.float32)
            return RowView(self.path, 0, self.dim, None, empty)
        try:
            mm = mmap.mmap(self._fh.fileno(), need, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise GalleryError(f"cannot map row file {self.path}: {exc}") from exc
        arr: FloatArray = np.frombuffer(mm, dtype=np.float32).reshape(rows, self.dim)
        return RowView(self.path, rows, self.dim, mm, arr)

    def rewrite(self, chunks: Iterable[FloatArray]) -> None:
        """Replace the file with the given rows: a new file renamed over the old one.

        Views of the old file keep working (the mapping holds the old file open).

        Raises:
            GalleryError: The new file cannot be written (the old one is kept).
        """
        tmp = self.path.with_name(self.path.name + ".new")
        fh = self._create(tmp)
        try:
            for chunk in chunks:
                fh.write(np.ascontiguousarray(chunk, dtype=np.float32).tobytes())
            fh.flush()
            os.replace(tmp, self.path)
        except BaseException as exc:
            fh.close()
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise GalleryError(f"cannot rewrite row file {self.path}: {exc}") from exc
            raise
        old, self._fh = self._fh, fh
        old.close()
        logger.debug("row file %s rewritten", self.path)

    def close(self) -> None:
        """Close the writer's handle (views stay valid)."""
        self._fh.close()
