"""The storage layer: pragmas, read-only opens, atomic(), migrations, file modes."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlite_utils import Database

from device import storage


@pytest.fixture()
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _digest(path: Path) -> tuple[int, str]:
    data = path.read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()


def test_connect_sets_the_project_pragmas(tmp_path: Path) -> None:
    conn = storage.connect(tmp_path / "a.db", busy_timeout_s=2.5, foreign_keys=True)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2500
        assert conn.isolation_level is None
    finally:
        conn.close()


def test_new_files_and_their_wal_and_shm_are_0600_under_umask_022(
        tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "sub" / "a.db"
    conn = storage.connect(path)
    try:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        for name in ("a.db", "a.db-wal", "a.db-shm"):
            assert (path.parent / name).stat().st_mode & 0o777 == 0o600, name
        assert path.parent.stat().st_mode & 0o777 == 0o700
    finally:
        conn.close()


def test_make_private_tightens_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    path.write_bytes(b"")
    os.chmod(path, 0o644)
    storage.make_private(path)
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_readonly_open_never_writes_a_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "z.db"
    path.write_bytes(b"")
    conn = storage.connect_readonly(path)
    try:
        assert conn.execute("PRAGMA page_count").fetchone()[0] == 0
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("CREATE TABLE t (x)")
    finally:
        conn.close()
    assert _digest(path) == (0, hashlib.sha256(b"").hexdigest())


def test_a_readonly_open_of_a_missing_file_fails_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError):
        storage.connect_readonly(tmp_path / "none.db")
    assert list(tmp_path.iterdir()) == []


def test_atomic_commits_and_rolls_back(tmp_path: Path) -> None:
    conn = storage.connect(tmp_path / "a.db")
    conn.execute("CREATE TABLE t (x)")
    with storage.atomic(conn):
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(RuntimeError, match="boom"), storage.atomic(conn):
        conn.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("boom")
    assert not conn.in_transaction
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    conn.close()


def test_nested_atomic_is_a_savepoint_that_undoes_only_its_block(tmp_path: Path) -> None:
    conn = storage.connect(tmp_path / "a.db")
    conn.execute("CREATE TABLE t (x)")
    with storage.atomic(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(ValueError), storage.atomic(conn):
            conn.execute("INSERT INTO t VALUES (2)")
            raise ValueError("inner")
        assert conn.in_transaction
        with storage.atomic(conn):
            conn.execute("INSERT INTO t VALUES (3)")
    assert conn.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (3,)]
    conn.close()


def _fill(conn: sqlite3.Connection) -> None:
    for i in range(10_000):
        conn.execute("INSERT INTO t VALUES (?)", (os.urandom(512).hex() + str(i),))


def test_atomic_keeps_the_disk_full_error_when_sqlite_already_rolled_back(
        tmp_path: Path) -> None:
    conn = storage.connect(tmp_path / "a.db")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA max_page_count = 8")  # a real SQLITE_FULL, no mock
    with pytest.raises(sqlite3.Error, match="database or disk is full") as info, \
            storage.atomic(conn):
        _fill(conn)
    assert storage.is_disk_full(info.value)
    assert not conn.in_transaction
    conn.close()


def test_atomic_keeps_the_original_error_when_sqlite_ended_the_transaction(
        tmp_path: Path) -> None:
    conn = storage.connect(tmp_path / "a.db")
    conn.execute("CREATE TABLE t (x)")
    with pytest.raises(sqlite3.OperationalError, match="no such table") as info, \
            storage.atomic(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("ROLLBACK")  # what SQLite does itself after SQLITE_FULL
        conn.execute("INSERT INTO missing VALUES (1)")
    assert "cannot rollback" not in str(info.value)
    conn.close()


def test_describe_error_names_a_full_disk_and_its_free_space(tmp_path: Path) -> None:
    exc = sqlite3.OperationalError("database or disk is full")
    text = storage.describe_error(tmp_path / "a.db", exc)
    assert text.startswith("database or disk is full: the disk holding")
    assert "free)" in text and "free some space" in text
    assert storage.describe_error(tmp_path / "a.db", sqlite3.OperationalError("x")) == "x"


def _create(db: Database) -> None:
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")


def _add_column(db: Database) -> None:
    db.table("items").add_column("size", int)


def test_migrations_run_once_in_order_and_record_themselves(tmp_path: Path) -> None:
    steps = (storage.Migration(1, "create", _create), storage.Migration(2, "size", _add_column))
    conn = storage.connect(tmp_path / "a.db")
    assert storage.migrate(conn, steps[:1], what="test db", clock=lambda: 5.0) == (1,)
    assert storage.migrate(conn, steps, what="test db", clock=lambda: 6.0) == (2,)
    assert storage.migrate(conn, steps, what="test db") == ()
    assert storage.schema_version(conn) == 2
    assert conn.execute("SELECT version, name, applied_at FROM schema_migrations").fetchall() \
        == [(1, "create", 5.0), (2, "size", 6.0)]
    with pytest.raises(storage.MigrationError, match="newer than this firmware"):
        storage.migrate(conn, steps[:1], what="test db")
    conn.close()


def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    def broken(db: Database) -> None:
        db.execute("ALTER TABLE items ADD COLUMN half INTEGER")
        db.execute("INSERT INTO nowhere VALUES (1)")

    conn = storage.connect(tmp_path / "a.db")
    storage.migrate(conn, (storage.Migration(1, "create", _create),), what="test db")
    with pytest.raises(storage.MigrationError, match=r"test db: migration 2 \(broken\)"):
        storage.migrate(conn, (storage.Migration(1, "create", _create),
                               storage.Migration(2, "broken", broken)), what="test db")
    assert storage.schema_version(conn) == 1
    assert "half" not in {r[1] for r in conn.execute("PRAGMA table_info(items)")}
    conn.close()
