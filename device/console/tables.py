"""The console's tables, in SQLAlchemy Core: one schema for SQLite and PostgreSQL.

The Alembic migrations in ``migrations/versions`` create exactly these tables (a test
compares them). Nothing here holds an image or an embedding: units never send either.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata: Final = MetaData()

#: Match and track-end events, one row per event id (the de-duplication key).
events: Final = Table(
    "events", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # match | track_end
    Column("unit", String(64), nullable=False),
    Column("camera", String(64), nullable=False),
    Column("identity_id", String(64), nullable=False),
    Column("label", String(128)),
    Column("track_id", BigInteger, nullable=False),
    Column("similarity", Float),
    Column("false_match_rate", Float),
    Column("fmr_at_similarity", Float),
    Column("fmr_upper_bound", Boolean),
    Column("gallery_version", Integer),
    Column("model_id", String(64)),
    Column("review_required", Boolean),
    Column("match_event_id", String(36)),
    Column("occurred_at", Float, nullable=False),  # decided_at / ended_at, epoch s
    Column("received_at", Float, nullable=False),
    Column("gallery_identities", Integer),  # N of the unit's gallery when it arrived
)
Index("ix_events_unit_time", events.c.unit, events.c.occurred_at)
Index("ix_events_identity", events.c.identity_id)

#: The latest retained state of each unit.
units: Final = Table(
    "units", metadata,
    Column("unit", String(64), primary_key=True),
    Column("status", String(16)),  # online | offline
    Column("status_at", Float),
    Column("health_json", Text),
    Column("health_at", Float),  # the snapshot's own time
    Column("gallery_json", Text),
    Column("gallery_identities", Integer),
    Column("audit_log_id", String(64)),
    Column("audit_seq", BigInteger),
    Column("audit_hash", String(64)),
    Column("audit_at", Float),  # the head's own time
    Column("audit_advanced_at", Float),  # when the console saw seq move last
    Column("last_seen", Float),  # any message from the unit
)

#: Verdicts recorded by reviewers (the note stays here; it never leaves the console).
verdicts: Final = Table(
    "verdicts", metadata,
    Column("nonce", String(36), primary_key=True),
    Column("event_id", String(36), nullable=False),
    Column("unit", String(64), nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("reviewer", String(64), nullable=False),  # console account name
    Column("reviewer_key", String(64), nullable=False),  # key id
    Column("note", Text),
    Column("issued_at", Float, nullable=False),
    Column("published", Boolean, nullable=False),
)
Index("ix_verdicts_event", verdicts.c.event_id)

#: The units' acknowledgements of verdicts, one per verdict nonce.
acks: Final = Table(
    "acks", metadata,
    Column("nonce", String(36), primary_key=True),
    Column("event_id", String(36), nullable=False),
    Column("unit", String(64), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("reason", String(32)),
    Column("at", Float, nullable=False),
    Column("audit_seq", BigInteger),
    Column("audit_head", String(64)),
)

#: Operator accounts.
users: Final = Table(
    "users", metadata,
    Column("username", String(64), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", String(256), nullable=False),
    Column("key_id", String(64)),
    Column("key_path", Text),
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", Float),
    Column("created_at", Float, nullable=False),
)

#: Who asked for what, when, and what they got.
access_log: Final = Table(
    "access_log", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("username", String(64)),
    Column("client", String(64)),
    Column("method", String(8), nullable=False),
    Column("path", String(512), nullable=False),
    Column("status", Integer, nullable=False),
)
