"""Video-file replay through OpenCV's FFmpeg backend.

Frames come out RGB. Timestamps are either the file position added to a start time
(``timestamps: file``; reproducible, and monotonic across loops) or the wall clock
when the frame was read (``timestamps: wall``). ``realtime`` paces delivery at the
file's own frame times. A file that ends before the frame count its container
declares is reported as probably truncated (health ``last_error``), not fatal.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import cv2
from pydantic import Field

from device.camera.base import BaseSource, SourceConfigBase
from device.camera.capture import Capture, bgr_to_rgb, release_quietly
from device.camera.pacing import Pacer
from device.errors import CameraError
from device.types import Frame

logger = logging.getLogger(__name__)

#: Frame interval assumed when a file does not state its frame rate.
DEFAULT_FPS = 25.0


class VideoSourceConfig(SourceConfigBase):
    """Replay a video file."""

    type: Literal["video"] = Field(default="video", description="Backend: video file.")
    path: Path = Field(description="Video file (any container/codec FFmpeg in OpenCV reads).")
    loop: bool = Field(default=False, description="Start again from the beginning at the end.")
    realtime: bool = Field(
        default=False,
        description="Deliver frames at the file's own pace; unset: as fast as decoded.",
    )
    timestamps: Literal["file", "wall"] = Field(
        default="file",
        description="'file': start_time plus the frame's position in the file; "
        "'wall': the wall clock when the frame was read.",
    )
    start_time: float | None = Field(
        default=None,
        ge=0,
        description="Epoch seconds of the first frame for 'file' timestamps; "
        "unset: the time the source was opened.",
    )


def check_video_file(path: Path) -> None:
    """Refuse what is certainly not a readable video file, with a message naming it.

    Raises:
        CameraError: ``path`` is missing, not a regular file, empty or unreadable.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CameraError(f"{path}: no such video file") from None
    except OSError as exc:
        raise CameraError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if not path.is_file():
        raise CameraError(f"{path}: not a regular file")
    if size == 0:
        raise CameraError(f"{path}: video file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise CameraError(f"{path}: permission denied")


def open_video_file(path: Path) -> Capture:
    """Open a video file with OpenCV's FFmpeg backend.

    Raises:
        CameraError: The file is missing or empty, or FFmpeg cannot open it (not a
            video, or a truncated or corrupt container).
    """
    check_video_file(path)
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        release_quietly(cap, str(path))
        raise CameraError(
            f"{path}: not a video OpenCV/FFmpeg can open "
            "(unknown format, or a truncated or corrupt file)"
        )
    return cap


class VideoSource(BaseSource):
    """Frames from a video file.

    Args:
        config: The source's section.

    Raises:
        CameraError: The file is missing, empty, or not a video FFmpeg can open.
    """

    def __init__(self, config: VideoSourceConfig) -> None:
        super().__init__(config.camera_id, str(config.path))
        self._config = config
        self._cap: Capture | None = open_video_file(config.path)
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self._fps = fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS
        declared = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self._declared = int(declared) if math.isfinite(declared) and declared > 0 else 0
        self._origin = time.time() if config.start_time is None else config.start_time
        logger.info("camera %s: video %s, %.2f fps, %d frames declared", config.camera_id,
                    config.path, self._fps, self._declared)

    @property
    def fps(self) -> float:
        """The file's frame rate (or :data:`DEFAULT_FPS` when it does not say)."""
        return self._fps

    @property
    def declared_frames(self) -> int:
        """The frame count the container declares (0 when unknown)."""
        return self._declared

    def _read(self) -> tuple[bool, object, float]:
        """One frame and its position in seconds (NaN when unknown), under the lock."""
        with self._lock:
            if self.closed or self._cap is None:
                return False, None, math.nan
            try:
                ok, image = self._cap.read()
            except cv2.error as exc:
                message = f"{self.source}: decoding failed: {exc}"
                logger.warning("camera %s: %s", self.camera_id, message)
                self._counter.error(message)
                return False, None, math.nan
            pos_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC) if ok else math.nan
        return ok, image, pos_ms / 1000.0

    def _frames(self) -> Iterator[Frame]:
        """Yield the file's frames (forever when looping).

        Raises:
            CameraError: The file holds no decodable frame.
        """
        pacer = Pacer(self._wait)
        loop_offset = 0.0
        first_pass = True
        while not self.closed:
            count = 0
            position = 0.0
            while True:
                ok, raw, pos = self._read()
                if not ok:
                    break
                position = pos if math.isfinite(pos) and pos >= 0 else count / self._fps
                media_time = loop_offset + position
                if self._config.realtime and pacer.wait_until(media_time):
                    return
                if self._config.timestamps == "file":
                    timestamp = self._origin + media_time
                else:
                    timestamp = time.time()
                count += 1
                yield self._frame(bgr_to_rgb(raw, self.source), timestamp)
            if self.closed:
                return
            if count == 0:
                raise CameraError(f"{self.source}: no decodable video frames")
            if first_pass and self._declared and count + 1 < self._declared:
                message = (f"{self.source}: ended after {count} of {self._declared} frames; "
                           "the file may be truncated")
                logger.warning("camera %s: %s", self.camera_id, message)
                self._counter.error(message)
            first_pass = False
            if not self._config.loop:
                return
            loop_offset += position + 1.0 / self._fps
            self._reopen()

    def _reopen(self) -> None:
        """Start the file again from the beginning (a fresh capture: seeking is unreliable).

        Raises:
            CameraError: The file can no longer be opened.
        """
        with self._lock:
            if self.closed:
                return
            release_quietly(self._cap, self.source)
            self._cap = None
            self._cap = open_video_file(self._config.path)

    def _release(self) -> None:
        release_quietly(self._cap, self.source)
        self._cap = None
