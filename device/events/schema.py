"""Payloads the unit publishes: versioned JSON Schemas, encoding, the event values.

Every payload on every topic passes two checks before it reaches the outbox or the
network:

* :func:`validate` checks it against the versioned JSON Schema shipped in
  ``device/events/schemas/`` (``additionalProperties: false`` everywhere, numeric
  ranges, normalised boxes);
* :func:`encode` runs :func:`device.privacy.check_payload`, the one privacy policy,
  which refuses anything that looks like biometric data, whatever the topic.

:class:`MatchEvent` is the value the decision stage hands to the publisher.
"""

from __future__ import annotations

import functools
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, ClassVar, Final

from jsonschema import Draft202012Validator

from device.errors import PublishError
from device.privacy import check_payload
from device.timestamps import format_utc, parse_utc

#: Value of the ``schema`` field of each payload kind, and the file that defines it.
MATCH_SCHEMA: Final = "facegate/match/1"
HEALTH_SCHEMA: Final = "facegate/health/1"
GALLERY_STATE_SCHEMA: Final = "facegate/gallery_state/1"
TRACK_END_SCHEMA: Final = "facegate/track_end/1"
REVIEW_SCHEMA: Final = "facegate/review/1"
REVIEW_ACK_SCHEMA: Final = "facegate/review-ack/1"

SCHEMA_FILES: Final[Mapping[str, str]] = {
    MATCH_SCHEMA: "match.v1.json",
    HEALTH_SCHEMA: "health.v1.json",
    GALLERY_STATE_SCHEMA: "gallery_state.v1.json",
    TRACK_END_SCHEMA: "track_end.v1.json",
    REVIEW_SCHEMA: "review.v1.json",
    REVIEW_ACK_SCHEMA: "review_ack.v1.json",
}

_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_REF_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def is_valid_id(value: str) -> bool:
    """Whether ``value`` can be a unit or camera id (one safe MQTT topic level)."""
    return bool(_ID_RE.match(value))


