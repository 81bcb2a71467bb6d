"""``facegate audit``: verify/export/show against real SQLite files, tampered the way an
attacker with write access would, plus crash consistency under SIGKILL."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from device.audit import AuditLog, verify
from device.cli import main
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
    set_meta_head,
    swap_contents,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("audit-cli") / "audit.db"
    return path, build_chain(path)


@pytest.fixture
def chain(template: tuple[Path, list[str]], tmp_path: Path) -> tuple[Path, list[str]]:
    return copy_of(template[0], tmp_path), template[1]


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["audit", *args], env=env, catch_exceptions=False)


def assert_tampered(result: Result, seq: int) -> None:
    assert result.exit_code == 1, result.output
    assert re.search(rf"\brecord {seq}\b", result.output), result.output
    assert f"first bad record: {seq}" in result.output


def test_intact_log_exits_zero(chain: tuple[Path, list[str]]) -> None:
    path, hashes = chain
    result = run("verify", "--audit-log", str(path))
    assert result.exit_code == 0, result.output
    assert f"head {CHAIN_LEN}:{hashes[-1]}" in result.output
    as_json = run("verify", "--audit-log", str(path), "--json")
    doc = json.loads(as_json.output)
    assert doc["ok"] is True and doc["records"] == CHAIN_LEN and doc["first_bad_seq"] is None


@pytest.mark.parametrize("seq", range(1, CHAIN_LEN + 1))
def test_one_edited_byte_in_any_column_of_any_record(
    template: tuple[Path, list[str]], tmp_path: Path, seq: int
) -> None:
    for column in COLUMNS:
        path = copy_of(template[0], tmp_path, f"{column}.db")
        edit_byte(path, seq, column, index=seq + 5 * len(column))
        assert_tampered(run("verify", "--audit-log", str(path)), seq)
        doc = json.loads(run("verify", "--audit-log", str(path), "--json").output)
        assert doc["ok"] is False and doc["first_bad_seq"] == seq


@pytest.mark.parametrize("seq", [1, 10, CHAIN_LEN])
def test_deleted_record_first_middle_last(chain: tuple[Path, list[str]], seq: int) -> None:
    path, _ = chain
    delete_record(path, seq)
    assert_tampered(run("verify", "--audit-log", str(path)), seq)


def test_deleted_last_record_with_edited_head_is_caught_by_expect_head(
    chain: tuple[Path, list[str]],
) -> None:
    path, hashes = chain
    delete_record(path, CHAIN_LEN)
    set_meta_head(path, CHAIN_LEN - 1, hashes[CHAIN_LEN - 2])
    assert run("verify", "--audit-log", str(path)).exit_code == 0  # the honest limit
    result = run("verify", "--audit-log", str(path), "--expect-head", f"{CHAIN_LEN}:{hashes[-1]}")
    assert_tampered(result, CHAIN_LEN)


@pytest.mark.parametrize("at", [1, 9, CHAIN_LEN])
def test_inserted_forged_record_is_named(chain: tuple[Path, list[str]], at: int) -> None:
    path, _ = chain
    insert_forged(path, at, chain_prev=False)
    assert_tampered(run("verify", "--audit-log", str(path)), at)


def test_inserted_record_chained_to_its_predecessor_is_named(
    chain: tuple[Path, list[str]],
) -> None:
    path, _ = chain
    insert_forged(path, 12, chain_prev=True)
    result = run("verify", "--audit-log", str(path))
    assert_tampered(result, 12)
    assert "inserted" in result.output


def test_fully_rewritten_suffix_is_caught_only_with_expect_head(
    chain: tuple[Path, list[str]],
) -> None:
    path, hashes = chain
    insert_forged(path, 6, chain_prev=True, rehash_suffix=True, update_head=True)
    assert run("verify", "--audit-log", str(path)).exit_code == 0  # the honest limit
    result = run("verify", "--audit-log", str(path), "--expect-head", f"{CHAIN_LEN}:{hashes[-1]}")
    assert_tampered(result, CHAIN_LEN)
    narrowed = run("verify", "--audit-log", str(path), "--expect-head", f"3:{hashes[2]}",
                   "--expect-head", f"8:{hashes[7]}")
    assert_tampered(narrowed, 8)
    assert "after record 3" in narrowed.output


@pytest.mark.parametrize(("a", "b"), [(1, 2), (7, 8), (4, 17), (19, 20)])
def test_swapped_records_are_named(chain: tuple[Path, list[str]], a: int, b: int) -> None:
    path, _ = chain
    swap_contents(path, a, b)
    assert_tampered(run("verify", "--audit-log", str(path)), a)


def test_errors_exit_two(tmp_path: Path, chain: tuple[Path, list[str]]) -> None:
    missing = run("verify", "--audit-log", str(tmp_path / "nope.db"))
    assert missing.exit_code == 2 and "does not exist" in missing.output
    bad_head = run("verify", "--audit-log", str(chain[0]), "--expect-head", "12:xyz")
    assert bad_head.exit_code == 2 and "SEQ:HASH" in bad_head.output
    both = run("verify", "--audit-log", str(chain[0]), "--jsonl", str(tmp_path / "x"))
    assert both.exit_code == 2
    assert run("show", "--audit-log", str(tmp_path / "nope.db")).exit_code == 2
    assert run("export", "--audit-log", str(chain[0]), "--since", "yesterday").exit_code == 2


def test_default_path_is_in_the_state_directory(
    tmp_path: Path, template: tuple[Path, list[str]]
) -> None:
    copy_of(template[0], tmp_path)
    result = run("verify", env={"STATE_DIRECTORY": str(tmp_path)})
    assert result.exit_code == 0 and str(tmp_path / "audit.db") in result.output


def test_export_then_verify_offline(chain: tuple[Path, list[str]], tmp_path: Path) -> None:
    path, hashes = chain
    out = tmp_path / "export.jsonl"
    result = run("export", "--audit-log", str(path), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o600
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == CHAIN_LEN
    first = json.loads(lines[0])
    assert {"seq", "hash", "prev_hash", "log_id", "payload"} <= first.keys()
    ok = run("verify", "--jsonl", str(out), "--expect-head", f"{CHAIN_LEN}:{hashes[-1]}")
    assert ok.exit_code == 0, ok.output
    # stdout export is the same bytes
    assert run("export", "--audit-log", str(path)).stdout.splitlines() == lines
    # tamper with the file: change one identity in record 9
    record = json.loads(lines[8])
    record["payload"]["identity_id"] = "mallory"
    lines[8] = json.dumps(record)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert_tampered(run("verify", "--jsonl", str(out)), 9)
    # truncating the file is caught only with an external head
    out.write_text("\n".join(lines[:5]) + "\n", encoding="utf-8")
    assert_tampered(run("verify", "--jsonl", str(out), "--expect-head",
                        f"{CHAIN_LEN}:{hashes[-1]}"), 6)


def test_export_since_is_partial(chain: tuple[Path, list[str]], tmp_path: Path) -> None:
    path, _ = chain
    out = tmp_path / "since.jsonl"
    since = (T0 + timedelta(minutes=15, seconds=30)).isoformat()
    assert run("export", "--audit-log", str(path), "--since", since, "-o", str(out)).exit_code == 0
    seqs = [json.loads(line)["seq"] for line in out.read_text().splitlines()]
    assert seqs == list(range(15, CHAIN_LEN + 1))
    assert run("verify", "--jsonl", str(out)).exit_code == 1
    partial = run("verify", "--jsonl", str(out), "--partial")
    assert partial.exit_code == 0 and "partial export" in partial.output


def test_show(chain: tuple[Path, list[str]]) -> None:
    path, _ = chain
    text = run("show", "--audit-log", str(path), "--last", "3")
    assert text.exit_code == 0
    assert [line.split()[0] for line in text.output.splitlines()] == ["18", "19", "20"]
    doc = json.loads(run("show", "--audit-log", str(path), "--last", "2", "--json").output)
    assert [r["seq"] for r in doc] == [19, 20] and doc[1]["kind"] == "service_stop"


def test_console_script_exit_codes(chain: tuple[Path, list[str]]) -> None:
    path, _ = chain
    exe = Path(sys.executable).with_name("facegate")
    if not exe.exists():
        pytest.skip("console script not installed (pip install -e .)")
    assert subprocess.run([exe, "audit", "verify", "--audit-log", path], capture_output=True,
                          check=False).returncode == 0
    edit_byte(path, 4, "actor")
    proc = subprocess.run([exe, "audit", "verify", "--audit-log", path], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 1 and "record 4" in proc.stdout


# --- crash consistency and several processes -----------------------------------------

WRITER = """
import sys
from pathlib import Path
from device.audit import AuditLog
path, tag, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
with AuditLog(path) as log:
    for i in range(count):
        rec = log.record_match(f"{tag}-{i}", "alice", 0.71, 0.6, 4, "front")
        print(rec.seq, flush=True)
"""


def _writer(path: Path, tag: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), tag, str(count)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )


@pytest.mark.parametrize("seed", range(5))
def test_sigkill_mid_append_loop_leaves_a_log_that_verifies(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "audit.db"
    kill_after = random.Random(seed).randint(5, 150)
    proc = _writer(path, "crash", 100_000)
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:  # kill by record count, not by time
        seen = int(line)
        if seen >= kill_after:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    result = verify(path)
    assert result.ok, result.reason
    assert result.head_seq >= kill_after  # every acknowledged append survived
    run_ok = run("verify", "--audit-log", str(path))
    assert run_ok.exit_code == 0, run_ok.output
    with AuditLog(path, clock=StepClock()) as log:  # and the writer can carry on
        assert log.record_service_start("0.1.0").seq == result.head_seq + 1
    assert verify(path).ok


def test_two_processes_appending_make_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    AuditLog(path).close()  # create first, so neither races to create the schema
    procs = [_writer(path, tag, 150) for tag in ("a", "b")]
    for proc in procs:
        out, _ = proc.communicate()
        assert proc.returncode == 0
        assert len(out.split()) == 150
    result = verify(path)
    assert result.ok and result.records == 300 and result.head_seq == 300
