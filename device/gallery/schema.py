"""The gallery's SQL schema as a list of numbered migrations.

A gallery file records its schema version twice: ``PRAGMA user_version`` (cheap to
read on every open, and what :func:`migrate` trusts) and the ``schema_migrations``
table (one row per applied migration, with its name and when it ran: the history a
person reads). Migration *n* takes a file from version *n - 1* to *n*; each runs in
its own ``BEGIN IMMEDIATE`` transaction together with the version bump, so a crash
or an error mid-migration leaves the file at the previous version, untouched.

To change the schema, append a :class:`Migration` to :data:`MIGRATIONS`; never edit
one that has shipped. A migration receives a :class:`sqlite_utils.Database` wrapping
the migrating connection, already inside the transaction, so it can use plain SQL
(as migration 1 does, which keeps the shipped schema independent of the library's
version) or sqlite-utils' table helpers (``add_column``, ``create_index``,
``transform``). Statements that cannot run in a transaction (``VACUUM``, changing
``journal_mode`` or ``foreign_keys``) do not belong in a migration.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from sqlite_utils import Database

from device import storage
from device.errors import GalleryError
from device.gallery.records import GalleryMetadata

logger = logging.getLogger(__name__)

MigrationFn = Callable[[Database], None]
Migration = storage.Migration

_V1_STATEMENTS: tuple[str, ...] = (
    # One row, id = 1: what the gallery is and which model its embeddings come from.
    """
    CREATE TABLE metadata (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        gallery_id TEXT NOT NULL,
        version INTEGER NOT NULL CHECK (version >= 0),
        revision INTEGER NOT NULL DEFAULT 0 CHECK (revision >= 0),
        model_id TEXT NOT NULL CHECK (length(model_id) > 0),
        dim INTEGER NOT NULL CHECK (dim > 0),
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE identities (
        id TEXT PRIMARY KEY NOT NULL,
        label TEXT NOT NULL CHECK (length(label) > 0),
        external_ref TEXT,
        notes TEXT,
        enrolled_by TEXT,
        legal_basis TEXT,
        consent_ref TEXT,
        created_at REAL NOT NULL,
        expires_at REAL
    )
    """,
    "CREATE INDEX identities_label ON identities (label)",
    "CREATE INDEX identities_expires_at ON identities (expires_at) "
    "WHERE expires_at IS NOT NULL",
    """
    CREATE TABLE faces (
        id INTEGER PRIMARY KEY,
        identity_id TEXT NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
        embedding BLOB NOT NULL CHECK (typeof(embedding) = 'blob'),
        model_id TEXT NOT NULL,
        quality REAL NOT NULL,
        image_sha256 TEXT NOT NULL CHECK (length(image_sha256) = 64),
        created_at REAL NOT NULL,
        UNIQUE (identity_id, image_sha256)
    )
    """,
    "CREATE INDEX faces_identity_id ON faces (identity_id)",
    # Defence in depth for writers other than GalleryStore (a sync builder, a hand
    # edit): a face must match the gallery's model and dimension.
    """
    CREATE TRIGGER faces_match_model_insert BEFORE INSERT ON faces
    WHEN length(NEW.embedding) != (SELECT dim * 4 FROM metadata WHERE id = 1)
      OR NEW.model_id != (SELECT model_id FROM metadata WHERE id = 1)
    BEGIN
        SELECT RAISE(ABORT, 'face embedding does not match the gallery model or dimension');
    END
    """,
    """
    CREATE TRIGGER faces_match_model_update BEFORE UPDATE OF embedding, model_id ON faces
    WHEN length(NEW.embedding) != (SELECT dim * 4 FROM metadata WHERE id = 1)
      OR NEW.model_id != (SELECT model_id FROM metadata WHERE id = 1)
    BEGIN
        SELECT RAISE(ABORT, 'face embedding does not match the gallery model or dimension');
    END
    """,
)


def _v1_create_tables(db: Database) -> None:
    for statement in _V1_STATEMENTS:
        db.execute(statement)


#: Every migration, in order; ``MIGRATIONS[i].version == i + 1``.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create metadata, identities and faces", _v1_create_tables),
)

#: The schema version this firmware writes and expects.
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path, mode: Literal["ro", "rw", "rwc"], busy_timeout_s: float
            ) -> sqlite3.Connection:
    """Open a gallery file with the pragmas every connection needs (see :mod:`device.storage`).

    ``ro`` opens read-only (the file is never written); ``rw`` and ``rwc`` (create,
    mode 0600) open for writing with ``secure_delete`` and ``foreign_keys`` on, in
    autocommit mode, *without* switching the journal mode, so a file can be checked
    before anything is written to it.

    Raises:
        sqlite3.Error: If the file cannot be opened or ``secure_delete`` is missing.
        OSError: If a new file cannot be created.
    """
    if mode == "ro":
        return storage.connect_readonly(path, busy_timeout_s=busy_timeout_s)
    return storage.connect(path, mode=mode, busy_timeout_s=busy_timeout_s, foreign_keys=True,
                           wal=False)


def read_metadata(conn: sqlite3.Connection) -> GalleryMetadata | None:
    """The metadata row, or None when the file has none yet."""
    row = conn.execute(
        "SELECT gallery_id, version, revision, model_id, dim, created_at, updated_at "
        "FROM metadata WHERE id = 1").fetchone()
    if row is None:
        return None
    return GalleryMetadata(str(row[0]), int(row[1]), int(row[2]), str(row[3]), int(row[4]),
                           float(row[5]), float(row[6]), schema_version(conn))


schema_version = storage.schema_version


def migrate(
    conn: sqlite3.Connection,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    clock: Callable[[], float] = time.time,
) -> tuple[int, ...]:
    """Bring a gallery file up to the newest schema version (:func:`device.storage.migrate`).

    Returns:
        The versions applied by this call (empty when the file was current).

    Raises:
        ValueError: The migration numbers are not consecutive.
        GalleryError: If the file's schema is newer than the newest migration (a
            gallery written by newer firmware), or a migration fails; the file then
            stays at the last version that committed.
    """
    try:
        return storage.migrate(conn, migrations, what="gallery", clock=clock)
    except storage.MigrationError as exc:
        hint = ("; upgrade facegate or sync a gallery built for this version"
                if "newer than" in str(exc) else "")
        raise GalleryError(f"{exc}{hint}") from exc