def format_timestamp(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2024-05-01T12:00:00.123Z``."""
    return format_utc(epoch, digits=3)


def parse_timestamp(text: str) -> float:
    """Inverse of :func:`format_timestamp`.

    Raises:
        PublishError: ``text`` is not an RFC 3339 UTC timestamp ending in ``Z``.
    """
    try:
        return parse_utc(text).timestamp()
    except ValueError as exc:
        raise PublishError(str(exc)) from exc


@functools.cache
def _validator(schema_id: str) -> Draft202012Validator:
    name = SCHEMA_FILES.get(schema_id)
    if name is None:
        raise PublishError(f"unknown payload schema {schema_id!r}; known: {sorted(SCHEMA_FILES)}")
    text = resources.files("device.events").joinpath("schemas", name).read_text("utf-8")
    document = json.loads(text)
    Draft202012Validator.check_schema(document)
    return Draft202012Validator(document)


def load_schema(schema_id: str) -> dict[str, Any]:
    """The JSON Schema document for ``schema_id`` (e.g. ``facegate/match/1``).

    Raises:
        PublishError: No schema file is known for ``schema_id``.
    """
    return dict(_validator(schema_id).schema)


def validate(schema_id: str, payload: Mapping[str, Any]) -> None:
    """Check ``payload`` against the schema ``schema_id``.

    Raises:
        PublishError: The payload does not match; the message names the first
            offending field (the offending value is not repeated in full).
    """
    validator = _validator(schema_id)
    error = next(iter(sorted(validator.iter_errors(payload), key=lambda e: list(e.path))), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
        raise PublishError(f"{schema_id} payload invalid at {where}: {message}")


def encode(payload: object, *, check: bool = True, where: str = "payload") -> bytes:
    """Compact UTF-8 JSON for the wire, after the privacy policy unless ``check`` is False.

    Raises:
        PublishError: The policy refuses it (a :class:`~device.errors.PrivacyError`
            naming ``where`` and the field) or it is not JSON-serialisable.
    """
    if check:
        check_payload(payload, where=where)
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PublishError(f"payload is not JSON-serialisable: {exc}") from exc
    return text.encode("utf-8")


def prepare(schema_id: str, payload: Mapping[str, Any]) -> bytes:
    """Validate against ``schema_id``, run the privacy policy, encode.

    Raises:
        PublishError: The payload fails the schema or the policy.
    """
    if payload.get("schema") != schema_id:
        raise PublishError(
            f"payload declares schema {payload.get('schema')!r}, expected {schema_id!r}"
        )
    validate(schema_id, payload)
    return encode(payload, where=f"{schema_id} payload")


@dataclass(frozen=True, slots=True)
class NormalisedBox:
    """A face box as fractions of the frame: ``(x, y)`` top-left, ``(w, h)`` size.

    Raises:
        PublishError: On construction, when a value is outside ``[0, 1]``, the size is
            not positive, or the box extends past the frame.
    """

    x: float
    y: float
    w: float
    h: float

    def __post_init__(self) -> None:
        values = (self.x, self.y, self.w, self.h)
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
            raise PublishError(f"normalised box {values} has values outside [0, 1]")
        if self.w <= 0.0 or self.h <= 0.0:
            raise PublishError(f"normalised box {values} has no area")
        if self.x + self.w > 1.0 + 1e-6 or self.y + self.h > 1.0 + 1e-6:
            raise PublishError(f"normalised box {values} extends past the frame")

    @classmethod
    def from_pixels(
        cls, box: tuple[float, float, float, float], width: int, height: int
    ) -> NormalisedBox:
        """Normalise a pixel box ``(x, y, w, h)``, clipping it to the frame.

        Raises:
            PublishError: The frame size is not positive or the box lies outside it.
        """
        if width <= 0 or height <= 0:
            raise PublishError(f"frame size {width}x{height} is not positive")
        x0 = min(max(box[0], 0.0), float(width))
        y0 = min(max(box[1], 0.0), float(height))
        x1 = min(max(box[0] + box[2], 0.0), float(width))
        y1 = min(max(box[1] + box[3], 0.0), float(height))
        return cls(
            round(x0 / width, 4),
            round(y0 / height, 4),
            round((x1 - x0) / width, 4),
            round((y1 - y0) / height, 4),
        )

    def to_json(self) -> dict[str, float]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h}


def _new_event_id() -> str:
    return str(uuid.uuid4())


def _check_ids(unit: str, camera: str, identity_id: str) -> None:
    if not is_valid_id(unit) or not is_valid_id(camera):
        raise PublishError(f"unit {unit!r} and camera {camera!r} must match {_ID_RE.pattern}")
    if not _REF_RE.match(identity_id):
        raise PublishError(f"identity id {identity_id!r} must match {_REF_RE.pattern}")


class _CameraEvent:
    """What a per-camera event payload shares: its topic, schema check and encoding."""

    __slots__ = ()
    SCHEMA: ClassVar[str]
    KIND: ClassVar[str]
    unit: str
    camera: str
    track_id: int
    identity_id: str
    event_id: str

    @property
    def topic_suffix(self) -> str:
        """The topic below ``facegate/<unit>/``: ``<camera>/<kind>``."""
        return f"{self.camera}/{self.KIND}"

    def _fields(self) -> dict[str, Any]:
        """The payload's fields after the ids, in schema order."""
        raise NotImplementedError

    def to_payload(self) -> dict[str, Any]:
        """The payload dict, validated against the event's schema.

        Raises:
            PublishError: The result does not match the schema.
        """
        payload: dict[str, Any] = {
            "schema": self.SCHEMA, "event_id": self.event_id, "unit": self.unit,
            "camera": self.camera, "track_id": self.track_id, "identity_id": self.identity_id,
            **self._fields(),
        }
        validate(self.SCHEMA, payload)
        return payload

    def encode(self) -> bytes:
        """Wire bytes: validated compact JSON that passed the privacy policy.

        Raises:
            PublishError: The payload fails the schema or the privacy policy.
        """
        return prepare(self.SCHEMA, self.to_payload())


@dataclass(frozen=True, slots=True)
class MatchEvent(_CameraEvent):
    """One match decision, as published on ``facegate/<unit>/<camera>/match``.

    Attributes:
        unit: Unit id (one topic level).
        camera: Camera id (one topic level).
        track_id: Tracker id of the person's track.
        identity_id: Gallery id of the matched identity.
        label: Display label of the identity.
        similarity: Cosine similarity of the decisive comparison, in ``[-1, 1]``.
        false_match_rate: The threshold FMR: calibrated false-match rate of the
            threshold the decision used.
        gallery_version: Version of the searched gallery bundle.
        model_id: Embedding model id.
        first_seen: Epoch seconds when the track started.
        decided_at: Epoch seconds of the decision.
        faces_considered: Faces of the track that voted.
        box: Best face's box, normalised to the frame.
        review_required: A person must check the lead (the default, by policy).
        event_id: UUID; generated when not given.
        fmr_at_similarity: The FMR at ``similarity``: the false-match rate a threshold
            placed there would have; None (left out) when the model has no table.
        fmr_at_similarity_upper_bound: ``fmr_at_similarity`` is only an upper bound
            (the similarity is above every impostor comparison measured).

    Raises:
        PublishError: On construction, when a field is out of range (the schema is
            checked again on :meth:`to_payload`).
    """

    unit: str
    camera: str
    track_id: int
    identity_id: str
    label: str
    similarity: float
    false_match_rate: float
    gallery_version: int
    model_id: str
    first_seen: float
    decided_at: float
    faces_considered: int
    box: NormalisedBox
    review_required: bool = True
    event_id: str = field(default_factory=_new_event_id)
    fmr_at_similarity: float | None = None
    fmr_at_similarity_upper_bound: bool = False

    def __post_init__(self) -> None:
        _check_ids(self.unit, self.camera, self.identity_id)
        if self.decided_at < self.first_seen:
            raise PublishError("a match cannot be decided before its track was first seen")
        try:
            canonical = str(uuid.UUID(self.event_id))
        except ValueError as exc:
            raise PublishError(f"event id {self.event_id!r} is not a UUID") from exc
        if canonical != self.event_id:
            raise PublishError(f"event id {self.event_id!r} must be a lower-case UUID")

    SCHEMA: ClassVar[str] = MATCH_SCHEMA
    KIND: ClassVar[str] = "match"

    def _fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "label": self.label,
            "similarity": round(float(self.similarity), 4),
            "false_match_rate": float(self.false_match_rate),
            "gallery_version": self.gallery_version,
            "model_id": self.model_id,
            "first_seen": format_timestamp(self.first_seen),
            "decided_at": format_timestamp(self.decided_at),
            "faces_considered": self.faces_considered,
            "review_required": self.review_required,
            "box": self.box.to_json(),
        }
        if self.fmr_at_similarity is not None:
            fields["fmr_at_similarity"] = float(f"{self.fmr_at_similarity:.3g}")
            fields["fmr_at_similarity_upper_bound"] = self.fmr_at_similarity_upper_bound
        return fields

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> MatchEvent:
        """Parse a received payload (a consumer's view; also used by tests).

        Raises:
            PublishError: The payload does not match ``facegate/match/1``.
        """
        if payload.get("schema") != MATCH_SCHEMA:
            raise PublishError(f"not a {MATCH_SCHEMA} payload: schema={payload.get('schema')!r}")
        validate(MATCH_SCHEMA, payload)
        box = payload["box"]
        return cls(
            unit=payload["unit"],
            camera=payload["camera"],
            track_id=payload["track_id"],
            identity_id=payload["identity_id"],
            label=payload["label"],
            similarity=payload["similarity"],
            false_match_rate=payload["false_match_rate"],
            gallery_version=payload["gallery_version"],
            model_id=payload["model_id"],
            first_seen=parse_timestamp(payload["first_seen"]),
            decided_at=parse_timestamp(payload["decided_at"]),
            faces_considered=payload["faces_considered"],
            box=NormalisedBox(box["x"], box["y"], box["w"], box["h"]),
            review_required=payload["review_required"],
            event_id=payload["event_id"],
            fmr_at_similarity=payload.get("fmr_at_similarity"),
            fmr_at_similarity_upper_bound=payload.get("fmr_at_similarity_upper_bound", False),
        )


