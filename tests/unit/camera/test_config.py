"""Frame-source configs: one section per backend, chosen by `type`, fully described."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel

from device.camera import (
    BACKENDS,
    FrameSource,
    ImageSourceConfig,
    ReconnectConfig,
    V4L2SourceConfig,
    VideoSourceConfig,
    parse_source_config,
)
from device.config import Section
from device.errors import ConfigError


def all_models() -> list[type[BaseModel]]:
    return [b.config for b in BACKENDS.values()] + [ReconnectConfig]


@pytest.mark.parametrize("model", all_models(), ids=lambda m: m.__name__)
def test_every_field_has_a_description(model: type[BaseModel]) -> None:
    assert issubclass(model, Section)
    missing = [name for name, f in model.model_fields.items() if not f.description]
    assert missing == []


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_registry_key_is_the_config_type_literal(kind: str) -> None:
    backend = BACKENDS[kind]
    assert get_args(backend.config.model_fields["type"].annotation) == (kind,)


def test_parse_picks_the_backend_by_type(tmp_path: Path) -> None:
    cfg = parse_source_config({"type": "image", "camera_id": "replay", "path": str(tmp_path)})
    assert isinstance(cfg, ImageSourceConfig)
    assert cfg.path == tmp_path and cfg.recursive is False and cfg.loop is False
    video = parse_source_config({"type": "video", "camera_id": "v", "path": "x.mp4",
                                 "timestamps": "wall"})
    assert isinstance(video, VideoSourceConfig)


@pytest.mark.parametrize(
    "data,fragment",
    [
        ({"type": "image", "camera_id": "a", "path": "x", "colour": 1}, "colour"),
        ({"type": "webcam", "camera_id": "a"}, "webcam"),
        ({"camera_id": "a", "path": "x"}, "type"),
        ({"type": "image", "camera_id": "bad id!", "path": "x"}, "camera_id"),
        ({"type": "image", "camera_id": "a", "path": "x", "fps": 0}, "fps"),
        ({"type": "video", "camera_id": "a", "path": "x", "timestamps": "pts"}, "timestamps"),
        ({"type": "v4l2", "camera_id": "a", "fourcc": "MJPEG"}, "fourcc"),
    ],
)
def test_invalid_sections_are_refused_with_the_field_named(
    data: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_source_config(data)


@pytest.mark.parametrize("device", [3, "3", "/dev/video3"])
def test_v4l2_device_index_means_dev_video_n(device: object) -> None:
    cfg = V4L2SourceConfig.model_validate({"camera_id": "usb", "device": device})
    assert cfg.device == "/dev/video3"


def test_configs_are_frozen(tmp_path: Path) -> None:
    cfg = ImageSourceConfig(camera_id="a", path=tmp_path)
    with pytest.raises(ValueError, match="frozen"):
        cfg.loop = True  # type: ignore[misc]


def test_sources_satisfy_the_protocol() -> None:
    from device.camera import ImageSource, PiCamera2Source, RtspSource, V4L2Source, VideoSource

    for cls in (ImageSource, VideoSource, V4L2Source, RtspSource, PiCamera2Source):
        for name in ("camera_id", "__iter__", "health", "close", "__enter__", "__exit__"):
            assert hasattr(cls, name), (cls, name)
    assert FrameSource is not None
