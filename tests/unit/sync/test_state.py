"""The gallery state record and payload: a refusal never changes the live state."""

from __future__ import annotations

from device.events.schema import GALLERY_STATE_SCHEMA, validate
from device.sync.layout import STATE_FORMAT, Refusal, SyncRecord
from device.sync.state import GalleryState


def test_a_record_from_before_refusals_had_their_field_is_read_as_active() -> None:
    old = {"format": STATE_FORMAT, "floor": 2, "clock_floor": 1.0, "status": "failed",
           "reason": "rollback", "message": "refused (rollback): version 1 is not newer",
           "updated_at": 1_700_000_000.0}
    record = SyncRecord.from_json(old)
    assert (record.status, record.reason, record.message) == ("active", None, None)
    assert record.refusal == Refusal("rollback", old["message"], None, None, 1_700_000_000.0)
    assert SyncRecord.from_json(record.to_json()) == record


def test_an_error_record_stays_failed() -> None:
    record = SyncRecord.from_json({"format": STATE_FORMAT, "floor": 1, "clock_floor": 0.0,
                                   "status": "failed", "reason": "download",
                                   "message": "error (download): cut off", "updated_at": 5.0})
    assert (record.status, record.refusal) == ("failed", None)


def test_the_payload_carries_the_last_refusal_and_validates() -> None:
    refusal = Refusal("bad_signature", "refused (bad_signature): altered", 3, "a" * 64,
                      1_700_000_000.5)
    state = GalleryState.of(None, outcome="refused", status="active", reason=None,
                            message=None, model_id="dlib-resnet-v1", now=1_700_000_001.0,
                            last_refusal=refusal)
    payload = state.payload("unit-1")
    validate(GALLERY_STATE_SCHEMA, payload)
    assert payload["state"] == "empty" and payload["message"] is None
    assert payload["last_refusal"] == {"reason": "bad_signature",
                                       "message": "refused (bad_signature): altered",
                                       "version": 3, "bundle_sha256": "a" * 64,
                                       "at": "2023-11-14T22:13:20.500Z"}
    none = GalleryState.of(None, outcome="ok", status="active", reason=None, message=None,
                           model_id=None, now=1.0).payload("unit-1")
    validate(GALLERY_STATE_SCHEMA, none)
    assert none["last_refusal"] is None
