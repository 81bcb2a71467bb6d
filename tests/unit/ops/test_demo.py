"""The demo's pieces that need no model or broker: work directory, sample frames, lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device.errors import ConfigError
from device.ops.demo import (
    FRAMES_PER_PICTURE,
    MARKER,
    DemoResult,
    clip_scenario,
    format_event,
    format_summary,
    prepare_workdir,
    sample_pictures,
    sample_scenario,
)


def test_workdir_not_made_by_the_demo_is_refused(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        prepare_workdir(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_own_workdir_is_cleared_and_a_temporary_one_removable(tmp_path: Path) -> None:
    root, tmp = prepare_workdir(tmp_path / "w")
    assert tmp is None and (root / MARKER).is_file()
    (root / "state").mkdir()
    (root / "gallery.db").write_text("old")
    prepare_workdir(root)
    assert sorted(p.name for p in root.iterdir()) == [MARKER]
    made, tmp = prepare_workdir(None)
    assert tmp is not None and made.is_dir()
    tmp.cleanup()
    assert not made.exists()


def test_sample_frames_repeat_each_picture_and_the_copy_is_not_the_portrait(
        tmp_path: Path) -> None:
    pictures = dict(sample_pictures())
    assert {"astronaut", "astronaut-mirrored-rescaled", "coffee", "chelsea-the-cat",
            "rocket", "coins"} == set(pictures)
    for image in pictures.values():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert pictures["astronaut-mirrored-rescaled"].shape != pictures["astronaut"].shape
    scenario = sample_scenario(tmp_path)
    frames = sorted(Path(scenario.camera["path"]).iterdir())
    assert len(frames) == len(pictures) * FRAMES_PER_PICTURE
    assert [p.label for p in scenario.people] == ["Eileen Collins"]
    assert scenario.people[0].photo.is_file()


def test_missing_datasets_name_the_path_and_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FACEGATE_DATASETS") as err:
        clip_scenario(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_event_and_summary_lines() -> None:
    line = format_event({"schema": "facegate/match/1", "camera": "front",
                         "label": "Eileen Collins", "similarity": 0.99741,
                         "false_match_rate": 1e-4, "review_required": True,
                         "decided_at": "2024-05-01T12:00:00.123Z"})
    assert line is not None
    assert line.startswith("12:00:00.123Z  front")
    assert "Eileen Collins" in line and "0.9974" in line and "review_required yes" in line
    assert format_event({"schema": "facegate/track_end/1"}) is None
    result = DemoResult("s", "mqtt://127.0.0.1:1", True, enrolled={"a": "A", "b": "B"},
                        events=[{"schema": "facegate/match/1", "label": "A"}],
                        matches_reported=1, all_arrived=True)
    text = "\n".join(format_summary(result))
    assert "A x1" in text and "not matched        B" in text
    assert "capture-to-ack p50 n/a" in text


def test_event_lines_name_the_two_fmrs_apart() -> None:
    line = format_event({"schema": "facegate/match/1", "camera": "front",
                         "label": "Eileen Collins", "similarity": 0.99741,
                         "false_match_rate": 1e-4, "fmr_at_similarity": 7.6e-08,
                         "fmr_at_similarity_upper_bound": True, "review_required": True,
                         "decided_at": "2024-05-01T12:00:00.123Z"})
    assert line is not None
    assert "threshold FMR 1.0e-04" in line and "FMR at this similarity <7.6e-08" in line
    result = DemoResult("s", "mqtt://127.0.0.1:1", True, threshold=0.93, false_match_rate=1e-4)
    assert "  threshold          0.9300 (threshold FMR 1.0e-04)" in format_summary(result)
