"""One audit record: its kinds, its canonical encoding, its hash, and its privacy check.

Everything here is a pure function over plain values, so the chain rules can be
tested and re-implemented (by an off-unit verifier) without a database.

The hash of a record is SHA-256 over eight fields, each UTF-8 encoded and preceded
by its length as an 8-byte big-endian integer::

    "facegate-audit/1", log_id, str(seq), ts, kind, actor, payload, prev_hash

Length prefixes make the encoding unambiguous: no two different field tuples give
the same bytes, whatever characters the fields contain. ``payload`` is hashed as
its stored canonical JSON text, so a verifier never has to re-serialise JSON
(floats in particular) the way Python does; it hashes the bytes it reads.
``log_id`` is a random per-log identifier, so a record (or a whole chain) copied
from another unit's log does not verify in this one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from device import privacy
from device.errors import AuditError
from device.timestamps import format_utc, parse_utc

HASH_DOMAIN: Final = "facegate-audit/1"
GENESIS_HASH: Final = "0" * 64
"""The ``prev_hash`` of record 1."""

TS_PATTERN: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
HASH_PATTERN: Final = re.compile(r"[0-9a-f]{64}")
KIND_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")

MAX_ACTOR_CHARS: Final = 128


class AuditKind(StrEnum):
    """What an audit record is about. Add members here; verification accepts any
    lower-case kind, so logs written by a newer version still verify with an older one."""

    SERVICE_START = "service_start"
    SERVICE_STOP = "service_stop"
    CONFIG_CHANGE = "config_change"
    THRESHOLD_CHANGE = "threshold_change"
    ENROLL = "enroll"
    DELETE = "delete"
    SYNC_APPLIED = "sync_applied"
    SYNC_REFUSED = "sync_refused"
    MATCH_DECISION = "match_decision"
    RETENTION_PURGE = "retention_purge"
    RETENTION_REFUSED = "retention_refused"
    REVIEW = "review"
    REVIEW_REFUSED = "review_refused"


@dataclass(frozen=True)
class AuditRecord:
    """One stored record, exactly as it sits in the log.

    Attributes:
        seq: Position in the chain, from 1, without gaps.
        ts: UTC time of writing, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.
        kind: An :class:`AuditKind` value (kept as text: newer kinds stay readable).
        actor: Who caused it (``service``, ``cli``, ``sync``, ``pipeline``, …).
        payload: Canonical JSON text of a JSON object.
        prev_hash: ``hash`` of record ``seq - 1`` (:data:`GENESIS_HASH` for record 1).
        hash: :func:`record_hash` of the fields above and the log's id.
    """

    seq: int
    ts: str
    kind: str
    actor: str
    payload: str
    prev_hash: str
    hash: str

    def payload_obj(self) -> dict[str, object]:
        """The payload parsed back into a dict.

        Raises:
            AuditError: The stored payload is not a JSON object.
        """
        return parse_payload(self.payload)

    def to_export(self, log_id: str) -> dict[str, object]:
        """The JSON-lines form used by ``facegate audit export``: every field needed to
        verify the record offline.

        The payload is a JSON object for readability when the stored text is exactly
        its canonical form; otherwise (only after tampering) it is exported as the
        stored string, so re-serialising cannot repair an edit and offline
        verification reaches the same verdict as verification on the unit.
        """
        payload: object = self.payload
        try:
            obj = json.loads(self.payload)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            try:
                if canonical_json(obj) == self.payload:
                    payload = obj
            except AuditError:
                pass
        return {
            "log_id": log_id,
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "actor": self.actor,
            "payload": payload,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def canonical_json(obj: object) -> str:
    """Serialise ``obj`` canonically: sorted keys, no whitespace, UTF-8 (no ``\\u``
    escapes for non-ASCII), no NaN or infinities.

    Raises:
        AuditError: ``obj`` is not representable as strict JSON.
    """
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit payload is not plain JSON: {exc}") from exc


def parse_payload(text: str) -> dict[str, object]:
    """Parse a stored payload.

    Raises:
        AuditError: ``text`` is not a JSON object.
    """
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise AuditError(f"audit payload is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise AuditError("audit payload is not a JSON object")
    return obj


def record_hash(
    log_id: str, seq: int, ts: str, kind: str, actor: str, payload: str, prev_hash: str
) -> str:
    """SHA-256 (hex) over the length-prefixed fields of a record; see the module doc.

    Strings read back from a damaged file may hold undecodable bytes (as surrogate
    escapes); they are hashed as the original bytes, so damage changes the hash.
    """
    digest = hashlib.sha256()
    for field in (HASH_DOMAIN, log_id, str(seq), ts, kind, actor, payload, prev_hash):
        data = field.encode("utf-8", "surrogateescape")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def format_ts(when: datetime) -> str:
    """``when`` as the log's fixed-width UTC text, microseconds (sorts as it compares).

    Raises:
        ValueError: ``when`` is naive; audit times must carry a time zone.
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return format_utc(when, digits=6)


def parse_time(text: str) -> datetime:
    """Parse an ISO-8601 time as typed on a command line; naive times are UTC.

    Raises:
        AuditError: ``text`` is not an ISO-8601 date or time.
    """
    try:
        return parse_utc(text, naive_is_utc=True)
    except ValueError as exc:
        raise AuditError(f"not an ISO-8601 time: {text!r}") from exc


def check_payload(payload: Mapping[str, object]) -> str:
    """Check a payload against the privacy policy and return its canonical JSON text.

    The audit log must never hold biometric data; :func:`device.privacy.check_payload`
    is the policy (the same one every published payload passes). On top of it an
    audit payload must be a mapping.

    Args:
        payload: The record's payload.

    Returns:
        The canonical JSON text to store.

    Raises:
        AuditError: The payload holds (or looks like it holds) biometric data (a
            :class:`~device.errors.PrivacyError`), or is not a plain JSON object.
    """
    if not isinstance(payload, Mapping):
        raise AuditError(f"audit payload must be a mapping, not {type(payload).__name__}")
    privacy.check_payload(payload, where="audit payload")
    return canonical_json(dict(payload))


def check_actor(actor: str) -> None:
    """Refuse an empty, over-long or control-character actor.

    Raises:
        AuditError: The actor is unusable.
    """
    if not isinstance(actor, str) or not actor or len(actor) > MAX_ACTOR_CHARS:
        raise AuditError(f"audit actor must be 1–{MAX_ACTOR_CHARS} characters, got {actor!r}")
    if any(ch < " " or ch == "\x7f" for ch in actor):
        raise AuditError(f"audit actor contains control characters: {actor!r}")
    try:
        actor.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise AuditError(f"audit actor is not valid Unicode: {actor!r}") from exc
