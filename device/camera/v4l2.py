"""USB and other V4L2 cameras through OpenCV's V4L2 backend.

The device is opened when the source is made, so a missing or inaccessible camera
fails at start with a message that says what to check. A camera that stops
delivering (unplugged, USB reset) is re-opened with backoff, like an RTSP stream.
"""

from __future__ import annotations

import logging
import os
import random
import stat
from collections.abc import Callable
from typing import Literal

import cv2
from pydantic import Field, field_validator

from device.camera.base import CameraHardwareError, SourceConfigBase
from device.camera.capture import Capture, release_quietly
from device.camera.reconnect import ReconnectConfig, StreamSource
from device.errors import CameraError

logger = logging.getLogger(__name__)

_FOURCC_LEN = 4


class V4L2SourceConfig(SourceConfigBase):
    """A V4L2 (USB, CSI through a V4L2 driver) camera."""

    type: Literal["v4l2"] = Field(default="v4l2", description="Backend: V4L2 camera.")
    device: str = Field(
        default="/dev/video0",
        description="Device node such as /dev/video0, or its index (0 means /dev/video0).",
    )
    width: int | None = Field(
        default=None, gt=0, le=8192, description="Requested frame width; unset: driver default."
    )
    height: int | None = Field(
        default=None, gt=0, le=8192, description="Requested frame height; unset: driver default."
    )
    fps: float | None = Field(
        default=None, gt=0, le=1000, description="Requested frame rate; unset: driver default."
    )
    fourcc: str | None = Field(
        default=None,
        description="Requested pixel format, e.g. MJPG (lets USB 2 cameras reach higher "
        "resolutions at full rate) or YUYV; unset: driver default.",
    )
    reconnect: ReconnectConfig = Field(
        default_factory=ReconnectConfig, description="Backoff when the camera stops delivering."
    )

    @field_validator("device", mode="before")
    @classmethod
    def _index_to_node(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return f"/dev/video{value}"
        if isinstance(value, str) and value.isdigit():
            return f"/dev/video{int(value)}"
        return value

    @field_validator("fourcc")
    @classmethod
    def _four_chars(cls, value: str | None) -> str | None:
        if value is not None and (len(value) != _FOURCC_LEN or not value.isascii()):
            raise ValueError("fourcc must be four ASCII characters, e.g. MJPG")
        return value


def check_device(device: str) -> None:
    """Refuse a device node that is missing, not a device, or not accessible.

    Raises:
        CameraHardwareError: The node is missing or not readable and writable.
        CameraError: The path is not a character device.
    """
    try:
        mode = os.stat(device).st_mode
    except FileNotFoundError:
        raise CameraHardwareError(
            f"{device}: no such video device; check the camera is connected and "
            "detected (ls /dev/video*, v4l2-ctl --list-devices, dmesg)"
        ) from None
    except OSError as exc:
        raise CameraHardwareError(f"{device}: cannot access: {exc.strerror or exc}") from exc
    if not stat.S_ISCHR(mode):
        raise CameraError(f"{device}: not a video device (not a character device)")
    if not os.access(device, os.R_OK | os.W_OK):
        raise CameraHardwareError(
            f"{device}: permission denied; add the service user to the 'video' group"
        )


def open_v4l2(config: V4L2SourceConfig) -> Capture:
    """Open the configured device and request its format, size and rate.

    Raises:
        CameraHardwareError: The device is missing, inaccessible or cannot capture.
        CameraError: The path is not a video device.
    """
    device = config.device
    check_device(device)
    cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
    if not cap.isOpened():
        release_quietly(cap, device)
        raise CameraHardwareError(
            f"{device}: cannot open as a V4L2 capture device (in use by another process, "
            "or a metadata node: USB cameras often add a second /dev/video node; use the "
            "first)"
        )
    if config.fourcc is not None:
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*config.fourcc))
    if config.width is not None:
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
    if config.height is not None:
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
    if config.fps is not None:
        cap.set(cv2.CAP_PROP_FPS, config.fps)
    got = (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT),
           cap.get(cv2.CAP_PROP_FPS))
    logger.info("camera %s: %s delivers %dx%d at %.1f fps", config.camera_id, device,
                int(got[0]), int(got[1]), got[2])
    if (config.width and int(got[0]) != config.width) or (
        config.height and int(got[1]) != config.height
    ):
        logger.warning("camera %s: %s: asked for %sx%s, the driver chose %dx%d",
                       config.camera_id, device, config.width, config.height,
                       int(got[0]), int(got[1]))
    return cap


class V4L2Source(StreamSource):
    """Frames from a V4L2 camera.

    Args:
        config: The source's section.
        rng: Random numbers for the backoff jitter; default seeded from the config.
        sleep: Waits between retries; default ends early when the source is closed.

    Raises:
        CameraHardwareError: The device is missing, inaccessible or cannot capture.
        CameraError: The path is not a video device.
    """

    def __init__(
        self,
        config: V4L2SourceConfig,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        super().__init__(config.camera_id, config.device, config.reconnect, rng=rng,
                         sleep=sleep)
        self._config = config
        self._cap = self._connect()

    def _connect(self) -> Capture:
        return open_v4l2(self._config)
