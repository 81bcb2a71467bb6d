"""The audit log: chain rules, tamper detection, the biometric guard, concurrency, pruning."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from device.audit import (
    GENESIS_HASH,
    AuditConfig,
    AuditKind,
    AuditLog,
    ExpectedHead,
    check_payload,
    head_message,
    read_head,
    read_records,
    record_hash,
    verify,
    verify_export_lines,
)
from device.audit.record import canonical_json, format_ts
from device.errors import AuditError
from tests.support.audit import (
    CHAIN_LEN,
    COLUMNS,
    T0,
    StepClock,
    build_chain,
    copy_of,
    delete_record,
    edit_byte,
    insert_forged,
    log_id_of,
    raw,
    set_meta_head,
    swap_contents,
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("audit-template") / "audit.db"
    return path, build_chain(path)


@pytest.fixture
def chain(template: tuple[Path, list[str]], tmp_path: Path) -> tuple[Path, list[str]]:
    path, hashes = template
    return copy_of(path, tmp_path), hashes


# --- encoding ------------------------------------------------------------------------


def test_hash_is_length_prefixed_sha256_over_the_documented_fields() -> None:
    fields = ["facegate-audit/1", "id", "7", "2025-03-01T08:00:00.000000Z", "enroll", "cli",
              '{"a":1}', GENESIS_HASH]
    data = b"".join(len(f.encode()).to_bytes(8, "big") + f.encode() for f in fields)
    assert record_hash("id", 7, *fields[3:]) == hashlib.sha256(data).hexdigest()


def test_hash_encoding_is_unambiguous_across_field_boundaries() -> None:
    a = record_hash("id", 1, "t", "enroll", "cli", "{}", GENESIS_HASH)
    b = record_hash("id", 1, "t", "enrollc", "li", "{}", GENESIS_HASH)
    c = record_hash("id", 11, "", "enroll", "cli", "{}", GENESIS_HASH)
    assert len({a, b, c}) == 3


def test_payload_is_canonical_json() -> None:
    text = check_payload({"b": 1, "a": {"z": "Süd", "y": [1.5, None, True]}})
    assert text == '{"a":{"y":[1.5,null,true],"z":"Süd"},"b":1}'
    assert canonical_json(json.loads(text)) == text


def test_naive_clock_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone"):
        AuditLog(tmp_path / "a.db", clock=lambda: datetime(2025, 1, 1))


def test_timestamps_are_utc_whatever_the_clock_zone(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    berlin = datetime(2025, 7, 1, 12, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    with AuditLog(tmp_path / "a.db", clock=lambda: berlin) as log:
        assert log.record_service_stop("x").ts == "2025-07-01T10:00:00.000000Z"


# --- the biometric guard -------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"embedding": [0.1, 0.2]},
        {"faceChip": "x"},
        {"best_face": None},
        {"image_b64": "abc"},
        {"meta": {"Face": 1}},
        {"chip": 1},
        {"thumbnail-url": "x"},
        {"blob": b"\x89PNG"},
        {"blob": bytearray(b"x")},
        {"vals": np.zeros(4, dtype=np.float32)},
        {"vals": [0.01 * i for i in range(128)]},
        {"vals": list(range(-64, 64))},  # int8-quantised codes
        {"vals": [[0.1] * 8, [0.2] * 8]},  # nested
        {"vals": [{"v": [0.5] * 20}]},
        {"enc": "QUJD" * 60},  # 240 base64 chars
        {"enc": "ab" * 128},  # 256 hex chars
        {"note": "x " * 600},
        {"s": float("nan")},
        {1: "non-string key"},
        {"when": datetime(2025, 1, 1, tzinfo=UTC)},
    ],
)
def test_guard_refuses_biometric_or_non_json_payloads(payload: dict[object, object]) -> None:
    with pytest.raises(AuditError):
        check_payload(payload)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "payload",
    [
        {"bundle_sha256": "ab" * 32},
        {"signature": "A" * 88},
        {"candidates": [{"identity_id": f"p{i}", "similarity": 0.5} for i in range(20)]},
        {"bbox_count": 3, "scores": [0.9, 0.8, 0.7]},
        {"surface": "tarmac", "interface": "eth0"},
        {"note": "a reason a person wrote " * 10},
    ],
)
def test_guard_lets_facts_through(payload: dict[str, object]) -> None:
    check_payload(payload)


def test_guard_applies_to_appends_and_writes_nothing(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.db") as log:
        with pytest.raises(AuditError, match="biometric"):
            log.append(AuditKind.ENROLL, {"identity_id": "a", "embedding": [0.1] * 128},
                       actor="cli")
        assert log.head().seq == 0
        # numpy scalars from the pipeline are converted by the typed helper
        rec = log.record_match("e", "a", np.float32(0.75), 0.6, 1, "front")
        assert rec.payload_obj()["similarity"] == pytest.approx(0.75)


def test_audit_checkpoints_are_written_only_by_prune(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.db") as log:
        with pytest.raises(AuditError, match="prune"):
            log.append(AuditKind.RETENTION_PURGE, {"target": "audit"}, actor="x")
        with pytest.raises(AuditError, match="prune"):
            log.record_retention_purge("audit", cutoff=T0, count=1)


@pytest.mark.parametrize("actor", ["", "x" * 129, "a\nb"])
def test_bad_actor_is_refused(tmp_path: Path, actor: str) -> None:
    with AuditLog(tmp_path / "a.db") as log, pytest.raises(AuditError, match="actor"):
        log.record_service_stop("x", actor=actor)


# --- lifecycle -----------------------------------------------------------------------


def test_close_is_idempotent_and_reopen_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "state" / "audit.db"
    log = AuditLog(path, clock=StepClock())
    first = log.record_service_start("0.1.0")
    log_id = log.log_id
    log.close()
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.record_service_stop("x")
    with AuditLog(path, clock=StepClock(T0 + timedelta(hours=1))) as again:
        assert again.log_id == log_id
        second = again.record_service_stop("x")
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert first.prev_hash == GENESIS_HASH
    assert path.stat().st_mode & 0o777 == 0o600
    assert verify(path).ok


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(AuditError, match="not a facegate audit log"):
        AuditLog(path)
    with pytest.raises(AuditError, match="not a facegate audit log"):
        verify(path)


def test_missing_file_is_an_error_not_a_verdict(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="does not exist"):
        verify(tmp_path / "nope.db")
    assert not (tmp_path / "nope.db").exists()


def test_storage_settings(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.db") as log:
        conn = log._require()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1


def test_triggers_stop_accidental_updates_and_deletes(chain: tuple[Path, list[str]]) -> None:
    path, _ = chain
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE records SET actor = 'x' WHERE seq = 3")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM records WHERE seq = 3")
    conn.close()


def test_head_message(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with AuditLog(path, clock=StepClock()) as log:
        assert log.head().seq == 0
        rec = log.record_service_start("0.1.0")
        msg = log.head_message("door-1")
    assert msg == {"unit": "door-1", "log_id": log.log_id, "seq": 1, "hash": rec.hash,
                   "at": "2025-03-01T08:03:00.000000Z"}
    at = datetime(2025, 3, 2, tzinfo=UTC)
    assert head_message(path, "door-1", at=at)["at"] == "2025-03-02T00:00:00.000000Z"
    assert read_head(path).hash == rec.hash


# --- verification: untouched and tampered --------------------------------------------


def test_untouched_chain_verifies(chain: tuple[Path, list[str]]) -> None:
    path, hashes = chain
    result = verify(path)
    assert result.ok, result.reason
    assert (result.records, result.head_seq, result.head_hash) == (CHAIN_LEN, 20, hashes[-1])
    assert result.first_bad_seq is None
    assert verify(path, [ExpectedHead(hashes[9], 10), ExpectedHead(hashes[-1], 20)]).ok
    assert verify(path, [ExpectedHead(hashes[4])]).ok
    assert verify(path, [ExpectedHead(GENESIS_HASH, 0)]).ok
    kinds = {r.kind for r in read_records(path)[1]}
    assert kinds == {k.value for k in AuditKind}


def test_empty_log_verifies(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    AuditLog(path).close()
    result = verify(path)
    assert result.ok and result.records == 0 and result.head_hash == GENESIS_HASH


@pytest.mark.parametrize("seq", range(1, CHAIN_LEN + 1))
@pytest.mark.parametrize("column", COLUMNS)
def test_one_flipped_byte_in_any_column_names_the_record(
    chain: tuple[Path, list[str]], seq: int, column: str
) -> None:
    path, _ = chain
    edit_byte(path, seq, column, index=seq * 7 + len(column))
    result = verify(path)
    assert not result.ok
    assert result.first_bad_seq == seq, result.reason
    assert f"record {seq}" in result.reason


@pytest.mark.parametrize("seq", [1, 7, CHAIN_LEN])
def test_a_changed_seq_is_caught(chain: tuple[Path, list[str]], seq: int) -> None:
    path, _ = chain
    with raw(path) as conn:
        conn.execute("UPDATE records SET seq = 1000 WHERE seq = ?", (seq,))
    result = verify(path)
    assert not result.ok and result.first_bad_seq == seq, result.reason


@pytest.mark.parametrize("seq", [1, 2, 10, CHAIN_LEN - 1])
def test_deleted_record_is_named(chain: tuple[Path, list[str]], seq: int) -> None:
    path, _ = chain
    delete_record(path, seq)
    result = verify(path)
    assert not result.ok
    assert result.first_bad_seq == seq
    assert f"record {seq} is missing" in result.reason


def test_deleted_last_record_is_caught_by_the_stored_head(chain: tuple[Path, list[str]]) -> None:
    path, _ = chain
    delete_record(path, CHAIN_LEN)
    result = verify(path)
    assert not result.ok and result.first_bad_seq == CHAIN_LEN
    assert "deleted from the end" in result.reason


def test_truncation_with_edited_head_needs_the_external_head(
    chain: tuple[Path, list[str]],
) -> None:
    path, hashes = chain
    published = ExpectedHead(hashes[-1], CHAIN_LEN)
    for seq in (CHAIN_LEN, CHAIN_LEN - 1):
        delete_record(path, seq)
    set_meta_head(path, CHAIN_LEN - 2, hashes[CHAIN_LEN - 3])
    assert verify(path).ok  # the documented limit: locally consistent
    result = verify(path, [published])
    assert not result.ok and result.first_bad_seq == CHAIN_LEN - 1
    assert "head seen outside the unit" in result.reason
    hash_only = verify(path, [ExpectedHead(hashes[-1])])
    assert not hash_only.ok and hash_only.first_bad_seq is None


def test_everything_deleted_and_head_reset_needs_the_external_head(
    chain: tuple[Path, list[str]],
) -> None:
    path, hashes = chain
    with raw(path) as conn:
        conn.execute("DELETE FROM records")
    set_meta_head(path, 0, GENESIS_HASH)
    assert verify(path).ok
    result = verify(path, [ExpectedHead(hashes[4], 5)])
    assert not result.ok and result.first_bad_seq == 1


def test_edited_stored_head_is_caught(chain: tuple[Path, list[str]]) -> None:
    path, hashes = chain
    set_meta_head(path, CHAIN_LEN, hashes[3])
    result = verify(path)
    assert not result.ok and result.first_bad_seq == CHAIN_LEN


def test_edited_log_id_is_caught_at_the_first_record(chain: tuple[Path, list[str]]) -> None:
    path, _ = chain
    with raw(path) as conn:
        conn.execute("UPDATE meta SET value = 'deadbeef' WHERE key = 'log_id'")
    result = verify(path)
    assert not result.ok and result.first_bad_seq == 1


@pytest.mark.parametrize("at", [1, 2, 9, CHAIN_LEN])
def test_inserted_record_with_a_wrong_chain_is_named(
    chain: tuple[Path, list[str]], at: int
) -> None:
    path, _ = chain
    insert_forged(path, at, chain_prev=False)
    result = verify(path)
    assert not result.ok and result.first_bad_seq == at, result.reason


@pytest.mark.parametrize("at", [1, 2, 9, CHAIN_LEN])
def test_inserted_record_that_chains_to_its_predecessor_is_named(
    chain: tuple[Path, list[str]], at: int
) -> None:
    path, _ = chain
    insert_forged(path, at, chain_prev=True)
    result = verify(path)
    assert not result.ok and result.first_bad_seq == at, result.reason
    assert f"record {at} was inserted" in result.reason


def test_record_appended_behind_the_writers_back_is_named(
    chain: tuple[Path, list[str]],
) -> None:
    path, _ = chain
    insert_forged(path, CHAIN_LEN + 1, chain_prev=True)
    result = verify(path)
    assert not result.ok and result.first_bad_seq == CHAIN_LEN + 1
    assert "appended" in result.reason


def test_rewritten_suffix_is_caught_only_by_the_external_head(
    chain: tuple[Path, list[str]],
) -> None:
    path, hashes = chain
    insert_forged(path, 8, chain_prev=True, rehash_suffix=True, update_head=True)
    assert verify(path).ok  # internally consistent: the documented limit
    result = verify(path, [ExpectedHead(hashes[-1], CHAIN_LEN)])
    assert not result.ok and result.first_bad_seq == CHAIN_LEN
    assert "rewritten" in result.reason
    # Several heads seen over time narrow it down.
    result = verify(path, [ExpectedHead(hashes[4], 5), ExpectedHead(hashes[9], 10),
                           ExpectedHead(hashes[-1], CHAIN_LEN)])
    assert not result.ok and result.first_bad_seq == 10
    assert "after record 5" in result.reason
    # A forged append after the last witnessed head is not detectable: the limit.
    assert verify(path, [ExpectedHead(hashes[4], 5)]).ok


@pytest.mark.parametrize(("a", "b"), [(1, 2), (5, 6), (19, 20), (1, 20), (3, 15)])
def test_swapped_records_are_named(chain: tuple[Path, list[str]], a: int, b: int) -> None:
    path, _ = chain
    swap_contents(path, a, b)
    result = verify(path)
    assert not result.ok and result.first_bad_seq == a, result.reason


def test_every_pair_of_swapped_records_is_caught(
    template: tuple[Path, list[str]], tmp_path: Path
) -> None:
    for a, b in itertools.combinations(range(1, CHAIN_LEN + 1), 2):
        path = copy_of(template[0], tmp_path, f"{a}-{b}.db")
        swap_contents(path, a, b)
        result = verify(path)
        assert not result.ok and result.first_bad_seq == a, (a, b, result.reason)
        path.unlink()


def test_record_transplanted_from_another_log_is_caught(
    chain: tuple[Path, list[str]], tmp_path: Path
) -> None:
    path, _ = chain
    other = tmp_path / "other-unit.db"
    build_chain(other)  # same content, same clock: only log_id differs
    with raw(other) as conn:
        row = conn.execute("SELECT * FROM records WHERE seq = 6").fetchone()
    with raw(path) as conn:
        conn.execute("DELETE FROM records WHERE seq = 6")
        conn.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)", row)
    result = verify(path)
    assert not result.ok and result.first_bad_seq == 6


def test_raw_file_byte_flip_is_caught(chain: tuple[Path, list[str]]) -> None:
    path, _ = chain
    data = bytearray(path.read_bytes())
    needle = b'"event_id":"evt-0003"'  # record 10 (matches start at record 7)
    pos = data.index(needle) + len(needle) - 2
    data[pos] ^= 0x01  # '3' -> '2', straight in the file, no SQL
    path.write_bytes(bytes(data))
    result = verify(path)
    assert not result.ok and result.first_bad_seq == 10, result.reason


def test_damaged_file_fails_verification(chain: tuple[Path, list[str]]) -> None:
    path, _ = chain
    data = bytearray(path.read_bytes())
    data[100:4096] = bytes(3996)  # wipe the header's schema pointers and the first page
    path.write_bytes(bytes(data))
    result = verify(path)
    assert not result.ok


# --- concurrency ---------------------------------------------------------------------


def test_threads_appending_keep_one_gapless_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    n_threads, per_thread = 8, 40
    start = threading.Barrier(n_threads)
    errors: list[BaseException] = []
    with AuditLog(path) as log:

        def worker(t: int) -> None:
            try:
                start.wait()
                for i in range(per_thread):
                    log.record_match(f"t{t}-{i}", f"id{t}", 0.7, 0.6, 1, f"cam{t}")
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert not errors
    records = read_records(path)[1]
    assert [r.seq for r in records] == list(range(1, n_threads * per_thread + 1))
    assert len({r.payload_obj()["event_id"] for r in records}) == n_threads * per_thread
    assert verify(path).ok


def test_two_writers_on_one_file_still_make_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with AuditLog(path) as a, AuditLog(path) as b:
        for i in range(10):
            (a if i % 3 else b).record_service_stop(f"r{i}")
    result = verify(path)
    assert result.ok and result.records == 10


# --- pruning -------------------------------------------------------------------------


def _hourly_log(path: Path, n: int) -> StepClock:
    clock = StepClock(T0 - timedelta(hours=1), timedelta(hours=1))  # opening reads it once
    with AuditLog(path, clock=clock) as log:
        for i in range(n):
            log.record_match(f"e{i}", "alice", 0.7, 0.6, 1, "front")
    return clock  # record i (1-based) is stamped T0 + i hours


def test_prune_keeps_verification_green(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    clock = _hourly_log(path, 30)
    before = verify(path)
    with AuditLog(path, clock=clock) as log:
        result = log.prune(T0 + timedelta(hours=10, minutes=30))
        assert result is not None
        assert (result.pruned_from, result.pruned_through, result.count) == (1, 10, 10)
        assert result.checkpoint.seq == 31
        assert log.prune(T0 + timedelta(hours=5)) is None  # nothing older is left
        log.record_service_stop("x")
    after = verify(path, [ExpectedHead(before.head_hash, 30)])
    assert after.ok, after.reason
    assert (after.first_seq, after.head_seq, after.records) == (11, 32, 22)
    # The last pruned record's hash is still a valid external head (the anchor).
    assert verify(path, [ExpectedHead(result.last_pruned_hash, 10)]).ok
    with pytest.raises(AuditError, match="cannot be checked"):
        verify(path, [ExpectedHead(result.last_pruned_hash, 9)])
    with raw(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM records WHERE seq <= 10").fetchone()[0] == 0


def test_prune_twice_and_prune_everything(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    clock = _hourly_log(path, 20)
    with AuditLog(path, clock=clock) as log:
        assert log.prune(T0 + timedelta(hours=5, minutes=30)) is not None
        second = log.prune(T0 + timedelta(hours=15, minutes=30))
        assert second is not None and (second.pruned_from, second.pruned_through) == (6, 15)
        assert verify(path).ok
        everything = log.prune(T0 + timedelta(days=30))
        assert everything is not None and everything.pruned_through == 22
        assert [r.seq for r in read_records(path)[1]] == [23]
        log.record_service_stop("x")
    result = verify(path)
    assert result.ok and result.first_seq == 23 and result.head_seq == 24


def test_prune_expired_uses_the_configured_window(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    clock = StepClock(T0, timedelta(days=1))
    with AuditLog(path, clock=clock) as log:
        for i in range(10):
            log.record_service_stop(f"day {i}")
        # clock is at day 10 after the appends; the next call reads day 11
        result = log.prune_expired(AuditConfig(retention_days=5))
    assert result is not None and result.pruned_through == 5
    assert verify(path).ok


def test_prune_stops_at_a_younger_record_even_after_a_clock_step(tmp_path: Path) -> None:
    times = iter([T0 + timedelta(hours=h) for h in (0, 1, 2, 30, 3, 4, 31)])
    path = tmp_path / "a.db"
    with AuditLog(path, clock=lambda: next(times)) as log:
        for i in range(5):
            log.record_service_stop(f"r{i}")
        result = log.prune(T0 + timedelta(hours=10))
    assert result is not None and result.pruned_through == 2  # record 3 is stamped later
    assert verify(path).ok


def test_after_pruning_deleting_the_oldest_kept_record_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    clock = _hourly_log(path, 20)
    with AuditLog(path, clock=clock) as log:
        log.prune(T0 + timedelta(hours=8, minutes=30))
    delete_record(path, 9)
    result = verify(path)
    assert not result.ok and result.first_bad_seq == 9, result.reason


def test_after_pruning_deleting_the_checkpoint_and_history_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    clock = _hourly_log(path, 20)
    with AuditLog(path, clock=clock) as log:
        log.prune(T0 + timedelta(hours=8, minutes=30))
        log.record_service_stop("x")
    with raw(path) as conn:  # hide the pruning: drop everything up to the checkpoint
        conn.execute("DELETE FROM records WHERE seq <= 21")
    result = verify(path)
    assert not result.ok and result.first_bad_seq == 1, result.reason


def test_prune_refuses_a_tampered_log(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    clock = _hourly_log(path, 10)
    edit_byte(path, 3, "payload")
    with AuditLog(path, clock=clock) as log, pytest.raises(AuditError, match="refusing to prune"):
        log.prune(T0 + timedelta(hours=5, minutes=30))
    assert verify(path).first_bad_seq == 3


def test_append_refuses_to_restart_a_wiped_pruned_log(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    clock = _hourly_log(path, 5)
    with AuditLog(path, clock=clock) as log:
        log.prune(T0 + timedelta(hours=2, minutes=30))
    with raw(path) as conn:
        conn.execute("DELETE FROM records")
    with AuditLog(path, clock=clock) as log, pytest.raises(AuditError, match="restart"):
        log.record_service_start("0.1.0")


# --- export and offline verification -------------------------------------------------


def _export_lines(path: Path, since: datetime | None = None) -> list[str]:
    log_id, records = read_records(path, since=since)
    return [canonical_json(r.to_export(log_id)) for r in records]


def test_export_round_trip_verifies_offline(chain: tuple[Path, list[str]]) -> None:
    path, hashes = chain
    lines = _export_lines(path)
    assert len(lines) == CHAIN_LEN
    assert json.loads(lines[0])["log_id"] == log_id_of(path)
    result = verify_export_lines(lines, expect=[ExpectedHead(hashes[-1], CHAIN_LEN)])
    assert result.ok and result.records == CHAIN_LEN and result.head_hash == hashes[-1]


def test_export_of_a_pruned_log_verifies_offline(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    clock = _hourly_log(path, 12)
    with AuditLog(path, clock=clock) as log:
        log.prune(T0 + timedelta(hours=4, minutes=30))
    result = verify_export_lines(_export_lines(path))
    assert result.ok and result.first_seq == 5 and result.anchored


def test_partial_export_needs_allow_partial(chain: tuple[Path, list[str]]) -> None:
    path, _ = chain
    lines = _export_lines(path, since=T0 + timedelta(minutes=11, seconds=30))
    assert json.loads(lines[0])["seq"] == 11
    refused = verify_export_lines(lines)
    assert not refused.ok and refused.first_bad_seq == 1
    accepted = verify_export_lines(lines, allow_partial=True)
    assert accepted.ok and not accepted.anchored and accepted.first_seq == 11


@pytest.mark.parametrize("seq", [1, 8, CHAIN_LEN])
def test_tampered_export_is_caught(chain: tuple[Path, list[str]], seq: int) -> None:
    path, hashes = chain
    lines = _export_lines(path)
    rng = random.Random(seq)
    edited = json.loads(lines[seq - 1])
    edited["actor"] = edited["actor"] + rng.choice("xyz")
    cases = {
        "edit": [*lines[: seq - 1], json.dumps(edited), *lines[seq:]],
        "delete": [*lines[: seq - 1], *lines[seq:]],
        "swap": (
            [*lines[: seq - 1], lines[seq], lines[seq - 1], *lines[seq + 1:]]
            if seq < CHAIN_LEN else [*lines[:-2], lines[-1], lines[-2]]
        ),
    }
    for name, variant in cases.items():
        want = seq if not (name == "swap" and seq == CHAIN_LEN) else CHAIN_LEN - 1
        result = verify_export_lines(variant, expect=[ExpectedHead(hashes[-1], CHAIN_LEN)])
        assert not result.ok and result.first_bad_seq == want, (name, result.reason)


def test_export_does_not_repair_a_reformatted_payload(chain: tuple[Path, list[str]]) -> None:
    path, _ = chain
    with raw(path) as conn:  # same JSON value, different bytes: still an edit
        conn.execute("UPDATE records SET payload = replace(payload, ',', ', ') WHERE seq = 8")
    assert verify(path).first_bad_seq == 8
    result = verify_export_lines(_export_lines(path))
    assert not result.ok and result.first_bad_seq == 8, result.reason


def test_export_with_lines_from_another_log_is_caught(
    chain: tuple[Path, list[str]], tmp_path: Path
) -> None:
    path, _ = chain
    other = tmp_path / "b.db"
    build_chain(other)
    mixed = [*_export_lines(path)[:5], *_export_lines(other)[5:]]
    result = verify_export_lines(mixed)
    assert not result.ok and result.first_bad_seq == 6


def test_format_ts_sorts_like_time() -> None:
    a = format_ts(datetime(2025, 1, 1, 9, 59, 59, 999999, tzinfo=UTC))
    b = format_ts(datetime(2025, 1, 1, 10, tzinfo=UTC))
    assert a < b
