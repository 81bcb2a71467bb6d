"""``device.service.config.load_config`` (``load_toml``) on arbitrary file bytes."""

from __future__ import annotations

from pathlib import Path

from tests.fuzz.harness import Harness

NAME = "config"
INSTRUMENT = ("device.config", "device.service.config", "tomllib")
MAX_LEN = 8192

REPO = Path(__file__).resolve().parents[3]

_MINIMAL = """\
unit_id = "door-1"
state_dir = "/tmp/facegate-fuzz-state"

[[cameras]]
type = "video"
camera_id = "front"
path = "clip.mp4"

[mqtt]
url = "mqtt://127.0.0.1:1883"
"""

_FULLER = _MINIMAL + """\

[[cameras]]
type = "image"
camera_id = "door"
path = "faces"

[gallery]
threshold = 0.6
threshold_fmr = 0.0001

[pipeline]
queue_size = 8
queue_policy = "block"

[sync]
enabled = false
"""


def seeds() -> tuple[bytes, ...]:
    """A minimal and a fuller valid config, the shipped example, and a broken one."""
    out = [_MINIMAL.encode(), _FULLER.encode(), b'unit_id = "x"\n[[cameras]]\n"a.b" = [1,\n']
    example = REPO / "provisioning" / "config.example.toml"
    if example.is_file():
        out.append(example.read_bytes())
    return tuple(out)


def prepare(workdir: Path) -> Harness:
    from device.errors import ConfigError
    from device.service.config import load_config

    path = workdir / "config.toml"

    def one_input(data: bytes) -> None:
        path.write_bytes(data)
        try:
            load_config(path)
        except ConfigError:
            return

    return Harness(seeds(), one_input)
