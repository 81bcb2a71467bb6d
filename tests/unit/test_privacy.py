"""The one privacy policy: events, audit records, health and gallery state all pass it.

The events guard and the audit guard used to differ; each rule is now the stricter of
the two. Each test below names a payload that only one of the former guards refused
and shows that both paths refuse it now.
"""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from device.audit import AuditKind, AuditLog
from device.audit import check_payload as audit_check
from device.audit.record import format_ts, parse_time
from device.errors import AuditError, PrivacyError, PublishError
from device.events.homeassistant import Discovery
from device.events.schema import (
    GALLERY_STATE_SCHEMA,
    HEALTH_SCHEMA,
    encode,
    format_timestamp,
    parse_timestamp,
    prepare,
)
from device.events.topics import Topics
from device.privacy import (
    MAX_DEPTH,
    MAX_NUMBERS_PER_LIST,
    MAX_PAYLOAD_BYTES,
    MAX_STRING_CHARS,
    check_payload,
    clip,
)
from device.sync.state import GalleryState
from device.timestamps import format_utc, parse_utc

T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z
RNG = random.Random(11)


def refused_by_events(payload: dict[str, Any]) -> bool:
    try:
        encode(payload)
    except PublishError:
        return True
    return False


def refused_by_audit(payload: dict[str, Any]) -> bool:
    try:
        audit_check(payload)
    except AuditError:
        return True
    return False


def assert_both_refuse(payload: dict[str, Any], reason: str) -> None:
    with pytest.raises(PrivacyError, match=reason):
        check_payload(payload)
    assert refused_by_events(payload), "the events path must refuse it"
    assert refused_by_audit(payload), "the audit path must refuse it"


# --- each stricter rule, one test ---------------------------------------------------


def test_longest_string_is_512_for_both() -> None:
    """The audit guard allowed 1024 characters; the events guard 512."""
    assert MAX_STRING_CHARS == 512
    assert_both_refuse({"note": "a reason a person wrote " * 25}, "characters long")
    check_payload({"note": "word " * 102})  # 510 characters pass


def test_number_lists_are_refused_at_16_for_both() -> None:
    """The events guard refused more than 16 numbers; the audit guard 16 or more."""
    assert MAX_NUMBERS_PER_LIST == 16
    assert_both_refuse({"scores": [0.5] * 16}, "embedding")
    assert_both_refuse({"scores": [[0.5] * 8, [0.25] * 8]}, "embedding")
    check_payload({"scores": [0.5] * 15})


@pytest.mark.parametrize(
    ("key", "former"),
    [
        ("face", "audit"),
        ("best_face", "audit"),
        ("faces", "audit"),
        ("crops", "audit"),
        ("thumb", "audit"),
        ("landmarks", "audit"),
        ("faceLandmarks", "audit"),
        ("biometric_blob", "audit"),
        ("template", "audit"),
        ("frames", "audit"),  # a list, not a count: see the allowed keys below
        ("webp", "events"),
        ("best-webp", "events"),
        ("faceimage", "events"),  # one word: only the events guard compared keys run together
    ],
)
def test_forbidden_key_words_are_the_union(key: str, former: str) -> None:
    assert_both_refuse({"meta": {key: ["x"]}}, "biometric")


@pytest.mark.parametrize(
    "payload",
    [
        {"faces_considered": 5},
        {"faces_embedded": 17},
        {"frames": 275, "frames_dropped": 2, "frames_in": 275, "frames_processed": 273},
        {"frames_seen": 12},
        {"value_template": "{{ value_json.label }}"},
        {"json_attributes_template": "{{ value_json | tojson }}"},
    ],
)
def test_schema_count_and_template_keys_pass_with_their_value_type(
    payload: dict[str, Any],
) -> None:
    """Published schemas and Home Assistant discovery use these keys; they pass only
    with a value of the expected type, so the union of words still refuses the rest."""
    check_payload(payload)
    assert not refused_by_events(payload) and not refused_by_audit(payload)
    key = next(iter(payload))
    assert_both_refuse({key: [1.0, 2.0]}, "biometric")


def test_base64_found_by_character_statistics_for_both() -> None:
    """Only the events guard looked at character statistics; this 136-character
    blob was below the audit guard's length rule."""
    blob = base64.b64encode(RNG.randbytes(100)).decode()
    assert len(blob) < 160
    assert_both_refuse({"note": blob}, "base64-like")


def test_long_base64_runs_found_by_length_for_both() -> None:
    """Only the audit guard refused long base64 runs whatever their statistics: this
    one changes character class nowhere, which the events guard let through."""
    assert_both_refuse({"enc": "QUJD" * 60}, "base64-like")
    assert_both_refuse({"note": "payload " + "QUJD" * 45 + " end"}, "base64-like")


def test_hex_runs_stop_at_128_for_both() -> None:
    """The audit guard allowed hex strings up to 159 characters."""
    assert_both_refuse({"enc": "ab" * 70}, "hex")
    check_payload({"signature_hex": "ab" * 64})


def test_data_uris_are_refused_for_both() -> None:
    """Only the events guard looked for ``data:`` URIs."""
    assert_both_refuse({"note": "see data:image/png;base64,iVBORw0KGgo"}, "data URI")


def test_nesting_depth_is_limited_for_both() -> None:
    """Only the events guard limited nesting."""
    deep: dict[str, Any] = {"v": 1}
    for _ in range(MAX_DEPTH + 1):
        deep = {"d": deep}
    assert_both_refuse(deep, "nested deeper")