@dataclass(frozen=True, slots=True)
class TrackEndEvent(_CameraEvent):
    """A track announced as an identity has ended (``facegate/<unit>/<camera>/track_end``).

    Attributes:
        unit: Unit id (one topic level).
        camera: Camera id (one topic level).
        track_id: Tracker id, as in the match event.
        identity_id: The identity the track was announced as.
        match_event_id: ``event_id`` of that match event.
        first_seen: Epoch seconds when the track started.
        last_seen: Epoch seconds when it was last seen.
        frames_seen: Frames its face was detected in.
        ended_at: Epoch seconds when the tracker ended it.
        event_id: UUID of this update; generated when not given.

    Raises:
        PublishError: On construction, when a field is out of range.
    """

    unit: str
    camera: str
    track_id: int
    identity_id: str
    match_event_id: str
    first_seen: float
    last_seen: float
    frames_seen: int
    ended_at: float
    event_id: str = field(default_factory=_new_event_id)

    def __post_init__(self) -> None:
        _check_ids(self.unit, self.camera, self.identity_id)
        if self.last_seen < self.first_seen:
            raise PublishError("a track cannot be last seen before it was first seen")

    SCHEMA: ClassVar[str] = TRACK_END_SCHEMA
    KIND: ClassVar[str] = "track_end"

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> TrackEndEvent:
        """Parse a received payload (a consumer's view).

        Raises:
            PublishError: The payload does not match ``facegate/track_end/1``.
        """
        if payload.get("schema") != TRACK_END_SCHEMA:
            raise PublishError(
                f"not a {TRACK_END_SCHEMA} payload: schema={payload.get('schema')!r}")
        validate(TRACK_END_SCHEMA, payload)
        return cls(
            unit=payload["unit"], camera=payload["camera"], track_id=payload["track_id"],
            identity_id=payload["identity_id"], match_event_id=payload["match_event_id"],
            first_seen=parse_timestamp(payload["first_seen"]),
            last_seen=parse_timestamp(payload["last_seen"]),
            frames_seen=payload["frames_seen"], ended_at=parse_timestamp(payload["ended_at"]),
            event_id=payload["event_id"],
        )

    def _fields(self) -> dict[str, Any]:
        return {
            "match_event_id": self.match_event_id,
            "first_seen": format_timestamp(self.first_seen),
            "last_seen": format_timestamp(self.last_seen),
            "frames_seen": self.frames_seen,
            "ended_at": format_timestamp(self.ended_at),
        }
