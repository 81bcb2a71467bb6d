"""A full disk: the audit log and the outbox report it, not a failed rollback."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from device.audit.log import AuditLog, verify
from device.errors import AuditError, PublishError
from device.events.outbox import Outbox


def test_audit_append_on_a_full_disk_says_the_disk_is_full(small_fs: Path) -> None:
    path = small_fs / "audit.db"
    appended = 0
    with AuditLog(path) as log:
        with pytest.raises(AuditError) as info:
            for i in range(100_000):
                log.record_service_stop(f"a quick brown fox {i} jumps over the lazy dog")
                appended += 1
        text = str(info.value)
        assert f"audit log {path}: append failed: database or disk is full" in text
        assert "cannot rollback" not in text
        assert "is full (" in text and "free)" in text
        assert appended > 0
    result = verify(path)  # what was committed before the disk filled is intact
    assert result.ok and result.head_seq == appended


def test_outbox_put_on_a_full_disk_says_the_disk_is_full(small_fs: Path) -> None:
    path = small_fs / "outbox.db"
    stored = 0
    with Outbox(path) as outbox:
        with pytest.raises(PublishError) as info:
            for _ in range(100_000):
                outbox.put("facegate/u/event", b"x" * 300)
                stored += 1
        text = str(info.value)
        assert f"cannot write to outbox {path}: database or disk is full" in text
        assert "cannot rollback" not in text
        assert "is full (" in text and "free)" in text
        assert outbox.depth() == stored  # every committed row is still there


def test_audit_log_full_by_page_limit_keeps_its_error(tmp_path: Path) -> None:
    """The same without root: SQLite's page limit raises a real SQLITE_FULL."""
    path = tmp_path / "audit.db"
    with AuditLog(path) as log:
        conn = log._conn
        assert isinstance(conn, sqlite3.Connection)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 1}")
        with pytest.raises(AuditError, match="append failed: database or disk is full"):
            for i in range(10_000):
                log.record_service_stop(f"reason number {i} " + "the disk fills up " * 12)
