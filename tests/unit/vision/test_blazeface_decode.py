"""BlazeFace tensor decoding on hand-made raw tensors (no model needed)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from device.vision.anchors import FULL_RANGE_OPTIONS, SHORT_RANGE_OPTIONS, generate_anchors
from device.vision.blazeface import decode, sigmoid_scores

FULL = generate_anchors(FULL_RANGE_OPTIONS)
SHORT = generate_anchors(SHORT_RANGE_OPTIONS)


def _raw(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((1, n, 16), np.float32), np.full((1, n, 1), -10.0, np.float32)


def test_one_face_decodes_to_the_expected_box_and_keypoints() -> None:
    boxes, scores = _raw(2304)
    i = 10 * 48 + 20  # row 10, column 20: anchor centre (20.5/48, 10.5/48)
    # x, y offsets and w, h in input pixels (x_scale = w_scale = 192), then keypoints.
    boxes[0, i, :4] = [9.6, -4.8, 38.4, 57.6]
    kps = np.array([[-9.6, -9.6], [9.6, -9.6], [0, 0], [0, 9.6], [-19.2, 0], [19.2, 0]])
    boxes[0, i, 4:] = kps.reshape(-1)
    scores[0, i, 0] = 2.0

    found = decode(boxes, scores, FULL, 192, 192, min_score=0.5)

    assert len(found) == 1
    cx, cy = 20.5 / 48 + 9.6 / 192, 10.5 / 48 - 4.8 / 192
    np.testing.assert_allclose(
        found.boxes[0], [cx - 0.1, cy - 0.15, cx + 0.1, cy + 0.15], atol=1e-6
    )
    expected_kps = kps / 192 + [20.5 / 48, 10.5 / 48]
    np.testing.assert_allclose(found.keypoints[0], expected_kps, atol=1e-6)
    assert found.scores[0] == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-6)


def test_scale_is_per_axis_for_non_square_inputs() -> None:
    anchors = np.array([[0.5, 0.5, 1.0, 1.0]], np.float32)
    raw = np.zeros((1, 16), np.float32)
    raw[0, :4] = [32, 24, 64, 48]  # input 256 wide, 96 high
    found = decode(raw, np.array([5.0]), anchors, 256, 96, min_score=0.5)
    np.testing.assert_allclose(found.boxes[0], [0.5, 0.5, 0.75, 1.0], atol=1e-6)


def test_scores_below_threshold_and_negative_sizes_are_dropped() -> None:
    boxes, scores = _raw(896)
    boxes[0, :3, 2:4] = 20.0
    boxes[0, 1, 2] = -5.0  # negative width: MediaPipe drops it
    scores[0, :3, 0] = [0.5, 3.0, -0.1]  # sigmoid 0.62, 0.95, 0.475
    found = decode(boxes, scores, SHORT, 128, 128, min_score=0.5)
    assert len(found) == 1
    assert found.scores[0] == pytest.approx(1 / (1 + np.exp(-0.5)), rel=1e-6)


def test_huge_logits_are_clipped_without_overflow() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = sigmoid_scores(np.array([1e6, -1e6, 0.0], np.float32))
    np.testing.assert_allclose(out, [1.0, 0.0, 0.5], atol=1e-30)
    assert out[1] > 0.0  # clipped to -100, not -inf: exp(-100)-ish, MediaPipe's value


def test_shapes_that_do_not_match_the_anchors_are_refused() -> None:
    boxes, scores = _raw(896)
    with pytest.raises(ValueError, match="2304 anchors"):
        decode(boxes, scores, FULL, 192, 192, min_score=0.5)
