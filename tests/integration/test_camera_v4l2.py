"""V4L2 cameras: a missing or wrong device fails at open with a message saying what to check.

No camera is attached here; tests with a real one belong in tests/hw.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from device.camera import CameraHardwareError, V4L2Source, V4L2SourceConfig, open_source
from device.camera.registry import parse_source_config
from device.errors import CameraError, HardwareError


@pytest.mark.parametrize("device", ["/dev/video99", 99])
def test_missing_device_is_a_clear_hardware_error(device: object) -> None:
    if Path("/dev/video99").exists():
        pytest.skip("/dev/video99 exists on this machine")
    cfg = parse_source_config({"type": "v4l2", "camera_id": "usb", "device": device})
    with pytest.raises(CameraHardwareError) as info:
        open_source(cfg)
    message = str(info.value)
    assert message.startswith("/dev/video99: no such video device")
    assert "ls /dev/video*" in message
    assert isinstance(info.value, HardwareError) and isinstance(info.value, CameraError)


def test_a_regular_file_is_not_a_video_device(tmp_path: Path) -> None:
    path = tmp_path / "video0"
    path.write_text("not a device")
    with pytest.raises(CameraError, match=re.escape(f"{path}: not a video device")):
        V4L2Source(V4L2SourceConfig(camera_id="usb", device=str(path)))


def test_a_character_device_that_cannot_capture_is_refused() -> None:
    with pytest.raises(CameraHardwareError, match="/dev/null: cannot open as a V4L2 capture"):
        V4L2Source(V4L2SourceConfig(camera_id="usb", device="/dev/null", width=640,
                                    height=480, fps=15, fourcc="MJPG"))
