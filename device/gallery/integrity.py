"""Checking a gallery file without changing it, and searching its raw bytes.

:func:`integrity_check` is the full check (``facegate gallery check``, and what
gallery sync runs on a freshly built candidate before swapping it in).
:func:`open_problems` and :func:`content_problems` are the cheap part of it that
every open for the service, enrolment or sync runs, so a damaged, truncated or
empty file is refused (:class:`GalleryDamagedError`) before anything reads or
writes it. :func:`scan_files_for` is how deletion proves that erased bytes left the
database, its WAL and its shared-memory file.
"""

from __future__ import annotations

import mmap
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import GalleryError
from device.gallery.records import GalleryMetadata
from device.gallery.schema import SCHEMA_VERSION, connect, read_metadata, schema_version

_QUICK_CHECK_LIMIT = 20


class GalleryDamagedError(GalleryError):
    """A gallery file failed the check run on every open; it was neither read nor written."""


def recovery_hint(path: Path) -> str:
    """How to get a usable gallery back, for the file at ``path``."""
    target = path.resolve()
    manifest = target.parent / "manifest.json"
    if manifest.is_file():  # a synced gallery: sync keeps the manifest it was built from
        # The unit never re-applies a version it has applied (its floor refuses it),
        # so the recovery is the same gallery published again under a newer version.
        return ("it came from gallery sync: re-sync, with a bundle of a newer version than "
                "the unit's floor (see facegate sync status); the same bundle again is "
                "refused as a rollback")
    return ("restore it from a backup or a facegate gallery export, or re-sync it; "
            "to start an empty gallery instead, move the file aside and enroll again")


def damaged(path: Path, problems: Iterable[str]) -> GalleryDamagedError:
    """The error for a gallery file that failed its open-time check."""
    found = list(problems)
    shown = "; ".join(found[:2]) + (f"; {len(found) - 2} more" if len(found) > 2 else "")
    return GalleryDamagedError(
        f"cannot open gallery {path}: it is damaged and was not used ({shown}). "
        f"Recovery: {recovery_hint(path)}"
    )


def open_problems(conn: sqlite3.Connection, path: Path) -> list[str]:
    """What SQLite finds wrong with an opened file, before anything writes to it.

    An empty file (zero pages, also counting the WAL) and everything ``PRAGMA
    quick_check`` reports (damaged pages, a truncated file) are problems.
    """
    try:
        if int(conn.execute("PRAGMA page_count").fetchone()[0]) == 0:
            size = path.stat().st_size if path.exists() else 0
            return [f"the file is empty ({size} bytes): its creation was interrupted or it "
                    "was truncated"]
        messages = [str(r[0]) for r in
                    conn.execute(f"PRAGMA quick_check({_QUICK_CHECK_LIMIT})")]
    except sqlite3.DatabaseError as exc:
        return [f"not a readable SQLite database: {exc}"]
    if messages != ["ok"]:
        return [f"quick_check: {m}" for m in messages]
    return []


def content_problems(conn: sqlite3.Connection, meta: GalleryMetadata) -> list[str]:
    """The project's own checks that cost one SQL pass: embedding sizes, models, owners."""
    problems: list[str] = []
    bad_len = int(conn.execute("SELECT count(*) FROM faces WHERE typeof(embedding) != 'blob' "
                               "OR length(embedding) != ?", (meta.dim * 4,)).fetchone()[0])
    if bad_len:
        problems.append(f"{bad_len} faces have embeddings that are not {meta.dim * 4} bytes "
                        f"({meta.dim} float32)")
    bad_model = int(conn.execute("SELECT count(*) FROM faces WHERE model_id != ?",
                                 (meta.model_id,)).fetchone()[0])
    if bad_model:
        problems.append(f"{bad_model} faces come from a model other than {meta.model_id!r}")
    orphans = int(conn.execute("SELECT count(*) FROM faces WHERE identity_id NOT IN "
                               "(SELECT id FROM identities)").fetchone()[0])
    if orphans:
        problems.append(f"{orphans} faces belong to no identity")
    return problems


@dataclass(frozen=True)
class IntegrityReport:
    """The result of :func:`integrity_check`.

    Attributes:
        path: The file checked.
        problems: Everything found wrong; empty when the file is usable.
        schema_version: The file's schema version (None if unreadable).
        gallery_id: From the metadata row (None if unreadable).
        version: From the metadata row.
        model_id: From the metadata row.
        dim: From the metadata row.
        identities: Number of identities.
        faces: Number of faces.
    """

    path: Path
    problems: tuple[str, ...]
    schema_version: int | None = None
    gallery_id: str | None = None
    version: int | None = None
    model_id: str | None = None
    dim: int | None = None
    identities: int | None = None
    faces: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        """Raise unless the file passed.

        Raises:
            GalleryError: Listing every problem found.
        """
        if self.problems:
            raise GalleryError(
                f"gallery {self.path} failed its integrity check: " + "; ".join(self.problems)
            )

    def to_json(self) -> dict[str, object]:
        return {"path": str(self.path), "ok": self.ok, "problems": list(self.problems),
                "schema_version": self.schema_version, "gallery_id": self.gallery_id,
                "version": self.version, "model_id": self.model_id, "dim": self.dim,
                "identities": self.identities, "faces": self.faces}


