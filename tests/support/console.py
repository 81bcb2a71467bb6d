"""Helpers for the console's tests: event payloads (the PostgreSQL cluster is in
:mod:`device.lab.pgcluster`, shared with the fleet bench)."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
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


#: Every page the console serves to a logged-in admin (GET, no path parameters), and its
#: static files; ``/live`` (an endless event stream) is read apart. A test checks this
#: list against the app's routes, so a new page is scanned too.
PAGES = ("/", "/login", "/fleet", "/events", "/review", "/accuracy", "/access",
         "/static/live.js", "/static/console.css")
STREAMS = ("/live",)

IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF87a", b"GIF89a", b"\x00\x00\x00\x0cjP")
#: Headers too short to search for alone (three letters turn up in any random base64
#: text), so matched with their structure: BMP's reserved zero bytes, RIFF's WEBP tag.
IMAGE_HEADERS = (re.compile(rb"BM.{4}\x00\x00\x00\x00", re.DOTALL),
                 re.compile(rb"RIFF.{4}WEBP", re.DOTALL))


def served_paths(app: Any) -> set[str]:
    """The GET paths of a Starlette app without path parameters, static files listed."""
    from starlette.routing import Mount, Route

    out: set[str] = set()
    for route in app.routes:
        if isinstance(route, Route) and "GET" in (route.methods or set()) \
                and "{" not in route.path:
            out.add(route.path)
        elif isinstance(route, Mount):
            directory = Path(route.app.directory)  # type: ignore[attr-defined]
            out |= {f"{route.path}/{p.name}" for p in directory.iterdir() if p.is_file()}
    return out


def assert_no_imagery(body: bytes, where: str) -> None:
    """No raster image magic, no data: URI, no <img>, no long base64 or number lists."""
    import re

    for magic in IMAGE_MAGIC:
        assert magic not in body, f"{where} holds image magic bytes {magic!r}"
    for header in IMAGE_HEADERS:
        assert not header.search(body), f"{where} holds an image header {header.pattern!r}"
    text = body.decode("utf-8")
    assert "data:image" not in text and "<img" not in text.lower(), where
    assert not re.search(r"[A-Za-z0-9+/=]{160,}", text), f"{where} holds a base64-like blob"
    numbers = re.findall(r"-?\d+\.\d{3,}", text)
    assert not re.search(r"(?:-?\d+\.\d+\s*,\s*){15,}", text), f"{where} holds a number list"
    assert len(numbers) < 500, where


def assert_store_clean(store: Any) -> None:
    """Every row of every table passes the privacy policy and holds no image; the SQLite
    file (and its WAL) holds no image magic and no column holds a binary value."""
    import sqlite3

    from device.privacy import check_payload

    rows = 0
    for table, row in store.dump():
        rows += 1
        # An argon2 password hash is base64 by its format; it is the one such value.
        values = [v for v in row if not (isinstance(v, str) and v.startswith("$argon2id$"))]
        check_payload([v for v in values if not isinstance(v, str) or len(v) <= 512],
                      where=f"console table {table}")
        for value in values:
            if isinstance(value, str | bytes):
                assert_no_imagery(value.encode() if isinstance(value, str) else value, table)
    assert rows, "the store is empty: nothing was scanned"
    path = Path(str(store.engine.url.database))
    for part in sorted(path.parent.glob(path.name + "*")):  # the file, -wal, -shm
        raw = part.read_bytes()
        assert not any(magic in raw for magic in IMAGE_MAGIC[:4]), f"{part} holds image bytes"
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for column in [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]:
                blobs = db.execute(f'SELECT count(*) FROM "{table}" '
                                   f"WHERE typeof(\"{column}\") = 'blob'").fetchone()[0]
                assert blobs == 0, f"{table}.{column} holds binary values"
