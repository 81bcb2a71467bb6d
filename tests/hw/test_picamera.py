"""The picamera2 frame source on a real Raspberry Pi camera (skipped without one)."""

from __future__ import annotations

import pytest

from device.camera.picam import PiCamera2Source, PiCamera2SourceConfig

pytestmark = pytest.mark.hw


def test_pi_camera_delivers_rgb_frames(pi_camera: int) -> None:
    config = PiCamera2SourceConfig(camera_num=pi_camera, width=640, height=480)
    with PiCamera2Source(config) as source:
        frames = []
        for frame in source:
            frames.append(frame)
            if len(frames) == 3:
                break
    assert len(frames) == 3
    for frame in frames:
        assert frame.image.shape == (480, 640, 3)
        assert frame.image.dtype.name == "uint8"
    assert frames[0].timestamp <= frames[1].timestamp <= frames[2].timestamp
