"""Still photos: finding their faces (a close-range pass, keypoint refinement) and embedding them.

Two things a single BlazeFace full-range pass does badly on photos (the evaluation
behind them: ``models/derive_template.py`` and ``facegate eval pairs``):

* **Tightly cropped faces** (passport photos, LFW's crops) fill the frame; BlazeFace
  was trained with context around faces and misses most of them. Zooming out —
  padding the image with black — and running the short-range model finds them.
  The close-range pass runs on every photo, not only when the full-range pass finds
  nothing: on a tight crop the full-range model may find only a small face in the
  background, or a small box inside the large face, and miss the large one in front.
  The passes' faces are merged: two detections are one face when their boxes overlap
  or one lies mostly inside the other (the models box a face at different extents),
  the higher score kept. A face only the close-range pass saw is added where the
  full-range pass found none at all (a crop it cannot read); where it did find faces,
  the photo is one it reads, and the short-range model, seeing the whole photo at
  128 pixels, also answers to blurred crowds and to heads with shoulders: such a face
  is added only if the full-range model finds it again on the refinement crops
  around it.
* **Keypoint precision** depends on the face's size in the model input: a face
  filling the input, or a small face in a large frame, gets coarse keypoints. A
  second pass of the full-range model on a square crop about three times the face's
  size (the face fills about a third of its input, the scale it handles best) brings
  the aligned chip closer to dlib's own. Each pass's keypoints still jitter by a
  pixel or two with the crop, so several crops (:data:`REFINE_SCALES`) are averaged.

:class:`StillFaceFinder` combines them behind the :class:`~device.vision.detect.Detector`
protocol, and :func:`embed_faces` (detect, pick the largest or every face, align,
embed) takes it like any detector.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np
from pydantic import Field

from device.config import Section
from device.types import Detection, Embedding, FaceChip, Image
from device.vision import models as model_manifest
from device.vision.align import align, box_transform, warp
from device.vision.blazeface import DEFAULT_THRESHOLD, BlazeFaceConfig, BlazeFaceDetector
from device.vision.detect import Detector
from device.vision.embed import Embedder
from device.vision.timing import StageTimer

logger = logging.getLogger(__name__)

#: Crop sides for refinement, as multiples of the face box's longer side. The refined
#: keypoints are the mean over the crops: each pass's keypoints jitter by a pixel or
#: two with the crop; their mean jitters less.
REFINE_SCALES: tuple[float, ...] = (2.5, 3.0, 3.5)
#: Keypoint order after a horizontal mirror (the subject's left and right swap).
MIRRORED_KEYPOINTS = (1, 0, 2, 3, 5, 4)
#: Larger refinement crops are shrunk to this side first (by area, as the letterbox
#: would), to bound memory on huge photos.
REFINE_MAX_SIDE = 1024
#: A refined detection replaces the original only if their boxes overlap this much.
REFINE_MIN_IOU = 0.3
#: Detections of the two passes overlapping more than this are the same face.
MERGE_IOU = 0.3
#: ... and so are two whose smaller box lies this much inside the larger (as when
#: tiles are merged across scales, :class:`~device.vision.tiling.TilingConfig`).
MERGE_CONTAINMENT = 0.6


def zoom_out(image: Image, margin: float) -> tuple[Image, int]:
    """Pad ``image`` with black on every side by ``margin`` × its longer side.

    Returns:
        The padded image and the pad in pixels (0: the image itself).
    """
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


def _containment(a: tuple[float, float, float, float],
                 b: tuple[float, float, float, float]) -> float:
    """The share of the smaller of two boxes that lies inside the other."""
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    smaller = min(a[2] * a[3], b[2] * b[3])
    return iw * ih / smaller if smaller > 0 else 0.0


def same_face(a: Detection, b: Detection) -> bool:
    """Whether two passes' detections are one face: their boxes overlap (IoU >
    :data:`MERGE_IOU`), or one lies mostly inside the other (:data:`MERGE_CONTAINMENT`).

    The second test is needed because the two models box a face at different extents:
    a model seeing a face below its usual scale may return a loose box around head
    and shoulders, whose IoU with the tight box is small.
    """
    return _iou(a.box, b.box) > MERGE_IOU or _containment(a.box, b.box) >= MERGE_CONTAINMENT


def merge_detections(
    first: list[Detection],
    second: list[Detection],
    accept: Callable[[Detection], bool] | None = None,
) -> list[Detection]:
    """Union of two passes' faces.

    A face of ``second`` that is the same face as some of ``first`` (:func:`same_face`)
    replaces the best of them if it scores higher; one that is no face of ``first``
    is added if ``accept`` (default: always) says so.
    """
    merged = list(first)
    for det in second:
        twins = [k for k, d in enumerate(merged) if same_face(d, det)]
        if not twins:
            if accept is None or accept(det):
                merged.append(det)
            continue
        best = max(twins, key=lambda k: merged[k].score)
        if det.score > merged[best].score:
            merged[best] = det
    return merged


def _crop(image: Image, x0: int, y0: int, side: int) -> Image:
    """The ``side``-square of ``image`` at ``(x0, y0)``, black where it leaves the image."""
    height, width = image.shape[:2]
    out = np.zeros((side, side, 3), np.uint8)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, width), min(y0 + side, height)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def _refine_once(
    image: Image,
    detection: Detection,
    detector: Detector,
    scale: float,
    mirror: bool,
    timer: StageTimer | None,
) -> Detection | None:
    """One refinement pass on a crop ``scale`` times the face (mirrored if asked), in
    frame pixels; ``None`` when it finds nothing overlapping the face."""
    x, y, w, h = detection.box
    side = round(scale * max(w, h))
    if side <= 1:
        return None
    x0, y0 = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
    crop = _crop(image, x0, y0, side)  # whole pixels: no resampling
    s = 1.0
    if side > REFINE_MAX_SIDE:  # shrink huge crops once, by area (letterbox would anyway)
        s = REFINE_MAX_SIDE / side
        crop = np.asarray(
            cv2.resize(crop, (REFINE_MAX_SIDE, REFINE_MAX_SIDE), interpolation=cv2.INTER_AREA),
            dtype=np.uint8,
        )
    size = crop.shape[1]
    if mirror:
        crop = np.ascontiguousarray(crop[:, ::-1])
    found = detector.detect(crop, timer)
    if not found:
        return None
    centre = np.array([size / 2, crop.shape[0] / 2])
    best = min(
        found,
        key=lambda d: float(np.hypot(*(np.array(d.box[:2]) + np.array(d.box[2:]) / 2 - centre))),
    )
    bx, by, bw, bh = best.box
    points = np.asarray(best.keypoints, dtype=np.float64).reshape(-1, 2)
    if mirror:
        bx = size - bx - bw
        points[:, 0] = size - points[:, 0]
        if len(points) == len(MIRRORED_KEYPOINTS):
            points = points[list(MIRRORED_KEYPOINTS)]
    box = (bx / s + x0, by / s + y0, bw / s, bh / s)
    if _iou(box, detection.box) < REFINE_MIN_IOU:
        return None
    points = points / s + np.array([x0, y0])
    return Detection(box=box, score=detection.score,
                     keypoints=tuple((float(px), float(py)) for px, py in points))


def refine_detection(
    image: Image,
    detection: Detection,
    detector: Detector,
    scales: tuple[float, ...] = REFINE_SCALES,
    mirror: bool = False,
    timer: StageTimer | None = None,
) -> Detection:
    """Re-detect one face on square crops around it and average what is found.

    For each scale, a crop ``scale`` times the face box's longer side, centred on it,
    black outside the image (and, with ``mirror``, the same crop mirrored, its
    keypoints mirrored back). In each, the detection nearest the centre counts if its
    box overlaps the original (IoU >= :data:`REFINE_MIN_IOU`). The result's box and
    keypoints are the mean of the passes that counted; the score stays the original's
    (the first pass decided that this is a face). No pass counted: the original.

    Raises:
        ModelError: Inference failed.
    """
    passes = [
        refined
        for scale in scales
        for flip in ((False, True) if mirror else (False,))
        if (refined := _refine_once(image, detection, detector, scale, flip, timer)) is not None
    ]
    if not passes:
        logger.debug("refinement found no matching face; keeping the first pass")
        return detection
    if len(passes) == 1:
        return passes[0]
    box = np.mean([p.box for p in passes], axis=0)
    points = np.mean([p.keypoints for p in passes], axis=0)
    return Detection(
        box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
        score=detection.score,
        keypoints=tuple((float(px), float(py)) for px, py in points),
    )


class StillFinderConfig(Section):
    """How :class:`StillFaceFinder` finds faces in photos (BlazeFace models)."""

    threshold: float = Field(
        DEFAULT_THRESHOLD, ge=0.0, le=1.0, description="Minimum BlazeFace score, every pass."
    )
    close_range: bool = Field(
        True,
        description="Also run the short-range model on the image zoomed out, and merge its "
        "faces (tightly cropped faces, which the full-range model misses); a face only it "
        "finds counts where the full-range pass found none or confirms it on a crop.",
    )
    close_range_margin: float = Field(
        0.2, ge=0.0, le=2.0,
        description="Zoom-out margin of the close-range pass, as a share of the image's "
        "longer side.",
    )
    refine: bool = Field(
        True,
        description="Refine each used face's keypoints with a second full-range pass on a "
        "crop around it (a chip closer to dlib's).",
    )
    refine_scales: tuple[float, ...] = Field(
        REFINE_SCALES, min_length=1, max_length=8,
        description="Refinement crop sides as multiples of the face box's longer side; "
        "the keypoints are averaged over the crops.",
    )
    refine_mirror: bool = Field(
        False, description="Also refine on each crop mirrored (twice the passes)."
    )
    num_threads: int = Field(2, ge=1, le=16, description="CPU threads per BlazeFace model.")


class StillFaceFinder:
    """A :class:`~device.vision.detect.Detector` for still photos.

    ``primary`` runs on the image and, if given, ``close_range`` on the image zoomed
    out by ``close_range_margin``; their faces are merged (:func:`merge_detections`),
    a face only the close-range pass saw kept where ``primary`` found none or where the
    full-range model (``refiner``, else ``primary``) finds it again on the refinement
    crops; then, if a ``refiner`` is given, each face's keypoints are refined
    (:func:`refine_detection`).
    Detectors passed in belong to the caller; :meth:`from_config` opens its own, and
    ``close()`` closes those.

    Args:
        primary: First-pass detector (BlazeFace full-range for photos of scenes).
        close_range: Detector for the zoomed-out pass (BlazeFace short-range suits
            tightly cropped faces); ``None`` for none.
        close_range_margin: Zoom-out margin of that pass, as a share of the longer side.
        refiner: Detector for the refinement pass (BlazeFace full-range); ``None``
            to keep the first pass's keypoints.
        refine_scales: Refinement crop sides over the face box's longer side; the
            keypoints are averaged over the crops.
        refine_mirror: Also refine on each crop mirrored.
        retry: Former name of ``close_range`` (that pass ran only when the full-range
            pass found nothing; it now always runs), kept for existing callers.
    """

    def __init__(
        self,
        primary: Detector,
        *,
        close_range: Detector | None = None,
        close_range_margin: float = 0.2,
        refiner: Detector | None = None,
        refine_scales: tuple[float, ...] = REFINE_SCALES,
        refine_mirror: bool = False,
        retry: Detector | None = None,
    ) -> None:
        close_range = close_range if close_range is not None else retry
        if close_range_margin < 0 or not refine_scales or min(refine_scales) < 1:
            raise ValueError(
                f"close_range_margin must be >= 0 and refine_scales >= 1, got "
                f"{close_range_margin}, {refine_scales}"
            )
        self.primary = primary
        self.close_range = close_range
        self.close_range_margin = close_range_margin
        self.refiner = refiner
        self.refine_scales = tuple(refine_scales)
        self.refine_mirror = refine_mirror
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
            if config.close_range:
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
            full, close_range=short, close_range_margin=config.close_range_margin,
            refiner=full if config.refine else None, refine_scales=config.refine_scales,
            refine_mirror=config.refine_mirror,
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
        confirmed: dict[Detection, Detection] = {}
        if self.close_range is not None:
            near = detect_zoomed_out(image, self.close_range, self.close_range_margin, timer)
            # Where the full-range pass found faces, the photo is one it reads: a face
            # only the close-range pass saw must be confirmed by the full-range model.
            # Where it found none (a tight crop it cannot read), its silence says nothing.
            accept = (lambda d: self._confirm(image, d, confirmed, timer)) if found else None
            found = merge_detections(found, near, accept)
        found = sorted(found, key=lambda d: d.area, reverse=True)
        if largest_only:
            found = found[:1]
        if self.refiner is not None:
            found = [
                confirmed.get(d) or refine_detection(
                    image, d, self.refiner, self.refine_scales, self.refine_mirror, timer)
                for d in found
            ]
        return found

    def _confirm(self, image: Image, detection: Detection,
                 confirmed: dict[Detection, Detection], timer: StageTimer | None) -> bool:
        """Whether the full-range model finds ``detection`` again on the refinement crops
        around it; the refined detection is kept in ``confirmed`` (when refining)."""
        checker = self.refiner if self.refiner is not None else self.primary
        refined = refine_detection(image, detection, checker, self.refine_scales,
                                   self.refine_mirror, timer)
        if refined is detection:
            logger.debug("dropped a close-range face the full-range model does not confirm: "
                         "box %s score %.3f", [round(v) for v in detection.box], detection.score)
            return False
        if self.refiner is not None:
            confirmed[detection] = refined
        return True

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


# ----------------------------------------------------------------------------------
# Still images: detect, pick, align, embed


@dataclass(frozen=True, slots=True)
class FaceEmbedding:
    """One embedded face of an image.

    Attributes:
        box: ``(x, y, w, h)`` in image pixels (the whole image for a fallback).
        detection: The detection, or ``None`` when the whole image was used.
        embedding: The face's embedding.
    """

    box: tuple[float, float, float, float]
    detection: Detection | None
    embedding: Embedding

    @property
    def fallback(self) -> bool:
        """Whether no face was found and the whole image stood in for it."""
        return self.detection is None


def embed_faces(
    image: Image,
    detector: Detector,
    embedder: Embedder,
    *,
    all_faces: bool = False,
    fallback_whole: bool = False,
) -> list[FaceEmbedding]:
    """Embed the largest face of an image (or every face, largest first).

    Args:
        image: RGB ``uint8`` ``(H, W, 3)``.
        detector: Face detector with keypoints; a :class:`StillFaceFinder`
            (close-range pass for tight crops, keypoint refinement) is what photos
            want, and then only the faces used are refined.
        embedder: The embedder; its template aligns the chips.
        all_faces: Embed every face instead of only the largest.
        fallback_whole: When no face is found, embed the whole image as if it were
            the detector's face box (tightly cropped photos).

    Returns:
        The embedded faces; empty when none was found and ``fallback_whole`` is off.

    Raises:
        ModelError: Detection or embedding failed.
        ValueError: ``image`` is not ``(H, W, 3)``, or a detection lacks the keypoints
            the template needs.
    """
    if isinstance(detector, StillFaceFinder):
        found = detector.find(image, largest_only=not all_faces)
    else:
        found = sorted(detector.detect(image), key=lambda d: d.area, reverse=True)
        found = found if all_faces else found[:1]
    template = embedder.template
    chips: list[FaceChip] = []
    boxes: list[tuple[float, float, float, float]] = []
    for detection in found:
        chips.append(align(image, detection, template))
        boxes.append(detection.box)
    if not found and fallback_whole:
        height, width = image.shape[:2]
        whole = (0.0, 0.0, float(width), float(height))
        chips.append(warp(image, box_transform(whole, template), template.size,
                          border=template.border))
        boxes.append(whole)
    embeddings = embedder.embed(chips)
    return [
        FaceEmbedding(box=box, detection=chip.detection, embedding=emb)
        for box, chip, emb in zip(boxes, chips, embeddings, strict=True)
    ]
