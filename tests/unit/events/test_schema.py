"""Match/health/gallery-state schemas and the privacy guard on every payload."""

from __future__ import annotations

import base64
import copy
import json
import struct
from importlib import resources
from typing import Any

import pytest

from device.errors import PublishError
from device.events.schema import (
    GALLERY_STATE_SCHEMA,
    HEALTH_SCHEMA,
    MATCH_SCHEMA,
    SCHEMA_FILES,
    MatchEvent,
    NormalisedBox,
    encode,
    format_timestamp,
    load_schema,
    parse_timestamp,
    prepare,
    validate,
)
from device.privacy import check_payload as privacy_guard

T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z


def make_event(**overrides: Any) -> MatchEvent:
    fields: dict[str, Any] = {
        "unit": "unit-1",
        "camera": "front",
        "track_id": 7,
        "identity_id": "id-0042",
        "label": "Ada Lovelace",
        "similarity": 0.6123,
        "false_match_rate": 1e-4,
        "gallery_version": 3,
        "model_id": "dlib-resnet-v1",
        "first_seen": T0,
        "decided_at": T0 + 1.25,
        "faces_considered": 5,
        "box": NormalisedBox(0.25, 0.1, 0.2, 0.3),
    }
    fields.update(overrides)
    return MatchEvent(**fields)


def good_health() -> dict[str, Any]:
    return {
        "schema": HEALTH_SCHEMA,
        "unit": "unit-1",
        "at": format_timestamp(T0),
        "status": "ok",
        "uptime_s": 12.5,
        "temperature_c": 51.2,
        "gallery_version": 3,
        "cameras": {
            "front": {
                "state": "running",
                "fps": 9.8,
                "frames": 1000,
                "frames_dropped": 3,
                "queue_depth": 1,
                "latency_ms": {"detect": 12.0, "embed": 30.5},
            }
        },
        "mqtt": {"state": "connected", "last_error": None},
        "outbox": {"depth": 0, "dropped": 0},
    }


def good_gallery_state() -> dict[str, Any]:
    return {
        "schema": GALLERY_STATE_SCHEMA,
        "unit": "unit-1",
        "state": "active",
        "version": 3,
        "identities": 12,
        "templates": 40,
        "model_id": "dlib-resnet-v1",
        "bundle_sha256": "ab" * 32,
        "updated_at": format_timestamp(T0),
        "message": None,
    }


def test_schema_files_ship_as_package_data() -> None:
    folder = resources.files("device.events").joinpath("schemas")
    for schema_id, name in SCHEMA_FILES.items():
        document = json.loads(folder.joinpath(name).read_text("utf-8"))
        assert document["properties"]["schema"]["const"] == schema_id
        assert load_schema(schema_id)["$id"].startswith("urn:facegate:schema:")


def _objects(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            found.append(node)
        for value in node.values():
            found += _objects(value)
    elif isinstance(node, list):
        for value in node:
            found += _objects(value)
    return found


@pytest.mark.parametrize("schema_id", sorted(SCHEMA_FILES))
def test_every_object_in_every_schema_is_closed(schema_id: str) -> None:
    objects = _objects(load_schema(schema_id))
    assert objects
    for obj in objects:
        assert obj.get("additionalProperties") is False, obj.get("description", obj)


def test_match_event_payload_is_valid_and_round_trips() -> None:
    event = make_event()
    payload = event.to_payload()
    assert payload["schema"] == MATCH_SCHEMA
    assert payload["review_required"] is True
    assert payload["first_seen"] == "2024-05-01T12:00:00.000Z"
    assert payload["decided_at"] == "2024-05-01T12:00:01.250Z"
    assert set(payload) == set(load_schema(MATCH_SCHEMA)["required"])
    assert MatchEvent.from_payload(json.loads(event.encode())) == event


def test_event_ids_are_unique_uuids() -> None:
    ids = {make_event().event_id for _ in range(100)}
    assert len(ids) == 100


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda p: p.update(extra=1), "(top level)"),
        (lambda p: p.pop("label"), "(top level)"),
        (lambda p: p.update(similarity=1.5), "similarity"),
        (lambda p: p.update(false_match_rate=-0.1), "false_match_rate"),
        (lambda p: p.update(event_id="not-a-uuid"), "event_id"),
        (lambda p: p.update(schema="facegate/match/2"), "schema"),
        (lambda p: p.update(camera="front/left"), "camera"),
        (lambda p: p.update(camera="#"), "camera"),
        (lambda p: p.update(track_id=-1), "track_id"),
        (lambda p: p.update(faces_considered=0), "faces_considered"),
        (lambda p: p.update(review_required="yes"), "review_required"),
        (lambda p: p.update(decided_at="2024-05-01 12:00:00"), "decided_at"),
        (lambda p: p.update(label="line\nbreak"), "label"),
        (lambda p: p["box"].update(x=1.2), "box/x"),
        (lambda p: p["box"].update(w=0), "box/w"),
        (lambda p: p["box"].update(z=0.1), "box"),
    ],
)
def test_bad_match_payloads_are_refused(mutate: Any, where: str) -> None:
    payload = copy.deepcopy(make_event().to_payload())
    mutate(payload)
    with pytest.raises(PublishError, match="payload invalid at") as info:
        validate(MATCH_SCHEMA, payload)
    assert where in str(info.value)


