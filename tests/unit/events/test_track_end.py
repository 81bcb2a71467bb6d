"""The track-end update: schema-valid, privacy-guarded, on its own topic."""

from __future__ import annotations

import json

import pytest

from device.errors import PublishError
from device.events.schema import TRACK_END_SCHEMA, TrackEndEvent, load_schema, validate
from device.events.topics import Topics

T0 = 1_714_564_800.0
MATCH_ID = "3f0e8a52-5a4c-4d0e-9a57-6f3b7f1c2d10"


def _event(**overrides: object) -> TrackEndEvent:
    fields: dict[str, object] = {
        "unit": "unit-1", "camera": "front", "track_id": 4, "identity_id": "id-0042",
        "match_event_id": MATCH_ID, "first_seen": T0, "last_seen": T0 + 7.5,
        "frames_seen": 180, "ended_at": T0 + 8.5,
    }
    fields.update(overrides)
    return TrackEndEvent(**fields)  # type: ignore[arg-type]


def test_payload_is_valid_and_has_every_property() -> None:
    event = _event()
    payload = json.loads(event.encode())
    validate(TRACK_END_SCHEMA, payload)
    assert set(payload) == set(load_schema(TRACK_END_SCHEMA)["properties"])
    assert payload["last_seen"] == "2024-05-01T12:00:07.500Z"
    assert payload["frames_seen"] == 180
    assert event.topic_suffix == "front/track_end"
    assert Topics("unit-1").track_end("front") == "facegate/unit-1/front/track_end"


def test_out_of_range_values_are_refused() -> None:
    with pytest.raises(PublishError, match="last seen before"):
        _event(last_seen=T0 - 1)
    with pytest.raises(PublishError, match="frames_seen"):
        _event(frames_seen=0).to_payload()
    with pytest.raises(PublishError, match="topic level"):
        Topics("unit-1").track_end("bad/camera")
