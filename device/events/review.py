"""Review verdicts and their acknowledgements: the payloads, signing and verification.

A console publishes a reviewer's verdict on one match event to
``facegate/<unit>/review`` (QoS 1, not retained); the unit answers on the retained
``facegate/<unit>/review/ack``. The verdict is signed with the reviewer's Ed25519 key
exactly the way gallery manifests are: the signature covers the canonical JSON
(:func:`device.sync.manifest.canonical_json`) of every field except ``signature``,
and the reviewer is named by :func:`device.sync.keys.key_id`. The reviewer's note
and the identity's label never travel: the verdict names the event only.

This module is shared by the unit (:func:`parse_verdict`, :meth:`ReviewVerdict.verify`,
:class:`ReviewAck`) and the console (:func:`sign_verdict`, :func:`parse_ack`); it has
no state and does no I/O.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Literal, get_args

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.errors import DeviceError, PublishError
from device.events.schema import REVIEW_ACK_SCHEMA, REVIEW_SCHEMA, prepare, validate
from device.sync.keys import TrustedKeys, key_id
from device.sync.manifest import canonical_json
from device.timestamps import format_utc, parse_utc

#: Largest verdict the unit reads (a real one is about 400 bytes).
MAX_VERDICT_BYTES: Final = 4096

Verdict = Literal["confirmed", "not_this_person", "cannot_tell"]
VERDICTS: Final[tuple[str, ...]] = get_args(Verdict)
Outcome = Literal["recorded", "refused"]

_UUID_RE: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")


class RefusalReason(StrEnum):
    """Why a unit refused a verdict (the ack's ``reason``)."""

    MALFORMED = "malformed"
    """Not a verdict of this schema: not UTF-8 JSON, missing or unknown fields, bad values."""
    WRONG_UNIT = "wrong_unit"
    """Addressed to another unit."""
    BAD_SIGNATURE = "bad_signature"
    """Signed by a trusted key id, but the signature does not verify (altered or forged)."""
    UNTRUSTED_KEY = "untrusted_key"
    """The reviewer's key is not among the unit's review keys."""
    REPLAYED = "replayed"
    """This nonce, or a verdict by this reviewer on this event, is already recorded."""
    UNKNOWN_EVENT = "unknown_event"
    """The unit never published a match event with this id."""
    EXPIRED = "expired"
    """Issued longer ago than the unit accepts, or in the future beyond the clock skew."""


class ReviewRefusedError(DeviceError):
    """A verdict was refused.

    Attributes:
        reason: The refusal code.
        event_id: The verdict's event id, when it could be read.
        reviewer: Its reviewer key id, when it could be read.
        nonce: Its nonce, when it could be read.
    """

    def __init__(self, reason: RefusalReason, message: str, *, event_id: str | None = None,
                 reviewer: str | None = None, nonce: str | None = None) -> None:
        super().__init__(f"review verdict refused ({reason}): {message}")
        self.reason = reason
        self.event_id = event_id
        self.reviewer = reviewer
        self.nonce = nonce


@dataclass(frozen=True, slots=True)
class ReviewVerdict:
    """One signed verdict, as published on ``facegate/<unit>/review``.

    Attributes:
        unit: The unit the event came from.
        event_id: The match event's ``event_id``.
        verdict: ``confirmed``, ``not_this_person`` or ``cannot_tell``.
        reviewer: Key id of the reviewer's public key.
        issued_at: UTC time of signing, milliseconds (``2025-01-02T03:04:05.678Z``).
        nonce: A fresh UUID4 per verdict.
        signature: The 64-byte Ed25519 signature over :meth:`signed_bytes`; empty
            before :meth:`sign`.
    """

    unit: str
    event_id: str
    verdict: Verdict
    reviewer: str
    issued_at: str
    nonce: str
    signature: bytes = b""

    def body(self) -> dict[str, str]:
        """Every field except ``signature``: what is signed."""
        return {"schema": REVIEW_SCHEMA, "unit": self.unit, "event_id": self.event_id,
                "verdict": self.verdict, "reviewer": self.reviewer,
                "issued_at": self.issued_at, "nonce": self.nonce}

    def signed_bytes(self) -> bytes:
        """The canonical JSON bytes the signature covers."""
        return canonical_json(self.body())

    def to_json(self) -> dict[str, str]:
        """The whole payload, signature included (base64)."""
        return {**self.body(), "signature": base64.b64encode(self.signature).decode("ascii")}

    def encode(self) -> bytes:
        """The wire bytes: canonical JSON of :meth:`to_json`, schema-checked.

        Raises:
            PublishError: The verdict does not match ``facegate/review/1`` (unsigned,
                bad ids or time).
        """
        payload = self.to_json()
        validate(REVIEW_SCHEMA, payload)
        return canonical_json(payload)

    def sign(self, key: Ed25519PrivateKey) -> ReviewVerdict:
        """A copy naming ``key`` as reviewer and signed by it."""
        named = replace(self, reviewer=key_id(key.public_key()), signature=b"")
        return replace(named, signature=key.sign(named.signed_bytes()))

    def verify(self, trusted: TrustedKeys) -> None:
        """Check the signature against the unit's review keys.

        Raises:
            ReviewRefusedError: ``untrusted_key`` when the reviewer is not trusted;
                ``bad_signature`` when the signature does not verify.
        """
        public = trusted.get(self.reviewer)
        if public is None:
            raise self._refused(RefusalReason.UNTRUSTED_KEY,
                                f"reviewer key {self.reviewer[:16]}… is not a trusted review key")
        try:
            public.verify(self.signature, self.signed_bytes())
        except InvalidSignature:
            raise self._refused(RefusalReason.BAD_SIGNATURE,
                                f"the signature by {self.reviewer[:16]}… does not verify") from None

    def issued(self) -> datetime:
        """``issued_at`` as an aware datetime (validated by :func:`parse_verdict`)."""
        return parse_utc(self.issued_at)

    def _refused(self, reason: RefusalReason, message: str) -> ReviewRefusedError:
        return ReviewRefusedError(reason, message, event_id=self.event_id, reviewer=self.reviewer,
                             nonce=self.nonce)


def sign_verdict(key: Ed25519PrivateKey, *, unit: str, event_id: str, verdict: Verdict,
                 issued_at: datetime | float, nonce: str | None = None) -> ReviewVerdict:
    """A new verdict signed by ``key`` (the console's side).

    Args:
        key: The reviewer's private key (``facegate keys generate``).
        unit: The unit the event came from.
        event_id: The match event.
        verdict: The reviewer's decision.
        issued_at: When it is signed (aware datetime or epoch seconds).
        nonce: A UUID4; a fresh one when None.

    Raises:
        PublishError: A field is unusable (the schema names it).
    """
    unsigned = ReviewVerdict(unit=unit, event_id=event_id, verdict=verdict, reviewer="",
                             issued_at=format_utc(issued_at, digits=3),
                             nonce=nonce or str(uuid.uuid4()))
    signed = unsigned.sign(key)
    validate(REVIEW_SCHEMA, signed.to_json())
    return signed


def _salvage(obj: object) -> dict[str, str | None]:
    """The ids of a malformed verdict that look like ids (for the refusal's record)."""
    found: dict[str, str | None] = {"event_id": None, "reviewer": None, "nonce": None}
    if isinstance(obj, dict):
        for name, pattern in (("event_id", _UUID_RE), ("reviewer", _HEX64_RE),
                              ("nonce", _UUID_RE)):
            value = obj.get(name)
            if isinstance(value, str) and pattern.fullmatch(value):
                found[name] = value
    return found


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key[:40]!r} appears twice")
        out[key] = value
    return out


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def parse_verdict(data: bytes) -> ReviewVerdict:
    """Parse and schema-check a received verdict (the signature is checked by
    :meth:`ReviewVerdict.verify`).

    Raises:
        ReviewRefusedError: ``malformed``, with whatever ids could be read.
    """
    if len(data) > MAX_VERDICT_BYTES:
        raise ReviewRefusedError(RefusalReason.MALFORMED,
                            f"{len(data)} bytes; a verdict is at most {MAX_VERDICT_BYTES}")
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ReviewRefusedError(RefusalReason.MALFORMED, f"not UTF-8 JSON: {exc}"[:300]) from None
    ids = _salvage(obj)
    if not isinstance(obj, dict):
        raise ReviewRefusedError(RefusalReason.MALFORMED, "a verdict is a JSON object", **ids)
    try:
        validate(REVIEW_SCHEMA, obj)
        issued = parse_utc(obj["issued_at"])
        signature = base64.b64decode(obj["signature"], validate=True)
        if str(uuid.UUID(obj["event_id"])) != obj["event_id"]:
            raise ValueError("event_id is not a canonical UUID")
    except PublishError as exc:
        # Only where it failed: the message may quote the offending value.
        where = str(exc).split(": ", 1)[0]
        raise ReviewRefusedError(RefusalReason.MALFORMED, where, **ids) from None
    except ValueError as exc:
        raise ReviewRefusedError(RefusalReason.MALFORMED, str(exc)[:300], **ids) from None
    if format_utc(issued, digits=3) != obj["issued_at"]:
        raise ReviewRefusedError(RefusalReason.MALFORMED, "issued_at is not a valid time", **ids)
    return ReviewVerdict(unit=obj["unit"], event_id=obj["event_id"], verdict=obj["verdict"],
                         reviewer=obj["reviewer"], issued_at=obj["issued_at"],
                         nonce=obj["nonce"], signature=signature)


