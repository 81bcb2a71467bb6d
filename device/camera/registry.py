"""Which frame-source backend each config ``type`` selects, and the factory.

Frigate-style: every backend module defines its own config section with a ``type``
literal; :data:`SourceConfig` is their discriminated union (what the service's
config file holds for each camera) and :data:`BACKENDS` maps each ``type`` to its
section and class. Importing this module imports no hardware library.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from device.camera.base import FrameSource, SourceConfigBase
from device.camera.image import ImageSource, ImageSourceConfig
from device.camera.picam import PiCamera2Source, PiCamera2SourceConfig
from device.camera.rtsp import RtspSource, RtspSourceConfig
from device.camera.v4l2 import V4L2Source, V4L2SourceConfig
from device.camera.video import VideoSource, VideoSourceConfig
from device.errors import ConfigError

#: One camera's section in the config file, told apart by its ``type``.
SourceConfig = Annotated[
    ImageSourceConfig
    | VideoSourceConfig
    | V4L2SourceConfig
    | RtspSourceConfig
    | PiCamera2SourceConfig,
    Field(discriminator="type"),
]


@dataclass(frozen=True, slots=True)
class Backend:
    """A frame-source backend: its config section and how to open it."""

    config: type[SourceConfigBase]
    open: Callable[[Any], FrameSource]


#: Config ``type`` → backend.
BACKENDS: dict[str, Backend] = {
    "image": Backend(ImageSourceConfig, ImageSource),
    "video": Backend(VideoSourceConfig, VideoSource),
    "v4l2": Backend(V4L2SourceConfig, V4L2Source),
    "rtsp": Backend(RtspSourceConfig, RtspSource),
    "picamera2": Backend(PiCamera2SourceConfig, PiCamera2Source),
}

# Input is hidden in errors: an RTSP URL may hold a password.
_ADAPTER: TypeAdapter[SourceConfig] = TypeAdapter(
    SourceConfig, config=ConfigDict(hide_input_in_errors=True)
)


def parse_source_config(data: Mapping[str, Any]) -> SourceConfig:
    """Validate one camera's section (e.g. from the config file).

    Raises:
        ConfigError: Unknown ``type``, unknown keys or invalid values; the message
            lists each problem without echoing the values.
    """
    try:
        return _ADAPTER.validate_python(dict(data))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)
        )
        camera = data.get("camera_id", "?")
        raise ConfigError(f"camera {camera}: invalid source config: {problems}") from None


def open_source(config: SourceConfig) -> FrameSource:
    """Open the frame source a config section describes.

    Raises:
        ConfigError: The section's ``type`` has no backend.
        CameraError: The input is missing, unreadable or the device cannot be opened
            (``CameraHardwareError`` for absent hardware).
        ImageError: A single image file cannot be decoded.
    """
    backend = BACKENDS.get(config.type)
    if backend is None or not isinstance(config, backend.config):
        raise ConfigError(f"camera {config.camera_id}: no frame source of type {config.type!r}")
    return backend.open(config)
