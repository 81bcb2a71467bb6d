"""Frame sources: image files and folders, video files, V4L2, RTSP and Pi cameras.

Every source implements :class:`FrameSource` and is chosen by its config ``type``
(:data:`SourceConfig`, :func:`open_source`). :class:`CameraRunner` reads several at
once into a bounded, drop-oldest :class:`FrameQueue`. Hardware libraries
(``picamera2``) are imported only when their source is opened.
"""

from device.camera.base import (
    BaseSource,
    CameraHardwareError,
    FrameSource,
    SourceConfigBase,
    SourceHealth,
    SourceState,
)
from device.camera.image import ImageSource, ImageSourceConfig
from device.camera.multi import CameraRunner, FrameQueue, QueueStats
from device.camera.picam import PiCamera2Source, PiCamera2SourceConfig
from device.camera.reconnect import ReconnectConfig, backoff_delays
from device.camera.registry import BACKENDS, Backend, SourceConfig, open_source, parse_source_config
from device.camera.rtsp import RtspSource, RtspSourceConfig, redact_url
from device.camera.v4l2 import V4L2Source, V4L2SourceConfig
from device.camera.video import VideoSource, VideoSourceConfig

__all__ = [
    "BACKENDS",
    "Backend",
    "BaseSource",
    "CameraHardwareError",
    "CameraRunner",
    "FrameQueue",
    "FrameSource",
    "ImageSource",
    "ImageSourceConfig",
    "PiCamera2Source",
    "PiCamera2SourceConfig",
    "QueueStats",
    "ReconnectConfig",
    "RtspSource",
    "RtspSourceConfig",
    "SourceConfig",
    "SourceConfigBase",
    "SourceHealth",
    "SourceState",
    "V4L2Source",
    "V4L2SourceConfig",
    "VideoSource",
    "VideoSourceConfig",
    "backoff_delays",
    "open_source",
    "parse_source_config",
    "redact_url",
]
