"""The audit log on disk: an append-only, hash-chained SQLite file of its own.

Storage choices:

* **Its own file**, so it can be backed up, exported and verified without the
  gallery or outbox, and so a bug there cannot touch it.
* **WAL with** ``synchronous=FULL``: every append is one transaction and is on
  stable storage when :meth:`AuditLog.append` returns. WAL with ``NORMAL`` may lose
  the last commits on power loss; for this log that is worse than slow, because the
  head may already have been published and a unit that comes back *behind* its
  published head looks exactly like a unit whose log was truncated. Appends are
  rare (a match decision every few seconds at most), so one fsync each is cheap
  even on an SD card.
* ``secure_delete=ON``: match decisions name people; pruned records are
  overwritten, not left in free pages.
* **One transaction per append** (``BEGIN IMMEDIATE``) that reads the current head,
  inserts the record and updates the stored head in ``meta``. SQLite serialises
  writers, so even two processes appending produce one valid chain; within a
  process a lock serialises threads sharing the connection.
* **Triggers** refuse ``UPDATE`` and ``DELETE`` on records (except pruning, below).
  They stop accidents, not attackers: anyone who can write the file can drop
  them. The hash chain is what catches tampering.

Pruning (:meth:`AuditLog.prune`) deletes the oldest records in one transaction and
appends a ``retention_purge`` checkpoint (``target: "audit"``) carrying the hash of
the last pruned record. The checkpoint is itself chained, so verification starts at
the oldest kept record and checks its ``prev_hash`` against a value the chain vouches
for. The log refuses to prune a chain that does not verify: pruning would destroy
the evidence.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Annotated, Final, Literal

from pydantic import Field
from sqlite_utils import Database

from device import storage
from device.audit.chain import (
    CHECKPOINT_TARGET,
    Anchor,
    ExpectedHead,
    Row,
    VerifyResult,
    newest_anchor,
    walk,
)
from device.audit.record import (
    GENESIS_HASH,
    AuditKind,
    AuditRecord,
    check_actor,
    check_payload,
    format_ts,
    record_hash,
)
from device.config import Section
from device.errors import AuditError
from device.paths import default_state_dir
from device.privacy import clip

logger = logging.getLogger(__name__)

FORMAT: Final = "facegate-audit/1"
AUDIT_FILENAME: Final = "audit.db"
BUSY_TIMEOUT_MS: Final = 10_000

_COLUMNS: Final = "seq, ts, kind, actor, payload, prev_hash, hash"

_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT",
    """CREATE TABLE records (
        seq INTEGER PRIMARY KEY CHECK (seq > 0),
        ts TEXT NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        payload TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    ) STRICT""",
    "CREATE INDEX records_ts ON records (ts)",
    """CREATE TRIGGER records_append_only_update BEFORE UPDATE ON records
    BEGIN
        SELECT RAISE(ABORT, 'audit records are append-only');
    END""",
    """CREATE TRIGGER records_append_only_delete BEFORE DELETE ON records
    WHEN OLD.seq > COALESCE(
        (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'pruned_through'), 0)
    BEGIN
        SELECT RAISE(ABORT, 'audit records are append-only (only pruning deletes)');
    END""",
)

#: A payload field as an index expression; NULL for a payload that is not JSON (a
#: damaged record must stay readable, so verification can name it).
_FIELD_SQL: Final = "(CASE WHEN json_valid(payload) THEN json_extract(payload, '$.{}') END)"
_EVENT_SQL: Final = _FIELD_SQL.format("event_id")
_NONCE_SQL: Final = _FIELD_SQL.format("nonce")

#: Indexes of the facts looked up by id: a match decision or review by its event id,
#: a review by its nonce. Indexes are not part of the chain; verification ignores them.
_LOOKUP_INDEXES: Final = (
    f"CREATE INDEX records_event ON records (kind, {_EVENT_SQL})",
    f"CREATE INDEX records_nonce ON records ({_NONCE_SQL}) WHERE kind = 'review'",
)

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def default_audit_path() -> Path:
    """``audit.db`` in :func:`device.paths.default_state_dir`."""
    return default_state_dir() / AUDIT_FILENAME


class AuditConfig(Section):
    """The ``[audit]`` section of the unit's configuration."""

    path: Path | None = Field(
        None, description="Audit log file; default: audit.db in the state directory "
        "($STATE_DIRECTORY, else $XDG_STATE_HOME/facegate)."
    )
    retention_days: Annotated[int, Field(ge=1)] = Field(
        365, description="Records older than this many days may be pruned; pruning leaves a "
        "checkpoint so the rest still verifies."
    )
    head_interval_s: Annotated[float, Field(gt=0)] = Field(
        300.0, description="Seconds between retained publications of the chain head on "
        "facegate/<unit>/audit/head."
    )

    def resolved_path(self) -> Path:
        """The configured path, or the default one."""
        return self.path if self.path is not None else default_audit_path()


