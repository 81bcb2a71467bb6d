"""Letterboxing: fit an image (or a region of it) into a model's input, and back.

The region is scaled to fit the input while keeping its aspect ratio, centred, and
the rest is padded (MediaPipe's ``keep_aspect_ratio`` with ``BORDER_ZERO``). The
scale actually used is the one of the integer-sized resize, per axis, so mapping a
point back to the frame is exact for any aspect ratio, not off by the rounding.

Coordinates are continuous pixel coordinates: pixel ``i`` spans ``[i, i + 1)``, the
convention of ``cv2.resize`` (whose sampling puts destination pixel centres at
``(x + 0.5) / s``), so a resize by ``s`` maps ``x`` to ``x * s`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from device.types import FloatArray, Image
from device.vision.boxes import AnyFloatArray, Candidates


@dataclass(frozen=True, slots=True)
class Letterbox:
    """How a frame region was placed into a model input.

    Attributes:
        region: ``(x0, y0, x1, y1)`` of the frame that was scaled (integer pixels).
        dst_width: Model input width.
        dst_height: Model input height.
        inner_width: Width of the scaled region inside the input.
        inner_height: Height of the scaled region inside the input.
        pad_x: Left padding in input pixels.
        pad_y: Top padding in input pixels.
    """

    region: tuple[int, int, int, int]
    dst_width: int
    dst_height: int
    inner_width: int
    inner_height: int
    pad_x: int
    pad_y: int

    @property
    def scale_x(self) -> float:
        """Input pixels per frame pixel, horizontally."""
        return self.inner_width / (self.region[2] - self.region[0])

    @property
    def scale_y(self) -> float:
        """Input pixels per frame pixel, vertically."""
        return self.inner_height / (self.region[3] - self.region[1])

    def to_frame(self, points: AnyFloatArray) -> FloatArray:
        """Map ``(..., 2)`` points from input pixels to frame pixels."""
        pts = np.asarray(points, dtype=np.float64)
        x = (pts[..., 0] - self.pad_x) / self.scale_x + self.region[0]
        y = (pts[..., 1] - self.pad_y) / self.scale_y + self.region[1]
        return np.stack([x, y], axis=-1).astype(np.float32)

    def to_input(self, points: AnyFloatArray) -> FloatArray:
        """Map ``(..., 2)`` points from frame pixels to input pixels."""
        pts = np.asarray(points, dtype=np.float64)
        x = (pts[..., 0] - self.region[0]) * self.scale_x + self.pad_x
        y = (pts[..., 1] - self.region[1]) * self.scale_y + self.pad_y
        return np.stack([x, y], axis=-1).astype(np.float32)

    def candidates_to_frame(self, candidates: Candidates, normalized: bool = True) -> Candidates:
        """Map candidates from the model input to frame pixels.

        Args:
            candidates: Boxes and keypoints in input coordinates.
            normalized: ``True`` if they are in ``[0, 1]`` of the input size (as
                BlazeFace and SSD decoders produce), ``False`` if in input pixels.
        """
        size = np.array([self.dst_width, self.dst_height], dtype=np.float64)
        factor = size if normalized else np.ones(2)
        corners = candidates.boxes.reshape(-1, 2, 2) * factor
        kps = candidates.keypoints * factor
        return Candidates(
            self.to_frame(corners).reshape(-1, 4),
            candidates.scores,
            self.to_frame(kps).reshape(candidates.keypoints.shape),
        )


def fit(
    src_width: int, src_height: int, dst_width: int, dst_height: int,
    origin: tuple[int, int] = (0, 0),
) -> Letterbox:
    """Plan the letterbox of a ``src_width × src_height`` region into the input.

    Raises:
        ValueError: A size is not positive.
    """
    if min(src_width, src_height, dst_width, dst_height) <= 0:
        raise ValueError(
            f"cannot letterbox {src_width}x{src_height} into {dst_width}x{dst_height}"
        )
    scale = min(dst_width / src_width, dst_height / src_height)
    inner_w = min(dst_width, max(1, round(src_width * scale)))
    inner_h = min(dst_height, max(1, round(src_height * scale)))
    x0, y0 = origin
    return Letterbox(
        region=(x0, y0, x0 + src_width, y0 + src_height),
        dst_width=dst_width,
        dst_height=dst_height,
        inner_width=inner_w,
        inner_height=inner_h,
        pad_x=(dst_width - inner_w) // 2,
        pad_y=(dst_height - inner_h) // 2,
    )


def letterbox(
    image: Image,
    dst_width: int,
    dst_height: int,
    region: tuple[int, int, int, int] | None = None,
    fill: int = 0,
) -> tuple[Image, Letterbox]:
    """Scale ``region`` of ``image`` into a ``dst_width × dst_height`` padded image.

    Downscaling uses area averaging (no aliasing of small faces), upscaling
    bilinear interpolation.

    Args:
        image: ``(H, W, 3)`` ``uint8`` frame.
        dst_width: Model input width.
        dst_height: Model input height.
        region: ``(x0, y0, x1, y1)`` integer pixel rectangle; default the whole frame.
        fill: Padding value (0, MediaPipe's ``BORDER_ZERO``).

    Returns:
        The padded input image and the :class:`Letterbox` to map results back.

    Raises:
        ValueError: The image is not ``(H, W, 3)`` or the region is empty or
            outside the image.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    height, width = image.shape[:2]
    x0, y0, x1, y1 = region if region is not None else (0, 0, width, height)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"region {(x0, y0, x1, y1)} is empty or outside {width}x{height}")
    plan = fit(x1 - x0, y1 - y0, dst_width, dst_height, origin=(x0, y0))
    crop = image[y0:y1, x0:x1]
    shrinking = plan.inner_width < crop.shape[1] or plan.inner_height < crop.shape[0]
    resized = cv2.resize(
        crop, (plan.inner_width, plan.inner_height),
        interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
    )
    out = np.full((dst_height, dst_width, 3), fill, dtype=np.uint8)
    out[plan.pad_y:plan.pad_y + plan.inner_height,
        plan.pad_x:plan.pad_x + plan.inner_width] = resized
    return out, plan
