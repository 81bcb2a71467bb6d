"""Config errors name the bad key and its line; unknown keys are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import Field

from device.config import Section, key_lines, load_toml
from device.errors import ConfigError


class Cam(Section):
    id: str = Field(description="camera id")
    type: Literal["image", "video"] = Field(description="backend")
    fps: Annotated[float, Field(gt=0, description="frames per second")] = 10.0


class Mqtt(Section):
    url: str = Field(description="broker url")
    keepalive: int = Field(60, ge=5, description="seconds")


class Top(Section):
    unit_id: str = Field(description="unit")
    mqtt: Mqtt = Field(description="mqtt")
    cameras: list[Cam] = Field(default_factory=list, description="cameras")


GOOD = """\
unit_id = "door-1"

[mqtt]
url = "mqtt://127.0.0.1:1883"
keepalive = 30

[[cameras]]
id = "front"
type = "image"

[[cameras]]
id = "back"
type = "video"
fps = 25
"""


def test_good_config_loads(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(GOOD)
    cfg = load_toml(p, Top)
    assert cfg.cameras[1].fps == 25
    assert cfg.mqtt.keepalive == 30


def test_key_lines_maps_tables_and_arrays() -> None:
    lines = key_lines(GOOD)
    assert lines[("unit_id",)] == 1
    assert lines[("mqtt", "keepalive")] == 5
    assert lines[("cameras", 0, "id")] == 8
    assert lines[("cameras", 1, "fps")] == 14


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        ("fps = 25", "fps = -1", ":14: cameras[1].fps: Input should be greater than 0"),
        ("keepalive = 30", "keepalive = 30\nkeepalve = 3", ":6: mqtt.keepalve: unknown key"),
        ('type = "video"', 'type = "vhs"', ":13: cameras[1].type:"),
        ('unit_id = "door-1"\n', "", "unit_id: Field required"),
    ],
)
def test_bad_config_names_key_and_line(tmp_path: Path, old: str, new: str, expect: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_toml(p, Top)
    assert expect in str(err.value)
    assert str(p) in str(err.value)


def test_not_toml_gives_line(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('unit_id = "x"\n[mqtt\nurl = 1\n')
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        load_toml(p, Top)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_toml(tmp_path / "nope.toml", Top)


class VideoSrc(Section):
    type: Literal["video"] = Field(description="t")
    path: str = Field(description="p")


class ImageSrc(Section):
    type: Literal["image"] = Field(description="t")
    folder: str = Field(description="f")


class Multi(Section):
    sources: list[Annotated[VideoSrc | ImageSrc, Field(discriminator="type")]] = Field(
        description="s"
    )


def test_discriminated_union_error_names_the_key_not_the_tag(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[[sources]]\ntype = "image"\nfolder = "x"\n\n[[sources]]\ntype = "video"\n'
                 'path = "v.mp4"\nfolder = "oops"\n')
    with pytest.raises(ConfigError) as err:
        load_toml(p, Multi)
    assert ":8: sources[1].folder: unknown key" in str(err.value)