@dataclass(frozen=True)
class AuditHead:
    """The newest record of a log.

    Attributes:
        seq: Its ``seq`` (0 for an empty log).
        hash: Its hash (:data:`GENESIS_HASH` for an empty log).
        log_id: The log's id.
    """

    seq: int
    hash: str
    log_id: str

    def message(self, unit: str, at: datetime) -> dict[str, object]:
        """The retained MQTT payload for ``facegate/<unit>/audit/head``.

        ``log_id`` is included beside the requested fields so an observer notices a
        log that was replaced wholesale (its ``seq`` also restarts).
        """
        return {"unit": unit, "log_id": self.log_id, "seq": self.seq, "hash": self.hash,
                "at": format_ts(at)}


@dataclass(frozen=True)
class PruneResult:
    """What :meth:`AuditLog.prune` removed.

    Attributes:
        pruned_from: The first removed ``seq``.
        pruned_through: The last removed ``seq``.
        last_pruned_hash: Its hash, attested by the checkpoint.
        checkpoint: The checkpoint record appended.
    """

    pruned_from: int
    pruned_through: int
    last_pruned_hash: str
    checkpoint: AuditRecord

    @property
    def count(self) -> int:
        """How many records were removed."""
        return self.pruned_through - self.pruned_from + 1


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = storage.connect_readonly(path, busy_timeout_s=BUSY_TIMEOUT_MS / 1000)
    else:
        conn = storage.connect(path, mode="rwc", busy_timeout_s=BUSY_TIMEOUT_MS / 1000,
                               wal=False)
    # Damaged text must reach the hash check as the bytes it is, not crash the fetch.
    conn.text_factory = lambda data: data.decode("utf-8", "surrogateescape")
    return conn


def _read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}


def _stored_head(meta: Mapping[str, str]) -> tuple[int, str] | None:
    try:
        return int(meta["head_seq"]), meta["head_hash"]
    except (KeyError, ValueError):
        return None


