"""Drawing detections onto a copy of an image (for people, never for the pipeline)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

from device.types import Detection, Image

BOX_COLOUR = (0, 230, 0)
#: One colour per BlazeFace keypoint, in :data:`device.types.KEYPOINT_NAMES` order.
KEYPOINT_COLOURS = (
    (255, 64, 64), (64, 128, 255), (255, 220, 0), (255, 0, 255), (0, 220, 220), (255, 140, 0),
)


def draw_detections(image: Image, detections: Sequence[Detection]) -> Image:
    """A copy of ``image`` with each face's box, score and keypoints drawn.

    Line widths and marker sizes scale with the image so they stay visible on
    large frames and do not cover small ones.
    """
    canvas = PILImage.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    height, width = image.shape[:2]
    line = max(1, round(min(width, height) / 250))
    for det in detections:
        x, y, w, h = det.box
        draw.rectangle([x, y, x + w, y + h], outline=BOX_COLOUR, width=line)
        draw.text((x + line, max(0.0, y - 12 - line)), f"{det.score:.2f}", fill=BOX_COLOUR)
        radius = max(1.5, min(w, h) / 30)
        for k, (px, py) in enumerate(det.keypoints):
            colour = KEYPOINT_COLOURS[k % len(KEYPOINT_COLOURS)]
            draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=colour)
    return np.asarray(canvas, dtype=np.uint8).copy()
