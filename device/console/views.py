"""What the pages show, computed from store rows: pure functions, no web framework."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from device.console.store import Store
from device.events.schema import format_timestamp


def ago(then: float | None, now: float | None = None) -> str:
    """``then`` as ``12 s ago``, ``3 min ago``, ``2 h ago``, ``4 d ago``; ``never``."""
    if then is None:
        return "never"
    seconds = max(0.0, (time.time() if now is None else now) - then)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def utc(when: float | None) -> str:
    return "" if when is None else format_timestamp(when)[:19].replace("T", " ")


@dataclass(frozen=True, slots=True)
class FleetRow:
    """One unit on the fleet page."""

    unit: str
    status: str | None
    health_status: str | None
    health_age: str
    fps: str
    drops: str
    stalled: str
    gallery: str
    sync: str
    audit: str
    last_seen: str
    last_event: str
    flags: tuple[str, ...]


def sync_state(gallery: Mapping[str, Any] | None) -> str:
    """The last sync in words: ``active``, ``refused (bad signature)``..."""
    if gallery is None:
        return "unknown"
    refusal = gallery.get("last_refusal")
    if refusal:
        reason = str(refusal.get("reason", "unknown")).replace("_", " ")
        version = refusal.get("version")
        return f"refused ({reason})" + (f" v{version}" if version is not None else "")
    state = str(gallery.get("state", "unknown"))
    message = gallery.get("message")
    return f"{state}: {message}" if message else state


def fleet_rows(store: Store, *, health_stale_s: float, audit_stale_s: float,
               now: float | None = None) -> list[FleetRow]:
    """Every unit the console has heard of, with its flags."""
    now = time.time() if now is None else now
    last_events = store.last_event_times()
    rows = []
    for unit in store.units():
        health = json.loads(unit["health_json"]) if unit["health_json"] else None
        gallery = json.loads(unit["gallery_json"]) if unit["gallery_json"] else None
        flags = []
        if unit["status"] == "offline":
            flags.append("offline (last will or clean stop)")
        health_at = unit["health_at"]
        if health_at is None:
            flags.append("no health received")
        elif now - health_at > health_stale_s:
            flags.append(f"health stale ({ago(health_at, now)})")
        pipeline = (health or {}).get("pipeline") or {}
        cameras = (health or {}).get("cameras") or {}
        stalled = sorted(name for name, cam in cameras.items()
                         if cam.get("state") in ("stalled", "failed"))
        if stalled:
            flags.append(f"camera {', '.join(stalled)} not running")
        advanced = unit["audit_advanced_at"]
        if advanced is not None and now - advanced > audit_stale_s:
            waiting = store.events_since(unit["unit"], advanced)
            if waiting:
                flags.append(f"audit head not advancing (seq {unit['audit_seq']} since "
                             f"{ago(advanced, now)}, {waiting} event(s) since)")
        fps = pipeline.get("fps_out")
        version = (gallery or {}).get("version", (health or {}).get("gallery_version"))
        identities = (gallery or {}).get("identities")
        audit = ("none" if unit["audit_seq"] is None else
                 f"seq {unit['audit_seq']} {str(unit['audit_hash'])[:12]}… "
                 f"({ago(unit['audit_at'], now)})")
        rows.append(FleetRow(
            unit=unit["unit"], status=unit["status"],
            health_status=(health or {}).get("status"),
            health_age=ago(health_at, now),
            fps="—" if fps is None else f"{float(fps):.1f}",
            drops=str(pipeline.get("frames_dropped", "—")),
            stalled=", ".join(stalled),
            gallery="—" if version is None else (
                f"v{version}" + (f" ({identities} identities)" if identities is not None
                                 else "")),
            sync=sync_state(gallery), audit=audit,
            last_seen=ago(unit["last_seen"], now),
            last_event=ago(last_events.get(unit["unit"]), now),
            flags=tuple(flags)))
    return rows
