"""The service's health: the snapshot, the local health file, the temperature, the text.

:func:`health_payload` (defined beside the publisher's status, which a bare
publisher also publishes) is the one place the ``facegate/health/1`` payload is
assembled: the envelope (schema, unit, time), the pipeline part (status, uptime,
temperature, gallery version, cameras, the frame loop, from
:meth:`device.service.pipeline.RecognitionService.health`) and the event layer's
``mqtt`` and ``outbox`` sections (from the publisher's status). The publisher
publishes it, retained, every interval; the housekeeping writes it to a local file
(:func:`write_health_file`, atomically), which ``facegate status`` reads
(:func:`read_health_file`, :func:`format_status`) — so a person on the unit sees it
with the broker down.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from device.camera import SourceHealth, SourceState
from device.errors import DeviceError
from device.events.mqtt import health_payload
from device.events.schema import parse_timestamp

__all__ = ["camera_state", "format_status", "health_payload", "read_health_file",
           "read_temperature", "temperature_file", "write_health_file"]

logger = logging.getLogger(__name__)

THERMAL_ROOT = Path("/sys/class/thermal")
#: Thermal zone types that are the SoC, best first (Raspberry Pi, then x86 packages).
_PREFERRED_ZONES = ("cpu-thermal", "cpu_thermal", "soc_thermal", "x86_pkg_temp", "acpitz")


def temperature_file(root: Path = THERMAL_ROOT) -> Path | None:
    """The thermal zone file of the SoC: a preferred zone type, else zone 0; None if none."""
    zones = sorted(root.glob("thermal_zone*"))
    if not zones:
        return None
    by_type: dict[str, Path] = {}
    for zone in zones:
        try:
            by_type.setdefault((zone / "type").read_text().strip(), zone / "temp")
        except OSError:
            continue
    for name in _PREFERRED_ZONES:
        if name in by_type:
            return by_type[name]
    return zones[0] / "temp"


def read_temperature(path: Path | None) -> float | None:
    """Degrees C from a sysfs file in millidegrees; None when missing or unreadable."""
    if path is None:
        return None
    try:
        value = int(path.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None
    return round(value, 1) if -60.0 <= value <= 150.0 else None


def camera_state(health: SourceHealth, *, idle_s: float | None, stall_after_s: float) -> str:
    """The health schema's camera state: running, stalled, failed or stopped.

    Args:
        health: The source's own report.
        idle_s: Seconds since the camera's last frame arrived (``None``: none yet). A
            source's ``last_frame_at`` is the frame's timestamp, which for a replayed
            file is media time, so the caller measures arrivals itself.
        stall_after_s: A running camera idle for longer than this is stalled.
    """
    if health.state is SourceState.FAILED:
        return "failed"
    if health.state in (SourceState.ENDED, SourceState.CLOSED):
        return "stopped"
    if health.state is SourceState.RECONNECTING:
        return "stalled"
    if health.state is SourceState.RUNNING and idle_s is not None and idle_s > stall_after_s:
        return "stalled"
    return "running"


def write_health_file(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (temp file, fsync, rename).

    Raises:
        OSError: The folder cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".health-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_health_file(path: Path) -> dict[str, Any]:
    """The health snapshot the service last wrote.

    Raises:
        DeviceError: No file (the service has not run with this state directory) or
            not a health snapshot.
    """
    try:
        document = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise DeviceError(
            f"no health file at {path}: is `facegate run` running with this state directory?"
        ) from None
    except (OSError, ValueError) as exc:
        raise DeviceError(f"cannot read health file {path}: {exc}") from exc
    if not isinstance(document, dict) or document.get("schema") != "facegate/health/1":
        raise DeviceError(f"{path} is not a facegate health snapshot")
    return document


def _num(value: Any, fmt: str = "{:.1f}", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return none
    return fmt.format(value)


def _gallery_lines(gallery: Mapping[str, Any]) -> list[str]:
    """What is wrong with the gallery file, when something is (nothing when loaded)."""
    state = gallery.get("state")
    if state == "refused":
        return [f"  gallery refused (not matching): {gallery.get('error') or '?'}"]
    if state == "missing":
        return [f"  gallery missing: no file at {gallery.get('path') or '?'}; every face is "
                "unknown until one is enrolled or synced"]
    if gallery.get("warning"):
        return [f"  gallery warning: {gallery['warning']}"]
    return []


def format_status(health: Mapping[str, Any], *, now: float | None = None) -> str:
    """The health snapshot as text for a person (``facegate status``)."""
    now = time.time() if now is None else now
    lines: list[str] = []
    age = ""
    with contextlib.suppress(KeyError, TypeError, DeviceError):
        age_s = now - parse_timestamp(str(health["at"]))
        age = f" ({age_s:.0f} s ago)" if age_s >= 0 else ""
    lines.append(f"unit {health.get('unit', '?')}: {health.get('status', '?')}, "
                 f"snapshot {health.get('at', '?')}{age}")
    uptime = health.get("uptime_s")
    lines.append(
        f"  uptime {_num(uptime, '{:.0f} s')}, temperature "
        f"{_num(health.get('temperature_c'), '{:.1f} °C', 'n/a')}, gallery version "
        f"{_num(health.get('gallery_version'), '{}', 'none')}"
    )
    lines += _gallery_lines(health.get("gallery") or {})
    pipeline = health.get("pipeline") or {}
    if pipeline:
        lines.append(
            f"  frames: {_num(pipeline.get('fps_in'))} fps in, {_num(pipeline.get('fps_out'))} "
            f"fps out, {pipeline.get('frames_processed', 0)} processed, "
            f"{pipeline.get('frames_dropped', 0)} dropped, queue "
            f"{pipeline.get('queue_depth', 0)}/{pipeline.get('queue_size', '?')}"
        )
        lines.append(
            f"  faces embedded {pipeline.get('faces_embedded', 0)}, matches "
            f"{pipeline.get('matches', 0)}, errors {pipeline.get('errors', 0)}, threshold "
            f"{_num(pipeline.get('threshold'), '{:.4f}')} (FMR "
            f"{_num(pipeline.get('false_match_rate'), '{:g}')})"
        )
    cameras = health.get("cameras") or {}
    if cameras:
        lines.append("  camera            state      fps in  fps out   frames  dropped  tracks  "
                     "unknown  error")
        for name, cam in cameras.items():
            lines.append(
                f"  {name:<17} {cam.get('state', '?'):<9} {_num(cam.get('fps')):>7} "
                f"{_num(cam.get('fps_out')):>8} {cam.get('frames', 0):>8} "
                f"{cam.get('frames_dropped', 0):>8} {cam.get('tracks', 0):>7} "
                f"{cam.get('unknown_tracks', 0):>8}  {cam.get('last_error') or ''}"
            )
    stages = pipeline.get("stages") or {}
    ack = pipeline.get("capture_to_ack")
    if stages or ack:
        lines.append("  stage             p50 ms   p95 ms    count")
        rows = list(stages.items()) + ([("capture_to_ack", ack)] if ack else [])
        for name, s in rows:
            lines.append(f"  {name:<15} {_num(s.get('p50_ms'), '{:.2f}'):>8} "
                         f"{_num(s.get('p95_ms'), '{:.2f}'):>8} {s.get('count', 0):>8}")
    mqtt = health.get("mqtt") or {}
    outbox = health.get("outbox") or {}
    lines.append(
        f"  mqtt {mqtt.get('state', '?')}"
        + (f" ({mqtt['last_error']})" if mqtt.get("last_error") else "")
        + f"; outbox depth {outbox.get('depth', '?')}, dropped {outbox.get('dropped', 0)}, "
        f"expired {outbox.get('expired', 0)}, acked {outbox.get('acked', 0)}"
    )
    return "\n".join(lines)
