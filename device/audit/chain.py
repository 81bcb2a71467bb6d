"""Chain verification over a sequence of rows, wherever they come from.

The same walker checks the SQLite log on the unit and an exported JSON-lines file
on someone's laptop. It stops at the first record that fails and says which one
and why.

What it checks, record by record in ``seq`` order:

* column types (a damaged row can hold anything);
* ``seq`` continues without a gap (a deleted record shows up here);
* the stored ``hash`` equals the recomputed hash of the record's own fields and
  the log id (an edited byte in any column shows up here, including in ``hash``
  and ``prev_hash``);
* ``prev_hash`` equals the previous record's ``hash`` (reordering, insertion);
* timestamp, kind and payload are well-formed and the payload is canonical JSON
  (only reachable by someone who recomputed hashes);
* the record matches any externally seen head for its ``seq``.

The first record must chain to :data:`GENESIS_HASH` at seq 1, or, after the log
was pruned, to the hash that the newest audit ``retention_purge`` checkpoint
*inside the chain* attests for the last pruned record. After the walk, the last
record must equal the head stored beside the log (truncation) and reach every
externally seen head.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from device.audit.record import (
    GENESIS_HASH,
    HASH_PATTERN,
    KIND_PATTERN,
    TS_PATTERN,
    AuditKind,
    AuditRecord,
    canonical_json,
    record_hash,
)
from device.errors import AuditError

logger = logging.getLogger(__name__)

CHECKPOINT_TARGET = "audit"
"""``payload.target`` of the ``retention_purge`` record that prunes the audit log itself."""

Row = tuple[object, object, object, object, object, object, object]
"""``(seq, ts, kind, actor, payload, prev_hash, hash)`` as read, types unchecked."""


@dataclass(frozen=True)
class ExpectedHead:
    """A chain head seen outside the unit (e.g. the retained MQTT head message).

    Attributes:
        hash: The head's record hash.
        seq: The head's ``seq``; without it the hash is looked for anywhere in the
            chain and a mismatch cannot name a record.
    """

    hash: str
    seq: int | None = None

    @classmethod
    def parse(cls, text: str) -> ExpectedHead:
        """Parse ``SEQ:HASH`` or ``HASH``.

        Raises:
            AuditError: The text is neither.
        """
        seq_text, sep, hash_text = text.strip().rpartition(":")
        hash_text = hash_text.lower()
        if not HASH_PATTERN.fullmatch(hash_text):
            raise AuditError(f"expected head {text!r} is not SEQ:HASH or a 64-hex-digit hash")
        if not sep:
            return cls(hash=hash_text)
        try:
            seq = int(seq_text)
        except ValueError as exc:
            raise AuditError(f"expected head {text!r}: {seq_text!r} is not a number") from exc
        if seq < 0:
            raise AuditError(f"expected head {text!r}: seq must not be negative")
        return cls(hash=hash_text, seq=seq)

    def __str__(self) -> str:
        return self.hash if self.seq is None else f"{self.seq}:{self.hash}"


@dataclass(frozen=True)
class Anchor:
    """What an audit pruning checkpoint attests about the records before the oldest kept.

    Attributes:
        pruned_through: The last pruned ``seq``.
        last_hash: That record's hash: the oldest kept record's ``prev_hash``.
        checkpoint_seq: The ``seq`` of the checkpoint record.
    """

    pruned_through: int
    last_hash: str
    checkpoint_seq: int


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of verifying a chain.

    Attributes:
        ok: Every check passed.
        records: Records that verified (all of them when ``ok``).
        head_seq: ``seq`` of the last record that verified (0 if none).
        head_hash: Its hash (:data:`GENESIS_HASH` if none).
        first_bad_seq: The first record found bad (missing, edited, inserted,
            reordered); ``None`` when ``ok`` or when no single record can be named.
        reason: Why it failed, naming the record; ``"ok"`` when it did not.
        log_id: The log's id, when known.
        first_seq: ``seq`` of the oldest record present (after pruning, above 1).
        anchored: The oldest record chains to the genesis or to a pruning checkpoint;
            ``False`` only for a partial export verified with ``allow_partial``.
    """

    ok: bool
    records: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None
    reason: str
    log_id: str | None = None
    first_seq: int | None = None
    anchored: bool = True

    def to_json(self) -> dict[str, object]:
        """A plain dict for ``--json`` output."""
        return {
            "ok": self.ok,
            "records": self.records,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "log_id": self.log_id,
            "first_seq": self.first_seq,
            "anchored": self.anchored,
        }