def test_match_event_checks_its_own_fields() -> None:
    with pytest.raises(PublishError, match="before its track"):
        make_event(decided_at=T0 - 1)
    with pytest.raises(PublishError, match=r"must match"):
        make_event(camera="a/b")
    with pytest.raises(PublishError, match="UUID"):
        make_event(event_id="xyz")
    with pytest.raises(PublishError, match="lower-case"):
        make_event(event_id="A1B2C3D4-0000-4000-8000-000000000000")
    with pytest.raises(PublishError, match="past the frame"):
        NormalisedBox(0.9, 0.0, 0.2, 0.1)
    with pytest.raises(PublishError, match="outside"):
        NormalisedBox(-0.1, 0.0, 0.2, 0.1)


def test_box_from_pixels_clips_to_the_frame() -> None:
    box = NormalisedBox.from_pixels((-10.0, 20.0, 110.0, 50.0), 200, 100)
    assert box == NormalisedBox(0.0, 0.2, 0.5, 0.5)


def test_timestamps_round_trip() -> None:
    assert parse_timestamp(format_timestamp(T0 + 0.123)) == pytest.approx(T0 + 0.123)
    with pytest.raises(PublishError):
        parse_timestamp("2024-05-01T12:00:00+02:00")


def test_health_and_gallery_state_validate() -> None:
    assert json.loads(prepare(HEALTH_SCHEMA, good_health()))["unit"] == "unit-1"
    assert json.loads(prepare(GALLERY_STATE_SCHEMA, good_gallery_state()))["version"] == 3
    bad = good_health()
    bad["cameras"]["front"]["secret"] = 1
    with pytest.raises(PublishError, match="cameras/front"):
        prepare(HEALTH_SCHEMA, bad)
    bad = good_gallery_state()
    bad["identities"] = -1
    with pytest.raises(PublishError, match="identities"):
        prepare(GALLERY_STATE_SCHEMA, bad)
    with pytest.raises(PublishError, match="declares schema"):
        prepare(HEALTH_SCHEMA, good_gallery_state())


# ---------------------------------------------------------------- privacy guard

EMBEDDING = [round(0.01 * i, 3) for i in range(128)]
JPEG_B64 = base64.b64encode(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4).decode()
EMBEDDING_B64 = base64.b64encode(struct.pack("128f", *EMBEDDING)).decode()
# An int8-quantised embedding: 128 bytes, in the encodings someone might try.
INT8 = bytes((i * 37 + 11) % 256 for i in range(128))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"label": "x", "scores": EMBEDDING}, "embedding"),
        ({"nested": {"deeper": [EMBEDDING[:10], EMBEDDING[10:20]]}}, "embedding"),
        ({"note": JPEG_B64}, "characters long"),
        ({"note": EMBEDDING_B64}, "characters long"),
        ({"note": base64.b64encode(INT8).decode()}, "base64-like"),
        ({"note": base64.urlsafe_b64encode(INT8).decode()}, "base64-like"),
        ({"note": base64.b85encode(INT8).decode()}, "base64-like"),
        ({"note": base64.b32encode(INT8).decode()}, "base64-like"),
        ({"note": "prefix " + base64.b64encode(INT8[:64]).decode() + " suffix"}, "base64-like"),
        ({"note": "see data:image/jpeg;base64,/9j/4AAQ"}, "data URI"),
        ({"note": "ab" * 200}, "hex"),
        ({"embedding": None}, "biometric"),
        ({"faceImage": "x"}, "biometric"),
        ({"face_image": "x"}, "biometric"),
        ({"chip": 1}, "biometric"),
        ({"best-jpeg": ""}, "biometric"),
        ({"meta": {"image_b64": ""}}, "biometric"),
        ({"x": b"raw"}, "not plain JSON"),
        ({"x": float("nan")}, "non-finite"),
        ({"x": "y" * 5000}, "characters long"),
        ({"a": ["w o r d s " * 50 for _ in range(80)]}, "exceeds"),
    ],
)
def test_privacy_guard_refuses_biometric_looking_payloads(payload: Any, reason: str) -> None:
    with pytest.raises(PublishError, match=reason):
        privacy_guard(payload)
    with pytest.raises(PublishError):
        encode(payload)


def test_privacy_guard_refuses_raw_bytes() -> None:
    with pytest.raises(PublishError, match="raw bytes"):
        privacy_guard(b"\xff\xd8\xff")


@pytest.mark.parametrize(
    "payload",
    [
        make_event().to_payload(),
        good_health(),
        good_gallery_state(),
        {"seq": 10, "head": "f" * 64, "prev": "0" * 64},
        {"state_topic": "homeassistant/sensor/facegate_" + "u" * 60 + "/" + "c" * 60 + "/config"},
        {"unique_id": "facegate_a_very_long_unit_name_with_words_camera_front_door_last_match"},
        "online",
        {"box": [0.1, 0.2, 0.3, 0.4]},
    ],
)
def test_privacy_guard_passes_ordinary_payloads(payload: Any) -> None:
    privacy_guard(payload)


def test_match_event_with_an_embedding_in_its_label_is_refused() -> None:
    event = make_event(label=EMBEDDING_B64[:120])
    with pytest.raises(PublishError, match="base64-like"):
        event.encode()


def test_readme_example_is_a_valid_match_payload() -> None:
    text = resources.files("device.events").joinpath("README.md").read_text("utf-8")
    section = text.split("## Match payload", 1)[1]
    example = json.loads(section.split("```json", 1)[1].split("```", 1)[0])
    validate(MATCH_SCHEMA, example)
    privacy_guard(example)
    assert set(example) == set(load_schema(MATCH_SCHEMA)["properties"])
    documented = {
        name.strip("` ")
        for line in section.split("| field | meaning |", 1)[1].splitlines()
        if line.startswith("| `")
        for name in line.split("|")[1].split(",")
    }
    assert documented == set(example), "every field is documented, and only those"
