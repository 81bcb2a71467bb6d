"""The face quality gate: is this face good enough to enroll, or to embed live?

Pure functions over an RGB frame and a :class:`~device.types.Detection`. Each measure
is a small function; :func:`assess` combines them into a :class:`QualityReport` with
the measures, an overall ``score`` in ``[0, 1]`` (for picking the best faces of a
track) and the :class:`QualityReason` values that fail the configured thresholds
(like Amazon Rekognition's reasons for not indexing a face). :func:`assess_enrollment`
adds the one-face rule for enrollment photos.

The measures:

* **size** — inter-ocular distance (between the eye keypoints) and the shorter side of
  the box, in frame pixels.
* **sharpness** — variance of the Laplacian of the central grey face crop, resized to
  :data:`SHARPNESS_SIZE` pixels square first (so a face's number does not depend on
  the camera's resolution) and divided by the crop's grey variance (so it does not
  depend on contrast or exposure either: a dim but sharp face is *dark*, not
  *blurred*). It is the share of the crop's signal energy at the finest scale.
* **exposure** — mean grey level of the face crop and its dynamic range (5th to 95th
  percentile), plus the share of clipped-white pixels.
* **pose** — approximate yaw, roll and pitch in degrees from the six BlazeFace
  keypoints (see :func:`head_pose`); unknown for detectors without keypoints, and
  then not checked.
* **confidence** — the detector's score.
* **frame coverage** — the share of the box inside the frame, and whether the eyes,
  nose and mouth are inside it.

Thresholds live in :class:`QualityConfig`, with two presets: ``live`` (the field
defaults, looser: the pipeline only skips faces that would give a useless embedding)
and ``enrollment`` (stricter: a gallery photo is the reference for every later match).
The default values were calibrated on the photos in ``../shared/datasets``; the
integration test ``tests/integration/test_quality_real.py`` records the figures and
keeps them honest. They assume BlazeFace short-range for enrollment photos: the
full-range model scores close, frame-filling faces (padded LFW crops) well below the
short-range model, so the enrollment ``min_score`` would refuse most of them. Both
models score a face that fills the whole image low; pad tight crops before detecting.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field, model_validator

from device.config import Section
from device.types import Detection, Frame, Image

logger = logging.getLogger(__name__)

#: Side, in pixels, of the square the grey face crop is resized to for sharpness.
SHARPNESS_SIZE = 64
#: Share of the box (each side, about its centre) that sharpness and exposure look
#: at: the box's rim is background and hair (a white studio wall is not overexposure).
CENTRAL_CROP = 0.8

#: Keypoint indices (see :data:`device.types.KEYPOINT_NAMES`).
_RIGHT_EYE, _LEFT_EYE, _NOSE, _MOUTH, _RIGHT_EAR, _LEFT_EAR = range(6)

# An average adult head, orthographic projection, millimetres, nose tip at the origin
# and z pointing out of the face: half the inter-pupil distance and the eyes' depth
# behind the nose tip; half the bitragion breadth and the tragions' depth; the eyes'
# height above the nose tip, the mouth's below it and the mouth's depth.
_EYE_HALF, _EYE_DEPTH = 31.5, 27.0
_EAR_HALF, _EAR_DEPTH = 72.0, 100.0
_EYE_HEIGHT, _MOUTH_DROP, _MOUTH_DEPTH = 34.0, 30.0, 25.0


class QualityReason(StrEnum):
    """Why a face was not good enough (the values are stable: they go into events)."""

    NO_FACE = "no_face"
    MULTIPLE_FACES = "multiple_faces"
    TOO_SMALL = "too_small"
    BLURRED = "blurred"
    TOO_DARK = "too_dark"
    OVEREXPOSED = "overexposed"
    EXTREME_POSE = "extreme_pose"
    LOW_CONFIDENCE = "low_confidence"
    PARTIALLY_OUTSIDE_FRAME = "partially_outside_frame"


#: The enrollment preset: every threshold that differs from the live field defaults.
ENROLLMENT_THRESHOLDS: dict[str, float] = {
    "min_interocular_px": 40.0,
    "min_face_px": 80.0,
    "min_sharpness": 0.08,
    "min_brightness": 50.0,
    "max_brightness": 210.0,
    "min_dynamic_range": 50.0,
    "max_saturated_fraction": 0.1,
    "max_yaw_deg": 30.0,
    "max_roll_deg": 25.0,
    "max_pitch_deg": 35.0,
    "min_score": 0.7,
    "min_inside_fraction": 0.75,
}


class QualityConfig(Section):
    """Thresholds of the quality gate.

    ``preset`` picks the defaults of every threshold not given explicitly: ``live``
    (the field defaults) or ``enrollment`` (stricter, :data:`ENROLLMENT_THRESHOLDS`;
    each description gives its value in brackets).
    """

    preset: Literal["live", "enrollment"] = Field(
        "live",
        description="Defaults for thresholds not set here: 'live' (looser, for the "
        "frame loop) or 'enrollment' (stricter, for gallery photos).",
    )
    min_interocular_px: float = Field(
        16.0, ge=0,
        description="Smallest distance between the eye keypoints, frame pixels "
        "[enrollment: 40, about the embedder chip's own, so no upsampling]. Below it: "
        "too_small. Not checked for detectors without keypoints.",
    )
    min_face_px: float = Field(
        36.0, ge=0,
        description="Smallest shorter side of the face box, frame pixels "
        "[enrollment: 80]. Below it: too_small.",
    )
    min_sharpness: float = Field(
        0.03, ge=0,
        description="Smallest sharpness (Laplacian variance over grey variance of the "
        "central face crop resized to 64 px; about 0.2-1 for crisp faces) "
        "[enrollment: 0.08]. Below it: blurred.",
    )
    min_brightness: float = Field(
        30.0, ge=0, le=255,
        description="Smallest mean grey level of the face crop, 0-255 [enrollment: 50]. "
        "Below it: too_dark.",
    )
    max_brightness: float = Field(
        225.0, ge=0, le=255,
        description="Largest mean grey level of the face crop, 0-255 [enrollment: 210]. "
        "Above it: overexposed.",
    )
    min_dynamic_range: float = Field(
        30.0, ge=0, le=255,
        description="Smallest spread between the 5th and 95th percentile grey levels of "
        "the face crop [enrollment: 50]. Below it the face is washed flat: too_dark "
        "when the crop's mean is below mid-grey (128), else overexposed.",
    )
    max_saturated_fraction: float = Field(
        0.2, ge=0, le=1,
        description="Largest share of face-crop pixels at grey level 250 or more "
        "[enrollment: 0.1]. Above it: overexposed.",
    )
    max_yaw_deg: float = Field(
        45.0, ge=0, le=180,
        description="Largest absolute approximate yaw (head turned left/right), degrees "
        "[enrollment: 30]. Above it: extreme_pose.",
    )
    max_roll_deg: float = Field(
        45.0, ge=0, le=180,
        description="Largest absolute roll (tilt of the eye line), degrees "
        "[enrollment: 25]. Above it: extreme_pose.",
    )
    max_pitch_deg: float = Field(
        45.0, ge=0, le=90,
        description="Largest absolute approximate pitch (head nodding up/down; open "
        "mouths and grimaces read as looking up), degrees [enrollment: 35]. Above it: "
        "extreme_pose.",
    )
    min_score: float = Field(
        0.5, ge=0, le=1,
        description="Smallest detector confidence [enrollment: 0.7]. Below it: "
        "low_confidence.",
    )
    min_inside_fraction: float = Field(
        0.6, ge=0, le=1,
        description="Smallest share of the face box inside the frame [enrollment: 0.75]. "
        "Below it, or with an eye, the nose tip or the mouth outside the frame: "
        "partially_outside_frame.",
    )
    ignore_faces_smaller_than: float = Field(
        0.35, gt=0, le=1,
        description="Enrollment one-face rule: other faces whose box side is below this "
        "fraction of the largest face's are background faces and ignored; any larger "
        "one makes the photo multiple_faces.",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") == "enrollment":
            return {**ENROLLMENT_THRESHOLDS, **data}
        return data

    @classmethod
    def live(cls, **overrides: Any) -> QualityConfig:
        """The live preset (the field defaults), with ``overrides`` applied."""
        return cls(preset="live", **overrides)

    @classmethod
    def enrollment(cls, **overrides: Any) -> QualityConfig:
        """The stricter enrollment preset, with ``overrides`` applied."""
        return cls(preset="enrollment", **overrides)


@dataclass(frozen=True, slots=True)
class Exposure:
    """Light on the face crop.

    Attributes:
        mean: Mean grey level, 0-255.
        dynamic_range: 95th minus 5th percentile grey level.
        saturated_fraction: Share of pixels at grey level 250 or more.
    """

    mean: float
    dynamic_range: float
    saturated_fraction: float


@dataclass(frozen=True, slots=True)
class HeadPose:
    """Approximate head pose from 2-D keypoints (an average head, no camera model).

    Attributes:
        yaw: Degrees; positive when the nose points to the image's right.
        roll: Degrees in ``(-180, 180]``; positive when the eye line turns clockwise
            on screen; ±180 for an upside-down face.
        pitch: Degrees; positive when the face looks down.
    """

    yaw: float
    roll: float
    pitch: float


@dataclass(frozen=True, slots=True)
class QualityReport:
    """Every measure of one face, its overall score and the reasons it fails.

    Attributes:
        interocular_px: Distance between the eye keypoints (``None`` without keypoints).
        face_px: Shorter side of the box, frame pixels.
        sharpness: See :func:`sharpness`.
        exposure: See :func:`exposure`.
        pose: See :func:`head_pose` (``None`` without keypoints).
        detector_score: The detection's score.
        inside_fraction: Share of the box area inside the frame.
        score: Overall quality in ``[0, 1]``, for ranking faces of one track; it does
            not depend on the thresholds.
        reasons: The failed checks, in :class:`QualityReason` order; empty when the
            face passes.
    """

    interocular_px: float | None
    face_px: float
    sharpness: float
    exposure: Exposure
    pose: HeadPose | None
    detector_score: float
    inside_fraction: float
    score: float
    reasons: tuple[QualityReason, ...]

    @property
    def passed(self) -> bool:
        """True when no check failed."""
        return not self.reasons


@dataclass(frozen=True, slots=True)
class EnrollmentVerdict:
    """The gate's answer for one enrollment photo.

    Attributes:
        reasons: Why the photo is refused (empty when accepted).
        face: The face that would be enrolled (the largest), ``None`` without faces.
        report: Quality report of ``face``.
        faces: Number of detections given.
        ignored: Detections ignored as background faces (see :func:`assess_enrollment`).
    """

    reasons: tuple[QualityReason, ...]
    face: Detection | None
    report: QualityReport | None
    faces: int
    ignored: int

    @property
    def accepted(self) -> bool:
        """True when the photo may be enrolled."""
        return not self.reasons


def _pixels(image: Image | Frame) -> Image:
    return image.image if isinstance(image, Frame) else image


def _keypoints(detection: Detection, count: int) -> np.ndarray | None:
    if len(detection.keypoints) < count:
        return None
    return np.asarray(detection.keypoints[:count], dtype=np.float64)


def interocular_distance(detection: Detection) -> float | None:
    """Distance between the two eye keypoints, frame pixels; ``None`` without them."""
    kps = _keypoints(detection, 2)
    if kps is None:
        return None
    return float(np.hypot(*(kps[_LEFT_EYE] - kps[_RIGHT_EYE])))


def face_crop(image: Image | Frame, detection: Detection, scale: float = 1.0) -> Image:
    """The part of the box inside the frame, as grey ``uint8`` (maybe empty).

    Args:
        image: RGB ``(H, W, 3)`` (or grey ``(H, W)``) frame.
        detection: The face.
        scale: Shrink (or grow) the box about its centre by this factor first.

    Raises:
        ValueError: ``image`` is not an ``(H, W, 3)`` or ``(H, W)`` array.
    """
    pixels = _pixels(image)
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"expected an (H, W, 3) RGB or (H, W) grey image, got {pixels.shape}")
    height, width = pixels.shape[:2]
    x, y, w, h = detection.box
    x, y, w, h = x + w * (1 - scale) / 2, y + h * (1 - scale) / 2, w * scale, h * scale
    x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
    x1, y1 = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), np.uint8)
    crop = pixels[y0:y1, x0:x1]
    if crop.ndim == 3:
        grey = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
        return np.asarray(grey, dtype=np.uint8)
    return np.ascontiguousarray(crop, dtype=np.uint8)


def sharpness(image: Image | Frame, detection: Detection) -> float:
    """Contrast-normalised Laplacian variance of the central face crop at a fixed size.

    The central :data:`CENTRAL_CROP` of the box (less background and hair edge) is
    turned grey and resized to :data:`SHARPNESS_SIZE` square (area interpolation when
    shrinking, cubic when enlarging), then ``var(Laplacian) / var(crop)`` is taken:
    about 0.2-1 for a crisp face whatever the camera's resolution, towards 0 as blur
    removes the finest detail. Faces smaller than the square are enlarged and so score
    lower: they hold less detail. Returns 0 for an empty or flat crop.

    Raises:
        ValueError: ``image`` has an unsupported shape.
    """
    return _sharpness_of(face_crop(image, detection, CENTRAL_CROP))


def exposure(image: Image | Frame, detection: Detection) -> Exposure:
    """Mean, dynamic range and clipped share of the central grey face crop.

    Looks at the central :data:`CENTRAL_CROP` of the box, like :func:`sharpness`;
    all zeros when the box is outside the frame.

    Raises:
        ValueError: ``image`` has an unsupported shape.
    """
    return _exposure_of(face_crop(image, detection, CENTRAL_CROP))


def _sharpness_of(crop: Image) -> float:
    if crop.size == 0:
        return 0.0
    side = SHARPNESS_SIZE
    shrinking = crop.shape[0] >= side and crop.shape[1] >= side
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    grey = cv2.resize(crop, (side, side), interpolation=interp).astype(np.float64)
    variance = float(grey.var())
    if variance < 1e-6:
        return 0.0
    laplacian = cv2.Laplacian(grey, cv2.CV_64F, ksize=1)
    return float(laplacian.var()) / variance


def _exposure_of(crop: Image) -> Exposure:
    if crop.size == 0:
        return Exposure(0.0, 0.0, 0.0)
    # A histogram instead of np.percentile: no sort, a few times faster on big faces.
    counts = np.bincount(crop.ravel(), minlength=256)
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1])
    p5 = int(np.searchsorted(cumulative, 0.05 * total))
    p95 = int(np.searchsorted(cumulative, 0.95 * total))
    return Exposure(
        mean=float(counts @ np.arange(256)) / total,
        dynamic_range=float(p95 - p5),
        saturated_fraction=float(counts[250:].sum()) / total,
    )


def head_pose(detection: Detection) -> HeadPose | None:
    """Approximate yaw, roll and pitch from the BlazeFace keypoints.

    Works in the frame turned so the eye line is horizontal (that turn is the roll).
    Yaw comes from where the nose tip sits between the eyes (and between the ear
    tragions, when given; the two estimates are averaged): under an orthographic view
    of an average head turned by ``yaw`` the nose's offset from the midpoint, divided
    by the eye (tragion) span, is ``depth / (2 * half_span) * tan(yaw)``. Pitch
    compares the eye-to-nose and nose-to-mouth heights the same way. Both are rough —
    good for rejecting turned or nodding heads, not for measuring them.

    Returns:
        ``None`` when the detection has fewer than four keypoints or its eyes coincide.
    """
    kps = _keypoints(detection, 4)
    if kps is None:
        return None
    right_eye, left_eye, nose, mouth = kps[_RIGHT_EYE], kps[_LEFT_EYE], kps[_NOSE], kps[_MOUTH]
    eye_vec = left_eye - right_eye
    span = float(np.hypot(*eye_vec))
    if span < 1e-6:
        return None
    across = eye_vec / span
    down = np.array([-across[1], across[0]])
    roll = math.degrees(math.atan2(eye_vec[1], eye_vec[0]))

    mid = (right_eye + left_eye) / 2
    offset = float((nose - mid) @ across) / span  # half-span units: ±0.5 at the eyes
    yaws = [math.atan2(offset * 2 * _EYE_HALF, _EYE_DEPTH)]
    ears = _keypoints(detection, 6)
    if ears is not None:
        ear_vec = ears[_LEFT_EAR] - ears[_RIGHT_EAR]
        ear_span = float(ear_vec @ across)
        if ear_span > 1e-6:
            ear_mid = (ears[_LEFT_EAR] + ears[_RIGHT_EAR]) / 2
            ear_offset = float((nose - ear_mid) @ across) / ear_span
            yaws.append(math.atan2(ear_offset * 2 * _EAR_HALF, _EAR_DEPTH))
    yaw = math.degrees(sum(yaws) / len(yaws))

    upper = float((nose - mid) @ down)
    lower = float((mouth - nose) @ down)
    # Heights after a pitch p (tan t): upper = H·cos p + De·sin p, lower = M·cos p − Dm·sin p
    # (eyes are behind the nose tip, the mouth less so). Solve upper/lower = ratio for t.
    ratio_num = upper * _MOUTH_DROP - lower * _EYE_HEIGHT
    ratio_den = upper * _MOUTH_DEPTH + lower * _EYE_DEPTH
    pitch = math.degrees(math.atan2(ratio_num, ratio_den)) if ratio_den > 1e-9 else 90.0
    return HeadPose(yaw=yaw, roll=roll, pitch=pitch)


def inside_fraction(detection: Detection, width: int, height: int) -> float:
    """Share of the box area inside a ``width`` × ``height`` frame (0 for an empty box)."""
    x, y, w, h = detection.box
    if w <= 0 or h <= 0:
        return 0.0
    iw = max(0.0, min(x + w, width) - max(x, 0.0))
    ih = max(0.0, min(y + h, height) - max(y, 0.0))
    return (iw * ih) / (w * h)


def _landmarks_inside(detection: Detection, width: int, height: int) -> bool:
    return all(
        0 <= px < width and 0 <= py < height for px, py in detection.keypoints[:4]
    )


def _ramp(value: float, zero: float, full: float) -> float:
    """0 at ``zero``, 1 at ``full``, linear between, clipped."""
    if full == zero:
        return 1.0 if value >= full else 0.0
    return min(1.0, max(0.0, (value - zero) / (full - zero)))


# Where each part of the overall score saturates (independent of the presets, so a
# track's faces rank the same whatever the thresholds).
_FULL_IOD_PX = 40.0
_FULL_FACE_PX = 100.0
_FULL_SHARPNESS = 0.3
_FULL_RANGE = 90.0


def _overall(
    iod: float | None, face_px: float, sharp: float, light: Exposure,
    pose: HeadPose | None, score: float, inside: float,
) -> float:
    size = _ramp(iod, 0.0, _FULL_IOD_PX) if iod is not None else _ramp(face_px, 0.0, _FULL_FACE_PX)
    focus = _ramp(sharp, 0.0, _FULL_SHARPNESS)
    mean = light.mean
    level = _ramp(mean, 0.0, 80.0) if mean < 80.0 else _ramp(mean, 255.0, 190.0)
    light_score = min(level, _ramp(light.dynamic_range, 0.0, _FULL_RANGE))
    if pose is None:
        pose_score = 0.5
    else:
        pose_score = (
            _ramp(abs(pose.yaw), 90.0, 0.0) * _ramp(abs(pose.pitch), 90.0, 0.0)
            * _ramp(abs(pose.roll), 180.0, 0.0) ** 0.5
        )
    parts = (size, focus, light_score, pose_score, min(1.0, max(0.0, score)), inside)
    weights = (1.0, 1.0, 1.0, 1.5, 0.5, 1.0)
    total = sum(w * math.log(max(p, 1e-3)) for p, w in zip(parts, weights, strict=True))
    return math.exp(total / sum(weights))


def assess(
    image: Image | Frame, detection: Detection, config: QualityConfig | None = None
) -> QualityReport:
    """Measure one face and check it against ``config`` (default: the live preset).

    Raises:
        ValueError: ``image`` has an unsupported shape.
    """
    cfg = config or QualityConfig()
    pixels = _pixels(image)
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    iod = interocular_distance(detection)
    face_px = float(min(detection.box[2], detection.box[3]))
    central = face_crop(pixels, detection, CENTRAL_CROP)
    sharp = _sharpness_of(central)
    light = _exposure_of(central)
    pose = head_pose(detection)
    inside = inside_fraction(detection, width, height)

    reasons: list[QualityReason] = []
    if face_px < cfg.min_face_px or (iod is not None and iod < cfg.min_interocular_px):
        reasons.append(QualityReason.TOO_SMALL)
    if sharp < cfg.min_sharpness:
        reasons.append(QualityReason.BLURRED)
    bright_side = light.mean >= 128.0
    flat = light.dynamic_range < cfg.min_dynamic_range
    if light.mean < cfg.min_brightness or (flat and not bright_side):
        reasons.append(QualityReason.TOO_DARK)
    if (
        light.mean > cfg.max_brightness
        or light.saturated_fraction > cfg.max_saturated_fraction
        or (flat and bright_side)
    ):
        reasons.append(QualityReason.OVEREXPOSED)
    if pose is not None and (
        abs(pose.yaw) > cfg.max_yaw_deg
        or abs(pose.roll) > cfg.max_roll_deg
        or abs(pose.pitch) > cfg.max_pitch_deg
    ):
        reasons.append(QualityReason.EXTREME_POSE)
    if detection.score < cfg.min_score:
        reasons.append(QualityReason.LOW_CONFIDENCE)
    if inside < cfg.min_inside_fraction or not _landmarks_inside(detection, width, height):
        reasons.append(QualityReason.PARTIALLY_OUTSIDE_FRAME)

    return QualityReport(
        interocular_px=iod,
        face_px=face_px,
        sharpness=sharp,
        exposure=light,
        pose=pose,
        detector_score=float(detection.score),
        inside_fraction=inside,
        score=_overall(iod, face_px, sharp, light, pose, detection.score, inside),
        reasons=tuple(r for r in QualityReason if r in reasons),
    )


def _side(detection: Detection) -> float:
    return math.sqrt(detection.area)


def assess_enrollment(
    image: Image | Frame, detections: Sequence[Detection], config: QualityConfig | None = None
) -> EnrollmentVerdict:
    """Apply the one-face rule, then the quality checks, to an enrollment photo.

    The rule: no detection gives ``no_face``. Otherwise the largest face (by box
    area) is the one to enroll. Every other face whose box side (square root of its
    area) is at least ``config.ignore_faces_smaller_than`` times the largest face's
    counts, and any such face gives ``multiple_faces`` — the photo is ambiguous about
    whom it enrolls. Smaller faces (people far in the background) are ignored and
    counted in :attr:`EnrollmentVerdict.ignored`. The largest face is then checked
    like :func:`assess`, and its reasons are added, so one answer lists every problem.

    Args:
        image: The photo, RGB.
        detections: Every face the detector found in it.
        config: Thresholds; default the enrollment preset.

    Raises:
        ValueError: ``image`` has an unsupported shape.
    """
    cfg = config or QualityConfig.enrollment()
    if not detections:
        return EnrollmentVerdict((QualityReason.NO_FACE,), None, None, 0, 0)
    largest = max(detections, key=lambda d: d.area)
    floor = cfg.ignore_faces_smaller_than * _side(largest)
    others = [d for d in detections if d is not largest]
    meaningful = [d for d in others if _side(d) >= floor]
    report = assess(image, largest, cfg)
    reasons = set(report.reasons)
    if meaningful:
        reasons.add(QualityReason.MULTIPLE_FACES)
    ignored = len(others) - len(meaningful)
    if ignored:
        logger.debug("enrollment: ignored %d background face(s) below %.0f px", ignored, floor)
    return EnrollmentVerdict(
        reasons=tuple(r for r in QualityReason if r in reasons),
        face=largest,
        report=report,
        faces=len(detections),
        ignored=ignored,
    )