class _BrokenError(Exception):
    """Internal: the walk found a bad record."""

    def __init__(self, seq: int | None, reason: str) -> None:
        super().__init__(reason)
        self.seq = seq
        self.reason = reason


def checkpoint_anchor(seq: int, kind: object, payload: object) -> Anchor | None:
    """The anchor an audit checkpoint record attests, or ``None`` for any other record.

    Only a ``retention_purge`` record whose payload says ``target: "audit"`` and
    carries a well-formed ``pruned_through_seq`` below its own ``seq`` and a
    ``last_pruned_hash`` counts.
    """
    if kind != AuditKind.RETENTION_PURGE.value or not isinstance(payload, str):
        return None
    try:
        obj = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("target") != CHECKPOINT_TARGET:
        return None
    through, last = obj.get("pruned_through_seq"), obj.get("last_pruned_hash")
    if (
        isinstance(through, int)
        and not isinstance(through, bool)
        and 0 < through < seq
        and isinstance(last, str)
        and HASH_PATTERN.fullmatch(last)
    ):
        return Anchor(pruned_through=through, last_hash=last, checkpoint_seq=seq)
    return None


def newest_anchor(candidates: Iterable[tuple[int, object, object]]) -> Anchor | None:
    """The checkpoint with the highest ``pruned_through`` among ``(seq, kind, payload)``."""
    best: Anchor | None = None
    for seq, kind, payload in candidates:
        anchor = checkpoint_anchor(seq, kind, payload)
        if anchor and (best is None or anchor.pruned_through > best.pruned_through):
            best = anchor
    return best


def _text(seq: int, name: str, value: object) -> str:
    if not isinstance(value, str):
        raise _BrokenError(seq, f"record {seq}: column {name} is {type(value).__name__}, not text")
    return value


def _typed(row: Row) -> AuditRecord:
    seq, ts, kind, actor, payload, prev_hash, hash_ = row
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise _BrokenError(None, f"a record has a non-integer seq {seq!r}")
    return AuditRecord(
        seq,
        _text(seq, "ts", ts),
        _text(seq, "kind", kind),
        _text(seq, "actor", actor),
        _text(seq, "payload", payload),
        _text(seq, "prev_hash", prev_hash),
        _text(seq, "hash", hash_),
    )


def _check_format(rec: AuditRecord) -> None:
    if not TS_PATTERN.fullmatch(rec.ts):
        raise _BrokenError(rec.seq, f"record {rec.seq}: timestamp {rec.ts!r} is not UTC ISO-8601")
    if not KIND_PATTERN.fullmatch(rec.kind):
        raise _BrokenError(rec.seq, f"record {rec.seq}: kind {rec.kind!r} is malformed")
    if not rec.actor:
        raise _BrokenError(rec.seq, f"record {rec.seq}: actor is empty")
    try:
        obj = json.loads(rec.payload)
    except ValueError:
        raise _BrokenError(rec.seq, f"record {rec.seq}: payload is not JSON") from None
    if not isinstance(obj, dict) or canonical_json(obj) != rec.payload:
        raise _BrokenError(rec.seq, f"record {rec.seq}: payload is not a canonical JSON object")


