"""picamera2: imported only when opened; its absence is a clear, actionable error.

picamera2 cannot run here (it needs libcamera from Raspberry Pi OS), so beyond the
"absent" path these tests use a minimal stand-in module that follows picamera2's
documented API; the real camera is covered by tests/hw on a unit.
"""

from __future__ import annotations

import subprocess
import sys
import types
from typing import Any, ClassVar

import numpy as np
import pytest

from device.camera import CameraHardwareError, PiCamera2SourceConfig, SourceState, open_source
from device.errors import CameraError, HardwareError


def test_importing_the_camera_package_does_not_import_picamera2() -> None:
    code = "import sys, device.camera; print('picamera2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_absent_picamera2_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes `import picamera2` fail
    with pytest.raises(CameraError) as info:
        open_source(PiCamera2SourceConfig(camera_id="pi"))
    assert isinstance(info.value, HardwareError)
    message = str(info.value)
    assert "python3-picamera2" in message
    assert "--system-site-packages" in message


class StandInPicamera2:
    """Just enough of picamera2.Picamera2 for the backend's calls."""

    cameras: ClassVar[list[dict[str, Any]]] = [{"Model": "imx708", "Num": 0}]
    instances: ClassVar[list[StandInPicamera2]] = []

    def __init__(self, camera_num: int) -> None:
        self.camera_num = camera_num
        self.calls: list[str] = []
        self.config: dict[str, Any] = {}
        StandInPicamera2.instances.append(self)

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return StandInPicamera2.cameras

    def create_video_configuration(self, main: dict[str, Any],
                                   controls: dict[str, Any]) -> dict[str, Any]:
        return {"main": main, "controls": controls}

    def configure(self, config: dict[str, Any]) -> None:
        self.config = config

    def start(self) -> None:
        self.calls.append("start")

    def capture_array(self, name: str) -> np.ndarray[Any, Any]:
        w, h = self.config["main"]["size"]
        arr = np.zeros((h, w, 3), np.uint8)
        arr[..., 0] = 200  # "BGR888" arrays are R, G, B in memory
        return arr

    def stop(self) -> None:
        self.calls.append("stop")

    def close(self) -> None:
        self.calls.append("close")


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> type[StandInPicamera2]:
    module = types.ModuleType("picamera2")
    module.Picamera2 = StandInPicamera2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "picamera2", module)
    StandInPicamera2.instances = []
    StandInPicamera2.cameras = [{"Model": "imx708", "Num": 0}]
    return StandInPicamera2


def test_no_camera_detected_is_a_hardware_error(stand_in: type[StandInPicamera2]) -> None:
    stand_in.cameras = []
    with pytest.raises(CameraHardwareError, match="no camera detected") as info:
        open_source(PiCamera2SourceConfig(camera_id="pi"))
    assert isinstance(info.value, HardwareError)
    assert isinstance(info.value, CameraError)


def test_frames_are_rgb_and_close_stops_the_camera(stand_in: type[StandInPicamera2]) -> None:
    cfg = PiCamera2SourceConfig(camera_id="pi", width=64, height=48, fps=15)
    with open_source(cfg) as source:
        frames = []
        for frame in source:
            frames.append(frame)
            if len(frames) == 3:
                break
        assert [f.seq for f in frames] == [0, 1, 2]
        assert frames[0].image.shape == (48, 64, 3)
        assert frames[0].image[0, 0].tolist() == [200, 0, 0]
        assert frames[0].source == "picamera2:0"
        assert stand_in.instances[0].config["controls"] == {"FrameRate": 15}
    cam = stand_in.instances[0]
    assert cam.calls == ["start", "stop", "close"]
    assert source.health().state is SourceState.CLOSED
    source.close()  # idempotent
    assert cam.calls == ["start", "stop", "close"]
