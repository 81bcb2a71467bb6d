"""Durable outbox: an event is on disk before anyone tries to send it.

The decision stage calls :meth:`Outbox.put`, which returns only after the row is
committed (WAL, ``synchronous=FULL``), so a crash or power cut after ``put`` cannot
lose the event. The publisher reads :meth:`Outbox.pending` in insertion order and
deletes a row with :meth:`Outbox.ack` only once the broker has acknowledged it.

The outbox is bounded: when it holds ``max_rows`` rows, the oldest is dropped to make
room and a persistent counter (table ``meta``) records it, so health can report drops
across restarts. ``secure_delete`` is on, and :meth:`Outbox.delete_for_identity`
checkpoints and truncates the WAL so an erased identity's label is gone from both the
database file and its WAL.

One ``Outbox`` object is the single writer of its file; it is safe to share between
threads (a lock serialises access to its one connection).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from sqlite_utils import Database

from device import storage
from device.errors import PublishError

logger = logging.getLogger(__name__)

_V1_STATEMENTS = (
    """
    CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        qos INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
        expiry_s INTEGER CHECK (expiry_s IS NULL OR expiry_s > 0),
        identity_id TEXT,
        event_id TEXT,
        created_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS outbox_identity ON outbox (identity_id) "
    "WHERE identity_id IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0), ('expired', 0), "
    "('purged', 0)",
)


def _v1(db: Database) -> None:
    for statement in _V1_STATEMENTS:
        db.execute(statement)


#: The outbox's schema history; see :func:`device.storage.migrate`.
MIGRATIONS: tuple[storage.Migration, ...] = (
    storage.Migration(1, "create outbox and meta", _v1),
)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One stored message.

    Attributes:
        id: Row id; strictly increasing in insertion order, never reused.
        topic: Full MQTT topic.
        payload: Encoded payload bytes.
        qos: MQTT QoS.
        expiry_s: Message expiry interval from ``created_at``; None for none.
        created_at: Epoch seconds when it was stored.
        identity_id: The identity the message is about, for erasure; None otherwise.
        event_id: The event's UUID, for logs; None otherwise.
    """

    id: int
    topic: str
    payload: bytes
    qos: int
    expiry_s: int | None
    created_at: float
    identity_id: str | None
    event_id: str | None

    def remaining_expiry(self, now: float) -> float | None:
        """Seconds of validity left at ``now`` (may be ≤ 0); None without expiry."""
        if self.expiry_s is None:
            return None
        return self.created_at + self.expiry_s - now


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Counters for health.

    Attributes:
        depth: Rows waiting for an acknowledgement.
        dropped: Rows dropped because the outbox was full (lifetime of the file).
        expired: Rows discarded because their message expiry passed.
        purged: Rows removed by age-based retention.
        oldest_created_at: ``created_at`` of the oldest row; None when empty.
    """

    depth: int
    dropped: int
    expired: int
    purged: int
    oldest_created_at: float | None


