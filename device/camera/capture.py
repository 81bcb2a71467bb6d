"""What the OpenCV-based backends share: the capture interface and BGR→RGB conversion.

:class:`Capture` is the part of ``cv2.VideoCapture`` the backends use, so a test or
another library can hand in anything that reads frames the same way.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import cv2
import numpy as np

from device.errors import CameraError
from device.types import Image

logger = logging.getLogger(__name__)

_GRAY_NDIM = 2
_BGR_CHANNELS = 3
_BGRA_CHANNELS = 4


class Capture(Protocol):
    """The subset of ``cv2.VideoCapture`` the OpenCV backends use."""

    def isOpened(self) -> bool: ...  # noqa: N802 - OpenCV's name

    def read(self) -> tuple[bool, Any]: ...

    def get(self, propId: int) -> float: ...  # noqa: N803 - OpenCV's name

    def release(self) -> None: ...


def bgr_to_rgb(image: Any, origin: str) -> Image:
    """Convert an OpenCV frame (BGR, BGRA or gray) into an RGB ``uint8`` array.

    Raises:
        CameraError: The frame is not an image array (names ``origin``).
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        if arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        else:
            raise CameraError(f"{origin}: unsupported frame dtype {arr.dtype}")
    if arr.ndim == _GRAY_NDIM:
        out = cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    elif arr.ndim == 3 and arr.shape[2] == _BGR_CHANNELS:
        out = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    elif arr.ndim == 3 and arr.shape[2] == _BGRA_CHANNELS:
        out = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        out = cv2.cvtColor(arr[:, :, 0], cv2.COLOR_GRAY2RGB)
    else:
        raise CameraError(f"{origin}: unsupported frame shape {arr.shape}")
    return np.ascontiguousarray(out, dtype=np.uint8)


def release_quietly(capture: Capture | None, origin: str) -> None:
    """Release a capture; a failure to release is logged, never raised."""
    if capture is None:
        return
    try:
        capture.release()
    except cv2.error as exc:
        logger.warning("%s: releasing the capture failed: %s", origin, exc)