class ChainWalker:
    """Feeds rows in ``seq`` order; raises at the first bad one; summarises at the end.

    Args:
        log_id: The log's id (bound into every record hash).
        anchor: The newest audit checkpoint in the chain, if the log was pruned.
        expect: Heads seen outside the unit.
        allow_partial: Accept a first record whose predecessor is absent and not
            attested (a ``--since`` export); the result then has ``anchored=False``.
        find_earlier: ``find_earlier(hash, below)`` returns the ``seq`` of a verified
            record below ``below`` with that hash, or ``None``. Used only to explain a
            failure (records inserted between the two).
    """

    def __init__(
        self,
        log_id: str,
        *,
        anchor: Anchor | None,
        expect: Sequence[ExpectedHead],
        allow_partial: bool,
        find_earlier: Callable[[str, int], int | None],
    ) -> None:
        self.log_id = log_id
        self.anchor = anchor
        self.expect_by_seq = {h.seq: h for h in expect if h.seq is not None}
        self.expect_any = {h.hash for h in expect if h.seq is None}
        self.found_any: set[str] = set()
        self.allow_partial = allow_partial
        self.find_earlier = find_earlier
        self.count = 0
        self.first_seq: int | None = None
        self.last_seq = 0
        self.last_hash = GENESIS_HASH
        self.anchored = True
        self.last_matching_head: int | None = None

    def _start(self, rec: AuditRecord) -> None:
        """Check the oldest record's link to what came before it."""
        anchor = self.anchor
        if anchor is None:
            start_seq, start_hash = 1, GENESIS_HASH
            what, cover = "the genesis", "no pruning checkpoint covers the records before it"
        else:
            start_seq = anchor.pruned_through + 1
            start_hash = anchor.last_hash
            what = f"the pruning checkpoint (record {anchor.checkpoint_seq})"
            cover = f"{what} says records up to {anchor.pruned_through} were pruned"
        if rec.seq == start_seq:
            if rec.prev_hash != start_hash and self._hash_ok(rec):
                raise _BrokenError(rec.seq, f"record {rec.seq}: prev_hash does not match {what}")
        elif rec.seq > start_seq and self.allow_partial:
            self.anchored = False
        elif rec.seq > start_seq:
            raise _BrokenError(
                start_seq,
                f"record {start_seq} is missing: the log starts at record {rec.seq} and {cover}",
            )
        else:
            raise _BrokenError(rec.seq, f"record {rec.seq} should not exist: {cover}")
        self._heads_before(rec.seq)

    def _heads_before(self, first: int) -> None:
        """Externally seen heads older than the oldest record present: only the genesis
        and the pruning anchor can still be compared."""
        anchor = self.anchor
        for seq, head in sorted(self.expect_by_seq.items(), key=lambda item: item[0]):
            if seq >= first:
                break
            if seq == 0 and first == 1:
                known = GENESIS_HASH
            elif anchor is not None and seq == anchor.pruned_through == first - 1:
                known = anchor.last_hash
            else:
                raise AuditError(
                    f"the head seen outside the unit ({head}) is older than the oldest "
                    f"record present ({first}); it cannot be checked"
                )
            if head.hash != known:
                raise _BrokenError(
                    first,
                    f"record {first} does not follow the head seen outside the unit "
                    f"({head}): the log was rewritten",
                )

    def _hash_ok(self, rec: AuditRecord) -> bool:
        expected = record_hash(
            self.log_id, rec.seq, rec.ts, rec.kind, rec.actor, rec.payload, rec.prev_hash
        )
        return expected == rec.hash

    def _inserted_between(self, rec: AuditRecord) -> None:
        """If ``rec`` chains to a verified record further back, what lies between was inserted."""
        if self.first_seq is None or rec.seq - 1 < self.first_seq:
            return
        if rec.prev_hash == GENESIS_HASH and self.anchor is None and self.first_seq == 1:
            earlier: int | None = 0
        else:
            earlier = self.find_earlier(rec.prev_hash, rec.seq - 1)
        if earlier is not None and earlier < rec.seq - 1:
            first, last = earlier + 1, rec.seq - 1
            span = f"record {first} was" if first == last else f"records {first}..{last} were"
            target = "the genesis" if earlier == 0 else f"record {earlier}"
            raise _BrokenError(
                first,
                f"{span} inserted: record {rec.seq} chains to {target}, "
                f"skipping {'it' if first == last else 'them'}",
            )

    def feed(self, row: Row) -> None:
        """Check the next row.

        Raises:
            _BrokenError: The row (or a missing one before it) is bad.
        """
        rec = _typed(row)
        if self.first_seq is None:
            self._start(rec)
            self.first_seq = rec.seq
        elif rec.seq != self.last_seq + 1:
            missing = self.last_seq + 1
            raise _BrokenError(
                missing,
                f"record {missing} is missing or out of order: record {rec.seq} follows "
                f"record {self.last_seq}",
            )
        if not self._hash_ok(rec):
            self._inserted_between(rec)
            raise _BrokenError(
                rec.seq,
                f"record {rec.seq}: stored hash does not match its content (record edited, "
                "or moved from another position or log)",
            )
        if self.count and rec.prev_hash != self.last_hash:
            self._inserted_between(rec)
            raise _BrokenError(
                rec.seq,
                f"record {rec.seq}: prev_hash does not match the hash of record "
                f"{self.last_seq} (records reordered, inserted or rewritten)",
            )
        _check_format(rec)
        head = self.expect_by_seq.get(rec.seq)
        if head is not None:
            if head.hash != rec.hash:
                since = (
                    f"after record {self.last_matching_head} (the last matching head)"
                    if self.last_matching_head is not None
                    else "at or before it"
                )
                raise _BrokenError(
                    rec.seq,
                    f"record {rec.seq} differs from the head seen outside the unit "
                    f"({head}): the log was rewritten {since}",
                )
            self.last_matching_head = rec.seq
        if rec.hash in self.expect_any:
            self.found_any.add(rec.hash)
        self.count += 1
        self.last_seq = rec.seq
        self.last_hash = rec.hash

    def finish(self, stored_head: tuple[int, str] | None, *, check_stored: bool) -> None:
        """End-of-chain checks: the stored head and externally seen heads.

        Args:
            stored_head: ``(seq, hash)`` kept beside the log, if any.
            check_stored: Whether a stored head must exist (the SQLite log; not exports).

        Raises:
            _BrokenError: The chain ends before or after where it should.
        """
        if self.first_seq is None:
            self._heads_before(1)
        problems: list[tuple[int | None, str]] = []
        if check_stored:
            if stored_head is None:
                problems.append((None, "the stored chain head is missing"))
            else:
                seq, hash_ = stored_head
                if seq > self.last_seq:
                    problems.append((
                        self.last_seq + 1,
                        f"record {self.last_seq + 1} is missing: the stored head says the log "
                        f"reached record {seq}, but it ends at record {self.last_seq} "
                        "(records deleted from the end)",
                    ))
                elif seq < self.last_seq:
                    problems.append((
                        seq + 1,
                        f"record {seq + 1} was appended behind facegate's back: the stored head "
                        f"is record {seq}, but the log goes on to record {self.last_seq}",
                    ))
                elif hash_ != self.last_hash:
                    problems.append((
                        seq,
                        f"record {seq}: hash differs from the stored head (record or head edited)",
                    ))
        for seq, head in self.expect_by_seq.items():
            if seq > self.last_seq:
                problems.append((
                    self.last_seq + 1,
                    f"record {self.last_seq + 1} is missing: the head seen outside the unit "
                    f"({head}) reached record {seq}, but the log ends at record "
                    f"{self.last_seq} (records deleted from the end, or the log replaced)",
                ))
        missing_any = self.expect_any - self.found_any
        if self.anchor is not None and self.anchor.last_hash in missing_any:
            missing_any.discard(self.anchor.last_hash)
        if GENESIS_HASH in missing_any and self.first_seq in (None, 1):
            missing_any.discard(GENESIS_HASH)
        for hash_ in sorted(missing_any):
            problems.append((
                None,
                f"no record has the hash seen outside the unit ({hash_}): the log was "
                "rewritten or truncated (or that head is older than the pruned records)",
            ))
        if problems:
            problems.sort(key=lambda p: (p[0] is None, p[0] or 0))
            seq_bad, reason = problems[0]
            raise _BrokenError(seq_bad, reason)

    def result(self, bad: _BrokenError | None) -> VerifyResult:
        """Summarise the walk."""
        if bad is None:
            return VerifyResult(
                ok=True, records=self.count, head_seq=self.last_seq, head_hash=self.last_hash,
                first_bad_seq=None, reason="ok", log_id=self.log_id, first_seq=self.first_seq,
                anchored=self.anchored,
            )
        return VerifyResult(
            ok=False, records=self.count, head_seq=self.last_seq, head_hash=self.last_hash,
            first_bad_seq=bad.seq, reason=bad.reason, log_id=self.log_id,
            first_seq=self.first_seq, anchored=self.anchored,
        )


