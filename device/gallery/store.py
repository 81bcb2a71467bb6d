"""The gallery: identities and their face embeddings in one SQLite file.

A gallery file holds one row of :class:`GalleryMetadata` (which model made its
embeddings and their dimension), the enrolled identities and their faces. Every
embedding is a ``float32`` little-endian BLOB of exactly ``dim`` values, unit length.

Concurrency
    The file runs in WAL mode. A :class:`GalleryStore` has **one writer
    connection**, guarded by a lock, and every write is a single ``BEGIN IMMEDIATE``
    transaction, so an identity and all its faces appear together or not at all.
    Reads run on separate connections (a small pool, one per concurrent reader), each
    read in its own snapshot, so search keeps answering while an enrollment commits
    and never sees half of one. Several processes may open the same file (the
    service and a ``facegate gallery`` command): SQLite's own lock, ``BEGIN
    IMMEDIATE`` and the busy timeout serialise their writers. Use one store per
    process and share it between threads.

Deletion
    ``PRAGMA secure_delete`` is on for every connection, so SQLite overwrites deleted
    content with zeros. After deleting, the store checkpoints the WAL with
    ``TRUNCATE`` (old page images in the WAL are discarded) and, for an *erase*,
    rebuilds the file with ``VACUUM``; it then scans the raw files for the deleted
    embeddings' bytes and raises if any remain. Temporary tables live in memory, so
    no temp file ever holds gallery data.

Typical use::

    with GalleryStore(path, model_id="dlib-resnet-v1", dim=128, create=True) as store:
        store.add_identity_with_faces(NewIdentity(label="Ada"), faces)
        face_ids, identity_ids, matrix = store.load_matrix()
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import secrets
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import numpy as np
import numpy.typing as npt

from device import storage
from device.errors import EnrollmentError, GalleryError
from device.gallery.exchange import read_export, write_export
from device.gallery.integrity import (
    GalleryDamagedError,
    IntegrityReport,
    content_problems,
    damaged,
    integrity_check,
    open_problems,
    scan_files_for,
)
from device.gallery.records import (
    DEFAULT_MAX_FACES_PER_IDENTITY,
    MAX_FACES_PER_IDENTITY_LIMIT,
    DeleteReport,
    EnrollmentBatch,
    FaceRecord,
    GalleryConfig,
    GalleryMatrix,
    GalleryMetadata,
    Identity,
    NewFace,
    NewIdentity,
    TransferReport,
    iso_time,
)
from device.gallery.schema import SCHEMA_VERSION, connect, migrate, read_metadata, schema_version
from device.types import Embedding, FloatArray

logger = logging.getLogger(__name__)

MAX_DIM = 4096

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NOTES_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # notes may hold \t and \n
_UNIT_TOLERANCE = 1e-6  # a float32 unit vector's norm is within ~1e-7 of 1
_NOTES_MAX = 2000
_TEXT_MAX = 200
_SQL_CHUNK = 500  # stays under SQLite's bound-parameter limit


@dataclass(frozen=True)
class _PreparedFace:
    blob: bytes
    quality: float
    image_sha256: str
    created_at: float


@dataclass(frozen=True)
class _PreparedIdentity:
    id: str
    label: str
    external_ref: str | None
    notes: str | None
    enrolled_by: str | None
    legal_basis: str | None
    consent_ref: str | None
    created_at: float
    expires_at: float | None
    faces: tuple[_PreparedFace, ...]

    def row(self) -> tuple[object, ...]:
        return (self.id, self.label, self.external_ref, self.notes, self.enrolled_by,
                self.legal_basis, self.consent_ref, self.created_at, self.expires_at)

    def as_identity(self) -> Identity:
        return Identity(self.id, self.label, self.external_ref, self.notes, self.enrolled_by,
                        self.legal_basis, self.consent_ref, self.created_at, self.expires_at,
                        len(self.faces))


# ------------------------------------------------------------------------- helpers


def _text(value: str | None, name: str, *, required: bool = False,
          max_len: int = _TEXT_MAX) -> str | None:
    if value is None:
        if required:
            raise EnrollmentError(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise EnrollmentError(f"{name} must be text, not {type(value).__name__}")
    cleaned = value.strip() if name == "label" else value
    if required and not cleaned:
        raise EnrollmentError(f"{name} must not be empty")
    if len(cleaned) > max_len:
        raise EnrollmentError(f"{name} is {len(cleaned)} characters long; at most {max_len}")
    if (_NOTES_CONTROL_RE if name == "notes" else _CONTROL_RE).search(cleaned):
        raise EnrollmentError(f"{name} {cleaned!r} contains control characters")
    return cleaned


def _finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EnrollmentError(f"{name} must be a number, not {value!r}")
    result = float(value)
    if not np.isfinite(result):
        raise EnrollmentError(f"{name} must be finite, not {value!r}")
    return result


def _sha256_hex(value: object, name: str) -> str:
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value.lower()):
        raise EnrollmentError(f"{name} must be 64 hex digits (a sha256), not {value!r}")
    return value.lower()


def _decode(blob: bytes, dim: int) -> FloatArray:
    """A read-only native ``float32`` view of an embedding BLOB."""
    return np.frombuffer(blob, dtype="<f4", count=dim).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- store


class GalleryStore:
    """One gallery file: enrollment, lookup, deletion, export and import.

    A context manager; :meth:`close` is idempotent. Opening an existing file first
    checks it (``PRAGMA quick_check``, an empty or truncated file, the embeddings'
    sizes, models and owners) and refuses a damaged one before writing anything;
    then it migrates an older file to the current schema. A new file is created
    owner-only (0600, with its WAL and shared-memory files) whatever the umask, and
    an existing one is tightened to 0600 when opened for writing.

    Args:
        path: The database file.
        model_id: The embedder the caller runs. Required to create a gallery; when
            given for an existing one, it must match the file's.
        dim: The caller's embedding dimension; same rules as ``model_id``.
        create: Create the file (and its directory) if it does not exist, or finish
            creating one whose metadata row is missing.
        read_only: Open with ``mode=ro``: the file is never written (writes raise).
        max_faces_per_identity: Face cap per identity (1–100).
        busy_timeout_s: How long to wait for another process's write lock.
        clock: Time source, seconds since the epoch.

    Raises:
        GalleryDamagedError: If the file is damaged, truncated or empty (the message
            names the file and the recovery).
        GalleryError: If the file is missing (and ``create`` is false), is not a
            gallery, was written by newer firmware, or was made with a different
            model or dimension than the caller's.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        model_id: str | None = None,
        dim: int | None = None,
        create: bool = False,
        read_only: bool = False,
        max_faces_per_identity: int = DEFAULT_MAX_FACES_PER_IDENTITY,
        busy_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= max_faces_per_identity <= MAX_FACES_PER_IDENTITY_LIMIT:
            raise GalleryError(
                f"max_faces_per_identity must be 1–{MAX_FACES_PER_IDENTITY_LIMIT}, "
                f"not {max_faces_per_identity}"
            )
        if dim is not None and not 0 < dim <= MAX_DIM:
            raise GalleryError(f"embedding dimension must be 1–{MAX_DIM}, not {dim}")
        self.path = Path(path)
        self.max_faces_per_identity = max_faces_per_identity
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._write_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._readers: list[sqlite3.Connection] = []
        self._closed = False
        self.read_only = read_only
        exists = self.path.exists()
        if not exists:
            if not create or read_only:
                raise GalleryError(
                    f"no gallery at {self.path}; enroll someone or sync a gallery first "
                    "(or pass --db to point at another file)"
                )
            if model_id is None or dim is None:
                raise GalleryError(f"creating gallery {self.path} needs a model id and dimension")
        try:
            conn = connect(self.path, "ro" if read_only else "rwc" if create else "rw",
                           busy_timeout_s)
        except (OSError, sqlite3.Error) as exc:
            if exists and _is_corruption(exc):
                raise damaged(self.path, [str(exc)]) from exc
            raise GalleryError(f"cannot open gallery {self.path}: {exc}") from exc
        self._writer: sqlite3.Connection | None = None if read_only else conn
        try:
            self._open(conn, model_id, dim, exists=exists, create=create)
        except BaseException:
            conn.close()
            raise
        if read_only:
            self._readers.append(conn)
            self._idle.append(conn)
        logger.debug("opened gallery %s (model %s, dim %d)", self.path, self.model_id, self.dim)

    def _open(self, conn: sqlite3.Connection, model_id: str | None, dim: int | None, *,
              exists: bool, create: bool) -> None:
        try:
            if exists:
                problems = open_problems(conn, self.path)
                if problems:
                    raise damaged(self.path, problems)
            if not self.read_only:
                storage.make_private(self.path)
                storage.enable_wal(conn, self.path)
            version = schema_version(conn)
            if self.read_only and version < SCHEMA_VERSION:
                if version == 0 and storage.is_blank(conn):
                    raise GalleryError(
                        f"gallery {self.path} has no tables (creation was interrupted); "
                        "delete the file and enroll again"
                    )
                raise GalleryError(
                    f"gallery {self.path} has schema version {version}; open it once with a "
                    f"writing command (this firmware writes version {SCHEMA_VERSION})"
                )
            if not self.read_only:
                if exists and version == 0 and not storage.is_blank(conn):
                    raise GalleryError(f"{self.path} is a database, but not a facegate gallery")
                migrate(conn, clock=self._clock)
            meta = read_metadata(conn)
            if meta is None:
                if not create or model_id is None or dim is None or self.read_only:
                    raise GalleryError(
                        f"gallery {self.path} has no metadata (creation was interrupted); "
                        "delete the file and enroll again"
                    )
                meta = self._init_metadata(model_id, dim)
            self._check_model(meta, model_id, dim)
            problems = content_problems(conn, meta)
            if problems:
                raise damaged(self.path, problems)
        except GalleryError:
            raise
        except sqlite3.Error as exc:
            if exists and _is_corruption(exc):
                raise damaged(self.path, [str(exc)]) from exc
            raise GalleryError(f"cannot open gallery {self.path}: {exc}") from exc
        self.model_id = meta.model_id
        self.dim = meta.dim

    def _check_model(self, meta: GalleryMetadata, model_id: str | None, dim: int | None
                     ) -> None:
        if model_id is not None and model_id != meta.model_id:
            raise GalleryError(
                f"gallery {self.path} holds embeddings of model {meta.model_id!r}, but this "
                f"unit runs {model_id!r}; re-enroll or sync a gallery built for {model_id!r}"
            )
        if dim is not None and dim != meta.dim:
            raise GalleryError(
                f"gallery {self.path} holds {meta.dim}-dimensional embeddings, but the "
                f"embedder makes {dim}-dimensional ones; the gallery and the model do not match"
            )

    def _init_metadata(self, model_id: str, dim: int) -> GalleryMetadata:
        if not model_id:
            raise GalleryError("model id must not be empty")
        conn = self._require_writer("create the gallery")
        now = self._clock()
        with storage.atomic(conn):
            if read_metadata(conn) is None:
                conn.execute(
                    "INSERT INTO metadata (id, gallery_id, version, revision, model_id, dim, "
                    "created_at, updated_at) VALUES (1, ?, 0, 0, ?, ?, ?, ?)",
                    (uuid.uuid4().hex, model_id, dim, now, now),
                )
        meta = read_metadata(conn)
        assert meta is not None
        logger.info("created gallery %s for model %s (dim %d)", self.path, model_id, dim)
        return meta

    def _require_writer(self, action: str) -> sqlite3.Connection:
        if self._writer is None:
            raise GalleryError(f"cannot {action}: gallery {self.path} was opened read-only")
        return self._writer

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection. Safe to call twice; stop readers first."""
        with self._pool_lock:
            if self._closed:
                return
            self._closed = True
            readers, self._readers, self._idle = self._readers, [], []
        for conn in readers:
            conn.close()
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
        logger.debug("closed gallery %s", self.path)

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise GalleryError(f"gallery {self.path} is closed")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A pooled reader connection inside one read transaction (one snapshot)."""
        self._check_open()
        with self._pool_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            try:
                conn = connect(self.path, "ro" if self.read_only else "rw",
                               self._busy_timeout_s)
                conn.execute("PRAGMA query_only = ON")
            except sqlite3.Error as exc:
                raise GalleryError(f"cannot read gallery {self.path}: {exc}") from exc
            with self._pool_lock:
                self._readers.append(conn)
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise GalleryError(f"cannot read gallery {self.path}: {exc}") from exc
        finally:
            with self._pool_lock:
                if self._closed:
                    conn.close()
                else:
                    self._idle.append(conn)

    @contextmanager
    def _write(self, action: str, error: type[GalleryError] = GalleryError
               ) -> Iterator[sqlite3.Connection]:
        """The writer connection inside ``BEGIN IMMEDIATE``; commits, or rolls back."""
        self._check_open()
        with self._write_lock:
            conn = self._require_writer(action)
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise error(
                    f"cannot {action}: gallery {self.path} is locked by another writer "
                    f"({storage.describe_error(self.path, exc)})"
                ) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                storage.rollback_quietly(conn)  # only if SQLite has not rolled back already
                if isinstance(exc, sqlite3.Error):
                    raise error(f"cannot {action} in gallery {self.path}: "
                                f"{storage.describe_error(self.path, exc)}") from exc
                raise

    def _touch(self, conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE metadata SET revision = revision + 1, updated_at = ? WHERE id = 1",
                     (self._clock(),))

    # ------------------------------------------------------------------- metadata

    def metadata(self) -> GalleryMetadata:
        """The gallery's metadata row.

        Raises:
            GalleryError: If the store is closed or the file unreadable.
        """
        with self._read() as conn:
            meta = read_metadata(conn)
        if meta is None:
            raise GalleryError(f"gallery {self.path} has lost its metadata row")
        return meta

    def counts(self) -> tuple[int, int]:
        """``(identities, faces)`` from one snapshot.

        Raises:
            GalleryError: If the store is closed or the file unreadable.
        """
        with self._read() as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM identities), (SELECT count(*) FROM faces)"
            ).fetchone()
        return int(row[0]), int(row[1])

    def bump_version(self, to: int | None = None) -> int:
        """Advance the published content version.

        Args:
            to: The new version; must exceed the current one. None adds one.

        Returns:
            The new version.

        Raises:
            GalleryError: If ``to`` does not exceed the current version.
        """
        with self._write("bump the gallery version") as conn:
            current = int(conn.execute("SELECT version FROM metadata WHERE id = 1").fetchone()[0])
            new = current + 1 if to is None else int(to)
            if new <= current:
                raise GalleryError(f"gallery version must increase: {new} <= {current}")
            conn.execute("UPDATE metadata SET version = ? WHERE id = 1", (new,))
            self._touch(conn)
        logger.info("gallery %s version %d -> %d", self.path, current, new)
        return new

    # ----------------------------------------------------------------- validation

    def _embedding_blob(self, embedding: Embedding, where: str) -> bytes:
        if not isinstance(embedding, Embedding):
            raise EnrollmentError(f"{where}: expected an Embedding, not {type(embedding).__name__}")
        if embedding.model_id != self.model_id:
            raise EnrollmentError(
                f"{where}: embedding comes from model {embedding.model_id!r}, but the gallery "
                f"holds {self.model_id!r} embeddings"
            )
        return self._vector_blob(embedding.vector, where)

    def _vector_blob(self, vector: npt.ArrayLike, where: str) -> bytes:
        """Validate and L2-normalise one vector into its BLOB form.

        A vector already unit-length (to 1e-6) is stored as it is, so storing what
        was read back, or re-importing an export, reproduces the same bytes.
        """
        arr = np.asarray(vector)
        if arr.shape != (self.dim,):
            raise EnrollmentError(
                f"{where}: embedding has shape {arr.shape}, the gallery expects ({self.dim},)"
            )
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise EnrollmentError(f"{where}: embedding has dtype {arr.dtype}, expected floats")
        wide = arr.astype(np.float64)
        if not np.all(np.isfinite(wide)):
            raise EnrollmentError(f"{where}: embedding contains NaN or infinite values")
        norm = float(np.linalg.norm(wide))
        if norm == 0.0 or not np.isfinite(norm):
            raise EnrollmentError(f"{where}: embedding has zero or unbounded length")
        narrow = wide.astype("<f4")
        if (not np.all(np.isfinite(narrow))
                or abs(float(np.linalg.norm(narrow.astype(np.float64))) - 1.0) > _UNIT_TOLERANCE):
            narrow = (wide / norm).astype("<f4")
        return narrow.tobytes()

    def _prepare_faces(self, faces: Sequence[NewFace], where: str, now: float
                       ) -> tuple[_PreparedFace, ...]:
        prepared: list[_PreparedFace] = []
        seen: set[str] = set()
        for index, face in enumerate(faces):
            at = f"{where} face {index + 1}"
            if not isinstance(face, NewFace):
                raise EnrollmentError(f"{at}: expected a NewFace, not {type(face).__name__}")
            sha = _sha256_hex(face.image_sha256, f"{at} image_sha256")
            if sha in seen:
                raise EnrollmentError(f"{at}: image {sha} appears twice")
            seen.add(sha)
            prepared.append(_PreparedFace(self._embedding_blob(face.embedding, at),
                                          _finite(face.quality, f"{at} quality"), sha, now))
        return tuple(prepared)

    def _prepare_identity(self, ident: NewIdentity, faces: tuple[_PreparedFace, ...],
                          where: str, created_at: float) -> _PreparedIdentity:
        if ident.id is None:
            identity_id = secrets.token_hex(8)
        elif isinstance(ident.id, str) and _ID_RE.fullmatch(ident.id):
            identity_id = ident.id
        else:
            raise EnrollmentError(
                f"{where}: identity id {ident.id!r} must be 1–64 letters, digits, '.', '_', "
                "':' or '-', starting with a letter or digit"
            )
        if len(faces) > self.max_faces_per_identity:
            raise EnrollmentError(
                f"{where}: {len(faces)} faces exceed the cap of "
                f"{self.max_faces_per_identity} per identity"
            )
        try:
            label = _text(ident.label, "label", required=True)
            assert label is not None
            expires = (None if ident.expires_at is None
                       else _finite(ident.expires_at, "expires_at"))
            return _PreparedIdentity(
                id=identity_id,
                label=label,
                external_ref=_text(ident.external_ref, "external_ref"),
                notes=_text(ident.notes, "notes", max_len=_NOTES_MAX),
                enrolled_by=_text(ident.enrolled_by, "enrolled_by"),
                legal_basis=_text(ident.legal_basis, "legal_basis"),
                consent_ref=_text(ident.consent_ref, "consent_ref"),
                created_at=created_at,
                expires_at=expires,
                faces=faces,
            )
        except EnrollmentError as exc:
            raise EnrollmentError(f"{where}: {exc}") from exc

    def _insert(self, conn: sqlite3.Connection, identities: Sequence[_PreparedIdentity],
                error: type[GalleryError]) -> None:
        ids = [p.id for p in identities]
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            taken = [r[0] for r in conn.execute(
                f"SELECT id FROM identities WHERE id IN ({marks})", chunk)]
            if taken:
                raise error(f"identity {taken[0]!r} is already in the gallery; nothing was written")
        conn.executemany(
            "INSERT INTO identities (id, label, external_ref, notes, enrolled_by, legal_basis, "
            "consent_ref, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [p.row() for p in identities],
        )
        conn.executemany(
            "INSERT INTO faces (identity_id, embedding, model_id, quality, image_sha256, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            [(p.id, f.blob, self.model_id, f.quality, f.image_sha256, f.created_at)
             for p in identities for f in p.faces],
        )

    # ----------------------------------------------------------------- enrollment

    def enroll_many(self, batches: Sequence[EnrollmentBatch]) -> tuple[Identity, ...]:
        """Write several identities with their faces in one transaction.

        Everything is validated before the transaction starts; if anything is wrong
        (a vector of the wrong dimension or model, a non-finite value, a face cap
        exceeded, an id already taken) nothing at all is written.

        Args:
            batches: One entry per identity; each must have at least one face.

        Returns:
            The identities as stored, in the order given.

        Raises:
            EnrollmentError: Naming the batch and face at fault.
        """
        if not batches:
            raise EnrollmentError("nothing to enroll")
        now = self._clock()
        prepared: list[_PreparedIdentity] = []
        for index, batch in enumerate(batches):
            where = f"identity {index + 1} ({getattr(batch.identity, 'label', '?')!r})"
            if not batch.faces:
                raise EnrollmentError(f"{where}: has no faces; an identity needs at least one")
            faces = self._prepare_faces(batch.faces, where, now)
            prepared.append(self._prepare_identity(batch.identity, faces, where, now))
        ids = [p.id for p in prepared]
        if len(set(ids)) != len(ids):
            raise EnrollmentError("the batch names the same identity id twice")
        with self._write("enroll", EnrollmentError) as conn:
            self._insert(conn, prepared, EnrollmentError)
            self._touch(conn)
        logger.info("enrolled %d identities (%d faces) into %s", len(prepared),
                    sum(len(p.faces) for p in prepared), self.path)
        return tuple(p.as_identity() for p in prepared)

    def add_identity_with_faces(self, identity: NewIdentity, faces: Sequence[NewFace]
                                ) -> Identity:
        """Enroll one identity and its faces in one transaction.

        Args:
            identity: The person's fields.
            faces: One or more faces (at most the configured cap).

        Returns:
            The identity as stored.

        Raises:
            EnrollmentError: If any field or face is invalid; nothing is written.
        """
        return self.enroll_many([EnrollmentBatch(identity, tuple(faces))])[0]

    def add_faces(self, identity_id: str, faces: Sequence[NewFace]) -> tuple[FaceRecord, ...]:
        """Add faces to an enrolled identity, all or none.

        Args:
            identity_id: The identity.
            faces: The faces; with those already stored they must stay within the cap.

        Returns:
            The stored faces.

        Raises:
            EnrollmentError: If the identity is unknown, a face is invalid or already
                stored (same image), or the cap would be exceeded; nothing is written.
        """
        if not faces:
            raise EnrollmentError("no faces to add")
        now = self._clock()
        prepared = self._prepare_faces(faces, f"identity {identity_id!r}", now)
        with self._write("add faces", EnrollmentError) as conn:
            if conn.execute("SELECT 1 FROM identities WHERE id = ?", (identity_id,)).fetchone() \
                    is None:
                raise EnrollmentError(f"no identity {identity_id!r} in the gallery")
            have = int(conn.execute("SELECT count(*) FROM faces WHERE identity_id = ?",
                                    (identity_id,)).fetchone()[0])
            if have + len(prepared) > self.max_faces_per_identity:
                raise EnrollmentError(
                    f"identity {identity_id!r} has {have} faces; adding {len(prepared)} would "
                    f"exceed the cap of {self.max_faces_per_identity}"
                )
            records: list[FaceRecord] = []
            for face in prepared:
                try:
                    cur = conn.execute(
                        "INSERT INTO faces (identity_id, embedding, model_id, quality, "
                        "image_sha256, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (identity_id, face.blob, self.model_id, face.quality, face.image_sha256,
                         face.created_at),
                    )
                except sqlite3.IntegrityError as exc:
                    raise EnrollmentError(
                        f"identity {identity_id!r} already has a face from image "
                        f"{face.image_sha256}; nothing was written"
                    ) from exc
                assert cur.lastrowid is not None
                records.append(FaceRecord(cur.lastrowid, identity_id, self.model_id,
                                          face.quality, face.image_sha256, face.created_at,
                                          _decode(face.blob, self.dim)))
            self._touch(conn)
        logger.info("added %d faces to identity %s", len(records), identity_id)
        return tuple(records)

    # -------------------------------------------------------------------- lookup

    def list_identities(self) -> tuple[Identity, ...]:
        """Every identity with its face count, sorted by label then id.

        Raises:
            GalleryError: If the store is closed or the file unreadable.
        """
        with self._read() as conn:
            rows = conn.execute(_IDENTITY_SELECT + " ORDER BY i.label, i.id").fetchall()
        return tuple(_identity(r) for r in rows)

    def get(self, identity_id: str) -> Identity:
        """One identity.

        Raises:
            GalleryError: If there is no such identity.
        """
        with self._read() as conn:
            row = conn.execute(_IDENTITY_SELECT + " WHERE i.id = ?", (identity_id,)).fetchone()
        if row is None:
            raise GalleryError(f"no identity {identity_id!r} in gallery {self.path}")
        return _identity(row)

    def find_by_label(self, label: str) -> tuple[Identity, ...]:
        """Identities whose label is exactly ``label`` (labels need not be unique).

        Raises:
            GalleryError: If the store is closed or the file unreadable.
        """
        with self._read() as conn:
            rows = conn.execute(_IDENTITY_SELECT + " WHERE i.label = ? ORDER BY i.id",
                                (label.strip(),)).fetchall()
        return tuple(_identity(r) for r in rows)

    def find_images(self, image_sha256s: Sequence[str]) -> dict[str, str]:
        """Which source images are already enrolled, and for which identity.

        Args:
            image_sha256s: sha256 hex digests of image files.

        Returns:
            Lower-case digest → identity id, for each digest found.

        Raises:
            GalleryError: If the store is closed or the file unreadable.
        """
        wanted = sorted({str(s).lower() for s in image_sha256s})
        found: dict[str, str] = {}
        with self._read() as conn:
            for chunk in _chunks(wanted):
                marks = ",".join("?" * len(chunk))
                for sha, identity_id in conn.execute(
                        f"SELECT image_sha256, identity_id FROM faces WHERE image_sha256 IN "
                        f"({marks}) ORDER BY id", chunk):
                    found.setdefault(str(sha), str(identity_id))
        return found

    def faces(self, identity_id: str) -> tuple[FaceRecord, ...]:
        """An identity's faces, oldest first.

        Raises:
            GalleryError: If there is no such identity.
        """
        with self._read() as conn:
            if conn.execute("SELECT 1 FROM identities WHERE id = ?",
                            (identity_id,)).fetchone() is None:
                raise GalleryError(f"no identity {identity_id!r} in gallery {self.path}")
            rows = conn.execute(
                "SELECT id, identity_id, model_id, quality, image_sha256, created_at, embedding "
                "FROM faces WHERE identity_id = ? ORDER BY id", (identity_id,)).fetchall()
        return tuple(FaceRecord(int(r[0]), str(r[1]), str(r[2]), float(r[3]), str(r[4]),
                                float(r[5]), _decode(r[6], self.dim)) for r in rows)

    def load_matrix(self) -> GalleryMatrix:
        """Every face as one read-only ``(n, dim)`` float32 matrix, from one snapshot.

        Read :meth:`metadata` (for ``revision``) *before* this, so an index never
        believes it holds a newer revision than it does.

        Raises:
            GalleryError: If the store is closed or the file unreadable.
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, identity_id, embedding FROM faces ORDER BY id").fetchall()
        face_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        face_ids.flags.writeable = False
        matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4")
        matrix = matrix.astype(np.float32, copy=False).reshape(len(rows), self.dim)
        return GalleryMatrix(face_ids, tuple(str(r[1]) for r in rows), matrix)

    def expired(self, now: float | None = None) -> tuple[Identity, ...]:
        """Identities whose ``expires_at`` is at or before ``now``.

        Args:
            now: Seconds since the epoch; the store's clock when None.

        Raises:
            GalleryError: If the store is closed or the file unreadable.
        """
        at = self._clock() if now is None else now
        with self._read() as conn:
            rows = conn.execute(
                _IDENTITY_SELECT + " WHERE i.expires_at IS NOT NULL AND i.expires_at <= ? "
                "ORDER BY i.expires_at, i.id", (at,)).fetchall()
        return tuple(_identity(r) for r in rows)

    # ------------------------------------------------------------------ deletion

    def delete_identity(self, identity_id: str, *, erase: bool = True) -> DeleteReport:
        """Delete an identity and its faces, so their bytes leave the files.

        The rows are deleted with ``secure_delete`` on and the WAL is checkpointed
        and truncated; ``erase`` also rebuilds the file with ``VACUUM``. Either way
        the store then scans the database, WAL and shared-memory files and fails if
        any deleted embedding's bytes are still there.

        Args:
            identity_id: The identity.
            erase: Also ``VACUUM`` the file.

        Returns:
            What was deleted.

        Raises:
            GalleryError: If there is no such identity, or deleted bytes remain on
                disk (another process kept the WAL busy); in the latter case the rows
                are gone and :meth:`compact` finishes the job.
        """
        return self._delete([identity_id], erase=erase, max_share=None, action="delete")

    def delete_expired(self, now: float | None, max_share: float, *, erase: bool = True
                       ) -> DeleteReport:
        """Delete every identity whose retention has run out, with a safety guard.

        A clock that jumps ahead (a unit without a real-time clock that boots with a
        bad time) would otherwise wipe the gallery, so the purge refuses to delete
        more than ``max_share`` of all identities at once.

        Args:
            now: Seconds since the epoch; the store's clock when None.
            max_share: Largest fraction (0–1) of identities one purge may delete.
            erase: As for :meth:`delete_identity`.

        Returns:
            What was deleted (possibly nothing).

        Raises:
            GalleryError: If the purge would exceed ``max_share``; nothing is deleted.
        """
        if not 0.0 <= max_share <= 1.0:
            raise GalleryError(f"max_share must be between 0 and 1, not {max_share}")
        at = self._clock() if now is None else now
        if not self.expired(at):
            return DeleteReport((), 0, erased=False)
        return self._delete(None, erase=erase, max_share=max_share, action="purge", now=at)

    def _delete(self, identity_ids: Sequence[str] | None, *, erase: bool,
                max_share: float | None, action: str, now: float | None = None
                ) -> DeleteReport:
        blobs: list[bytes] = []
        with self._write(f"{action} identities") as conn:
            if identity_ids is None:
                ids = [str(r[0]) for r in conn.execute(
                    "SELECT id FROM identities WHERE expires_at IS NOT NULL AND expires_at <= ? "
                    "ORDER BY id", (now,))]
                total = int(conn.execute("SELECT count(*) FROM identities").fetchone()[0])
                assert max_share is not None
                if ids and len(ids) > max_share * total:
                    raise GalleryError(
                        f"refusing to purge {len(ids)} of {total} identities "
                        f"({len(ids) / total:.0%}) at once: the limit is {max_share:.0%} "
                        f"(max_share={max_share}). Check the clock "
                        f"(now={iso_time(now)}) or raise max_share"
                    )
            else:
                ids = list(identity_ids)
                for identity_id in ids:
                    if conn.execute("SELECT 1 FROM identities WHERE id = ?",
                                    (identity_id,)).fetchone() is None:
                        raise GalleryError(f"no identity {identity_id!r} in gallery {self.path}")
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                blobs.extend(r[0] for r in conn.execute(
                    f"SELECT embedding FROM faces WHERE identity_id IN ({marks})", chunk))
                conn.execute(f"DELETE FROM faces WHERE identity_id IN ({marks})", chunk)
                conn.execute(f"DELETE FROM identities WHERE id IN ({marks})", chunk)
            if ids:
                self._touch(conn)
        if not ids:
            return DeleteReport((), 0, erased=False)
        logger.info("%s: deleted %d identities (%d faces) from %s", action, len(ids),
                    len(blobs), self.path)
        self._scrub(erase=erase, blobs=blobs)
        return DeleteReport(tuple(ids), len(blobs), erased=erase)

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and truncate the WAL to zero bytes.

        Raises:
            GalleryError: If readers kept the WAL busy past the busy timeout.
        """
        self._check_open()
        with self._write_lock:
            self._checkpoint_locked()

    def compact(self) -> None:
        """Rebuild the file with ``VACUUM`` and truncate the WAL.

        Raises:
            GalleryError: If the file cannot be rebuilt or the WAL stays busy.
        """
        self._check_open()
        with self._write_lock:
            self._compact_locked()

    def _checkpoint_locked(self) -> None:
        try:
            busy, log, done = self._require_writer("checkpoint").execute(
                "PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            raise GalleryError(f"cannot checkpoint gallery {self.path}: {exc}") from exc
        if busy:
            raise GalleryError(
                f"gallery {self.path}: WAL checkpoint incomplete ({done} of {log} frames); "
                "another connection is reading; try again"
            )

    def _compact_locked(self) -> None:
        self._checkpoint_locked()
        try:
            self._require_writer("compact").execute("VACUUM")
        except sqlite3.Error as exc:
            raise GalleryError(f"cannot VACUUM gallery {self.path}: {exc}") from exc
        self._checkpoint_locked()

    def _scrub(self, *, erase: bool, blobs: Sequence[bytes]) -> None:
        self._check_open()
        with self._write_lock:
            if erase:
                self._compact_locked()
            else:
                self._checkpoint_locked()
        left = scan_files_for(self.path, blobs)
        if left:
            n_left = len({i for hits in left.values() for i in hits})
            raise GalleryError(
                f"the deleted rows are gone but bytes of {n_left} deleted embeddings remain in "
                f"{', '.join(sorted(left))}; run the erase again (GalleryStore.compact) once "
                "no other process reads the gallery"
            )

    # ------------------------------------------------------------ export / import

    def export(self, path: str | os.PathLike[str], *, overwrite: bool = False
               ) -> TransferReport:
        """Write the whole gallery to a portable JSON Lines file.

        Line 1 is a header: format, gallery metadata, counts and the sha256 of every
        following byte. Each further line is one identity with its faces, embeddings
        in base64 (float32 little-endian). The file is written beside its
        destination and renamed into place, with mode 0600: it holds biometric data.

        Args:
            path: Destination file.
            overwrite: Replace an existing file.

        Returns:
            What was written.

        Raises:
            GalleryError: If the destination exists (without ``overwrite``) or
                cannot be written.
        """
        dest = Path(path)
        if dest.exists() and not overwrite:
            raise GalleryError(f"{dest} already exists; choose another name or overwrite it")
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent or ".")
        except OSError as exc:
            raise GalleryError(f"cannot write {dest}: {exc}") from exc
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w+b") as fh:
                report = self._write_export(fh, dest)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise GalleryError(f"cannot write {dest}: {exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        logger.info("exported %d identities (%d faces) to %s", report.identities, report.faces,
                    dest)
        return report

    def _write_export(self, fh: IO[bytes], dest: Path) -> TransferReport:
        with self._read() as conn:  # one snapshot for the header and every line
            meta = read_metadata(conn)
            if meta is None:
                raise GalleryError(f"gallery {self.path} has lost its metadata row")
            identities = [_identity(r) for r in
                          conn.execute(_IDENTITY_SELECT + " ORDER BY i.id").fetchall()]
            faces: dict[str, list[dict[str, object]]] = {}
            for r in conn.execute("SELECT identity_id, quality, image_sha256, created_at, "
                                  "embedding FROM faces ORDER BY id"):
                faces.setdefault(str(r[0]), []).append({
                    "quality": float(r[1]), "image_sha256": str(r[2]),
                    "created_at": float(r[3]), "embedding": base64.b64encode(r[4]).decode(),
                })
        n_faces = sum(len(v) for v in faces.values())
        header: dict[str, object] = {
            "gallery_id": meta.gallery_id, "version": meta.version, "model_id": meta.model_id,
            "dim": meta.dim, "exported_at": self._clock(), "identities": len(identities),
            "faces": n_faces,
        }
        records: Iterator[dict[str, object]] = ({
            "id": i.id, "label": i.label, "external_ref": i.external_ref, "notes": i.notes,
            "enrolled_by": i.enrolled_by, "legal_basis": i.legal_basis,
            "consent_ref": i.consent_ref, "created_at": i.created_at,
            "expires_at": i.expires_at, "faces": faces.get(i.id, []),
        } for i in identities)
        sha = write_export(fh, header, records)
        return TransferReport(dest, len(identities), n_faces, sha)

    def import_(self, path: str | os.PathLike[str]) -> TransferReport:
        """Add every identity of an export file, all or nothing.

        The whole file is read and validated first (header, content sha256, counts,
        model id, dimension, each identity and face), then written in one
        transaction. Identity ids and timestamps are kept.

        Args:
            path: A file written by :meth:`export`.

        Returns:
            What was imported.

        Raises:
            GalleryError: If the file is unreadable, damaged, made for another model
                or dimension, or names an identity already in the gallery; nothing
                is written.
        """
        src = Path(path)
        export = read_export(src)
        header = export.header
        if header.get("model_id") != self.model_id or header.get("dim") != self.dim:
            raise GalleryError(
                f"{src} holds embeddings of model {header.get('model_id')!r} (dim "
                f"{header.get('dim')!r}); this gallery holds {self.model_id!r} (dim {self.dim}). "
                "Embeddings of different models cannot be mixed; nothing was imported"
            )
        prepared: list[_PreparedIdentity] = []
        for lineno, record in export.records:
            try:
                prepared.append(self._prepare_record(record))
            except GalleryError as exc:
                raise GalleryError(f"{src}:{lineno}: {exc}; nothing was imported") from exc
        ids = [p.id for p in prepared]
        if len(set(ids)) != len(ids):
            raise GalleryError(f"{src} names the same identity id twice; nothing was imported")
        if prepared:
            with self._write(f"import {src}") as conn:
                self._insert(conn, prepared, GalleryError)
                self._touch(conn)
        n_faces = sum(len(p.faces) for p in prepared)
        logger.info("imported %d identities (%d faces) from %s", len(prepared), n_faces, src)
        return TransferReport(src, len(prepared), n_faces, export.content_sha256)

    def _prepare_record(self, record: dict[str, Any]) -> _PreparedIdentity:
        faces_in = record["faces"]  # read_export checked it is a list
        faces: list[_PreparedFace] = []
        seen: set[str] = set()
        for index, face in enumerate(faces_in, start=1):
            at = f"face {index}"
            if not isinstance(face, dict):
                raise GalleryError(f"{at} is not an object")
            try:
                blob = base64.b64decode(str(face.get("embedding", "")), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise GalleryError(f"{at}: embedding is not valid base64") from exc
            if len(blob) != self.dim * 4:
                raise GalleryError(f"{at}: embedding has {len(blob)} bytes, expected "
                                   f"{self.dim * 4} ({self.dim} float32)")
            sha = _sha256_hex(face.get("image_sha256"), f"{at} image_sha256")
            if sha in seen:
                raise GalleryError(f"{at}: image {sha} appears twice")
            seen.add(sha)
            vector = np.frombuffer(blob, dtype="<f4")
            faces.append(_PreparedFace(self._vector_blob(vector, at),
                                       _finite(face.get("quality"), f"{at} quality"), sha,
                                       _finite(face.get("created_at"), f"{at} created_at")))
        ident = NewIdentity(
            label=record.get("label"),  # type: ignore[arg-type]  # validated below
            id=str(record.get("id") or ""),
            external_ref=record.get("external_ref"),
            notes=record.get("notes"),
            enrolled_by=record.get("enrolled_by"),
            legal_basis=record.get("legal_basis"),
            consent_ref=record.get("consent_ref"),
            expires_at=record.get("expires_at"),
        )
        created = _finite(record.get("created_at"), "created_at")
        return self._prepare_identity(ident, tuple(faces), "identity", created)


# --------------------------------------------------------------- module helpers

_IDENTITY_SELECT = (
    "SELECT i.id, i.label, i.external_ref, i.notes, i.enrolled_by, i.legal_basis, "
    "i.consent_ref, i.created_at, i.expires_at, "
    "(SELECT count(*) FROM faces f WHERE f.identity_id = i.id) FROM identities i"
)


def _identity(row: Sequence[Any]) -> Identity:
    return Identity(
        id=str(row[0]), label=str(row[1]), external_ref=row[2], notes=row[3],
        enrolled_by=row[4], legal_basis=row[5], consent_ref=row[6],
        created_at=float(row[7]), expires_at=None if row[8] is None else float(row[8]),
        face_count=int(row[9]),
    )


def _is_corruption(exc: BaseException) -> bool:
    """SQLite's "malformed" and "not a database" (not a lock, a full disk or a path)."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.OperationalError)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _SQL_CHUNK):
        yield items[start:start + _SQL_CHUNK]


__all__ = [
    "DEFAULT_MAX_FACES_PER_IDENTITY",
    "MAX_FACES_PER_IDENTITY_LIMIT",
    "DeleteReport",
    "EnrollmentBatch",
    "FaceRecord",
    "GalleryConfig",
    "GalleryDamagedError",
    "GalleryMatrix",
    "GalleryMetadata",
    "GalleryStore",
    "Identity",
    "IntegrityReport",
    "NewFace",
    "NewIdentity",
    "TransferReport",
    "integrity_check",
    "scan_files_for",
]
