"""Letterboxing into a model input and the exact way back, any aspect ratio."""

from __future__ import annotations

import numpy as np
import pytest

from device.vision.boxes import Candidates
from device.vision.letterbox import fit, letterbox


def _centroid(img: np.ndarray) -> np.ndarray:
    """Intensity centroid in continuous pixel coordinates (pixel i spans [i, i+1))."""
    w = img[..., 0].astype(np.float64)
    ys, xs = np.mgrid[: w.shape[0], : w.shape[1]]
    return np.array([(w * (xs + 0.5)).sum() / w.sum(), (w * (ys + 0.5)).sum() / w.sum()])


@pytest.mark.parametrize(
    ("width", "height"),
    [(640, 360), (1920, 1080), (360, 640), (333, 517), (517, 333), (100, 100), (90, 60)],
)
def test_mapping_back_matches_what_the_resize_did(width: int, height: int) -> None:
    frame = np.zeros((height, width, 3), np.uint8)
    x0, y0 = width // 3, height // 4
    frame[y0 : y0 + height // 3, x0 : x0 + width // 5] = 255
    out, plan = letterbox(frame, 192, 192)
    assert out.shape == (192, 192, 3)
    # The padding is zero and the picture is centred.
    assert plan.pad_x == (192 - plan.inner_width) // 2
    assert plan.pad_y == (192 - plan.inner_height) // 2
    assert max(plan.inner_width, plan.inner_height) == 192
    # The bright block's centroid, found in the input and mapped back, is where it was.
    back = plan.to_frame(_centroid(out)[None])[0]
    tolerance = 0.05 / min(plan.scale_x, plan.scale_y)  # a twentieth of an input pixel
    np.testing.assert_allclose(back, _centroid(frame), atol=tolerance)


def test_landscape_and_portrait_plans() -> None:
    land = fit(1920, 1080, 192, 192)
    assert (land.inner_width, land.inner_height, land.pad_x, land.pad_y) == (192, 108, 0, 42)
    np.testing.assert_allclose(land.to_frame(np.array([[0.0, 42.0], [192.0, 150.0]])),
                               [[0, 0], [1920, 1080]])
    portrait = fit(1080, 1920, 192, 192)
    assert (portrait.inner_width, portrait.inner_height, portrait.pad_x) == (108, 192, 42)
    np.testing.assert_allclose(portrait.to_frame(np.array([[42.0, 0.0], [150.0, 192.0]])),
                               [[0, 0], [1080, 1920]])


def test_rounding_of_the_inner_size_is_accounted_for_per_axis() -> None:
    plan = fit(1001, 333, 192, 192)  # 333 * 192/1001 = 63.87 -> 64 rows
    assert plan.inner_height == 64
    assert plan.scale_y == pytest.approx(64 / 333)
    assert plan.scale_x == pytest.approx(192 / 1001)
    pts = np.array([[0.0, 0.0], [1001.0, 333.0], [500.5, 166.5]])
    np.testing.assert_allclose(plan.to_frame(plan.to_input(pts)), pts, atol=1e-3)


def test_a_region_maps_back_into_frame_coordinates() -> None:
    frame = np.zeros((400, 600, 3), np.uint8)
    _, plan = letterbox(frame, 128, 128, region=(200, 100, 456, 356))
    assert plan.scale_x == pytest.approx(0.5)
    np.testing.assert_allclose(plan.to_frame(np.array([[0.0, 0.0], [128.0, 128.0]])),
                               [[200, 100], [456, 356]])
    with pytest.raises(ValueError, match="outside"):
        letterbox(frame, 128, 128, region=(500, 0, 700, 100))


def test_candidates_in_normalised_input_coordinates_map_to_frame_pixels() -> None:
    plan = fit(640, 360, 192, 192)  # inner 192x108, pad_y 42
    cands = Candidates(
        np.array([[0.25, 0.5, 0.5, 0.75]], np.float32), np.array([0.9], np.float32),
        np.array([[[0.5, 0.5]]], np.float32),
    )
    out = plan.candidates_to_frame(cands)
    np.testing.assert_allclose(out.boxes[0], [160, (96 - 42) / 0.3, 320, (144 - 42) / 0.3],
                               rtol=1e-5)
    np.testing.assert_allclose(out.keypoints[0, 0], [320, 180], rtol=1e-5)
