"""The SQLite outbox: order, acks, bound with counted drops, erasure, crash safety."""

from __future__ import annotations

import random
import sqlite3
import stat
from pathlib import Path

import pytest

from device.errors import PublishError
from device.events.outbox import SCHEMA_VERSION, Outbox
from tests.support.events import Child

TOPIC = "facegate/unit-1/front/match"


def put_n(outbox: Outbox, n: int, start: int = 0) -> list[int]:
    return [
        outbox.put(TOPIC, f'{{"n":{i}}}'.encode(), event_id=str(i)) for i in range(start, start + n)
    ]


def test_pending_is_in_insertion_order_and_ack_deletes(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3") as outbox:
        ids = put_n(outbox, 10)
        assert ids == sorted(ids)
        rows = outbox.pending(limit=100)
        assert [r.id for r in rows] == ids
        assert [r.payload for r in rows] == [f'{{"n":{i}}}'.encode() for i in range(10)]
        assert all(r.topic == TOPIC and r.qos == 1 and r.expiry_s is None for r in rows)
        assert [r.id for r in outbox.pending(limit=3, after_id=ids[4])] == ids[5:8]
        assert outbox.ack(ids[0], ids[2], 999_999) == 2
        assert [r.id for r in outbox.pending()] == [ids[1], *ids[3:]]
        assert outbox.depth() == 8
        # ids are never reused, even after the newest row is deleted
        outbox.ack(ids[-1])
        assert outbox.put(TOPIC, b"{}") > ids[-1]


def test_rows_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as outbox:
        ids = put_n(outbox, 3)
    with Outbox(path) as outbox:
        assert [r.id for r in outbox.pending()] == ids


def test_bound_drops_the_oldest_and_counts_persistently(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path, max_rows=5) as outbox:
        ids = put_n(outbox, 8)
        assert [r.id for r in outbox.pending()] == ids[3:]
        stats = outbox.stats()
        assert (stats.depth, stats.dropped) == (5, 3)
    with Outbox(path, max_rows=3) as outbox:
        put_n(outbox, 1)
        stats = outbox.stats()
        assert (stats.depth, stats.dropped) == (3, 6)


def test_expire_discard_and_retention_are_counted(tmp_path: Path) -> None:
    now = [1000.0]
    with Outbox(tmp_path / "o.sqlite3", clock=lambda: now[0]) as outbox:
        old = put_n(outbox, 3)
        now[0] = 2000.0
        new = put_n(outbox, 2)
        assert outbox.purge_older_than(500) == 3
        assert [r.id for r in outbox.pending()] == new
        assert outbox.expire(new[0]) == 1
        assert outbox.discard(new[1], old[0]) == 1
        stats = outbox.stats()
        assert (stats.depth, stats.purged, stats.expired, stats.dropped) == (0, 3, 1, 1)
        assert stats.oldest_created_at is None


def test_expiry_is_relative_to_storage_time(tmp_path: Path) -> None:
    now = [1000.0]
    with Outbox(tmp_path / "o.sqlite3", clock=lambda: now[0]) as outbox:
        outbox.put(TOPIC, b"{}", expiry_s=60)
        (row,) = outbox.pending()
        assert row.remaining_expiry(1030.0) == 30.0
        assert row.remaining_expiry(1061.0) == -1.0
        with pytest.raises(PublishError, match="positive"):
            outbox.put(TOPIC, b"{}", expiry_s=0)


def _raw(path: Path) -> bytes:
    data = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        part = Path(str(path) + suffix)
        if part.exists():
            data += part.read_bytes()
    return data


def test_delete_for_identity_removes_the_label_from_file_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    label = b"Zebulon Quetzalcoatl-Erased"
    kept = b"Henrietta Keepington"

    def payload(name: bytes, i: int) -> bytes:
        return b'{"label":"' + name + b'","n":' + str(i).encode() + b"}"

    with Outbox(path) as outbox:
        for i in range(20):
            outbox.put(TOPIC, payload(label, i), identity_id="id-erased", event_id=f"e{i}")
            outbox.put(TOPIC, payload(kept, i), identity_id="id-kept", event_id=f"k{i}")
        # Move the first rows into the main file, then add more that live in the WAL only.
        with sqlite3.connect(path) as other:
            other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        other.close()
        for i in range(20, 25):
            outbox.put(TOPIC, payload(label, i), identity_id="id-erased")
        assert label in path.read_bytes(), "precondition: the label is in the main file"
        assert label in Path(f"{path}-wal").read_bytes(), "precondition: and in the WAL"

        assert outbox.delete_for_identity("id-erased") == 25
        raw = _raw(path)
        assert label not in raw
        assert b"id-erased" not in raw
        assert kept in raw
        assert outbox.depth() == 20
        assert outbox.delete_for_identity("id-nobody") == 0
    assert label not in _raw(path)


def test_file_is_private_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "o.sqlite3"
    with Outbox(path) as outbox:
        put_n(outbox, 1)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(Path(f"{path}-wal").stat().st_mode) == 0o600
        assert outbox.integrity_check() == "ok"
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.close()


def test_close_is_idempotent_and_closed_use_is_an_error(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    outbox.close()
    outbox.close()
    assert outbox.closed
    with pytest.raises(PublishError, match="closed"):
        outbox.put(TOPIC, b"{}")
    with pytest.raises(PublishError, match="closed"):
        outbox.pending()


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(PublishError, match=r"not a usable SQLite database.*move it aside"):
        Outbox(path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    Outbox(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(PublishError, match="newer than this facegate"):
        Outbox(path)


def test_bad_capacity_refused(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="max_rows"):
        Outbox(tmp_path / "o.sqlite3", max_rows=0)


# ---------------------------------------------------------------- crash safety


def test_sigkill_mid_transaction_leaves_a_consistent_file(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as outbox:
        committed = put_n(outbox, 5)
    child = Child("outbox-open-tx", str(path))
    try:
        assert child.wait_line("in-transaction", 30), child.proc.stderr
        child.kill()
    finally:
        child.close()
    with Outbox(path) as outbox:
        assert outbox.integrity_check() == "ok"
        rows = outbox.pending(limit=1000)
        assert [r.id for r in rows] == committed
        assert not any((r.event_id or "").startswith("uncommitted") for r in rows)
        assert outbox.put(TOPIC, b"{}") > committed[-1]  # the dead writer's lock is gone


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_moment_keeps_every_committed_row(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "o.sqlite3"
    rng = random.Random(seed)
    seen: list[int] = []
    start = 0
    for _ in range(3):
        kill_after = rng.randint(1, 40)
        child = Child("outbox-writer", str(path), str(start), "1000")
        try:
            assert child.wait_for(lambda lines, k=kill_after: len(lines) >= k, 30)
            child.kill()
            committed = [int(r) for r in child.committed()]
        finally:
            child.close()
        with Outbox(path, max_rows=1_000_000) as outbox:
            assert outbox.integrity_check() == "ok"
            ids = [r.id for r in outbox.pending(limit=100_000)]
        assert set(committed) <= set(ids), "a committed row was lost"
        assert ids == sorted(ids)
        seen += committed
        start += 1000
    assert len(seen) >= 3
