"""Weighted (MediaPipe) and hard NMS on synthetic candidates."""

from __future__ import annotations

import numpy as np
import pytest

from device.vision.boxes import Candidates, iou_matrix, iou_one_to_many
from device.vision.nms import hard_nms, suppress_contained, weighted_nms


def _cands(boxes: list[list[float]], scores: list[float], kps: list | None = None) -> Candidates:
    n = len(boxes)
    keypoints = np.zeros((n, 1, 2), np.float32) if kps is None else np.array(kps, np.float32)
    return Candidates(np.array(boxes, np.float32).reshape(-1, 4),
                      np.array(scores, np.float32), keypoints)


def test_iou() -> None:
    a = np.array([0, 0, 10, 10], np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10], [3, 3, 3, 3]], np.float32)
    np.testing.assert_allclose(iou_one_to_many(a, b), [50 / 150, 0, 1, 0])
    assert iou_matrix(b[:2], b).shape == (2, 4)


def test_overlapping_boxes_merge_into_their_score_weighted_mean() -> None:
    cands = _cands(
        [[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]],
        [0.9, 0.6, 0.7],
        [[[5, 5]], [[6, 7]], [[55, 55]]],
    )
    out = weighted_nms(cands, threshold=0.3)
    assert len(out) == 2
    # First: weights 0.9 and 0.6, score of the best one.
    np.testing.assert_allclose(out.boxes[0], [0.4, 0.4, 10.4, 10.4], atol=1e-5)
    np.testing.assert_allclose(out.keypoints[0, 0], [5.4, 5.8], atol=1e-5)
    assert out.scores[0] == pytest.approx(0.9)
    # Second: alone, unchanged.
    np.testing.assert_allclose(out.boxes[1], [50, 50, 60, 60])
    assert out.scores[1] == pytest.approx(0.7)


def test_overlap_at_or_below_threshold_is_not_merged() -> None:
    # IoU exactly 50/150 = 0.333 > 0.3 merges; shifted further (IoU 0.25) does not.
    merged = weighted_nms(_cands([[0, 0, 10, 10], [5, 0, 15, 10]], [0.8, 0.8]), 0.3)
    apart = weighted_nms(_cands([[0, 0, 10, 10], [6, 0, 16, 10]], [0.8, 0.7]), 0.3)
    assert len(merged) == 1
    np.testing.assert_allclose(merged.boxes[0], [2.5, 0, 12.5, 10])
    assert len(apart) == 2


def test_merging_is_relative_to_the_best_box_not_transitive() -> None:
    # b overlaps a and c, but c does not overlap a: c survives on its own.
    cands = _cands([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]], [0.9, 0.8, 0.7])
    out = weighted_nms(cands, 0.3)
    assert len(out) == 2
    assert out.scores.tolist() == pytest.approx([0.9, 0.7])


def test_max_detections_and_empty_input() -> None:
    rng = np.random.default_rng(7)
    xy = np.zeros((300, 2), np.float32)
    xy[:, 0] = np.arange(300) * 20  # disjoint boxes
    boxes = np.concatenate([xy, xy + 10], axis=1)
    cands = Candidates(boxes, rng.uniform(0.5, 1, 300).astype(np.float32),
                       np.zeros((300, 6, 2), np.float32))
    out = weighted_nms(cands, 0.3, max_detections=100)
    assert len(out) == 100
    assert np.all(np.diff(out.scores) <= 0)
    assert out.keypoints.shape == (100, 6, 2)
    assert len(weighted_nms(Candidates.empty(6))) == 0


def test_a_zero_area_best_box_does_not_swallow_the_rest() -> None:
    out = weighted_nms(_cands([[5, 5, 5, 5], [0, 0, 10, 10]], [0.9, 0.8]))
    assert len(out) == 2


def test_hard_nms_keeps_the_best_and_drops_overlaps() -> None:
    cands = _cands([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], [0.6, 0.9, 0.7])
    out = hard_nms(cands, 0.5)
    assert out.scores.tolist() == pytest.approx([0.9, 0.7])
    np.testing.assert_allclose(out.boxes[0], [1, 1, 11, 11])


def test_a_loose_box_around_a_better_tight_one_is_dropped_but_neighbours_stay() -> None:
    cands = _cands(
        [[100, 100, 130, 130],   # tight small face, best score
         [80, 80, 170, 170],     # loose coarse box around it (IoU 0.11)
         [170, 100, 200, 130],   # a neighbour touching the loose box
         [125, 100, 155, 130]],  # an overlapping neighbour: 1/6 of it covered
        [0.9, 0.6, 0.8, 0.7],
    )
    out = suppress_contained(cands, 0.6)
    assert out.scores.tolist() == pytest.approx([0.9, 0.8, 0.7])
    # The other way round too: a weaker tight box inside a better loose one goes.
    swapped = _cands([[100, 100, 130, 130], [80, 80, 170, 170]], [0.6, 0.9])
    assert suppress_contained(swapped).boxes.tolist() == [[80, 80, 170, 170]]
