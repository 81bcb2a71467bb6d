"""``facegate identify`` on the command line: refusals name its flags, not config keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from device.cli import main
from device.gallery.store import GalleryStore
from device.lab.calibration import build_table, save_table
from device.service.thresholds import table_path
from tests.support.gallery import DIM, MODEL


def _unit(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    cache = tmp_path / "models"
    rng = np.random.default_rng(0)
    save_table(build_table(rng.normal(0.2, 0.12, 50_000), model_id=MODEL),
               table_path(MODEL, cache))
    db = tmp_path / "gallery.db"
    with GalleryStore(db, model_id=MODEL, dim=DIM, create=True):
        pass
    return db, {"FACEGATE_MODEL_DIR": str(cache)}


def test_an_unsafe_target_names_the_command_line_flag(tmp_path: Path) -> None:
    db, env = _unit(tmp_path)
    result = CliRunner().invoke(main, ["identify", "--db", str(db), "--target-fmr", "1e-2",
                                       str(tmp_path / "probe.jpg")], env=env)
    assert result.exit_code == 2, result.output
    assert "pass --allow-unsafe-threshold" in result.output
    assert "allow_unsafe_threshold = true" not in result.output
    assert "above the safe limit 0.001" in result.output


def test_an_unsafe_explicit_threshold_names_the_flag_too(tmp_path: Path) -> None:
    db, env = _unit(tmp_path)
    result = CliRunner().invoke(main, ["identify", "--db", str(db), "--threshold", "0.3",
                                       str(tmp_path / "probe.jpg")], env=env)
    assert result.exit_code == 2, result.output
    assert "--allow-unsafe-threshold" in result.output


def test_threshold_fmr_needs_a_threshold(tmp_path: Path) -> None:
    db, env = _unit(tmp_path)
    result = CliRunner().invoke(main, ["identify", "--db", str(db), "--threshold-fmr", "1e-4",
                                       str(tmp_path / "probe.jpg")], env=env)
    assert result.exit_code == 2
    assert "--threshold-fmr goes with --threshold" in result.output


def test_identify_prints_both_fmrs_named_apart(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from device.cli.identify_cmd import _print, threshold_text
    from device.enroll.identify import Candidate, FaceIdentification, SearchResult
    from device.service.thresholds import ThresholdPolicy, resolve_threshold

    rng = np.random.default_rng(0)
    table = build_table(rng.normal(0.2, 0.12, 50_000), model_id=MODEL)
    threshold = resolve_threshold(MODEL, ThresholdPolicy(1e-4), table=table)
    assert threshold_text(threshold).startswith(f"{threshold.value:.4f} (threshold FMR 1.0e-04")
    best = Candidate("id-1", "Ada", 1, 0.99, table.fmr_at(0.99), True)
    other = Candidate("id-2", "Bob", 2, 0.55, table.fmr_at(0.55), False)
    face = FaceIdentification((1, 2, 3, 4), 0.9, (),
                              SearchResult((best, other), "match", threshold.value, 1))
    _print(tmp_path / "p.jpg", [face])
    out = capsys.readouterr().out
    assert f"FMR at this similarity <{table.resolution:.1e}" in out
    assert f"FMR at this similarity {table.fmr_at(0.55):.1e}" in out
    doc = face.to_json()["candidates"]
    assert doc[0]["fmr_at_similarity"] == float(f"{table.resolution:.3g}")  # type: ignore[index]
    assert doc[0]["fmr_at_similarity_upper_bound"] is True  # type: ignore[index]
    assert threshold.to_json()["fmr"] == threshold.fmr  # the threshold FMR, apart