def _is_audit_db(conn: sqlite3.Connection) -> bool:
    names = {
        str(row[0]) for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    return "records" in names


def _anchor(conn: sqlite3.Connection) -> Anchor | None:
    rows = conn.execute(
        "SELECT seq, kind, payload FROM records WHERE kind = ? ORDER BY seq",
        (AuditKind.RETENTION_PURGE.value,),
    )
    return newest_anchor((int(seq), kind, payload) for seq, kind, payload in rows)


def _verify_conn(
    conn: sqlite3.Connection, expect: Sequence[ExpectedHead], *, where: str
) -> VerifyResult:
    """Verify the chain in ``conn`` inside the caller's transaction.

    Raises:
        AuditError: Not an audit log; or an expected head cannot be checked.
    """
    if not _is_audit_db(conn):
        raise AuditError(f"{where} is not a facegate audit log (no records table)")
    try:
        meta = _read_meta(conn)
    except sqlite3.DatabaseError as exc:
        return _damaged(f"{where}: the meta table is missing or unreadable ({exc})")
    log_id = meta.get("log_id")
    if not log_id:
        return _damaged(f"{where}: the log id is missing from meta (meta table edited)")

    def find_earlier(hash_: str, below: int) -> int | None:
        row = conn.execute(
            "SELECT seq FROM records WHERE hash = ? AND seq < ? ORDER BY seq DESC LIMIT 1",
            (hash_, below),
        ).fetchone()
        return int(row[0]) if row else None

    try:
        rows: Iterator[Row] = conn.execute(f"SELECT {_COLUMNS} FROM records ORDER BY seq")
        return walk(
            rows, log_id=log_id, anchor=_anchor(conn), stored_head=_stored_head(meta),
            check_stored=True, expect=expect, find_earlier=find_earlier,
        )
    except sqlite3.DatabaseError as exc:
        return _damaged(f"{where}: the database file is damaged ({exc})", log_id=log_id)


def _damaged(reason: str, log_id: str | None = None) -> VerifyResult:
    logger.info("audit log failed verification: %s", reason)
    return VerifyResult(
        ok=False, records=0, head_seq=0, head_hash=GENESIS_HASH, first_bad_seq=None,
        reason=reason, log_id=log_id,
    )


def _open_existing(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise AuditError(f"audit log {path} does not exist (check --db or the [audit] path)")
    try:
        return _connect(path, readonly=True)
    except sqlite3.Error as exc:
        raise AuditError(f"cannot open audit log {path}: {exc}") from exc


def verify(path: Path, expect: Sequence[ExpectedHead] = ()) -> VerifyResult:
    """Verify the audit log at ``path`` (read-only; safe while the service writes).

    Args:
        path: The SQLite audit log.
        expect: Heads seen outside the unit (the retained MQTT head); each must be a
            record of this chain.

    Returns:
        The result; when not ``ok``, ``first_bad_seq`` and ``reason`` name the first
        bad record.

    Raises:
        AuditError: The file does not exist, is not an audit log, or an expected
            head is older than every record kept and so cannot be checked.
    """
    conn = _open_existing(path)
    try:
        with storage.snapshot(conn):  # one snapshot, even while the service appends
            return _verify_conn(conn, expect, where=str(path))
    except sqlite3.DatabaseError as exc:
        return _damaged(f"{path} is not a readable SQLite database ({exc})")
    finally:
        conn.close()


def read_records(
    path: Path, *, since: datetime | None = None, last: int | None = None
) -> tuple[str, list[AuditRecord]]:
    """Read records for export or display, oldest first.

    Args:
        path: The SQLite audit log.
        since: Start at the first record written at or after this time and include
            everything after it, so the selection is a contiguous piece of the chain
            even if the unit's clock once stepped backwards.
        last: Only the newest ``last`` records.

    Returns:
        ``(log_id, records)``.

    Raises:
        AuditError: The file does not exist or is not an audit log.
    """
    conn = _open_existing(path)
    try:
        with storage.snapshot(conn):
            if not _is_audit_db(conn):
                raise AuditError(f"{path} is not a facegate audit log (no records table)")
            log_id = _read_meta(conn).get("log_id", "")
            if since is not None:
                row = conn.execute(
                    "SELECT MIN(seq) FROM records WHERE ts >= ?", (format_ts(since),)
                ).fetchone()
                start = int(row[0]) if row and row[0] is not None else None
                if start is None:
                    return log_id, []
                cursor = conn.execute(
                    f"SELECT {_COLUMNS} FROM records WHERE seq >= ? ORDER BY seq", (start,)
                )
            elif last is not None:
                cursor = conn.execute(
                    f"SELECT * FROM (SELECT {_COLUMNS} FROM records ORDER BY seq DESC LIMIT ?) "
                    "ORDER BY seq",
                    (max(last, 0),),
                )
            else:
                cursor = conn.execute(f"SELECT {_COLUMNS} FROM records ORDER BY seq")
            records = [AuditRecord(*row) for row in cursor]
            return log_id, records
    except sqlite3.DatabaseError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc}") from exc
    finally:
        conn.close()


def read_head(path: Path) -> AuditHead:
    """The newest record of the log at ``path`` (read-only).

    Raises:
        AuditError: The file does not exist or is not an audit log.
    """
    conn = _open_existing(path)
    try:
        if not _is_audit_db(conn):
            raise AuditError(f"{path} is not a facegate audit log (no records table)")
        return _head(conn)
    except sqlite3.DatabaseError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc}") from exc
    finally:
        conn.close()


def head_message(path: Path, unit: str, *, at: datetime | None = None) -> dict[str, object]:
    """``{"unit", "log_id", "seq", "hash", "at"}`` for the retained head topic.

    Args:
        path: The SQLite audit log.
        unit: The unit id (``facegate/<unit>/audit/head``).
        at: When the head was read; now by default.

    Raises:
        AuditError: The file does not exist or is not an audit log.
    """
    return read_head(path).message(unit, at or _utcnow())


def _head(conn: sqlite3.Connection) -> AuditHead:
    meta = _read_meta(conn)
    row = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    seq, hash_ = (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)
    return AuditHead(seq=seq, hash=hash_, log_id=meta.get("log_id", ""))