class Outbox:
    """A bounded, durable FIFO of MQTT messages in its own SQLite file.

    Args:
        path: Database file; created (mode 0600) with its parent directory if missing.
        max_rows: Capacity; the oldest rows are dropped, and counted, beyond it.
        clock: Wall clock (epoch seconds), replaceable for tests of retention.

    Raises:
        PublishError: The file cannot be opened, is not an outbox, or was written by
            a newer version.
    """

    def __init__(
        self, path: Path, max_rows: int = 10_000, *, clock: Callable[[], float] = time.time
    ) -> None:
        if max_rows < 1:
            raise PublishError(f"outbox max_rows must be at least 1, got {max_rows}")
        self.path = Path(path)
        self.max_rows = max_rows
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            # Owner-only from the first byte (it holds labels); -wal and -shm follow.
            conn = storage.connect(self.path, mode="rwc", busy_timeout_s=10.0,
                                   foreign_keys=True, wal=False)
        except (OSError, sqlite3.OperationalError) as exc:
            raise PublishError(f"cannot open outbox {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise self._unusable(exc) from exc
        try:
            self._configure(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise self._unusable(exc) from exc
        except PublishError:
            conn.close()
            raise
        self._conn = conn

    def _unusable(self, exc: sqlite3.DatabaseError) -> PublishError:
        return PublishError(
            f"outbox {self.path} is not a usable SQLite database ({exc}); "
            "move it aside and restart to create a new one"
        )

    def _configure(self, conn: sqlite3.Connection) -> None:
        try:
            storage.enable_wal(conn, self.path)
        except storage.StorageError as exc:
            raise PublishError(f"outbox {self.path}: cannot enable WAL ({exc})") from exc
        version = storage.schema_version(conn)
        if version > SCHEMA_VERSION:
            raise PublishError(
                f"outbox {self.path} has schema version {version}, newer than this "
                f"facegate ({SCHEMA_VERSION}); upgrade facegate or move the file aside"
            )
        storage.migrate(conn, MIGRATIONS, what=f"outbox {self.path}", clock=self._clock)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and an IMMEDIATE transaction; commit on success.

        A failed write keeps its own error: the rollback runs only while SQLite
        still holds the transaction (after ``SQLITE_FULL`` it does not).
        """
        with self._lock, storage.atomic(self._connection()) as conn:
            yield conn

    def _failed(self, exc: sqlite3.Error) -> PublishError:
        return PublishError(
            f"cannot write to outbox {self.path}: {storage.describe_error(self.path, exc)}"
        )

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise PublishError(f"outbox {self.path} is closed")
        return self._conn

    def put(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        expiry_s: int | None = None,
        identity_id: str | None = None,
        event_id: str | None = None,
    ) -> int:
        """Store a message; returns its row id once the transaction is committed.

        When the outbox is full the oldest rows are dropped (and counted) first.

        Raises:
            PublishError: The outbox is closed or the write failed (disk full, I/O).
        """
        if expiry_s is not None and expiry_s <= 0:
            raise PublishError(f"message expiry must be positive, got {expiry_s}")
        try:
            with self._transaction() as conn:
                depth = int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
                excess = depth + 1 - self.max_rows
                if excess > 0:
                    conn.execute(
                        "DELETE FROM outbox WHERE id IN "
                        "(SELECT id FROM outbox ORDER BY id LIMIT ?)",
                        (excess,),
                    )
                    conn.execute(
                        "UPDATE meta SET value = value + ? WHERE key = 'dropped'", (excess,)
                    )
                cursor = conn.execute(
                    "INSERT INTO outbox "
                    "(topic, payload, qos, expiry_s, identity_id, event_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (topic, payload, qos, expiry_s, identity_id, event_id, self._clock()),
                )
                row_id = cursor.lastrowid
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        if excess > 0:
            logger.warning(
                "outbox %s full (%d rows): dropped the %d oldest event(s)",
                self.path,
                self.max_rows,
                excess,
            )
        assert row_id is not None
        return row_id

    def pending(self, limit: int = 100, after_id: int = 0) -> list[OutboxRow]:
        """Up to ``limit`` rows with ``id > after_id``, oldest first.

        Raises:
            PublishError: The outbox is closed or unreadable.
        """
        try:
            with self._lock:
                rows = (
                    self._connection()
                    .execute(
                        "SELECT id, topic, payload, qos, expiry_s, created_at, identity_id, "
                        "event_id FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                        (after_id, limit),
                    )
                    .fetchall()
                )
        except sqlite3.Error as exc:
            raise PublishError(f"cannot read outbox {self.path}: {exc}") from exc
        return [
            OutboxRow(int(r[0]), str(r[1]), bytes(r[2]), int(r[3]), r[4], float(r[5]), r[6], r[7])
            for r in rows
        ]

    def ack(self, *row_ids: int) -> int:
        """Delete acknowledged rows; returns how many existed.

        Raises:
            PublishError: The outbox is closed or the write failed.
        """
        if not row_ids:
            return 0
        try:
            with self._transaction() as conn:
                cursor = conn.executemany(
                    "DELETE FROM outbox WHERE id = ?", [(i,) for i in row_ids]
                )
                return int(cursor.rowcount)
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    def expire(self, *row_ids: int) -> int:
        """Delete rows whose message expiry passed before sending, counting them.

        Raises:
            PublishError: The outbox is closed or the write failed.
        """
        return self._delete_counted(row_ids, "expired")

    def discard(self, *row_ids: int) -> int:
        """Delete rows that can never be sent (counted as dropped).

        Raises:
            PublishError: The outbox is closed or the write failed.
        """
        return self._delete_counted(row_ids, "dropped")

    def _delete_counted(self, row_ids: tuple[int, ...], counter: str) -> int:
        if not row_ids:
            return 0
        try:
            with self._transaction() as conn:
                removed = int(
                    conn.executemany(
                        "DELETE FROM outbox WHERE id = ?", [(i,) for i in row_ids]
                    ).rowcount
                )
                conn.execute("UPDATE meta SET value = value + ? WHERE key = ?", (removed, counter))
                return removed
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    def delete_for_identity(self, identity_id: str) -> int:
        """Erase every pending message about ``identity_id``; returns how many.

        The rows are deleted with ``secure_delete`` on, then the WAL is checkpointed
        and truncated, so the label's bytes are gone from the database file and
        its WAL when this returns.

        Raises:
            PublishError: The write failed, or the WAL could not be truncated (another
                process holds the file open) — the erasure is then incomplete.
        """
        try:
            with self._transaction() as conn:
                removed = int(
                    conn.execute(
                        "DELETE FROM outbox WHERE identity_id = ?", (identity_id,)
                    ).rowcount
                )
            with self._lock:
                busy, _, _ = (
                    self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                )
        except sqlite3.Error as exc:
            raise PublishError(f"erasure in outbox {self.path} failed: {exc}") from exc
        if busy:
            raise PublishError(
                f"erasure in outbox {self.path} incomplete: the WAL could not be truncated "
                "because another connection is reading it; retry when it is closed"
            )
        logger.info("outbox: erased %d pending event(s) of one identity", removed)
        return removed

    def purge_older_than(self, seconds: float) -> int:
        """Delete rows stored more than ``seconds`` ago (retention); returns how many.

        Raises:
            PublishError: The write failed.
        """
        cutoff = self._clock() - seconds
        try:
            with self._transaction() as conn:
                removed = int(
                    conn.execute("DELETE FROM outbox WHERE created_at < ?", (cutoff,)).rowcount
                )
                conn.execute("UPDATE meta SET value = value + ? WHERE key = 'purged'", (removed,))
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        if removed:
            logger.info("outbox: retention removed %d event(s) older than %g s", removed, seconds)
        return removed

    def depth(self) -> int:
        """Rows waiting to be acknowledged.

        Raises:
            PublishError: The outbox is closed or unreadable.
        """
        return self.stats().depth

    def stats(self) -> OutboxStats:
        """Depth, lifetime drop/expiry/purge counters and the oldest row's age.

        Raises:
            PublishError: The outbox is closed or unreadable.
        """
        try:
            with self._lock:
                conn = self._connection()
                depth, oldest = conn.execute(
                    "SELECT COUNT(*), MIN(created_at) FROM outbox"
                ).fetchone()
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            raise PublishError(f"cannot read outbox {self.path}: {exc}") from exc
        return OutboxStats(
            depth=int(depth),
            dropped=int(meta.get("dropped", 0)),
            expired=int(meta.get("expired", 0)),
            purged=int(meta.get("purged", 0)),
            oldest_created_at=None if oldest is None else float(oldest),
        )

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` verdict (``"ok"`` when sound).

        Raises:
            PublishError: The outbox is closed or unreadable.
        """
        try:
            with self._lock:
                rows = self._connection().execute("PRAGMA integrity_check").fetchall()
        except sqlite3.Error as exc:
            raise PublishError(f"cannot read outbox {self.path}: {exc}") from exc
        return "; ".join(str(r[0]) for r in rows)

    @property
    def closed(self) -> bool:
        return self._conn is None

    def close(self) -> None:
        """Checkpoint and close the file; idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            logger.warning("outbox %s: checkpoint at close failed: %s", self.path, exc)
        finally:
            conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
