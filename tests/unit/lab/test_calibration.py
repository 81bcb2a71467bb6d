"""Calibration building: the points of a table measured from impostor scores."""

from __future__ import annotations

import numpy as np
import pytest

from device.lab.calibration import build_table

MODEL = "test-embedder-v1"


def test_points_are_exact_measured_rates() -> None:
    scores = np.array([0.1, 0.2, 0.2, 0.3, 0.5])
    t = build_table(scores, model_id=MODEL)
    assert t.similarities == (0.1, 0.2, 0.3, 0.5)
    assert t.fmrs == (1.0, 0.8, 0.4, 0.2)  # share of scores >= the point
    assert t.impostors == 5
    assert t.resolution == pytest.approx(0.2)
