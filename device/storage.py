"""The one way facegate opens, changes and migrates its SQLite files.

Every database of the unit (the gallery, the event outbox, the audit log, and the
galleries gallery sync builds) goes through this module:

* :func:`connect` opens a file in autocommit mode (callers open transactions with
  :func:`atomic`) with the pragmas the project relies on: WAL, ``synchronous=FULL``,
  ``secure_delete`` (verified, since a build may refuse it), ``temp_store=MEMORY``,
  a busy timeout, and ``foreign_keys`` where the caller asks for it. A file it
  creates is made owner-only (0600) before SQLite sees it, whatever the umask;
  SQLite gives the ``-wal`` and ``-shm`` files the database file's mode.
* :func:`connect_readonly` opens with ``mode=ro``: it never writes the database
  file, so a read-only command cannot modify (or "repair") what it inspects.
* :func:`atomic` is a transaction, or a savepoint when one is already open. Its
  rollback runs only while a transaction is still active (SQLite has already rolled
  back after ``SQLITE_FULL`` or ``SQLITE_IOERR``) and never replaces the error that
  caused it.
* :func:`migrate` applies numbered :class:`Migration` steps, each in its own
  ``BEGIN IMMEDIATE`` transaction together with ``PRAGMA user_version`` and a row in
  ``schema_migrations``. A step receives a :class:`sqlite_utils.Database` on the
  migrating connection, so it can use plain SQL or sqlite-utils' table helpers.
* :func:`describe_error` turns a failed write into a message that names the file
  and, when the disk is full, says so with the free space left.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlite_utils import Database

logger = logging.getLogger(__name__)

Mode = Literal["rw", "rwc"]
Synchronous = Literal["FULL", "NORMAL"]
MigrationFn = Callable[[Database], None]

#: Suffixes of the files SQLite keeps beside a database.
SIDE_FILES: tuple[str, ...] = ("-wal", "-shm", "-journal")
PRIVATE_FILE_MODE = 0o600

_savepoints = itertools.count(1)


class StorageError(sqlite3.DatabaseError):
    """A storage-layer refusal (WAL unavailable, secure_delete missing, bad migration)."""


@dataclass(frozen=True)
class Migration:
    """One step of a database's schema history.

    Attributes:
        version: The schema version the file has after this step (1, 2, …).
        name: Short description recorded in ``schema_migrations``.
        apply: Runs the step's statements inside the open transaction.
    """

    version: int
    name: str
    apply: MigrationFn


# ------------------------------------------------------------------------ files


def create_private(path: Path) -> bool:
    """Create ``path`` (and its parents, 0700) as an empty owner-only file if missing.

    Returns:
        True when this call created the file.

    Raises:
        OSError: The directory or file cannot be created.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # the umask cannot widen it, nor narrow it oddly
    finally:
        os.close(fd)
    return True