def walk(
    rows: Iterable[Row],
    *,
    log_id: str,
    anchor: Anchor | None,
    stored_head: tuple[int, str] | None,
    check_stored: bool,
    expect: Sequence[ExpectedHead] = (),
    allow_partial: bool = False,
    find_earlier: Callable[[str, int], int | None] | None = None,
) -> VerifyResult:
    """Verify ``rows`` (in ``seq`` order) as one chain; see the module doc.

    Args:
        rows: ``(seq, ts, kind, actor, payload, prev_hash, hash)`` tuples.
        log_id: The log's id.
        anchor: The newest audit pruning checkpoint (see :func:`newest_anchor`).
        stored_head: ``(seq, hash)`` kept beside the records.
        check_stored: Require ``stored_head`` to exist and match.
        expect: Heads seen outside the unit.
        allow_partial: Accept an unanchored first record (partial export).
        find_earlier: Looks up verified records by hash, to explain insertions.

    Returns:
        The result; ``ok`` is false with the first bad record named on failure.

    Raises:
        AuditError: An expected head is older than every record present, so it
            cannot be checked either way.
    """
    walker = ChainWalker(
        log_id, anchor=anchor, expect=expect, allow_partial=allow_partial,
        find_earlier=find_earlier or (lambda _hash, _below: None),
    )
    try:
        for row in rows:
            walker.feed(row)
        walker.finish(stored_head, check_stored=check_stored)
    except _BrokenError as bad:
        logger.info("audit chain verification failed: %s", bad.reason)
        return walker.result(bad)
    return walker.result(None)


