"""``facegate bench pipeline`` runs both sides on the clip and reports them (speed is
measured there, never asserted here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from device.cli import main
from device.lab.pipeline_bench import PipelineRun, report_rows, sample_indices, verdicts
from device.service.stats import Percentiles
from tests.support.service import CLIP, CLIP_FRAMES, require_embedder_template


def test_sample_indices_spread_over_the_clip() -> None:
    assert sample_indices(275, 5) == [0, 68, 137, 206, 274]
    assert sample_indices(3, 10) == [0, 1, 2]
    assert sample_indices(10, None) == list(range(10))


def test_verdicts_name_both_floors() -> None:
    stats = Percentiles(100, 10.0, 20.0, 12.0, 30.0)
    fast = PipelineRun(600, 8.0, 700, 40, 2, {"total": stats})
    lines = verdicts(fast, None, threads=2)
    assert lines == ["75.0 fps with 2 threads (meets the 60 fps floor)"]
    assert report_rows(fast, None)[1] == ("sustained fps", "75.0", "-")


def test_bench_pipeline_on_the_clip(datasets: Path) -> None:
    pytest.importorskip("face_recognition")
    require_embedder_template()
    result = CliRunner().invoke(main, [
        "bench", "pipeline", "--source", str(datasets / CLIP), "--baseline-frames", "2",
        "--json",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    ours = report["facegate"]
    assert ours["frames"] == CLIP_FRAMES
    assert ours["fps"] > 0 and ours["faces"] > 0 and ours["embedded"] > 0
    assert {"detect", "quality", "track", "embed", "search", "decide", "total"} <= set(
        ours["stages"])
    theirs = report["face_recognition"]
    assert theirs["frames"] == 2 and theirs["fps"] > 0
    assert report["ratio"] == pytest.approx(ours["fps"] / theirs["fps"], rel=0.01)
    assert len(report["verdicts"]) == 2
