"""Drawing detections onto a copy of an image (for people, never for the pipeline)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont, features

from device.types import Detection, Image

BOX_COLOUR = (0, 230, 0)
#: Score labels are this share of the image's shorter side tall (at least
#: :data:`MIN_LABEL_PX`), so they read on a 4000-pixel photo as on a 640-pixel frame.
LABEL_SHARE = 1 / 40
MIN_LABEL_PX = 12
#: One colour per BlazeFace keypoint, in :data:`device.types.KEYPOINT_NAMES` order.
KEYPOINT_COLOURS = (
    (255, 64, 64), (64, 128, 255), (255, 220, 0), (255, 0, 255), (0, 220, 220), (255, 140, 0),
)


def label_size(width: int, height: int) -> int:
    """Font size in pixels of the score labels on a ``width`` × ``height`` image."""
    return max(MIN_LABEL_PX, round(min(width, height) * LABEL_SHARE))


def _draw_label(canvas: PILImage.Image, xy: tuple[float, float], text: str, size: int) -> None:
    """``text`` at ``xy`` (its top left), ``size`` pixels tall, outlined in black."""
    draw = ImageDraw.Draw(canvas)
    outline = max(1, size // 12)
    if features.check("freetype2"):
        font = ImageFont.load_default(size=size)
        draw.text(xy, text, fill=BOX_COLOUR, font=font, stroke_width=outline,
                  stroke_fill=(0, 0, 0))
        return
    # Without FreeType the only font is an 11-pixel bitmap: draw it small, scale it up.
    bitmap = ImageFont.load_default()
    _, top, right, bottom = (round(v) for v in draw.textbbox((0, 0), text, font=bitmap))
    small = PILImage.new("L", (right + 2, bottom + 2), 0)
    ImageDraw.Draw(small).text((1, 1), text, fill=255, font=bitmap)
    factor = size / max(1, bottom - top)
    mask = small.resize((max(1, round(small.width * factor)), max(1, round(small.height * factor))),
                        PILImage.Resampling.NEAREST)
    canvas.paste(BOX_COLOUR, (round(xy[0]), round(xy[1])), mask)


def draw_detections(image: Image, detections: Sequence[Detection]) -> Image:
    """A copy of ``image`` with each face's box, score and keypoints drawn.

    Line widths, marker sizes and the score labels' font scale with the image so they
    stay readable on large photos and do not cover small frames.
    """
    canvas = PILImage.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    height, width = image.shape[:2]
    line = max(1, round(min(width, height) / 250))
    size = label_size(width, height)
    for det in detections:
        x, y, w, h = det.box
        draw.rectangle([x, y, x + w, y + h], outline=BOX_COLOUR, width=line)
        # Above the box; inside its top edge when the box touches the image's top.
        top = y - size * 1.25 - line
        _draw_label(canvas, (x + line, top if top >= 0 else y + line), f"{det.score:.2f}", size)
        radius = max(1.5, min(w, h) / 30)
        for k, (px, py) in enumerate(det.keypoints):
            colour = KEYPOINT_COLOURS[k % len(KEYPOINT_COLOURS)]
            draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=colour)
    return np.asarray(canvas, dtype=np.uint8).copy()