def test_payload_size_is_8192_bytes_for_both() -> None:
    """Events allowed 32 KiB; the audit log 8 KiB."""
    assert MAX_PAYLOAD_BYTES == 8192
    assert_both_refuse({"notes": ["word " * 100] * 20}, "exceeds")


# --- what must still pass -------------------------------------------------------------


def test_ids_hashes_and_signatures_in_existing_payloads_pass() -> None:
    payload = {
        "bundle_sha256": "0123456789abcdef" * 4,
        "config_sha256": "f" * 64,
        "keyid": "9e" * 32,
        "log_id": "5c3f" * 8,
        "event_id": "a1b2c3d4-0000-4000-8000-000000000000",
        "head": {"seq": 10, "hash": "e3" * 32, "prev": "0" * 64},
        "signature": "A" * 88,
        "state_topic": "facegate/" + "u" * 64 + "/" + "c" * 64 + "/match",
        "unique_id": "facegate_" + "u" * 64 + "_" + "c" * 64 + "_last_match",
        "box": [0.1, 0.2, 0.3, 0.4],
        "surface": "tarmac",
    }
    check_payload(payload)
    assert not refused_by_events(payload) and not refused_by_audit(payload)


def test_home_assistant_discovery_for_the_longest_ids_passes() -> None:
    unit, camera = "u" * 64, "c" * 64
    discovery = Discovery("homeassistant", Topics(unit), (camera,))
    for _, config in discovery.messages():
        encode(config)


def test_errors_name_the_payload_and_the_field_path() -> None:
    with pytest.raises(PrivacyError) as info:
        check_payload({"cameras": {"front": {"embedding": None}}}, where="test payload")
    assert "test payload at /cameras/front" in str(info.value)
    assert isinstance(info.value, PublishError) and isinstance(info.value, AuditError)


# --- where the policy runs ------------------------------------------------------------


def test_health_payloads_pass_the_policy_before_publishing() -> None:
    health = {
        "schema": HEALTH_SCHEMA, "unit": "unit-1", "at": format_timestamp(T0),
        "status": "ok", "uptime_s": 1.0, "temperature_c": None, "gallery_version": None,
        "cameras": {"front": {"state": "failed", "frames": 0, "frames_dropped": 0,
                              "last_error": base64.b64encode(RNG.randbytes(90)).decode()}},
        "mqtt": {"state": "connected", "last_error": None},
        "outbox": {"depth": 0, "dropped": 0},
    }
    with pytest.raises(PrivacyError, match=r"facegate/health/1 payload at /cameras/front"):
        prepare(HEALTH_SCHEMA, health)


def test_gallery_state_message_that_fails_the_policy_is_replaced() -> None:
    blob = base64.b64encode(RNG.randbytes(90)).decode()
    state = GalleryState("failed", "refused", 3, 2, 4, "dlib-resnet-v1", None, None,
                         "bad_payload", f"refused: {blob}", T0)
    payload = state.payload("unit-1")
    assert payload["message"] == "refused (bad_payload)"
    prepare(GALLERY_STATE_SCHEMA, payload)


def test_audit_appends_pass_the_policy_and_long_reasons_are_shortened(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.db") as log:
        with pytest.raises(PrivacyError, match="audit payload at /note"):
            log.append(AuditKind.CONFIG_CHANGE, {"note": "x " * 300}, actor="cli")
        assert log.head().seq == 0
        rec = log.record_sync_refused(to_version=4, bundle_sha256=None,
                                      reason="signature refused: " + "why " * 200)
        reason = str(rec.payload_obj()["reason"])
        assert len(reason) == MAX_STRING_CHARS and reason.endswith("…")
        stop = log.record_service_stop("error: " + "boom " * 200)
        assert len(str(stop.payload_obj()["reason"])) == MAX_STRING_CHARS


def test_clip() -> None:
    assert clip("short") == "short"
    assert clip("x" * 600) == "x" * 511 + "…"


# --- one timestamp formatter and parser ---------------------------------------------


def test_one_formatter_writes_both_formats() -> None:
    moment = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert format_timestamp(moment.timestamp()) == "2024-05-01T12:00:00.123Z"
    assert format_utc(moment.timestamp()) == "2024-05-01T12:00:00.123Z"
    assert format_ts(moment) == "2024-05-01T12:00:00.123456Z" == format_utc(moment, digits=6)
    assert format_utc(moment, digits=0) == "2024-05-01T12:00:00Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        format_utc(datetime(2024, 5, 1))


def test_one_parser_reads_both_formats() -> None:
    assert parse_timestamp("2024-05-01T12:00:00.123Z") == pytest.approx(T0 + 0.123)
    assert parse_utc("2024-05-01T12:00:00.123456Z").microsecond == 123456
    assert parse_time("2024-05-01T12:00:00.123456Z") == parse_utc("2024-05-01T12:00:00.123456Z")
    assert parse_time("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC)
    with pytest.raises(PublishError, match="must end in Z"):
        parse_timestamp("2024-05-01T12:00:00+02:00")
    with pytest.raises(AuditError, match="ISO-8601"):
        parse_time("yesterday")
    assert json.loads(json.dumps(format_timestamp(T0))) == "2024-05-01T12:00:00.000Z"
