"""Helpers for the console's tests: event payloads (the PostgreSQL cluster is in
:mod:`device.lab.pgcluster`, shared with the fleet bench)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from device.events.schema import MatchEvent, NormalisedBox, TrackEndEvent
from device.lab.pgcluster import create_database, pg_missing, postgres_cluster

__all__ = ["create_database", "pg_missing", "postgres_cluster"]


def match_payload(unit: str = "unit-1", camera: str = "front", identity: str = "p-0001",
                  *, similarity: float = 0.82, fmr: float = 1e-4, decided_at: float | None = None,
                  event_id: str | None = None, label: str = "Ada") -> dict[str, Any]:
    """A schema-valid match payload, as a unit publishes it."""
    now = time.time() if decided_at is None else decided_at
    event = MatchEvent(
        unit=unit, camera=camera, track_id=7, identity_id=identity, label=label,
        similarity=similarity, false_match_rate=fmr, gallery_version=3, model_id="dlib-resnet",
        first_seen=now - 2.0, decided_at=now, faces_considered=3,
        box=NormalisedBox(0.1, 0.2, 0.3, 0.3), event_id=event_id or str(uuid.uuid4()),
        fmr_at_similarity=2e-6)
    return event.to_payload()


def track_end_payload(match: dict[str, Any]) -> dict[str, Any]:
    now = time.time()
    return TrackEndEvent(unit=match["unit"], camera=match["camera"], track_id=match["track_id"],
                         identity_id=match["identity_id"], match_event_id=match["event_id"],
                         first_seen=now - 3, last_seen=now - 1, frames_seen=20,
                         ended_at=now).to_payload()


def health_payload(unit: str = "unit-1", at: float | None = None) -> dict[str, Any]:
    from device.events.schema import format_timestamp, validate

    payload = {
        "schema": "facegate/health/1", "unit": unit, "at": format_timestamp(at or time.time()),
        "status": "ok", "uptime_s": 12.0, "gallery_version": 3,
        "cameras": {"front": {"state": "running", "fps": 9.5, "frames_dropped": 2},
                    "back": {"state": "stalled", "fps": 0.0, "frames_dropped": 0}},
        "mqtt": {"state": "connected", "last_error": None},
        "pipeline": {"fps_in": 19.0, "fps_out": 9.5, "frames_dropped": 2,
                     "false_match_rate": 1e-4},
        "outbox": {"depth": 0, "dropped": 0},
    }
    validate("facegate/health/1", payload)
    return payload


def gallery_payload(unit: str = "unit-1", identities: int = 1000,
                    refusal: str | None = None) -> dict[str, Any]:
    from device.events.schema import format_timestamp, validate

    payload: dict[str, Any] = {
        "schema": "facegate/gallery_state/1", "unit": unit, "state": "active", "version": 3,
        "identities": identities, "templates": identities * 3, "model_id": "dlib-resnet",
        "bundle_sha256": "ab" * 32, "updated_at": format_timestamp(time.time()),
        "last_refusal": None if refusal is None else {
            "reason": refusal, "message": "the bundle's signature is not trusted",
            "version": 4, "at": format_timestamp(time.time())},
    }
    validate("facegate/gallery_state/1", payload)
    return payload


def audit_head_payload(unit: str = "unit-1", seq: int = 10) -> dict[str, Any]:
    from device.events.schema import format_timestamp

    return {"unit": unit, "log_id": "c0ffee" * 4, "seq": seq, "hash": f"{seq:064x}",
            "at": format_timestamp(time.time())}