def make_private(path: Path) -> None:
    """Set ``path`` and the SQLite files beside it to 0600 (those that exist).

    Raises:
        OSError: A file exists but its mode cannot be changed.
    """
    for file in (path, *(Path(f"{path}{suffix}") for suffix in SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            if file.stat().st_mode & 0o777 != PRIVATE_FILE_MODE:
                os.chmod(file, PRIVATE_FILE_MODE)


# ------------------------------------------------------------------ connecting


def _uri(path: Path, mode: str) -> str:
    return f"{path.absolute().as_uri()}?mode={mode}"


def connect(
    path: Path,
    *,
    mode: Mode = "rwc",
    busy_timeout_s: float = 10.0,
    foreign_keys: bool = False,
    synchronous: Synchronous = "FULL",
    wal: bool = True,
) -> sqlite3.Connection:
    """Open a database file for writing, with the project's pragmas.

    Args:
        path: The database file. With ``mode="rwc"`` it is created (0600, parents
            0700) if missing; ``"rw"`` requires it to exist.
        mode: ``rwc`` (create if missing) or ``rw``.
        busy_timeout_s: How long a statement waits for another connection's lock.
        foreign_keys: Enforce foreign keys.
        synchronous: ``FULL`` (every commit on stable storage) or ``NORMAL``.
        wal: Switch the file to WAL. Leave it off to inspect a file before anything
            is written to it (switching to WAL writes the header); call
            :func:`enable_wal` afterwards.

    Returns:
        A connection in autocommit mode (``isolation_level=None``) usable from any
        thread (callers serialise access).

    Raises:
        sqlite3.Error: The file cannot be opened; WAL or ``secure_delete`` cannot be
            enabled (:class:`StorageError`).
        OSError: A new file cannot be created.
    """
    path = Path(path)
    if mode == "rwc":
        create_private(path)
    conn = sqlite3.connect(_uri(path, "rw"), uri=True, isolation_level=None,
                           check_same_thread=False, timeout=busy_timeout_s)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        conn.execute("PRAGMA secure_delete = ON")
        if conn.execute("PRAGMA secure_delete").fetchone()[0] != 1:
            raise StorageError("this SQLite build cannot enable secure_delete")
        conn.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        if wal:
            enable_wal(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def enable_wal(conn: sqlite3.Connection, path: Path) -> None:
    """Switch ``conn``'s file to WAL.

    Raises:
        StorageError: The file system does not support it (a network share).
    """
    got = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
    if got.lower() != "wal":
        raise StorageError(f"{path} cannot use WAL mode (journal_mode={got}); "
                           "put it on a local file system")


def connect_readonly(path: Path, *, busy_timeout_s: float = 10.0) -> sqlite3.Connection:
    """Open an existing database read-only (``mode=ro``): the file is never written.

    SQLite may create empty ``-wal``/``-shm`` files beside a WAL database (with the
    database file's mode); the database file itself keeps its bytes and size.

    Raises:
        sqlite3.Error: The file does not exist or cannot be opened.
    """
    conn = sqlite3.connect(_uri(Path(path), "ro"), uri=True, isolation_level=None,
                           check_same_thread=False, timeout=busy_timeout_s)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


# ---------------------------------------------------------------- transactions


def rollback_quietly(conn: sqlite3.Connection, statement: str = "ROLLBACK") -> None:
    """Run a rollback statement while an error is propagating; never raise."""
    if not conn.in_transaction:  # SQLite already rolled back (disk full, I/O error)
        return
    try:
        conn.execute(statement)
    except sqlite3.Error as exc:
        logger.warning("rollback after an error failed too: %s", exc)


@contextlib.contextmanager
def atomic(conn: sqlite3.Connection, *, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """Run the block in a transaction, or in a savepoint inside an open one.

    Outermost use: ``BEGIN IMMEDIATE`` (``BEGIN`` with ``immediate=False``), ``COMMIT``
    on success. Nested use: ``SAVEPOINT``, ``RELEASE`` on success, ``ROLLBACK TO`` on
    error, so an inner failure undoes only the inner block. On error the rollback
    runs only if SQLite still holds a transaction, and whatever it raises is logged,
    not raised: the caller sees the error that caused the rollback.

    Args:
        conn: A connection in autocommit mode (``isolation_level=None``).
        immediate: Take the write lock at the start (outermost use only).

    Raises:
        sqlite3.Error: ``BEGIN`` or ``COMMIT`` failed, or the block raised.
    """
    if conn.in_transaction:
        name = f"facegate_sp{next(_savepoints)}"
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield conn
        except BaseException:
            rollback_quietly(conn, f"ROLLBACK TO {name}")
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute(f"RELEASE {name}")
            raise
        conn.execute(f"RELEASE {name}")
        return
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn, "ROLLBACK")
        raise


@contextlib.contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One read transaction (a consistent snapshot), ended without writing anything."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        if conn.in_transaction:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                logger.warning("ending a read transaction failed: %s", exc)


# ------------------------------------------------------------------- migrations


def schema_version(conn: sqlite3.Connection) -> int:
    """The file's schema version (``PRAGMA user_version``; 0 for a new file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _check_sequence(migrations: Sequence[Migration]) -> None:
    for index, migration in enumerate(migrations, start=1):
        if migration.version != index:
            raise ValueError(
                f"migration {migration.name!r} has version {migration.version}, expected {index}"
            )


class MigrationError(StorageError):
    """A migration failed or the file's schema is newer than the code's."""


def is_blank(conn: sqlite3.Connection) -> bool:
    """True when the file has no tables, indexes or triggers yet."""
    return int(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]) == 0


def migrate(
    conn: sqlite3.Connection,
    migrations: Sequence[Migration],
    *,
    what: str,
    clock: Callable[[], float] = time.time,
) -> tuple[int, ...]:
    """Bring a database up to the newest schema version.

    Safe to call on every open and from several processes at once: each step runs
    in its own ``BEGIN IMMEDIATE`` transaction that re-reads the version first, so a
    step another process applied meanwhile is skipped. A file left at the previous
    version by a failed step is retried on the next open.

    Args:
        conn: A connection in autocommit mode with no transaction open.
        migrations: The steps; ``migrations[i].version == i + 1``.
        what: Names the database in errors (``"gallery /x/gallery.db"``).
        clock: Time source for ``schema_migrations.applied_at``.

    Returns:
        The versions applied by this call (empty when the file was current).

    Raises:
        ValueError: The migration numbers are not 1, 2, 3, ….
        MigrationError: The file's schema is newer than the newest step, or a step
            failed (the file then stays at the last version that committed).
    """
    _check_sequence(migrations)
    target = len(migrations)
    current = schema_version(conn)
    if current > target:
        raise MigrationError(
            f"{what} has schema version {current}, newer than this firmware supports "
            f"({target})"
        )
    applied: list[int] = []
    db = Database(conn, execute_plugins=False, recursive_triggers=False)
    for migration in migrations[current:]:
        try:
            with atomic(conn):
                if schema_version(conn) >= migration.version:  # another process won
                    continue
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
                )
                migration.apply(db)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, clock()),
                )
                conn.execute(f"PRAGMA user_version = {int(migration.version)}")
        except sqlite3.Error as exc:
            raise MigrationError(
                f"{what}: migration {migration.version} ({migration.name}) failed: {exc}"
            ) from exc
        logger.info("%s: schema migrated to version %d (%s)", what, migration.version,
                    migration.name)
        applied.append(migration.version)
    return tuple(applied)


# ----------------------------------------------------------------------- errors


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLite's ``SQLITE_FULL`` (and the OS's ENOSPC)."""
    if isinstance(exc, sqlite3.Error):
        code: int | None = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return (int(code) & 0xFF) == 13  # SQLITE_FULL
        return "database or disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno == 28


def free_space(path: Path) -> int | None:
    """Bytes free for an unprivileged writer on ``path``'s file system; None if unknown."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def _size(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"  # pragma: no cover


def describe_error(path: Path, exc: BaseException) -> str:
    """The error text, plus "the disk is full (N free)" when that is the cause."""
    if not is_disk_full(exc):
        return str(exc)
    free = free_space(path)
    where = f"the disk holding {Path(path).parent} is full"
    left = "" if free is None else f" ({_size(free)} free)"
    return f"{exc}: {where}{left}; free some space and retry"


__all__ = [
    "PRIVATE_FILE_MODE",
    "SIDE_FILES",
    "Migration",
    "MigrationError",
    "StorageError",
    "atomic",
    "connect",
    "connect_readonly",
    "create_private",
    "describe_error",
    "enable_wal",
    "free_space",
    "is_blank",
    "is_disk_full",
    "make_private",
    "migrate",
    "rollback_quietly",
    "schema_version",
    "snapshot",
]
