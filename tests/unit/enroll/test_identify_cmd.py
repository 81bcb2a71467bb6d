"""``facegate identify`` on the command line: refusals name its flags, not config keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner

from device.cli import main
from device.gallery.store import GalleryStore
from device.lab.calibration import build_table, save_table
from device.service.thresholds import table_path
from tests.gallery_helpers import DIM, MODEL


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
