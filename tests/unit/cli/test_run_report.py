"""What ``facegate run`` says at the end about frames the full queue dropped."""

from __future__ import annotations

from pathlib import Path

from device.cli.run_cmd import drop_report
from device.service.config import FacegateConfig, load_config

CONFIG = """\
unit_id = "door-1"
state_dir = "{state}"

[[cameras]]
type = "{kind}"
camera_id = "front"
{where}

[pipeline]
queue_policy = "{policy}"

[mqtt]
url = "mqtt://127.0.0.1:1883"
"""


def _config(tmp_path: Path, kind: str, policy: str) -> FacegateConfig:
    where = 'path = "clip.mp4"' if kind == "video" else 'url = "rtsp://192.0.2.1/s"'
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(state=tmp_path / "state", kind=kind, where=where,
                                  policy=policy), encoding="utf-8")
    return load_config(path)[0]


def test_a_file_replay_that_dropped_frames_says_so_and_suggests_block(tmp_path: Path) -> None:
    config = _config(tmp_path, "video", "drop_oldest")
    lines = drop_report(config, {"frames_dropped": 234, "frames_in": 275})
    assert lines[0].startswith("frames dropped 234 of 275")
    assert 'set queue_policy = "block" in [pipeline]' in lines[1] and "front" in lines[1]


def test_a_live_camera_gets_the_count_but_no_hint(tmp_path: Path) -> None:
    config = _config(tmp_path, "rtsp", "drop_oldest")
    lines = drop_report(config, {"frames_dropped": 5, "frames_in": 900})
    assert lines == ['frames dropped 5 of 900 (queue full, queue_policy = "drop_oldest")']


def test_nothing_dropped_nothing_said(tmp_path: Path) -> None:
    config = _config(tmp_path, "video", "block")
    assert drop_report(config, {"frames_dropped": 0, "frames_in": 275}) == []
