"""Shared by the audit unit and integration tests: a mixed chain, a fake clock, and
raw-SQL tampering the way an attacker with write access to the file would do it."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from device.audit import AuditKind, AuditLog, record_hash

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
COLUMNS = ("ts", "kind", "actor", "payload", "prev_hash", "hash")
CHAIN_LEN = 20


class StepClock:
    """A clock that advances by ``step`` on every call, from ``start``."""

    def __init__(self, start: datetime = T0, step: timedelta = timedelta(minutes=1)) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


def build_chain(path: Path, clock: StepClock | None = None) -> list[str]:
    """Write a log of :data:`CHAIN_LEN` mixed records; return their hashes (index = seq-1)."""
    hashes: list[str] = []
    with AuditLog(path, clock=clock or StepClock()) as log:
        recs = [
            log.record_service_start("0.1.0", config_sha256="ab" * 32),
            log.record_config_change("cameras.front.fps", 10, 15, actor="cli"),
            log.record_threshold_change(0.62, 0.6, target_fmr=1e-4, reason="recalibrated",
                                        actor="cli"),
            log.record_sync_applied(from_version=None, to_version=1, bundle_sha256="cd" * 32,
                                    identities=3),
            log.record_enroll("alice", gallery_version=1, samples=5, actor="sync"),
            log.record_enroll("bob", gallery_version=1, samples=4, actor="sync"),
        ]
        for i in range(6):
            recs.append(log.record_match(
                f"evt-{i:04d}", "alice" if i % 2 else "bob", 0.61 + i / 100, 0.6, 1,
                "Eingang-Süd" if i % 3 else "front",
            ))
        recs += [
            log.record_review("evt-0001", verdict="not_this_person", reviewer="12" * 32,
                              nonce="0b7e8c8e-3c39-4f4e-9a53-3b9b1f2f7a10",
                              issued_at="2025-03-01T08:30:00.000Z"),
            log.record_review_refused(reason="replayed", message="already recorded",
                                      event_id="evt-0001", reviewer="12" * 32,
                                      nonce="0b7e8c8e-3c39-4f4e-9a53-3b9b1f2f7a10"),
            log.record_sync_refused(to_version=0, bundle_sha256="ef" * 32,
                                    reason="version older than installed"),
            log.record_delete("bob", gallery_version=2, reason="subject request",
                              samples_removed=4, actor="cli"),
            log.record_retention_purge("events", cutoff=T0, count=12),
            log.record_match("evt-0100", None, 0.41, 0.6, 2, "front", decision="reject"),
            log.append(AuditKind.RETENTION_REFUSED, {"target": "gallery", "expired": 9,
                                                     "identities": 10}, actor="retention"),
            log.record_service_stop("shutdown"),
        ]
        hashes = [r.hash for r in recs]
    assert len(hashes) == CHAIN_LEN
    return hashes


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """Open the file as an attacker would: plain SQL, append-only triggers dropped."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS records_append_only_update")
    conn.execute("DROP TRIGGER IF EXISTS records_append_only_delete")
    conn.execute("BEGIN")
    try:
        yield conn
        conn.execute("COMMIT")
    finally:
        conn.close()


def copy_of(template: Path, dest_dir: Path, name: str = "audit.db") -> Path:
    dest = dest_dir / name
    shutil.copyfile(template, dest)
    return dest


def flip_byte(value: str, index: int) -> str:
    """Flip the lowest bit of the ``index``-th ASCII character (keeps valid UTF-8)."""
    data = bytearray(value.encode("utf-8"))
    ascii_positions = [i for i, b in enumerate(data) if b < 0x80]
    pos = ascii_positions[index % len(ascii_positions)]
    data[pos] ^= 0x01
    return data.decode("utf-8")


