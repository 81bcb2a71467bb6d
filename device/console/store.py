"""The console's store: one data layer over SQLite (default) and PostgreSQL.

:func:`open_store` connects and migrates (Alembic) to the newest schema. Every write a
unit's message causes is idempotent: events are inserted by their id with
``ON CONFLICT DO NOTHING`` and unit state is upserted, so QoS 1 redelivery, a broker
restart replaying retained state, or a second console replica never count twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from device.console.tables import access_log, acks, events, metadata, units, users, verdicts
from device.errors import ConfigError
from device.storage import PRIVATE_FILE_MODE

logger = logging.getLogger(__name__)

SQLITE_PREFIX: Final = "sqlite:///"


def engine_url(url: str) -> str:
    """``url`` with the driver facegate uses: psycopg 3 for PostgreSQL.

    Raises:
        ConfigError: The URL is neither SQLite nor PostgreSQL.
    """
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith(("postgresql+psycopg://", SQLITE_PREFIX)):
        return url
    raise ConfigError(f"store url {url!r}: use sqlite:///<file> or postgresql://<user>@<host>/<db>")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (a new SQLite file is created with mode 0600).

    Raises:
        ConfigError: The URL is unusable or the SQLite file cannot be created.
    """
    url = engine_url(url)
    if url.startswith(SQLITE_PREFIX):
        path = Path(url[len(SQLITE_PREFIX):])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE_MODE))
        except OSError as exc:
            raise ConfigError(f"cannot create the console store {path}: {exc}") from exc
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def migrate(engine: Engine) -> None:
    """Bring the schema up to the newest Alembic revision (a no-op when it is)."""
    config = AlembicConfig()
    location = resources.files("device.console").joinpath("migrations")
    config.set_main_option("script_location", str(location))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def _standing_verdicts(*columns: Any) -> sa.Select[Any]:
    """Verdicts the unit has not refused: recorded, or not acknowledged yet (an offline
    unit gets it when it returns). A refused one (an untrusted key, say) leaves the
    event in the queue and is not counted as a judgement."""
    return (sa.select(*columns).select_from(verdicts)
            .outerjoin(acks, acks.c.nonce == verdicts.c.nonce)
            .where(sa.or_(acks.c.outcome.is_(None), acks.c.outcome != "refused")))


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What the events page asks for; None means any."""

    unit: str | None = None
    camera: str | None = None
    identity_id: str | None = None
    since: float | None = None
    until: float | None = None
    kind: str | None = None
    after_seq: int | None = None
    limit: int = 200


@dataclass(frozen=True, slots=True)
class User:
    """An operator account."""

    username: str
    role: str
    password_hash: str
    key_id: str | None
    key_path: str | None
    failed_logins: int
    locked_until: float | None


class Store:
    """The console's data layer; safe to share between threads.

    Args:
        engine: From :func:`make_engine`; the schema must be migrated.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as connection:
            yield connection

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert(table) if self.dialect == "postgresql"
                else sqlite.insert(table))

    # ------------------------------------------------------------------ events

    def add_event(self, row: Mapping[str, Any]) -> bool:
        """Insert one event; False when its ``event_id`` is stored already."""
        statement = self._insert(events).values(**row).on_conflict_do_nothing(
            index_elements=["event_id"]).returning(events.c.seq)
        with self._tx() as tx:
            return tx.execute(statement).first() is not None

    def events(self, query: EventFilter) -> list[dict[str, Any]]:
        """Events matching ``query``, newest first (oldest first with ``after_seq``)."""
        statement = sa.select(events)
        for column, value in ((events.c.unit, query.unit), (events.c.camera, query.camera),
                              (events.c.identity_id, query.identity_id),
                              (events.c.kind, query.kind)):
            if value:
                statement = statement.where(column == value)
        if query.since is not None:
            statement = statement.where(events.c.occurred_at >= query.since)
        if query.until is not None:
            statement = statement.where(events.c.occurred_at <= query.until)
        if query.after_seq is not None:
            statement = statement.where(events.c.seq > query.after_seq).order_by(events.c.seq)
        else:
            statement = statement.order_by(events.c.occurred_at.desc(), events.c.seq.desc())
        with self.engine.connect() as connection:
            rows = connection.execute(statement.limit(query.limit)).mappings().all()
        return [dict(r) for r in rows]

    def event(self, event_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(events).where(events.c.event_id == event_id)).mappings().first()
        return None if row is None else dict(row)

    def count_events(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(events))
                       .scalar_one())

    def last_event_times(self) -> dict[str, float]:
        """The newest event time of each unit."""
        statement = sa.select(events.c.unit, sa.func.max(events.c.occurred_at)).group_by(
            events.c.unit)
        with self.engine.connect() as connection:
            return {u: float(t) for u, t in connection.execute(statement)}

    def events_since(self, unit: str, since: float) -> int:
        """Events of ``unit`` received after ``since``."""
        statement = sa.select(sa.func.count()).select_from(events).where(
            events.c.unit == unit, events.c.received_at > since)
        with self.engine.connect() as connection:
            return int(connection.execute(statement).scalar_one())

    # --------------------------------------------------------------- unit state

    def _upsert_unit(self, unit: str, values: Mapping[str, Any],
                     update: Mapping[str, Any] | None = None) -> None:
        now = time.time()
        row = {"unit": unit, "last_seen": now, **values}
        statement = self._insert(units).values(**row)
        statement = statement.on_conflict_do_update(
            index_elements=["unit"],
            set_=dict(update) if update is not None else {
                k: statement.excluded[k] for k in row if k != "unit"},
        )
        with self._tx() as tx:
            tx.execute(statement)

    def set_status(self, unit: str, status: str) -> None:
        self._upsert_unit(unit, {"status": status, "status_at": time.time()})

    def set_health(self, unit: str, payload: Mapping[str, Any], at: float) -> None:
        self._upsert_unit(unit, {"health_json": json.dumps(payload, sort_keys=True),
                                 "health_at": at})

    def set_gallery(self, unit: str, payload: Mapping[str, Any]) -> None:
        self._upsert_unit(unit, {"gallery_json": json.dumps(payload, sort_keys=True),
                                 "gallery_identities": int(payload["identities"])})

    def set_audit_head(self, unit: str, log_id: str, seq: int, head: str, at: float) -> None:
        """Record a retained audit head; ``audit_advanced_at`` moves only when seq does."""
        now = time.time()
        row = {"audit_log_id": log_id, "audit_seq": seq, "audit_hash": head, "audit_at": at,
               "audit_advanced_at": now}
        excluded = self._insert(units).excluded
        moved = sa.or_(units.c.audit_seq.is_(None), units.c.audit_seq != excluded.audit_seq,
                       units.c.audit_log_id != excluded.audit_log_id)
        update = {
            "audit_log_id": excluded.audit_log_id, "audit_seq": excluded.audit_seq,
            "audit_hash": excluded.audit_hash, "audit_at": excluded.audit_at,
            "last_seen": excluded.last_seen,
            "audit_advanced_at": sa.case((moved, excluded.audit_advanced_at),
                                         else_=units.c.audit_advanced_at),
        }
        self._upsert_unit(unit, row, update)

    def units(self) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(units).order_by(units.c.unit)).mappings().all()
        return [dict(r) for r in rows]

    def unit(self, unit: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(units).where(units.c.unit == unit)
                                     ).mappings().first()
        return None if row is None else dict(row)

    # --------------------------------------------------------- verdicts, acks

    def add_verdict(self, row: Mapping[str, Any]) -> None:
        with self._tx() as tx:
            tx.execute(sa.insert(verdicts).values(**row))

    def mark_published(self, nonce: str) -> None:
        with self._tx() as tx:
            tx.execute(sa.update(verdicts).where(verdicts.c.nonce == nonce)
                       .values(published=True))

    def add_ack(self, row: Mapping[str, Any]) -> bool:
        """Store a unit's ack; False when the ack of that nonce is stored already."""
        statement = self._insert(acks).values(**row).on_conflict_do_nothing(
            index_elements=["nonce"]).returning(acks.c.nonce)
        with self._tx() as tx:
            return tx.execute(statement).first() is not None

    def review_queue(self, limit: int = 200) -> list[dict[str, Any]]:
        """Match events that ask for review and have no standing verdict, newest first."""
        reviewed = _standing_verdicts(verdicts.c.event_id)
        statement = (sa.select(events).where(events.c.kind == "match",
                                             events.c.review_required.is_(True),
                                             events.c.event_id.not_in(reviewed))
                     .order_by(events.c.occurred_at.desc()).limit(limit))
        with self.engine.connect() as connection:
            return [dict(r) for r in connection.execute(statement).mappings()]

    def reviewed(self, limit: int = 200) -> list[dict[str, Any]]:
        """Verdicts with their event and the unit's ack (when any), newest first."""
        statement = (
            sa.select(verdicts, events.c.camera, events.c.identity_id, events.c.label,
                      events.c.similarity, events.c.occurred_at,
                      acks.c.outcome, acks.c.reason, acks.c.audit_seq, acks.c.at.label("ack_at"))
            .join(events, events.c.event_id == verdicts.c.event_id)
            .outerjoin(acks, acks.c.nonce == verdicts.c.nonce)
            .order_by(verdicts.c.issued_at.desc()).limit(limit))
        with self.engine.connect() as connection:
            return [dict(r) for r in connection.execute(statement).mappings()]

    def judged_matches(self) -> list[dict[str, Any]]:
        """Each match's latest standing verdict beside what accuracy needs, oldest first."""
        standing = _standing_verdicts(verdicts.c.event_id, verdicts.c.issued_at,
                                      verdicts.c.verdict).subquery()
        latest = (sa.select(standing.c.event_id, sa.func.max(standing.c.issued_at).label("t"))
                  .group_by(standing.c.event_id).subquery())
        statement = (
            sa.select(events.c.unit, events.c.identity_id, events.c.false_match_rate,
                      events.c.gallery_identities, events.c.occurred_at, standing.c.verdict)
            .join(latest, latest.c.event_id == events.c.event_id)
            .join(standing, sa.and_(standing.c.event_id == latest.c.event_id,
                                    standing.c.issued_at == latest.c.t))
            .order_by(events.c.occurred_at))
        with self.engine.connect() as connection:
            return [dict(r) for r in connection.execute(statement).mappings()]

    # ------------------------------------------------------------------ users

    def add_user(self, username: str, role: str, password_hash: str,
                 key_id: str | None = None, key_path: str | None = None) -> None:
        """Create an account.

        Raises:
            ConfigError: The name is taken.
        """
        try:
            with self._tx() as tx:
                tx.execute(sa.insert(users).values(
                    username=username, role=role, password_hash=password_hash, key_id=key_id,
                    key_path=key_path, failed_logins=0, locked_until=None,
                    created_at=time.time()))
        except sa.exc.IntegrityError:
            raise ConfigError(f"user {username!r} exists already") from None

    def user(self, username: str) -> User | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(users).where(users.c.username == username)
                                     ).mappings().first()
        if row is None:
            return None
        return User(row["username"], row["role"], row["password_hash"], row["key_id"],
                    row["key_path"], int(row["failed_logins"]), row["locked_until"])

    def update_user(self, username: str, **values: Any) -> bool:
        with self._tx() as tx:
            result = tx.execute(sa.update(users).where(users.c.username == username)
                                .values(**values))
        return bool(result.rowcount)

    def count_failed_login(self, username: str, limit: int, lock_s: float) -> int:
        """Add one failed login; at ``limit`` the account locks for ``lock_s``. The count."""
        with self._tx() as tx:
            tx.execute(sa.update(users).where(users.c.username == username)
                       .values(failed_logins=users.c.failed_logins + 1))
            failed = tx.execute(sa.select(users.c.failed_logins)
                                .where(users.c.username == username)).scalar_one_or_none()
            if failed is not None and failed >= limit:
                tx.execute(sa.update(users).where(users.c.username == username)
                           .values(locked_until=time.time() + lock_s, failed_logins=0))
        return int(failed or 0)

    def remove_user(self, username: str) -> bool:
        with self._tx() as tx:
            return bool(tx.execute(sa.delete(users).where(users.c.username == username))
                        .rowcount)

    def list_users(self) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(users.c.username, users.c.role, users.c.key_id)
                .order_by(users.c.username)).mappings()
            return [dict(r) for r in rows]

    # ------------------------------------------------------------- access log

    def log_access(self, username: str | None, client: str | None, method: str, path: str,
                   status: int) -> None:
        with self._tx() as tx:
            tx.execute(sa.insert(access_log).values(
                at=time.time(), username=username, client=client, method=method[:8],
                path=path[:512], status=status))

    def access_entries(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(access_log).order_by(access_log.c.seq.desc())
                                      .limit(limit)).mappings()
            return [dict(r) for r in rows]

    def version(self) -> tuple[Any, ...]:
        """Changes whenever an event, a unit's state, a verdict or an ack is stored."""
        with self.engine.connect() as connection:
            return (
                connection.execute(sa.select(sa.func.max(events.c.seq))).scalar_one(),
                connection.execute(sa.select(sa.func.max(units.c.last_seen))).scalar_one(),
                connection.execute(sa.select(sa.func.count()).select_from(verdicts)
                                   ).scalar_one(),
                connection.execute(sa.select(sa.func.count()).select_from(acks)).scalar_one(),
            )

    # ------------------------------------------------------------------ dump

    def dump(self) -> Iterator[tuple[str, Sequence[Any]]]:
        """Every row of every table, as ``(table, values)``: for the privacy scan."""
        with self.engine.connect() as connection:
            for table in metadata.sorted_tables:
                for row in connection.execute(sa.select(table)):
                    yield table.name, tuple(row)


def open_store(url: str) -> Store:
    """Connect to the store at ``url`` and migrate it to the newest schema.

    Raises:
        ConfigError: The URL is unusable or the database cannot be reached.
    """
    engine = make_engine(url)
    try:
        migrate(engine)
    except sa.exc.OperationalError as exc:
        engine.dispose()
        raise ConfigError(f"cannot open the console store {url.rsplit('@', maxsplit=1)[-1]}: "
                          f"{exc.orig}") from exc
    return Store(engine)
