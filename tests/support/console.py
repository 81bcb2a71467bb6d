"""Helpers for the console's tests: a throwaway PostgreSQL cluster, event payloads."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from device.events.schema import MatchEvent, NormalisedBox, TrackEndEvent
from device.ops.localbroker import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "nobody"


def pg_missing() -> str | None:
    """Why no PostgreSQL cluster can be started here; None when one can."""
    if not (PG_BIN / "initdb").is_file():
        return f"PostgreSQL 15 not installed ({PG_BIN}/initdb; Debian package postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"no unprivileged user {PG_USER!r} to run initdb as"
    return None


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *argv] if os.geteuid() == 0 else argv


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """A new PostgreSQL cluster on a free 127.0.0.1 port; yields its base URL (no db)."""
    root = Path(tempfile.mkdtemp(prefix="facegate-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        entry = pwd.getpwnam(PG_USER)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    port = free_port()
    try:
        subprocess.run(_as_owner([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                                  "--auth=trust", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True, cwd=root)
        subprocess.run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l",
                                  str(root / "pg.log"), "-w", "-t", "60", "-o",
                                  f"-p {port} -k {root} -c listen_addresses=127.0.0.1 "
                                  "-c fsync=off -c max_connections=60", "start"]),
                       check=True, capture_output=True, cwd=root)
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                  "-w", "stop"]), capture_output=True, check=False, cwd="/")
        shutil.rmtree(root, ignore_errors=True)


def create_database(base_url: str) -> str:
    """A new empty database in the cluster at ``base_url``; its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{base_url}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{base_url}/{name}"


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
