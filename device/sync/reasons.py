"""Why a gallery update was refused, as a short stable code plus a sentence.

The code is what a monitor keys on (it appears in parentheses at the start of the
``message`` of the retained ``facegate/<unit>/gallery/state`` payload, e.g.
``refused (rollback): …``); the sentence is for a person.
"""

from __future__ import annotations

from enum import StrEnum

from device.errors import SyncError


class Reason(StrEnum):
    """Refusal codes. Each names one attack or fault the unit defends against."""

    MALFORMED = "malformed"
    """Not a manifest: not UTF-8, not JSON, missing or unknown fields, bad types."""
    TOO_LARGE = "too_large"
    """The manifest or payload is over its cap, or the payload over its stated length."""
    BAD_SIGNATURE = "bad_signature"
    """A signature by a trusted key does not verify (tampered manifest)."""
    THRESHOLD = "threshold"
    """Fewer distinct trusted keys signed than the configured threshold."""
    DUPLICATE_SIGNATURE = "duplicate_signature"
    """One key id signs twice: a key must never count twice toward the threshold."""
    ROLLBACK = "rollback"
    """The version is not newer than the one the unit holds."""
    EXPIRED = "expired"
    """The manifest's expiry has passed (freeze attack)."""
    WRONG_UNIT = "wrong_unit"
    """The manifest names the units it is for, and this unit is not one of them."""
    MODEL_MISMATCH = "model_mismatch"
    """The gallery is for a model id or embedding dimension the unit does not run."""
    DELTA_BASE = "delta_base"
    """A delta whose base is not the gallery the unit holds."""
    HASH_MISMATCH = "hash_mismatch"
    """The payload (or a chunk of it) is not the one the manifest signed."""
    BAD_PAYLOAD = "bad_payload"
    """The payload matches its hash but cannot be built into a valid gallery."""
    INSECURE_URL = "insecure_url"
    """The payload URL is not https:// and plain HTTP is not allowed."""


class SyncRefusedError(SyncError):
    """A gallery update bundle was refused; nothing on the unit changed.

    Attributes:
        reason: The refusal code.
        detail: What exactly was wrong, for a person.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"refused ({reason.value}): {detail}")