def _files_of(path: Path) -> tuple[Path, ...]:
    return (path, Path(f"{path}-wal"), Path(f"{path}-shm"))


def scan_files_for(path: Path, needles: Iterable[bytes]) -> dict[str, list[int]]:
    """Search the raw bytes of a database, its WAL and shared-memory file.

    Args:
        path: The database file; ``-wal`` and ``-shm`` beside it are searched too.
        needles: Byte strings to look for.

    Returns:
        For each file that contains any needle, the indices (in ``needles``) of
        the needles found in it. Empty when none is found anywhere.
    """
    wanted = list(needles)
    found: dict[str, list[int]] = {}
    for file in _files_of(path):
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            continue
        if size == 0:
            continue
        with file.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            hits = [i for i, needle in enumerate(wanted) if needle and mm.find(needle) != -1]
        if hits:
            found[str(file)] = hits
    return found


def integrity_check(
    path: str | os.PathLike[str],
    *,
    expect_model_id: str | None = None,
    expect_dim: int | None = None,
) -> IntegrityReport:
    """Check a gallery file without changing it, e.g. a freshly built sync candidate.

    Checks: the file is a readable SQLite database that passes ``PRAGMA
    integrity_check``; its schema version is this firmware's; it has a metadata row
    (matching ``expect_model_id``/``expect_dim`` when given); every face's BLOB is
    ``dim * 4`` bytes of finite, unit-length float32 from the gallery's model; every
    face belongs to an existing identity.

    The file is opened read-only, so SQLite may leave empty ``-wal``/``-shm`` files
    beside it. The check reads committed data in the file *and its WAL*: a sync
    builder must close its :class:`~device.gallery.store.GalleryStore` (which
    checkpoints the WAL into the file) before checking and moving the file, or the
    moved file would lack whatever was still in the WAL.

    Args:
        path: The gallery file.
        expect_model_id: The model the unit runs, if it should be checked.
        expect_dim: The dimension the unit's model produces, if it should be checked.

    Returns:
        The report; ``report.ok`` is true when nothing was found wrong. It never
        raises for a bad file: call :meth:`IntegrityReport.raise_for_problems`.
    """
    file = Path(path)
    if not file.is_file():
        return IntegrityReport(file, (f"no gallery file at {file}",))
    problems: list[str] = []
    found: dict[str, Any] = {}
    try:
        conn = connect(file, "ro", 5.0)
    except sqlite3.Error as exc:
        return IntegrityReport(file, (f"cannot open as SQLite: {exc}",))
    try:
        _check_into(conn, problems, found, expect_model_id, expect_dim)
    except sqlite3.Error as exc:
        problems.append(f"not a readable SQLite gallery: {exc}")
    finally:
        conn.close()
    return IntegrityReport(file, tuple(problems), **found)


def _check_into(conn: sqlite3.Connection, problems: list[str], found: dict[str, Any],
                expect_model_id: str | None, expect_dim: int | None) -> None:
    conn.execute("BEGIN")
    if int(conn.execute("PRAGMA page_count").fetchone()[0]) == 0:
        problems.append("the file is empty: its creation was interrupted or it was truncated")
        return
    messages = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(20)")]
    if messages != ["ok"]:
        problems.extend(f"integrity_check: {m}" for m in messages)
        return
    version = schema_version(conn)
    found["schema_version"] = version
    if version != SCHEMA_VERSION:
        problems.append(f"schema version {version}, this firmware expects {SCHEMA_VERSION}")
        if version < 1 or version > SCHEMA_VERSION:
            return
    meta = read_metadata(conn)
    if meta is None:
        problems.append("no metadata row")
        return
    found.update(gallery_id=meta.gallery_id, version=meta.version, model_id=meta.model_id,
                 dim=meta.dim)
    if expect_model_id is not None and meta.model_id != expect_model_id:
        problems.append(f"model {meta.model_id!r}, expected {expect_model_id!r}")
    if expect_dim is not None and meta.dim != expect_dim:
        problems.append(f"dimension {meta.dim}, expected {expect_dim}")
    n_ident, n_faces = conn.execute(
        "SELECT (SELECT count(*) FROM identities), (SELECT count(*) FROM faces)").fetchone()
    found.update(identities=int(n_ident), faces=int(n_faces))
    found_in_content = content_problems(conn, meta)
    problems.extend(found_in_content)
    bad_len = any("embeddings that are not" in p for p in found_in_content)
    if not bad_len:
        not_unit = 0
        cursor = conn.execute("SELECT embedding FROM faces")
        while rows := cursor.fetchmany(1024):
            block = np.frombuffer(b"".join(r[0] for r in rows), dtype="<f4").reshape(-1, meta.dim)
            with np.errstate(all="ignore"):
                norms = np.linalg.norm(block.astype(np.float64), axis=1)
            not_unit += int(np.count_nonzero(~(np.abs(norms - 1.0) <= 1e-3)))
        if not_unit:
            problems.append(f"{not_unit} embeddings are not finite unit vectors")
    conn.execute("COMMIT")