def verify_export_lines(
    lines: Iterable[str],
    *,
    expect: Sequence[ExpectedHead] = (),
    allow_partial: bool = False,
) -> VerifyResult:
    """Verify an exported JSON-lines audit log (``facegate audit export``) offline.

    The anchor after pruning is the newest audit checkpoint in the file, as on the
    unit. There is no stored head in an export: truncation of the file is caught
    only by ``expect`` (a head seen outside the unit).

    Args:
        lines: The file's lines.
        expect: Heads seen outside the unit.
        allow_partial: Accept a file that starts after the oldest record (``--since``).

    Returns:
        The result, naming the first bad record on failure.

    Raises:
        AuditError: An expected head cannot be checked against this file.
    """
    rows: list[Row] = []
    log_ids: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            return _export_bad(f"line {number} is not JSON", None)
        if not isinstance(obj, dict):
            return _export_bad(f"line {number} is not a JSON object", None)
        seq = obj.get("seq")
        seq_named = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        log_id = obj.get("log_id")
        if not isinstance(log_id, str):
            return _export_bad(f"line {number} (record {seq}) has no log_id", seq_named)
        log_ids.add(log_id)
        if len(log_ids) > 1:
            return _export_bad(
                f"line {number} (record {seq}) belongs to a different log ({log_id})", seq_named
            )
        payload = obj.get("payload")
        try:
            payload_text = canonical_json(payload) if isinstance(payload, Mapping) else payload
        except AuditError:
            payload_text = None  # NaN and friends: the walker reports a non-text payload
        rows.append((
            seq, obj.get("ts"), obj.get("kind"), obj.get("actor"), payload_text,
            obj.get("prev_hash"), obj.get("hash"),
        ))
    if not log_ids:
        return walk([], log_id="", anchor=None, stored_head=None, check_stored=False,
                    expect=expect, allow_partial=allow_partial)
    anchor = newest_anchor(
        (row[0], row[2], row[4])
        for row in rows
        if isinstance(row[0], int) and not isinstance(row[0], bool)
    )
    seen: dict[str, int] = {}

    def remember(rows_in: Iterable[Row]) -> Iterable[Row]:
        for row in rows_in:
            yield row
            if isinstance(row[6], str) and isinstance(row[0], int):
                seen.setdefault(row[6], row[0])

    def find_earlier(hash_: str, below: int) -> int | None:
        seq = seen.get(hash_)
        return seq if seq is not None and seq < below else None

    return walk(
        remember(rows), log_id=log_ids.pop(), anchor=anchor, stored_head=None,
        check_stored=False, expect=expect, allow_partial=allow_partial,
        find_earlier=find_earlier,
    )


def _export_bad(reason: str, seq: int | None) -> VerifyResult:
    return VerifyResult(
        ok=False, records=0, head_seq=0, head_hash=GENESIS_HASH, first_bad_seq=seq,
        reason=reason,
    )
