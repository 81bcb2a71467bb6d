"""Health: camera states, temperature, the atomic health file and `facegate status`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from device.camera import SourceHealth, SourceState
from device.cli import main
from device.errors import DeviceError
from device.events.schema import HEALTH_SCHEMA, format_timestamp, validate
from device.privacy import check_payload as privacy_guard
from device.service.health import (
    camera_state,
    format_status,
    read_health_file,
    read_temperature,
    temperature_file,
    write_health_file,
)
from device.service.pipeline import STAGE_ORDER

NOW = 1_714_564_800.0


def _payload() -> dict[str, Any]:
    latency = {"count": 275, "p50_ms": 6.1, "p95_ms": 11.9, "mean_ms": 6.8, "max_ms": 20.0}
    return {
        "schema": HEALTH_SCHEMA, "unit": "unit-1", "at": format_timestamp(NOW - 3),
        "status": "degraded", "uptime_s": 12.5, "temperature_c": 51.2, "gallery_version": 3,
        "cameras": {
            "front": {"state": "running", "fps": 29.9, "frames": 275, "frames_dropped": 2,
                      "queue_depth": 0, "matches": 2, "last_error": None, "fps_out": 29.8,
                      "frames_processed": 273, "tracks": 1, "unknown_tracks": 4,
                      "reconnects": 0},
            "back": {"state": "failed", "frames": 0, "frames_dropped": 0,
                     "last_error": "/dev/video9: no such device"},
        },
        "pipeline": {"fps_in": 29.9, "fps_out": 29.8, "frames_in": 275, "frames_processed": 273,
                     "frames_dropped": 2, "queue_depth": 0, "queue_size": 4,
                     "faces_embedded": 17, "matches": 2, "errors": 0, "threshold": 0.93,
                     "false_match_rate": 1e-4,
                     "stages": dict.fromkeys(STAGE_ORDER, latency),
                     "capture_to_ack": latency},
        "mqtt": {"state": "connected", "last_error": None, "connected_since": None,
                 "connects": 1, "failures": 0},
        "outbox": {"depth": 0, "dropped": 0, "expired": 0, "purged": 0, "oldest_age_s": None,
                   "inflight": 0, "acked": 4},
    }


def test_the_payload_shape_is_the_published_schema_and_passes_the_privacy_guard() -> None:
    validate(HEALTH_SCHEMA, _payload())
    privacy_guard(_payload())


@pytest.mark.parametrize(("state", "idle", "expected"), [
    (SourceState.RUNNING, 1.0, "running"),
    (SourceState.RUNNING, 60.0, "stalled"),
    (SourceState.RUNNING, None, "running"),
    (SourceState.CREATED, None, "running"),
    (SourceState.RECONNECTING, 1.0, "stalled"),
    (SourceState.FAILED, 1.0, "failed"),
    (SourceState.ENDED, 1.0, "stopped"),
    (SourceState.CLOSED, None, "stopped"),
])
def test_camera_states(state: SourceState, idle: float | None, expected: str) -> None:
    health = SourceHealth("front", "x", state, last_frame_at=NOW - 1e6)  # media time
    assert camera_state(health, idle_s=idle, stall_after_s=10) == expected


def test_temperature_from_the_soc_zone(tmp_path: Path) -> None:
    for index, (kind, value) in enumerate([("acpitz", "30000"), ("cpu-thermal", "48312")]):
        zone = tmp_path / f"thermal_zone{index}"
        zone.mkdir()
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(value + "\n")
    path = temperature_file(tmp_path)
    assert path == tmp_path / "thermal_zone1" / "temp"
    assert read_temperature(path) == 48.3
    assert read_temperature(tmp_path / "missing") is None
    assert read_temperature(None) is None
    assert temperature_file(tmp_path / "none") is None


def test_health_file_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "state" / "health.json"
    write_health_file(path, _payload())
    assert read_health_file(path)["pipeline"]["faces_embedded"] == 17
    assert [p.name for p in path.parent.iterdir()] == ["health.json"]  # no temp left
    with pytest.raises(DeviceError, match="is `facegate run` running"):
        read_health_file(tmp_path / "none.json")
    (tmp_path / "other.json").write_text(json.dumps({"schema": "x"}))
    with pytest.raises(DeviceError, match="not a facegate health snapshot"):
        read_health_file(tmp_path / "other.json")


def test_status_text_shows_cameras_stages_and_outbox() -> None:
    text = format_status(_payload(), now=NOW)
    assert "unit unit-1: degraded" in text and "(3 s ago)" in text
    assert "temperature 51.2 °C" in text and "gallery version 3" in text
    assert "2 dropped" in text
    front = next(line for line in text.splitlines() if line.strip().startswith("front"))
    assert "running" in front and "29.9" in front
    back = next(line for line in text.splitlines() if line.strip().startswith("back"))
    assert "failed" in back and "no such device" in back
    assert any(line.split()[:3] == ["detect", "6.10", "11.90"] for line in text.splitlines())
    assert any(line.split()[:1] == ["capture_to_ack"] for line in text.splitlines())
    assert "outbox depth 0" in text


def test_status_command_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    write_health_file(path, _payload())
    result = CliRunner().invoke(main, ["status", "--file", str(path)])
    assert result.exit_code == 0, result.output
    assert "front" in result.output
    result = CliRunner().invoke(main, ["status", "--file", str(path), "--json"])
    assert json.loads(result.output)["unit"] == "unit-1"
    result = CliRunner().invoke(main, ["status", "--file", str(tmp_path / "none.json")])
    assert result.exit_code == 2 and "no health file" in result.output