class AuditLog:
    """The writer of one audit log file. A context manager; :meth:`close` is idempotent.

    Thread-safe: appends from several threads are serialised on one connection.

    Args:
        path: The SQLite file; created (mode 0600, parents created) if absent.
        clock: Returns the current time (timezone-aware); injectable for tests.

    Raises:
        AuditError: The file exists but is not an audit log, or cannot be opened.
    """

    def __init__(self, path: Path, *, clock: Clock = _utcnow) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = self._open()
            self.log_id = self._ensure_schema()
        except sqlite3.Error as exc:
            self.close()
            raise AuditError(f"cannot open audit log {self.path}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        logger.info("audit log %s open (log id %s)", self.path, self.log_id)

    def _open(self) -> sqlite3.Connection:
        # Match decisions name people: owner-only from the first byte (storage creates
        # the file 0600 whatever the umask; SQLite gives -wal and -shm the same mode).
        conn = _connect(self.path, readonly=False)
        try:
            storage.enable_wal(conn, self.path)
        except storage.StorageError as exc:
            conn.close()
            raise AuditError(f"audit log {self.path}: cannot use WAL ({exc})") from exc
        return conn

    def _ensure_schema(self) -> str:
        conn = self._require()
        if storage.schema_version(conn) == 0 and not storage.is_blank(conn) \
                and not _is_audit_db(conn):
            raise AuditError(f"{self.path} is a database, but not a facegate audit log")
        created: list[str] = []

        def create(db: Database) -> None:
            if _is_audit_db(conn):  # written before the log kept schema_migrations
                return
            for statement in _SCHEMA:
                db.execute(statement)
            log_id = secrets.token_hex(16)
            db.conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("format", FORMAT), ("log_id", log_id),
                 ("created_at", format_ts(self._clock())), ("head_seq", "0"),
                 ("head_hash", GENESIS_HASH), ("pruned_through", "0")],
            )
            created.append(log_id)

        def index(db: Database) -> None:
            for statement in _LOOKUP_INDEXES:
                db.execute(statement)

        migrations = (storage.Migration(1, "create meta and records", create),
                      storage.Migration(2, "index event ids and review nonces", index))
        try:
            storage.migrate(conn, migrations, what=f"audit log {self.path}")
        except storage.MigrationError as exc:
            raise AuditError(str(exc)) from exc
        if created:
            logger.info("created audit log %s", self.path)
        with storage.snapshot(conn):
            meta = _read_meta(conn)
        if meta.get("format") != FORMAT or not meta.get("log_id"):
            raise AuditError(
                f"audit log {self.path} has format {meta.get('format')!r}, expected {FORMAT!r}"
            )
        return meta["log_id"]

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise AuditError(f"audit log {self.path} is closed")
        return self._conn

    # --- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the file. Safe to call more than once."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            logger.debug("audit log %s closed", self.path)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- writing -----------------------------------------------------------------------

    def append(self, kind: AuditKind, payload: Mapping[str, object], *, actor: str) -> AuditRecord:
        """Append one record and make it durable before returning.

        Args:
            kind: What happened.
            payload: Facts about it: ids, versions, scores. Never biometric data.
            actor: Who or what caused it.

        Returns:
            The stored record.

        Raises:
            AuditError: The payload holds (or looks like) biometric data or is not
                plain JSON; the actor is unusable; a ``retention_purge`` claims to
                prune the audit log itself (only :meth:`prune` writes those); the log
                is closed or the write failed.
        """
        kind = AuditKind(kind)
        text = check_payload(payload)
        if kind is AuditKind.RETENTION_PURGE and payload.get("target") == CHECKPOINT_TARGET:
            raise AuditError("retention_purge with target 'audit' is written only by prune()")
        return self._append(kind, text, actor)

    def _append(self, kind: AuditKind, payload_text: str, actor: str) -> AuditRecord:
        check_actor(actor)
        with self._lock:
            conn = self._require()
            try:
                with storage.atomic(conn):
                    record = self._insert(conn, kind, payload_text, actor)
            except sqlite3.Error as exc:
                raise AuditError(f"audit log {self.path}: append failed: "
                                 f"{storage.describe_error(self.path, exc)}") from exc
        logger.debug("audit %d %s by %s", record.seq, record.kind, actor)
        return record

    def _insert(
        self,
        conn: sqlite3.Connection,
        kind: AuditKind,
        payload_text: str,
        actor: str,
        prev: AuditHead | None = None,
    ) -> AuditRecord:
        """Insert the next record and move the stored head; the caller holds a transaction.

        Args:
            conn: The connection, inside ``BEGIN IMMEDIATE``.
            kind: The record's kind.
            payload_text: Checked canonical payload.
            actor: Checked actor.
            prev: The record to chain onto; the newest stored record by default.

        Raises:
            AuditError: The log is empty although it was pruned (all records deleted):
                restarting the chain at the genesis would hide that.
        """
        head = prev if prev is not None else _head(conn)
        if head.seq == 0 and int(_read_meta(conn).get("pruned_through", "0")):
            raise AuditError(
                f"audit log {self.path} has no records although it was pruned; refusing to "
                "restart the chain (run facegate audit verify)"
            )
        seq = head.seq + 1
        ts = format_ts(self._clock())
        digest = record_hash(self.log_id, seq, ts, kind.value, actor, payload_text, head.hash)
        conn.execute(
            f"INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, ts, kind.value, actor, payload_text, head.hash, digest),
        )
        conn.executemany(
            "UPDATE meta SET value = ? WHERE key = ?",
            [(str(seq), "head_seq"), (digest, "head_hash")],
        )
        return AuditRecord(seq, ts, kind.value, actor, payload_text, head.hash, digest)

    # --- typed helpers, one per kind ---------------------------------------------------

    def record_service_start(
        self, version: str, *, config_sha256: str | None = None, actor: str = "service"
    ) -> AuditRecord:
        """The service started (software version, digest of the config it loaded)."""
        return self.append(
            AuditKind.SERVICE_START, {"version": version, "config_sha256": config_sha256},
            actor=actor,
        )

    def record_service_stop(self, reason: str, *, actor: str = "service") -> AuditRecord:
        """The service is stopping (``signal``, ``error: …``, ``shutdown``; shortened like
        :meth:`record_sync_refused`)."""
        return self.append(AuditKind.SERVICE_STOP, {"reason": clip(reason)}, actor=actor)

    def record_config_change(
        self, setting: str, old: object, new: object, *, actor: str
    ) -> AuditRecord:
        """One configuration setting changed (dotted path, old and new value)."""
        return self.append(
            AuditKind.CONFIG_CHANGE, {"setting": setting, "old": old, "new": new}, actor=actor
        )

    def record_threshold_change(
        self,
        old: float | None,
        new: float,
        *,
        scope: str = "global",
        reason: str = "",
        target_fmr: float | None = None,
        actor: str,
    ) -> AuditRecord:
        """The match threshold changed (for ``scope``: ``global`` or a camera id)."""
        return self.append(
            AuditKind.THRESHOLD_CHANGE,
            {"scope": scope, "old": None if old is None else float(old), "new": float(new),
             "target_fmr": None if target_fmr is None else float(target_fmr),
             "reason": reason},
            actor=actor,
        )

    def record_enroll(
        self, identity_id: str, *, gallery_version: int | str, samples: int, actor: str
    ) -> AuditRecord:
        """An identity was enrolled (how many samples; never the samples themselves)."""
        return self.append(
            AuditKind.ENROLL,
            {"identity_id": identity_id, "gallery_version": gallery_version,
             "samples": int(samples)},
            actor=actor,
        )

    def record_delete(
        self,
        identity_id: str,
        *,
        gallery_version: int | str,
        reason: str,
        samples_removed: int,
        actor: str,
        details: Mapping[str, object] | None = None,
    ) -> AuditRecord:
        """An identity was deleted. The log keeps the fact, never the biometric data.

        The identity is named by its id only, never by its label: after an erasure
        the label must be in no file on the unit, and this log is never erased.

        Args:
            identity_id: The deleted identity.
            gallery_version: The gallery's version after the deletion.
            reason: Why (``cli``, ``expired``, …).
            samples_removed: How many faces went with it.
            actor: Who deleted it.
            details: More facts (``erase``, ``outbox_erased``, ``expires_at``); they
                must not repeat the keys above.

        Raises:
            AuditError: As :meth:`append`; or ``details`` overrides a key above.
        """
        payload: dict[str, object] = {
            "identity_id": identity_id, "gallery_version": gallery_version, "reason": reason,
            "samples_removed": int(samples_removed),
        }
        if details:
            clash = sorted(set(details) & set(payload))
            if clash:
                raise AuditError(f"delete record details repeat {', '.join(clash)}")
            payload.update(details)
        return self.append(AuditKind.DELETE, payload, actor=actor)

    def record_sync_applied(
        self,
        *,
        from_version: int | str | None,
        to_version: int | str,
        bundle_sha256: str,
        identities: int,
        actor: str = "sync",
    ) -> AuditRecord:
        """A gallery bundle was verified and swapped in."""
        return self.append(
            AuditKind.SYNC_APPLIED,
            {"from_version": from_version, "to_version": to_version,
             "bundle_sha256": bundle_sha256, "identities": int(identities)},
            actor=actor,
        )

    def record_sync_refused(
        self,
        *,
        to_version: int | str | None,
        bundle_sha256: str | None,
        reason: str,
        actor: str = "sync",
    ) -> AuditRecord:
        """A gallery bundle was refused (bad signature, old version, …) and why.

        A long ``reason`` is shortened to the privacy policy's longest string, so the
        refusal is recorded whatever its wording.
        """
        return self.append(
            AuditKind.SYNC_REFUSED,
            {"to_version": to_version, "bundle_sha256": bundle_sha256, "reason": clip(reason)},
            actor=actor,
        )

    def record_match(
        self,
        event_id: str,
        identity_id: str | None,
        similarity: float,
        threshold: float,
        gallery_version: int | str,
        camera: str,
        *,
        decision: Literal["match", "review", "reject"] = "match",
        actor: str = "pipeline",
    ) -> AuditRecord:
        """A match decision: which event, whom, how similar, against which threshold
        and gallery version, on which camera."""
        return self.append(
            AuditKind.MATCH_DECISION,
            {"event_id": event_id, "identity_id": identity_id, "similarity": float(similarity),
             "threshold": float(threshold), "gallery_version": gallery_version,
             "camera": camera, "decision": decision},
            actor=actor,
        )

    def record_retention_purge(
        self, target: str, *, cutoff: datetime, count: int, actor: str = "retention"
    ) -> AuditRecord:
        """Other data (events, outbox, …) older than ``cutoff`` was purged.

        Raises:
            AuditError: ``target`` is ``audit`` (use :meth:`prune`).
        """
        if target == CHECKPOINT_TARGET:
            raise AuditError("the audit log prunes itself with prune(), not a purge record")
        return self.append(
            AuditKind.RETENTION_PURGE,
            {"target": target, "cutoff": format_ts(cutoff), "count": int(count)},
            actor=actor,
        )

    def record_review(
        self, event_id: str, *, verdict: str, reviewer: str, nonce: str, issued_at: str,
        actor: str = "review",
    ) -> AuditRecord:
        """A reviewer's signed verdict on a match event was verified and accepted.

        The record names the event, the verdict and the reviewer's key id; never the
        identity's label or the reviewer's note.
        """
        return self.append(
            AuditKind.REVIEW,
            {"event_id": event_id, "verdict": verdict, "reviewer": reviewer, "nonce": nonce,
             "issued_at": issued_at},
            actor=actor,
        )

    def record_review_refused(
        self, *, reason: str, message: str, event_id: str | None, reviewer: str | None,
        nonce: str | None, actor: str = "review",
    ) -> AuditRecord:
        """A review verdict was refused (``reason`` is its code; ids when readable)."""
        return self.append(
            AuditKind.REVIEW_REFUSED,
            {"reason": reason, "message": clip(message), "event_id": event_id,
             "reviewer": reviewer, "nonce": nonce},
            actor=actor,
        )

    # --- reading -----------------------------------------------------------------------

    def find_by_event(self, kind: AuditKind, event_id: str) -> list[AuditRecord]:
        """The records of ``kind`` about ``event_id``, oldest first (an index lookup).

        Raises:
            AuditError: The log is closed or cannot be read.
        """
        return self._select(
            f"SELECT {_COLUMNS} FROM records WHERE kind = ? AND {_EVENT_SQL} = ? ORDER BY seq",
            (AuditKind(kind).value, event_id),
        )

    def find_review_nonce(self, nonce: str) -> list[AuditRecord]:
        """The ``review`` records carrying ``nonce`` (an index lookup).

        Raises:
            AuditError: The log is closed or cannot be read.
        """
        return self._select(
            f"SELECT {_COLUMNS} FROM records WHERE kind = 'review' AND {_NONCE_SQL} = ? "
            "ORDER BY seq",
            (nonce,),
        )

    def _select(self, sql: str, params: tuple[object, ...]) -> list[AuditRecord]:
        with self._lock:
            conn = self._require()
            try:
                return [AuditRecord(*row) for row in conn.execute(sql, params)]
            except sqlite3.Error as exc:
                raise AuditError(f"cannot read audit log {self.path}: "
                                 f"{storage.describe_error(self.path, exc)}") from exc

    def head(self) -> AuditHead:
        """The newest record.

        Raises:
            AuditError: The log is closed.
        """
        with self._lock:
            return _head(self._require())

    def head_message(self, unit: str) -> dict[str, object]:
        """The retained MQTT payload for ``facegate/<unit>/audit/head``, stamped now.

        Raises:
            AuditError: The log is closed.
        """
        return self.head().message(unit, self._clock())

    def verify(self, expect: Sequence[ExpectedHead] = ()) -> VerifyResult:
        """Verify this log through the writer's connection (see :func:`verify`).

        Raises:
            AuditError: The log is closed, or an expected head cannot be checked.
        """
        with self._lock, storage.snapshot(self._require()) as conn:
            return _verify_conn(conn, expect, where=str(self.path))

    # --- retention ---------------------------------------------------------------------

    def prune(self, older_than: datetime, *, actor: str = "retention") -> PruneResult | None:
        """Delete the oldest records written before ``older_than``, leaving a checkpoint.

        Removes the longest run of records from the oldest onwards whose timestamps are
        all before ``older_than`` (a record stamped later, even if followed by earlier
        stamps after a clock step, ends the run). In the same transaction it appends a
        ``retention_purge`` record with ``target: "audit"``, the range and the hash of
        the last removed record, which verification uses as the new starting point.

        Args:
            older_than: The cutoff (timezone-aware).
            actor: Who asked.

        Returns:
            What was removed, or ``None`` if nothing was old enough.

        Raises:
            AuditError: The chain does not verify (pruning would destroy evidence),
                the log is closed or the write failed.
        """
        check_actor(actor)
        cutoff = format_ts(older_than)
        with self._lock:
            conn = self._require()
            try:
                with storage.atomic(conn):
                    result = self._prune_locked(conn, cutoff, actor)
            except sqlite3.Error as exc:
                raise AuditError(f"audit log {self.path}: prune failed: "
                                 f"{storage.describe_error(self.path, exc)}") from exc
        if result is not None:
            logger.info(
                "audit log pruned records %d..%d (before %s); checkpoint is record %d",
                result.pruned_from, result.pruned_through, cutoff, result.checkpoint.seq,
            )
        return result

    def prune_expired(self, config: AuditConfig, *, actor: str = "retention") -> PruneResult | None:
        """:meth:`prune` with the configured retention window, measured from now.

        Raises:
            AuditError: As :meth:`prune`.
        """
        return self.prune(self._clock() - timedelta(days=config.retention_days), actor=actor)

    def _prune_locked(
        self, conn: sqlite3.Connection, cutoff: str, actor: str
    ) -> PruneResult | None:
        check = _verify_conn(conn, (), where=str(self.path))
        if not check.ok:
            raise AuditError(f"refusing to prune an audit log that fails verification: "
                             f"{check.reason}")
        first_row = conn.execute("SELECT MIN(seq) FROM records").fetchone()
        if first_row is None or first_row[0] is None:
            return None
        first = int(first_row[0])
        head = _head(conn)
        # The first record stamped at/after the cutoff ends the prunable run.
        stop_row = conn.execute("SELECT MIN(seq) FROM records WHERE ts >= ?", (cutoff,)).fetchone()
        last = int(stop_row[0]) - 1 if stop_row[0] is not None else head.seq
        if last < first:
            return None
        last_hash = str(
            conn.execute("SELECT hash FROM records WHERE seq = ?", (last,)).fetchone()[0]
        )
        conn.execute("UPDATE meta SET value = ? WHERE key = 'pruned_through'", (str(last),))
        conn.execute("DELETE FROM records WHERE seq <= ?", (last,))
        payload = check_payload({
            "target": CHECKPOINT_TARGET, "cutoff": cutoff, "pruned_from_seq": first,
            "pruned_through_seq": last, "last_pruned_hash": last_hash,
            "count": last - first + 1,
        })
        checkpoint = self._insert(conn, AuditKind.RETENTION_PURGE, payload, actor, prev=head)
        return PruneResult(first, last, last_hash, checkpoint)
