"""Annotated copies: score labels readable at any image size."""

from __future__ import annotations

import numpy as np
import pytest

from device.types import Detection, Image
from device.vision.annotate import draw_detections


def _green(image: Image) -> np.ndarray:
    """Where the (anti-aliased) box colour was drawn on black."""
    r, g, b = (image[..., k].astype(int) for k in range(3))
    return (g > 80) & (g > 2 * r) & (g > 2 * b)


def _label_height(width: int, height: int) -> int:
    """Rows of label pixels drawn above a face box in the image's lower half."""
    image = np.zeros((height, width, 3), np.uint8)
    box_top = height // 2
    face = Detection(box=(width / 4, box_top, width / 4, height / 4), score=0.97)
    drawn = draw_detections(image, [face])
    above = drawn[:box_top]
    rows = np.flatnonzero(_green(above).any(axis=1))
    assert rows.size, "no score label drawn"
    return int(rows[-1] - rows[0] + 1)


def test_score_labels_scale_with_the_image() -> None:
    small, large = _label_height(640, 480), _label_height(4000, 3000)
    assert small >= 7  # readable on a camera frame
    # 3000 / 480 = 6.25 times the shorter side: the label grows with it.
    assert large >= 5 * small
    assert large >= 0.015 * 3000


def test_a_label_of_a_face_at_the_top_edge_stays_in_the_image() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    drawn = draw_detections(image, [Detection(box=(100, 0, 200, 200), score=0.5)])
    inside = drawn[2:60, 104:290]
    assert _green(inside).sum() > 20


def test_labels_scale_without_freetype_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow built without FreeType has only its 11-pixel bitmap font (not producible
    # here otherwise): the bitmap is scaled up instead.
    from device.vision import annotate

    monkeypatch.setattr(annotate.features, "check", lambda name: False)
    small, large = _label_height(640, 480), _label_height(4000, 3000)
    assert small >= 7 and large >= 5 * small
