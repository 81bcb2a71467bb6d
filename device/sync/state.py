"""The retained ``facegate/<unit>/gallery/state`` payload (schema ``facegate/gallery_state/1``).

The schema (owned by :mod:`device.events.schema`) has ``state`` in
``active | syncing | failed | empty`` and a free-text ``message``. Sync outcomes map
onto it like this:

=============  ===========  ====================================================
outcome        ``state``    ``message``
=============  ===========  ====================================================
ok / current   ``active``   None
applying       ``syncing``  ``applying version N``
refused        unchanged    unchanged; ``last_refusal`` says why
error          ``failed``   ``error (<kind>): <detail>``
no gallery     ``empty``    None, or the last failure
=============  ===========  ====================================================

``state``, ``version``/``identities``/``templates`` and ``message`` always describe the
*live* gallery. A refused bundle changes none of them: anyone who can publish on a
manifest topic can send junk, and junk must not make a working unit look broken. The
refusal goes to ``last_refusal`` (reason, message, the bundle's version when known,
time), which every later report repeats.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from device.errors import PublishError
from device.events.schema import GALLERY_STATE_SCHEMA, format_timestamp, validate
from device.privacy import check_payload
from device.sync.layout import LiveInfo, Refusal, Status

logger = logging.getLogger(__name__)

Outcome = Literal["ok", "current", "applying", "refused", "error"]
_MESSAGE_MAX = 500
_FALLBACK_MODEL = "none"


@dataclass(frozen=True)
class GalleryState:
    """One gallery state report.

    Attributes:
        status: The schema's ``state``.
        outcome: What just happened (``ok``, ``current``, ``applying``, ``refused``,
            ``error``).
        version: Version of the live gallery (0: none).
        identities: Identities in the live gallery.
        templates: Faces in the live gallery.
        model_id: The live gallery's model (or the unit's, when there is none).
        gallery_id: The live gallery's id, if any (not in schema v1; for callers).
        bundle_sha256: Digest of the manifest the live gallery came from.
        reason: Refusal or error code, when the outcome failed.
        message: Sentence for a person.
        updated_at: Seconds since the epoch.
        last_refusal: The last bundle the unit refused, if any.
    """

    status: Status
    outcome: Outcome
    version: int
    identities: int
    templates: int
    model_id: str
    gallery_id: str | None
    bundle_sha256: str | None
    reason: str | None
    message: str | None
    updated_at: float
    last_refusal: Refusal | None = None

    @classmethod
    def of(cls, live: LiveInfo | None, *, outcome: Outcome, status: Status,
           reason: str | None, message: str | None, model_id: str | None,
           now: float, last_refusal: Refusal | None = None) -> GalleryState:
        """A report for the live gallery ``live`` (None: no gallery)."""
        if live is None:
            return cls("empty" if status == "active" else status, outcome, 0, 0, 0,
                       model_id or _FALLBACK_MODEL, None, None, reason, message, now,
                       last_refusal)
        return cls(status, outcome, live.version, live.identities, live.faces, live.model_id,
                   live.gallery_id, live.digest, reason, message, now, last_refusal)

    def payload(self, unit: str) -> dict[str, Any]:
        """The schema-valid payload for ``unit``.

        A message that is too long is shortened; one that still fails the schema or
        the privacy policy is replaced by the outcome and reason code alone, so a
        report is never lost to its wording.
        """
        refusal = self.last_refusal
        out: dict[str, Any] = {
            "schema": GALLERY_STATE_SCHEMA, "unit": unit, "state": self.status,
            "version": self.version, "identities": self.identities,
            "templates": self.templates, "model_id": self.model_id,
            "bundle_sha256": self.bundle_sha256,
            "updated_at": format_timestamp(self.updated_at), "message": _shorten(self.message),
            "last_refusal": None if refusal is None else {
                "reason": refusal.reason, "message": _shorten(refusal.message),
                "version": refusal.version, "bundle_sha256": refusal.bundle_sha256,
                "at": format_timestamp(refusal.at)},
        }
        try:
            validate(GALLERY_STATE_SCHEMA, out)
            check_payload(out, where=f"{GALLERY_STATE_SCHEMA} payload")
        except PublishError as exc:
            logger.warning("gallery state message replaced: %s", exc)
            if out["message"] is not None:
                out["message"] = f"{self.outcome} ({self.reason or 'unknown'})"
            if refusal is not None:
                out["last_refusal"]["message"] = f"refused ({refusal.reason})"
        return out

    def to_json(self) -> dict[str, Any]:
        """Everything, for ``facegate sync status --json`` and logs."""
        return {"status": self.status, "outcome": self.outcome, "version": self.version,
                "identities": self.identities, "templates": self.templates,
                "model_id": self.model_id, "gallery_id": self.gallery_id,
                "bundle_sha256": self.bundle_sha256, "reason": self.reason,
                "message": self.message, "updated_at": format_timestamp(self.updated_at),
                "last_refusal": None if self.last_refusal is None else {
                    **self.last_refusal.to_json(),
                    "at": format_timestamp(self.last_refusal.at)}}


def _shorten(message: str | None) -> str | None:
    if message is not None and len(message) > _MESSAGE_MAX:
        return message[:_MESSAGE_MAX - 1] + "…"
    return message
