"""Predicted FPIR and the one-sided exact binomial alarm."""

from __future__ import annotations

import math

from device.console.accuracy import binomial_sf, plot_svg, summarise
from device.service.thresholds import expected_fpir as predicted_fpir


def test_fpir_of_threshold_and_gallery() -> None:
    assert math.isclose(predicted_fpir(1e-4, 1000), 1 - (1 - 1e-4) ** 1000, rel_tol=1e-9)
    assert math.isclose(predicted_fpir(1e-4, 1000), 0.09516, rel_tol=1e-4)
    assert math.isclose(predicted_fpir(1e-9, 1), 1e-9, rel_tol=1e-9)  # no cancellation
    assert predicted_fpir(0.0, 1000) == 0.0 and predicted_fpir(0.1, 0) == 0.0


def test_binomial_tail_is_exact() -> None:
    # P(X >= 3 | 10, 0.1), by hand.
    want = sum(math.comb(10, i) * 0.1**i * 0.9 ** (10 - i) for i in range(3, 11))
    assert math.isclose(binomial_sf(3, 10, 0.1), want, rel_tol=1e-12)
    assert binomial_sf(0, 10, 0.1) == 1.0 and binomial_sf(11, 10, 0.1) == 0.0
    assert binomial_sf(900, 1000, 0.01) < 1e-300  # far tails underflow to 0, never NaN


def _rows(unit: str, identity: str, verdicts: list[str]) -> list[dict[str, object]]:
    return [{"unit": unit, "identity_id": identity, "false_match_rate": 1e-4,
             "gallery_identities": 100, "occurred_at": 1000.0 + i, "verdict": v}
            for i, v in enumerate(verdicts)]


def test_alarm_fires_only_beyond_chance() -> None:
    # Predicted FPIR 1-(1-1e-4)^100 ~ 0.01: 1 wrong in 20 is chance (p ~ 0.18) ...
    calm = _rows("u1", "p1", ["confirmed"] * 19 + ["not_this_person"])
    # ... 5 wrong in 20 is not (p ~ 1e-5): a look-alike, a bad enrolment, a drifted camera.
    loud = _rows("u2", "p2", ["confirmed"] * 15 + ["not_this_person"] * 5 + ["cannot_tell"] * 3)
    result = {a.key: a for a in summarise(calm + loud, "unit")}
    assert not result["u1"].alarm and result["u1"].p_value > 0.1
    assert result["u2"].alarm and result["u2"].p_value < 0.01
    assert result["u2"].judged == 20 and result["u2"].unsure == 3
    assert result["u2"].observed == 0.25
    assert math.isclose(result["u2"].predicted, predicted_fpir(1e-4, 100))
    by_identity = {a.key: a for a in summarise(calm + loud, "identity_id")}
    assert by_identity["p2"].alarm and not by_identity["p1"].alarm


def test_plot_is_svg_without_raster_data() -> None:
    svg = plot_svg(_rows("u1", "p1", ["confirmed", "not_this_person", "confirmed"]))
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and "data:" not in svg
    assert "no reviewed matches" in plot_svg([])
