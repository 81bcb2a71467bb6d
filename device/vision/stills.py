"""Finding faces in still photos for embedding: zoom-out retry and keypoint refinement.

Two things a single BlazeFace pass does badly on photos, both measured on
``../shared/datasets`` (see ``models/derive_template.py``):

* **Tightly cropped faces** (passport photos, LFW's 350×350 crops) fill the frame;
  BlazeFace was trained with context around faces and misses most of them (the
  full-range model found 204 of 1,025 LFW crops). Zooming out — padding the image
  with black — finds them: the short-range model with a 20 % margin found all 1,025.
* **Keypoint precision** depends on the face's size in the model input: a face
  filling the input, or a small face in a large frame, gets coarse keypoints. A
  second pass of the full-range model on a square crop three times the face's size
  (so the face fills about a third of its input, the scale it handles best) brought
  the aligned chip closer to dlib's own chip: median corner error 3.13 → 2.75 chip
  pixels on LFW, 2.62 → 2.01 on deepface photos (eyes + mouth keypoints).

:class:`StillFaceFinder` combines them behind the :class:`~device.vision.detect.Detector`
protocol, so :func:`device.vision.embed.embed_faces` takes it like any detector.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType

import numpy as np
from pydantic import Field

from device.config import Section
from device.types import Detection, Image
from device.vision import models as model_manifest
from device.vision.align import apply_transform, invert_transform, warp
from device.vision.blazeface import DEFAULT_THRESHOLD, BlazeFaceConfig, BlazeFaceDetector
from device.vision.detect import Detector
from device.vision.timing import StageTimer

logger = logging.getLogger(__name__)

#: Crop side for refinement, as a multiple of the face box's longer side.
REFINE_SCALE = 3.0
#: Largest refinement crop, in pixels (BlazeFace's letterbox scales it to 192 anyway).
REFINE_MAX_SIDE = 576
#: A refined detection replaces the original only if their boxes overlap this much.
REFINE_MIN_IOU = 0.3


def zoom_out(image: Image, margin: float) -> tuple[Image, int]:
    """Pad ``image`` with black on every side by ``margin`` × its longer side.

    Returns:
        The padded image and the pad in pixels (0: the image itself).
    """
    import cv2

    pad = round(margin * max(image.shape[0], image.shape[1]))
    if pad <= 0:
        return image, 0
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return np.ascontiguousarray(padded), pad


def shift_detection(detection: Detection, dx: float, dy: float) -> Detection:
    """The same detection moved by ``(dx, dy)`` pixels."""
    x, y, w, h = detection.box
    return Detection(
        box=(x + dx, y + dy, w, h),
        score=detection.score,
        keypoints=tuple((kx + dx, ky + dy) for kx, ky in detection.keypoints),
    )


def detect_zoomed_out(
    image: Image, detector: Detector, margin: float, timer: StageTimer | None = None
) -> list[Detection]:
    """Detect faces in ``image`` padded by ``margin`` (see :func:`zoom_out`), in image pixels.

    Raises:
        ModelError: Inference failed.
        ValueError: ``image`` is not ``(H, W, 3)``.
    """
    padded, pad = zoom_out(image, margin)
    found = detector.detect(padded, timer)
    return [shift_detection(d, -pad, -pad) for d in found] if pad else found


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def refine_detection(
    image: Image,
    detection: Detection,
    detector: Detector,
    scale: float = REFINE_SCALE,
    timer: StageTimer | None = None,
) -> Detection:
    """Re-detect one face on a square crop ``scale`` times its size around it.

    The crop is black outside the image. The detection nearest the crop's centre
    replaces the original when their boxes overlap (IoU >= :data:`REFINE_MIN_IOU`);
    otherwise the original is kept. The score stays the original's (the first pass
    decided that this is a face).

    Raises:
        ModelError: Inference failed.
    """
    x, y, w, h = detection.box
    side = scale * max(w, h)
    if side <= 1:
        return detection
    out = int(min(round(side), REFINE_MAX_SIDE))
    s = out / side
    cx, cy = x + w / 2, y + h / 2
    to_crop = np.array([[s, 0.0, out / 2 - s * cx], [0.0, s, out / 2 - s * cy]])
    crop = warp(image, to_crop, (out, out), border="constant").image
    found = detector.detect(crop, timer)
    if not found:
        return detection
    centre = np.array([out / 2, out / 2])
    best = min(
        found,
        key=lambda d: float(np.hypot(*(np.array(d.box[:2]) + np.array(d.box[2:]) / 2 - centre))),
    )
    back = invert_transform(to_crop)
    corner = apply_transform(back, [best.box[:2]])[0]
    box = (float(corner[0]), float(corner[1]), best.box[2] / s, best.box[3] / s)
    if _iou(box, detection.box) < REFINE_MIN_IOU:
        logger.debug("refinement found a different face; keeping the first pass")
        return detection
    keypoints = apply_transform(back, np.asarray(best.keypoints, dtype=np.float64).reshape(-1, 2))
    return Detection(
        box=box,
        score=detection.score,
        keypoints=tuple((float(px), float(py)) for px, py in keypoints),
    )


class StillFinderConfig(Section):
    """How :class:`StillFaceFinder` finds faces in photos (BlazeFace models)."""

    threshold: float = Field(
        DEFAULT_THRESHOLD, ge=0.0, le=1.0, description="Minimum BlazeFace score, every pass."
    )
    retry: bool = Field(
        True,
        description="When the full-range model finds nothing, retry with the short-range "
        "model on the image zoomed out (tightly cropped faces).",
    )
    retry_margin: float = Field(
        0.2, ge=0.0, le=2.0,
        description="Zoom-out margin of the retry, as a share of the image's longer side.",
    )
    refine: bool = Field(
        True,
        description="Refine each used face's keypoints with a second full-range pass on a "
        "crop around it (a chip closer to dlib's).",
    )
    refine_scale: float = Field(
        REFINE_SCALE, ge=1.0, le=10.0,
        description="Refinement crop side as a multiple of the face box's longer side.",
    )
    num_threads: int = Field(2, ge=1, le=16, description="CPU threads per BlazeFace model.")


class StillFaceFinder:
    """A :class:`~device.vision.detect.Detector` for still photos.

    ``primary`` runs on the image; if it finds nothing and a ``retry`` detector is
    given, ``retry`` runs on the image zoomed out by ``retry_margin``; then, if a
    ``refiner`` is given, each face's keypoints are refined (:func:`refine_detection`).
    Detectors passed in belong to the caller; :meth:`from_config` opens its own, and
    ``close()`` closes those.

    Args:
        primary: First-pass detector (BlazeFace full-range for photos of scenes).
        retry: Detector for the zoomed-out retry (BlazeFace short-range suits
            tightly cropped faces); ``None`` for no retry.
        retry_margin: Zoom-out margin for the retry, as a share of the longer side.
        refiner: Detector for the refinement pass (BlazeFace full-range); ``None``
            to keep the first pass's keypoints.
        refine_scale: Refinement crop side over the face box's longer side.
    """

    def __init__(
        self,
        primary: Detector,
        *,
        retry: Detector | None = None,
        retry_margin: float = 0.2,
        refiner: Detector | None = None,
        refine_scale: float = REFINE_SCALE,
    ) -> None:
        if retry_margin < 0 or refine_scale < 1:
            raise ValueError(
                f"retry_margin must be >= 0 and refine_scale >= 1, got {retry_margin}, "
                f"{refine_scale}"
            )
        self.primary = primary
        self.retry = retry
        self.retry_margin = retry_margin
        self.refiner = refiner
        self.refine_scale = refine_scale
        self._owned: list[BlazeFaceDetector] = []

    @classmethod
    def from_config(
        cls,
        config: StillFinderConfig | None = None,
        *,
        cache_dir: Path | None = None,
        manifest: dict[str, model_manifest.ModelSpec] | None = None,
    ) -> StillFaceFinder:
        """Open the BlazeFace models a config needs; the finder owns and closes them.

        Raises:
            ModelError: A BlazeFace model cannot be loaded.
        """
        config = config or StillFinderConfig()
        full = BlazeFaceDetector(
            BlazeFaceConfig(model="full", threshold=config.threshold,
                            num_threads=config.num_threads),
            cache_dir=cache_dir, manifest=manifest,
        )
        owned = [full]
        try:
            short = None
            if config.retry:
                short = BlazeFaceDetector(
                    BlazeFaceConfig(model="short", threshold=config.threshold,
                                    num_threads=config.num_threads),
                    cache_dir=cache_dir, manifest=manifest,
                )
                owned.append(short)
        except Exception:
            full.close()
            raise
        finder = cls(
            full, retry=short, retry_margin=config.retry_margin,
            refiner=full if config.refine else None, refine_scale=config.refine_scale,
        )
        finder._owned = owned
        return finder

    def find(
        self, image: Image, *, largest_only: bool = False, timer: StageTimer | None = None
    ) -> list[Detection]:
        """Faces in ``image``, largest first, keypoints refined.

        Args:
            image: RGB ``uint8`` ``(H, W, 3)``.
            largest_only: Return (and refine) only the largest face.
            timer: Optional stage timer.

        Raises:
            ModelError: Inference failed.
            ValueError: ``image`` is not ``(H, W, 3)``.
        """
        found = self.primary.detect(image, timer)
        if not found and self.retry is not None:
            found = detect_zoomed_out(image, self.retry, self.retry_margin, timer)
            logger.debug("zoomed-out retry found %d face(s)", len(found))
        found = sorted(found, key=lambda d: d.area, reverse=True)
        if largest_only:
            found = found[:1]
        if self.refiner is not None:
            found = [
                refine_detection(image, d, self.refiner, self.refine_scale, timer) for d in found
            ]
        return found

    def detect(self, image: Image, timer: StageTimer | None = None) -> list[Detection]:
        """Every face in ``image``, largest first, keypoints refined (see :meth:`find`).

        Raises:
            ModelError: Inference failed.
            ValueError: ``image`` is not ``(H, W, 3)``.
        """
        return self.find(image, timer=timer)

    def close(self) -> None:
        """Close the detectors :meth:`from_config` opened (not those passed in). Idempotent."""
        for detector in self._owned:
            detector.close()

    def __enter__(self) -> StillFaceFinder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
