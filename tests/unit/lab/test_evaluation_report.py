"""eval pairs' report: rates the sample cannot measure are named, never printed; the ROC
plot spans the whole measured range and marks every operating point."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from device.lab import evaluation, metrics


def _row(genuine: int, impostors: int, seed: int = 0) -> evaluation.Row:
    rng = np.random.default_rng(seed)
    gen = np.clip(rng.normal(0.95, 0.02, genuine), -1, 1)
    imp = np.clip(rng.normal(0.85, 0.04, impostors), -1, 1)
    result = metrics.verification(gen, imp, evaluation.PAIRS_FMRS)
    return evaluation.Row("pairs", "facegate", "cosine", result, 0, genuine + impostors,
                          gen, imp)


def test_unresolvable_rates_are_null_with_a_reason_in_json() -> None:
    doc = _row(101, 99).to_json()  # `eval pairs --limit 200`: 99 impostor pairs
    assert doc["tar_at_fmr"] == {"1e-2": None, "1e-3": None}
    assert doc["threshold_at_fmr"] == {"1e-2": None, "1e-3": None}
    for point in doc["tar_at_fmr_points"]:
        assert point["resolvable"] is False and point["tar"] is None
        assert point["reason"] == "not resolvable (99 impostor pairs)"
    doc = _row(200, 300).to_json()  # 1e-2 is measured, 1e-3 is not
    assert isinstance(doc["tar_at_fmr"]["1e-2"], float) and doc["tar_at_fmr"]["1e-3"] is None
    by_fmr = {p["target_fmr"]: p for p in doc["tar_at_fmr_points"]}
    assert by_fmr[1e-2]["resolvable"] and by_fmr[1e-2]["reason"] is None
    assert by_fmr[1e-3]["reason"] == "not resolvable (300 impostor pairs)"


def test_unresolvable_rates_are_named_in_text(capsys: pytest.CaptureFixture[str]) -> None:
    from device.cli.eval_cmd import _print_table

    _print_table([_row(15, 15)], [])  # `eval pairs --limit 30`
    out = capsys.readouterr().out
    assert "TAR@1e-3: not resolvable (15 impostor pairs)" in out
    assert "TAR@1e-2: not resolvable (15 impostor pairs)" in out
    table_line = next(line for line in out.splitlines() if line.lstrip().startswith("facegate"))
    # TAR@1e-2, TAR@1e-3 and their thresholds: the rates the sample cannot measure
    assert table_line.split()[2:6] == ["-", "-", "-", "-"]


def test_the_roc_series_spans_to_one_over_n_and_holds_every_operating_point(
    tmp_path: Path,
) -> None:
    pytest.importorskip("matplotlib")
    row = _row(3000, 5000, seed=2)
    series = evaluation.plot_roc([row], tmp_path / "roc.png")
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"
    (s,) = series
    n = row.result.impostors
    assert s.min_fmr == pytest.approx(1 / n)
    assert s.fmr.min() == pytest.approx(1 / n) and s.fmr.max() == 1.0
    assert (np.diff(s.fmr) >= 0).all()
    assert {p[0] for p in s.points} == {1e-2, 1e-3}  # both resolvable with 5000 impostors
    for target, fmr, tar in s.points:
        point = row.result.at_fmr[target]
        assert tar == point.tar and fmr == max(point.fmr, 1 / n)
        on_curve = np.isclose(s.fmr, fmr) & np.isclose(s.tar, tar)
        assert on_curve.any(), target
    assert math.log10(s.fmr.min()) < -3  # the curve reaches below the 1e-3 point
