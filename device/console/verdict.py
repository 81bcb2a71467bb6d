"""Verdicts the console signs and sends to a unit, and the acks units send back.

The wire format is the review contract shared with the unit:

* verdict on ``facegate/<unit>/review`` (QoS 1, not retained)::

    {"schema": "facegate/review/1", "unit", "event_id", "verdict", "reviewer" (key id),
     "issued_at" (UTC ms), "nonce" (uuid4), "signature" (base64 Ed25519)}

  The signature covers the canonical JSON (the gallery manifests' canonical form) of
  every field but ``signature``. The reviewer's note never leaves the console.
* ack on ``facegate/<unit>/review/ack`` (QoS 1, retained, the latest one)::

    {"schema": "facegate/review-ack/1", "unit", "event_id", "nonce",
     "outcome": "recorded" | "refused", "reason", "at", "audit_seq", "audit_head"}
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass
from typing import Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.errors import DeviceError
from device.events.schema import format_timestamp, is_valid_id, parse_timestamp
from device.privacy import check_payload
from device.sync.keys import key_id
from device.sync.manifest import canonical_json

REVIEW_SCHEMA: Final = "facegate/review/1"
ACK_SCHEMA: Final = "facegate/review-ack/1"
VERDICTS: Final = ("confirmed", "not_this_person", "cannot_tell")
OUTCOMES: Final = ("recorded", "refused")
REASONS: Final = ("malformed", "wrong_unit", "bad_signature", "untrusted_key", "replayed",
                  "unknown_event", "expired")

Verdict = Literal["confirmed", "not_this_person", "cannot_tell"]

_UUID_RE: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_HEX_RE: Final = re.compile(r"^[0-9a-f]{16,128}$")


def review_topic(unit: str) -> str:
    return f"facegate/{unit}/review"


def ack_topic(unit: str) -> str:
    return f"facegate/{unit}/review/ack"


@dataclass(frozen=True, slots=True)
class SignedVerdict:
    """A verdict ready to publish: its fields and the wire bytes."""

    payload: dict[str, Any]

    @property
    def nonce(self) -> str:
        return str(self.payload["nonce"])

    def encode(self) -> bytes:
        return canonical_json(self.payload)


def signed_bytes(payload: dict[str, Any]) -> bytes:
    """What the signature covers: canonical JSON of every field but ``signature``."""
    return canonical_json({k: v for k, v in payload.items() if k != "signature"})


def sign_verdict(key: Ed25519PrivateKey, *, unit: str, event_id: str, verdict: str,
                 issued_at: float, nonce: str | None = None) -> SignedVerdict:
    """A verdict on ``event_id`` signed with ``key``.

    Raises:
        DeviceError: The unit, event id or verdict is not valid.
    """
    if not is_valid_id(unit):
        raise DeviceError(f"unit id {unit!r} is not valid")
    if not _UUID_RE.match(event_id):
        raise DeviceError(f"event id {event_id!r} is not a lower-case UUID")
    if verdict not in VERDICTS:
        raise DeviceError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
    payload: dict[str, Any] = {
        "schema": REVIEW_SCHEMA, "unit": unit, "event_id": event_id, "verdict": verdict,
        "reviewer": key_id(key.public_key()), "issued_at": format_timestamp(issued_at),
        "nonce": nonce or str(uuid.uuid4()),
    }
    payload["signature"] = base64.b64encode(key.sign(signed_bytes(payload))).decode("ascii")
    return SignedVerdict(payload)


def parse_ack(payload: dict[str, Any]) -> dict[str, Any]:
    """The store row of a unit's ack.

    Raises:
        DeviceError: The ack does not follow the contract or fails the privacy guard.
    """
    want = {"schema", "unit", "event_id", "nonce", "outcome", "reason", "at", "audit_seq",
            "audit_head"}
    if set(payload) != want:
        raise DeviceError(f"review ack fields {sorted(payload)} are not {sorted(want)}")
    check_payload(payload, where="review ack")
    problems = []
    if payload["schema"] != ACK_SCHEMA:
        problems.append("schema")
    if not (isinstance(payload["unit"], str) and is_valid_id(payload["unit"])):
        problems.append("unit")
    for name in ("event_id", "nonce"):
        if not (isinstance(payload[name], str) and _UUID_RE.match(payload[name])):
            problems.append(name)
    if payload["outcome"] not in OUTCOMES:
        problems.append("outcome")
    reason = payload["reason"]
    if not (reason is None or reason in REASONS):
        problems.append("reason")
    seq, head = payload["audit_seq"], payload["audit_head"]
    if not (seq is None or (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0)):
        problems.append("audit_seq")
    if not (head is None or (isinstance(head, str) and _HEX_RE.match(head))):
        problems.append("audit_head")
    if problems:
        raise DeviceError(f"review ack invalid at {', '.join(problems)}")
    return {"nonce": payload["nonce"], "event_id": payload["event_id"], "unit": payload["unit"],
            "outcome": payload["outcome"], "reason": reason,
            "at": parse_timestamp(str(payload["at"])), "audit_seq": seq, "audit_head": head}
