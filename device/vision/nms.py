"""Non-maximum suppression: MediaPipe's weighted variant and the classic hard one.

BlazeFace fires on several neighbouring anchors per face. MediaPipe's
``NonMaxSuppressionCalculator`` with ``algorithm: WEIGHTED`` (the face detection
graph uses ``min_suppression_threshold: 0.3``, IoU) does not just keep the best
box: it replaces it by the score-weighted mean of every box that overlaps it by
more than the threshold (itself included), keypoints too, and keeps the best box's
score. That averages out anchor jitter and gives steadier boxes than hard NMS.
"""

from __future__ import annotations

import numpy as np

from device.vision.boxes import Candidates, iou_one_to_many

#: ``min_suppression_threshold`` of MediaPipe's face detection graph.
MEDIAPIPE_SUPPRESSION_THRESHOLD = 0.3


def weighted_nms(
    candidates: Candidates,
    threshold: float = MEDIAPIPE_SUPPRESSION_THRESHOLD,
    max_detections: int | None = None,
) -> Candidates:
    """MediaPipe's weighted non-maximum suppression.

    Candidates are taken in descending score order. The best remaining one and
    every remaining candidate whose IoU with it is ``> threshold`` (itself
    included) are merged into one detection: boxes and keypoints are averaged with
    the scores as weights; the score is the best one's. The merged ones are removed
    and the loop repeats.

    One deliberate difference: MediaPipe stops the whole loop when the best box
    does not overlap itself (a zero-area box), dropping every remaining candidate;
    here such a box is emitted alone and the loop goes on.

    Args:
        candidates: Detections in any single coordinate frame.
        threshold: IoU above which a candidate is merged into the best one.
        max_detections: Stop after this many outputs (``None``: no limit).

    Returns:
        The merged detections, best first.
    """
    n = len(candidates)
    if n == 0:
        return candidates
    order = np.argsort(-candidates.scores, kind="stable")
    boxes = candidates.boxes[order].astype(np.float64)
    scores = candidates.scores[order].astype(np.float64)
    kps = candidates.keypoints[order].astype(np.float64)
    remaining = np.arange(n)
    out_boxes: list[np.ndarray] = []
    out_scores: list[float] = []
    out_kps: list[np.ndarray] = []
    while remaining.size and (max_detections is None or len(out_scores) < max_detections):
        top = remaining[0]
        similarity = iou_one_to_many(boxes[top], boxes[remaining])
        merged = similarity > threshold
        merged[0] = True  # see the docstring: the best box always goes with itself
        members = remaining[merged]
        weights = scores[members]
        total = weights.sum()
        if total > 0:
            out_boxes.append((boxes[members] * weights[:, None]).sum(axis=0) / total)
            out_kps.append((kps[members] * weights[:, None, None]).sum(axis=0) / total)
        else:
            out_boxes.append(boxes[top])
            out_kps.append(kps[top])
        out_scores.append(float(scores[top]))
        remaining = remaining[~merged]
    return Candidates(
        np.asarray(out_boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(out_scores, dtype=np.float32),
        np.asarray(out_kps, dtype=np.float32).reshape(len(out_scores), kps.shape[1], 2),
    )


def suppress_contained(candidates: Candidates, threshold: float = 0.6) -> Candidates:
    """Drop a detection when most of it lies inside a better-scored one, or vice versa.

    Overlap is measured as intersection over the *smaller* box's area, so a small
    box inside a large one counts fully even though their IoU is low. Weighted NMS
    (IoU) cannot merge detections of one face found at very different scales, as
    tiling produces: a coarse pass's loose box around a small face and a tile's
    tight one. Two real faces do not share most of the smaller one's box.

    Args:
        candidates: Detections in one coordinate frame.
        threshold: Fraction of the smaller box covered above which the
            lower-scored detection is dropped.

    Returns:
        The kept detections, best first.
    """
    if len(candidates) < 2:
        return candidates
    order = np.argsort(-candidates.scores, kind="stable")
    boxes = candidates.boxes.astype(np.float64)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0, None
    )
    kept: list[int] = []
    for i in order:
        b = boxes[i]
        if kept:
            k = np.asarray(kept)
            iw = np.clip(np.minimum(b[2], boxes[k, 2]) - np.maximum(b[0], boxes[k, 0]), 0, None)
            ih = np.clip(np.minimum(b[3], boxes[k, 3]) - np.maximum(b[1], boxes[k, 1]), 0, None)
            smaller = np.minimum(areas[i], areas[k])
            covered = np.divide(iw * ih, smaller, out=np.zeros_like(smaller), where=smaller > 0)
            if np.any(covered > threshold):
                continue
        kept.append(int(i))
    return candidates.select(np.asarray(kept, dtype=np.int64))


def hard_nms(
    candidates: Candidates, threshold: float = 0.5, max_detections: int | None = None
) -> Candidates:
    """Classic NMS: keep the best, drop every candidate overlapping a kept one.

    Args:
        candidates: Detections in any single coordinate frame.
        threshold: IoU above which a lower-scored candidate is dropped.
        max_detections: Stop after this many outputs (``None``: no limit).

    Returns:
        The kept detections, best first.
    """
    if len(candidates) == 0:
        return candidates
    order = np.argsort(-candidates.scores, kind="stable")
    keep: list[int] = []
    remaining = order
    while remaining.size and (max_detections is None or len(keep) < max_detections):
        top = int(remaining[0])
        keep.append(top)
        similarity = iou_one_to_many(candidates.boxes[top], candidates.boxes[remaining])
        remaining = remaining[1:][similarity[1:] <= threshold]
    return candidates.select(np.asarray(keep, dtype=np.int64))