def edit_byte(path: Path, seq: int, column: str, index: int = 3) -> None:
    with raw(path) as conn:
        (value,) = conn.execute(f"SELECT {column} FROM records WHERE seq = ?", (seq,)).fetchone()
        conn.execute(f"UPDATE records SET {column} = ? WHERE seq = ?",
                     (flip_byte(value, index), seq))


def delete_record(path: Path, seq: int) -> None:
    with raw(path) as conn:
        conn.execute("DELETE FROM records WHERE seq = ?", (seq,))


def set_meta_head(path: Path, seq: int, hash_: str) -> None:
    with raw(path) as conn:
        conn.executemany("UPDATE meta SET value = ? WHERE key = ?",
                         [(str(seq), "head_seq"), (hash_, "head_hash")])


def log_id_of(path: Path) -> str:
    with raw(path) as conn:
        return str(conn.execute("SELECT value FROM meta WHERE key='log_id'").fetchone()[0])


def shift_up(conn: sqlite3.Connection, from_seq: int) -> None:
    """Renumber records ``from_seq``.. one place up (two steps dodge the PK)."""
    conn.execute("UPDATE records SET seq = seq + 1000001 WHERE seq >= ?", (from_seq,))
    conn.execute("UPDATE records SET seq = seq - 1000000 WHERE seq > 1000000")


def insert_forged(path: Path, at: int, *, chain_prev: bool, rehash_suffix: bool = False,
                  update_head: bool = False) -> None:
    """Insert a forged ``match_decision`` at ``at``, renumbering what follows.

    Its own hash is always correct. ``chain_prev``: its prev_hash is the real hash of
    record ``at - 1`` (else a made-up one). ``rehash_suffix``: recompute every later
    record so the chain is internally consistent. ``update_head``: fix the stored head.
    """
    log_id = log_id_of(path)
    with raw(path) as conn:
        real_prev = conn.execute("SELECT hash FROM records WHERE seq = ?", (at - 1,)).fetchone()
        prev_hash = (real_prev[0] if real_prev else "0" * 64) if chain_prev else "f" * 64
        shift_up(conn, at)
        row = ("2025-03-01T08:30:00.000000Z", "match_decision", "pipeline",
               '{"event_id":"forged","identity_id":"mallory"}', prev_hash)
        digest = record_hash(log_id, at, *row)
        conn.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)", (at, *row, digest))
        if rehash_suffix:
            _rehash_from(conn, log_id, at + 1)
        if update_head:
            seq, hash_ = conn.execute(
                "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
            conn.executemany("UPDATE meta SET value = ? WHERE key = ?",
                             [(str(seq), "head_seq"), (hash_, "head_hash")])


def _rehash_from(conn: sqlite3.Connection, log_id: str, start: int) -> None:
    prev = conn.execute("SELECT hash FROM records WHERE seq = ?", (start - 1,)).fetchone()[0]
    rows = conn.execute(
        "SELECT seq, ts, kind, actor, payload FROM records WHERE seq >= ? ORDER BY seq", (start,)
    ).fetchall()
    for seq, ts, kind, actor, payload in rows:
        digest = record_hash(log_id, seq, ts, kind, actor, payload, prev)
        conn.execute("UPDATE records SET prev_hash = ?, hash = ? WHERE seq = ?",
                     (prev, digest, seq))
        prev = digest


def swap_contents(path: Path, a: int, b: int) -> None:
    """Swap every column but ``seq`` between records ``a`` and ``b``."""
    cols = ", ".join(COLUMNS)
    with raw(path) as conn:
        row_a = conn.execute(f"SELECT {cols} FROM records WHERE seq = ?", (a,)).fetchone()
        row_b = conn.execute(f"SELECT {cols} FROM records WHERE seq = ?", (b,)).fetchone()
        sets = ", ".join(f"{c} = ?" for c in COLUMNS)
        conn.execute(f"UPDATE records SET {sets} WHERE seq = ?", (*row_b, a))
        conn.execute(f"UPDATE records SET {sets} WHERE seq = ?", (*row_a, b))
