"""``facegate audit``: verify, export and show the tamper-evident audit log.

Exit status of ``verify``: 0 intact, 1 tampered (the first bad record is named),
2 when it cannot check (missing file, not an audit log, bad arguments).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

import click

from device.audit import (
    AuditRecord,
    ExpectedHead,
    VerifyResult,
    default_audit_path,
    read_records,
    verify,
    verify_export_lines,
)
from device.audit.record import canonical_json, parse_time
from device.cli.common import STATE_DIR_HELP, emit_json, handle_errors, json_option
from device.errors import AuditError


def _log_options(func: click.decorators.FC) -> click.decorators.FC:
    """``--audit-log FILE`` or ``--config FILE`` (the unit's audit log)."""
    func = click.option(
        "--config", "config_path", default=None,
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="The unit's configuration: read its audit log.")(func)
    return click.option(
        "--audit-log", "db", type=click.Path(path_type=Path, dir_okay=False), default=None,
        help=f"Audit log file. [default: the config's, else <state dir>/audit.db; "
             f"{STATE_DIR_HELP}]")(func)


def _db(path: Path | None, config_path: Path | None = None) -> Path:
    if path is not None:
        return path
    if config_path is not None:
        from device.service.config import load_config  # the service's models: only here

        return load_config(config_path)[0].audit_path
    return default_audit_path()


@click.group("audit")
def audit_group() -> None:
    """Verify, export and show the hash-chained audit log."""


@audit_group.command("verify")
@_log_options
@click.option(
    "--jsonl",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Verify an exported JSON-lines file (facegate audit export) instead of the database.",
)
@click.option(
    "--expect-head",
    "expect_heads",
    multiple=True,
    metavar="SEQ:HASH",
    help="A chain head seen outside the unit (the retained facegate/<unit>/audit/head "
    "message); the log must contain it. Repeatable; catches truncation and rewritten "
    "chains that verify on their own.",
)
@click.option(
    "--partial",
    is_flag=True,
    help="With --jsonl: accept an export that starts after the oldest record (--since).",
)
@json_option
@handle_errors
def verify_cmd(
    db: Path | None,
    config_path: Path | None,
    jsonl: Path | None,
    expect_heads: tuple[str, ...],
    partial: bool,
    as_json: bool,
) -> None:
    """Recompute the hash chain; name the first edited, missing, inserted or moved record.

    Exits 0 when the log is intact, 1 when it is not, 2 when it cannot be checked.
    """
    if (db is not None or config_path is not None) and jsonl is not None:
        raise click.UsageError("give --audit-log (or --config) or --jsonl, not both")
    if partial and jsonl is None:
        raise click.UsageError("--partial applies to --jsonl exports only")
    expect = [ExpectedHead.parse(text) for text in expect_heads]
    if jsonl is not None:
        result = _verify_jsonl(jsonl, expect, partial)
        where = str(jsonl)
    else:
        path = _db(db, config_path)
        result = verify(path, expect)
        where = str(path)
    if as_json:
        emit_json({"path": where, **result.to_json()})
    else:
        click.echo(_describe(where, result))
    if not result.ok:
        sys.exit(1)


def _verify_jsonl(path: Path, expect: list[ExpectedHead], partial: bool) -> VerifyResult:
    try:
        with path.open(encoding="utf-8", errors="surrogateescape") as handle:
            return verify_export_lines(handle, expect=expect, allow_partial=partial)
    except OSError as exc:
        raise AuditError(f"cannot read audit export {path}: {exc.strerror}") from exc


def _describe(where: str, result: VerifyResult) -> str:
    if not result.ok:
        named = (
            f"first bad record: {result.first_bad_seq}"
            if result.first_bad_seq is not None
            else "no single record can be named"
        )
        return f"TAMPERED {where}: {result.reason} ({named})"
    span = (
        "empty"
        if result.records == 0
        else f"records {result.first_seq}..{result.head_seq}"
    )
    note = "" if result.anchored else " (partial export: start not anchored)"
    return (
        f"ok {where}: {result.records} records verified ({span}){note}; "
        f"head {result.head_seq}:{result.head_hash}"
    )


@audit_group.command("export")
@_log_options
@click.option(
    "--since",
    default=None,
    metavar="ISO-TIME",
    help="Start at the first record written at or after this time (UTC if no zone given) "
    "and include everything after it.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    default=Path("-"),
    help="Write here (created owner-only) instead of standard output.",
)
@handle_errors
def export_cmd(db: Path | None, config_path: Path | None, since: str | None,
               output: Path) -> None:
    """Write records as JSON lines, one per record, verifiable offline with
    ``facegate audit verify --jsonl FILE``."""
    since_at = parse_time(since) if since is not None else None
    log_id, records = read_records(_db(db, config_path), since=since_at)
    if str(output) == "-":
        _write_export(sys.stdout, log_id, records)
        return
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            _write_export(handle, log_id, records)
    except OSError as exc:
        raise AuditError(f"cannot write audit export {output}: {exc.strerror}") from exc
    click.echo(f"exported {len(records)} records to {output}", err=True)


def _write_export(handle: TextIO, log_id: str, records: list[AuditRecord]) -> None:
    for record in records:
        handle.write(canonical_json(record.to_export(log_id)) + "\n")


@audit_group.command("show")
@_log_options
@click.option("--last", "last", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many of the newest records to show.")
@json_option
@handle_errors
def show_cmd(db: Path | None, config_path: Path | None, last: int, as_json: bool) -> None:
    """The newest records, oldest first (does not verify; use ``audit verify``)."""
    log_id, records = read_records(_db(db, config_path), last=last)
    if as_json:
        emit_json([record.to_export(log_id) for record in records])
        return
    for record in records:
        click.echo(
            f"{record.seq:>7} {record.ts} {record.kind:<17} {record.actor:<10} {record.payload}"
        )
