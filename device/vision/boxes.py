"""Detection candidates as arrays, overlap, and conversion to :class:`Detection`.

Detectors decode their raw tensors into :class:`Candidates` (corner boxes, scores,
keypoints: plain arrays, so NMS, tiling and mapping are vectorised and testable),
and turn them into :class:`~device.types.Detection` values only at the very end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from device.types import Detection, FloatArray

#: Any floating-point array (inputs accept float64 as well as float32).
AnyFloatArray = npt.NDArray[np.floating[Any]]


@dataclass(frozen=True, slots=True, eq=False)
class Candidates:
    """A batch of detections in one coordinate frame.

    Attributes:
        boxes: ``(N, 4)`` corners ``xmin, ymin, xmax, ymax``.
        scores: ``(N,)`` confidences in ``[0, 1]``.
        keypoints: ``(N, K, 2)`` ``(x, y)`` points; ``K = 0`` for detectors without.
    """

    boxes: FloatArray
    scores: FloatArray
    keypoints: FloatArray

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.shape != (n, 4) or self.scores.shape != (n,) or (
            self.keypoints.ndim != 3 or self.keypoints.shape[0] != n
            or self.keypoints.shape[2] != 2
        ):
            raise ValueError(
                f"inconsistent candidate arrays: boxes {self.boxes.shape}, "
                f"scores {self.scores.shape}, keypoints {self.keypoints.shape}"
            )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty(num_keypoints: int = 0) -> Candidates:
        """No candidates, with the given keypoint count."""
        return Candidates(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32),
            np.zeros((0, num_keypoints, 2), np.float32),
        )

    def select(self, index: np.ndarray) -> Candidates:
        """The candidates at ``index`` (a boolean mask or integer indices)."""
        return Candidates(self.boxes[index], self.scores[index], self.keypoints[index])

    @staticmethod
    def concat(parts: list[Candidates]) -> Candidates:
        """All candidates of ``parts`` in order; they must share the keypoint count.

        Raises:
            ValueError: ``parts`` is empty or keypoint counts differ.
        """
        if not parts:
            raise ValueError("nothing to concatenate")
        return Candidates(
            np.concatenate([p.boxes for p in parts]).astype(np.float32, copy=False),
            np.concatenate([p.scores for p in parts]).astype(np.float32, copy=False),
            np.concatenate([p.keypoints for p in parts]).astype(np.float32, copy=False),
        )


def iou_one_to_many(box: AnyFloatArray, boxes: AnyFloatArray) -> FloatArray:
    """Intersection over union of one corner box with each of ``boxes``.

    Matches MediaPipe's ``OverlapSimilarity(INTERSECTION_OVER_UNION)``: 0 when the
    boxes do not intersect or the union is empty.
    """
    ix0 = np.maximum(box[0], boxes[:, 0])
    iy0 = np.maximum(box[1], boxes[:, 1])
    ix1 = np.minimum(box[2], boxes[:, 2])
    iy1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix1 - ix0, 0.0, None) * np.clip(iy1 - iy0, 0.0, None)
    area = max(float(box[2] - box[0]), 0.0) * max(float(box[3] - box[1]), 0.0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0.0, None
    )
    union = area + areas - inter
    out = np.zeros(boxes.shape[0], dtype=np.float32)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def iou_matrix(a: AnyFloatArray, b: AnyFloatArray) -> FloatArray:
    """``(len(a), len(b))`` IoU of corner boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    return np.stack([iou_one_to_many(box, b) for box in a])


def to_detections(candidates: Candidates) -> list[Detection]:
    """Convert corner boxes to :class:`Detection` values ``(x, y, w, h)``."""
    out: list[Detection] = []
    for box, score, kps in zip(
        candidates.boxes.tolist(), candidates.scores.tolist(), candidates.keypoints.tolist(),
        strict=True,
    ):
        x0, y0, x1, y1 = box
        out.append(
            Detection(
                box=(x0, y0, x1 - x0, y1 - y0),
                score=score,
                keypoints=tuple((p[0], p[1]) for p in kps),
            )
        )
    return out
