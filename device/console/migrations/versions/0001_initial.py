"""The first schema: events, units, verdicts, acks, users, access log.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("unit", sa.String(64), nullable=False),
        sa.Column("camera", sa.String(64), nullable=False),
        sa.Column("identity_id", sa.String(64), nullable=False),
        sa.Column("label", sa.String(128)),
        sa.Column("track_id", sa.BigInteger, nullable=False),
        sa.Column("similarity", sa.Float),
        sa.Column("false_match_rate", sa.Float),
        sa.Column("fmr_at_similarity", sa.Float),
        sa.Column("fmr_upper_bound", sa.Boolean),
        sa.Column("gallery_version", sa.Integer),
        sa.Column("model_id", sa.String(64)),
        sa.Column("review_required", sa.Boolean),
        sa.Column("match_event_id", sa.String(36)),
        sa.Column("occurred_at", sa.Float, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("gallery_identities", sa.Integer),
    )
    op.create_index("ix_events_unit_time", "events", ["unit", "occurred_at"])
    op.create_index("ix_events_identity", "events", ["identity_id"])
    op.create_table(
        "units",
        sa.Column("unit", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16)),
        sa.Column("status_at", sa.Float),
        sa.Column("health_json", sa.Text),
        sa.Column("health_at", sa.Float),
        sa.Column("gallery_json", sa.Text),
        sa.Column("gallery_identities", sa.Integer),
        sa.Column("audit_log_id", sa.String(64)),
        sa.Column("audit_seq", sa.BigInteger),
        sa.Column("audit_hash", sa.String(64)),
        sa.Column("audit_at", sa.Float),
        sa.Column("audit_advanced_at", sa.Float),
        sa.Column("last_seen", sa.Float),
    )
    op.create_table(
        "verdicts",
        sa.Column("nonce", sa.String(36), primary_key=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("unit", sa.String(64), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("reviewer", sa.String(64), nullable=False),
        sa.Column("reviewer_key", sa.String(64), nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("issued_at", sa.Float, nullable=False),
        sa.Column("published", sa.Boolean, nullable=False),
    )
    op.create_index("ix_verdicts_event", "verdicts", ["event_id"])
    op.create_table(
        "acks",
        sa.Column("nonce", sa.String(36), primary_key=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("unit", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32)),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("audit_seq", sa.BigInteger),
        sa.Column("audit_head", sa.String(64)),
    )
    op.create_table(
        "users",
        sa.Column("username", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("key_id", sa.String(64)),
        sa.Column("key_path", sa.Text),
        sa.Column("failed_logins", sa.Integer, nullable=False),
        sa.Column("locked_until", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "access_log",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("username", sa.String(64)),
        sa.Column("client", sa.String(64)),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    for name in ("access_log", "users", "acks", "verdicts", "units", "events"):
        op.drop_table(name)