@dataclass(frozen=True, slots=True)
class ReviewAck:
    """The unit's answer on the retained ``facegate/<unit>/review/ack``.

    Attributes:
        unit: The unit.
        event_id: The verdict's event (None: a malformed verdict without a readable one).
        nonce: The verdict's nonce (likewise).
        outcome: ``recorded`` or ``refused``.
        reason: The refusal code; None when recorded.
        at: UTC milliseconds of the answer.
        audit_seq: ``seq`` of the ``review`` / ``review_refused`` audit record.
        audit_head: Its hash.
    """

    unit: str
    event_id: str | None
    nonce: str | None
    outcome: Outcome
    reason: RefusalReason | None
    at: str
    audit_seq: int | None
    audit_head: str | None

    def to_payload(self) -> dict[str, Any]:
        """The payload dict (validated against ``facegate/review-ack/1``).

        Raises:
            PublishError: It does not match the schema.
        """
        payload: dict[str, Any] = {
            "schema": REVIEW_ACK_SCHEMA, "unit": self.unit, "event_id": self.event_id,
            "nonce": self.nonce, "outcome": self.outcome,
            "reason": None if self.reason is None else str(self.reason), "at": self.at,
            "audit_seq": self.audit_seq, "audit_head": self.audit_head,
        }
        validate(REVIEW_ACK_SCHEMA, payload)
        return payload

    def encode(self) -> bytes:
        """Wire bytes: schema-checked, through the privacy policy.

        Raises:
            PublishError: The payload fails the schema or the policy.
        """
        return prepare(REVIEW_ACK_SCHEMA, self.to_payload())


def parse_ack(payload: Mapping[str, Any]) -> ReviewAck:
    """Read a received acknowledgement (the console's side).

    Raises:
        PublishError: It does not match ``facegate/review-ack/1``.
    """
    if payload.get("schema") != REVIEW_ACK_SCHEMA:
        raise PublishError(f"not a {REVIEW_ACK_SCHEMA} payload: schema={payload.get('schema')!r}")
    validate(REVIEW_ACK_SCHEMA, payload)
    reason = payload["reason"]
    return ReviewAck(unit=payload["unit"], event_id=payload["event_id"], nonce=payload["nonce"],
                     outcome=payload["outcome"],
                     reason=None if reason is None else RefusalReason(reason),
                     at=payload["at"], audit_seq=payload["audit_seq"],
                     audit_head=payload["audit_head"])


__all__ = ["MAX_VERDICT_BYTES", "REVIEW_ACK_SCHEMA", "REVIEW_SCHEMA", "VERDICTS",
           "RefusalReason", "ReviewAck", "ReviewRefusedError", "ReviewVerdict", "Verdict",
           "parse_ack", "parse_verdict", "sign_verdict"]
