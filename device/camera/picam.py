"""Raspberry Pi cameras (CSI) through picamera2 and libcamera.

``picamera2`` is imported only here, when such a source is opened, so everything
else imports and runs on machines without it. It needs libcamera's Python bindings,
which come from Raspberry Pi OS, not from PyPI.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from types import ModuleType
from typing import Any, Literal

import numpy as np
from pydantic import Field

from device.camera.base import BaseSource, CameraHardwareError, SourceConfigBase
from device.errors import CameraError
from device.types import Frame, Image

logger = logging.getLogger(__name__)

#: What to do when ``import picamera2`` fails.
PICAMERA2_HINT = (
    "install python3-picamera2 from Raspberry Pi OS (sudo apt install python3-picamera2) "
    "and create the venv with --system-site-packages so it can see it"
)

_XRGB_CHANNELS = 4


class PiCamera2SourceConfig(SourceConfigBase):
    """A Raspberry Pi camera module read through picamera2."""

    type: Literal["picamera2"] = Field(
        default="picamera2", description="Backend: Raspberry Pi camera via picamera2."
    )
    camera_num: int = Field(
        default=0, ge=0, le=7, description="Which camera, in libcamera's order (0: the first)."
    )
    width: int = Field(default=1280, gt=0, le=8192, description="Frame width, pixels.")
    height: int = Field(default=720, gt=0, le=8192, description="Frame height, pixels.")
    fps: float | None = Field(
        default=None, gt=0, le=240, description="Frame rate; unset: the sensor mode's default."
    )


def import_picamera2() -> ModuleType:
    """Import picamera2 now.

    Raises:
        CameraHardwareError: picamera2 or libcamera's bindings are not installed (the
            camera cannot be used on this system).
    """
    try:
        return importlib.import_module("picamera2")
    except ImportError as exc:
        raise CameraHardwareError(f"picamera2 is not available ({exc}); {PICAMERA2_HINT}") from exc


def picamera_to_rgb(array: Any, origin: str) -> Image:
    """Convert a picamera2 ``BGR888`` (pixel order R, G, B) or ``XBGR8888`` array to RGB.

    Raises:
        CameraError: The array is not a colour image.
    """
    arr = np.asarray(array)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, _XRGB_CHANNELS):
        raise CameraError(f"{origin}: unexpected frame {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr[:, :, :3])


class PiCamera2Source(BaseSource):
    """Frames from a Raspberry Pi camera.

    Args:
        config: The source's section.

    Raises:
        CameraHardwareError: picamera2 is not installed (the message says how to
            install it), no camera at ``camera_num``, or it cannot be started.
    """

    def __init__(self, config: PiCamera2SourceConfig) -> None:
        super().__init__(config.camera_id, f"picamera2:{config.camera_num}")
        self._config = config
        self._cam: Any = None
        module = import_picamera2()
        picamera2_cls = module.Picamera2
        try:
            cameras = list(picamera2_cls.global_camera_info())
        except (RuntimeError, OSError) as exc:
            raise CameraHardwareError(f"{self.source}: libcamera failed: {exc}") from exc
        if config.camera_num >= len(cameras):
            raise CameraHardwareError(
                f"{self.source}: no camera detected (libcamera sees {len(cameras)}); check "
                "the ribbon cable and `rpicam-hello --list-cameras`"
            )
        try:
            self._cam = picamera2_cls(config.camera_num)
            controls = {"FrameRate": config.fps} if config.fps is not None else {}
            # picamera2 names formats by libcamera's convention: "BGR888" arrays hold
            # pixels in R, G, B order, which is what Frame wants.
            video_config = self._cam.create_video_configuration(
                main={"size": (config.width, config.height), "format": "BGR888"},
                controls=controls,
            )
            self._cam.configure(video_config)
            self._cam.start()
        except (RuntimeError, OSError, ValueError, IndexError) as exc:
            self._release()
            raise CameraHardwareError(f"{self.source}: cannot start the camera: {exc}") from exc
        logger.info("camera %s: %s started at %dx%d", config.camera_id, self.source,
                    config.width, config.height)

    def _frames(self) -> Iterator[Frame]:
        """Yield frames until closed.

        Raises:
            CameraError: The camera stopped delivering.
        """
        while not self.closed:
            with self._lock:
                if self.closed or self._cam is None:
                    return
                try:
                    array = self._cam.capture_array("main")
                except (RuntimeError, OSError) as exc:
                    raise CameraError(f"{self.source}: capture failed: {exc}") from exc
            yield self._frame(picamera_to_rgb(array, self.source))

    def _release(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        try:
            cam.stop()
            cam.close()
        except (RuntimeError, OSError) as exc:
            logger.warning("camera %s: stopping %s failed: %s", self.camera_id, self.source, exc)
