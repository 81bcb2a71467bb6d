"""Sample pictures that ship with installed packages, for demos and benchmarks.

``skimage.data.astronaut()`` is Eileen Collins' NASA portrait (public domain),
``skimage.data.rocket()`` a NASA launch photo (public domain): both ship inside
scikit-image, so a fresh machine can run ``facegate detect`` and the benchmark
without any download.
"""

from __future__ import annotations

import cv2
import numpy as np

from device.types import Image

#: Label used where a file path would be printed.
ASTRONAUT_LABEL = "skimage.data.astronaut"

#: Width of the astronaut's face in the 512×512 picture, as BlazeFace boxes it.
_ASTRONAUT_FACE = 105.0


def astronaut() -> Image:
    """The 512×512 RGB astronaut portrait (one face)."""
    from skimage import data  # imported here: skimage is slow to import

    return np.ascontiguousarray(data.astronaut(), dtype=np.uint8)  # type: ignore[no-untyped-call]


def synthetic_frame(width: int, height: int) -> Image:
    """A camera-like scene built from real photos, the same at every resolution.

    The rocket launch photo fills the frame; one large astronaut (face ~20 % of
    the height) stands on the left, and four small copies whose faces are about
    4.4 % of the height (48 px at 1080p, 16 px at 360p) stand on the right: the
    small faces are what tiling is for.
    """
    from skimage import data

    rocket = data.rocket()  # type: ignore[no-untyped-call]
    scene = _resized(np.asarray(rocket, dtype=np.uint8), width, height)
    portrait = astronaut()
    big = max(8, round(height * 0.8))
    _paste(scene, _resized(portrait, big, big), round(width * 0.05), height - big)
    small = max(4, round(512 * 0.044 * height / _ASTRONAUT_FACE))
    copy = _resized(portrait, small, small)
    for k in range(4):
        _paste(scene, copy, round(width * (0.55 + 0.1 * k)), round(height * (0.2 + 0.12 * k)))
    return scene


def _resized(image: Image, width: int, height: int) -> Image:
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return np.asarray(out, dtype=np.uint8)


def _paste(dst: Image, src: Image, x: int, y: int) -> None:
    h = min(src.shape[0], dst.shape[0] - y)
    w = min(src.shape[1], dst.shape[1] - x)
    if h > 0 and w > 0:
        dst[y : y + h, x : x + w] = src[:h, :w]
