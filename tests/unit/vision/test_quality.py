"""Quality gate on synthetic images and constructed detections (real photos: integration)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from device.config import validate_mapping
from device.errors import ConfigError
from device.types import Detection, Frame
from device.vision import quality as q
from device.vision.quality import QualityConfig, QualityReason

# A frontal face on the module's own average head: eyes 80 px apart, nose and mouth
# where that head puts them, so yaw and pitch come out as exactly 0.
BOX = (100.0, 90.0, 200.0, 220.0)
IOD = 80.0
EYE_Y = 170.0
NOSE_Y = EYE_Y + IOD * 34.0 / 63.0
MOUTH_Y = NOSE_Y + IOD * 30.0 / 63.0
EAR_DX = IOD * 72.0 / 63.0
FRONTAL = (
    (200.0 - IOD / 2, EYE_Y),
    (200.0 + IOD / 2, EYE_Y),
    (200.0, NOSE_Y),
    (200.0, MOUTH_Y),
    (200.0 - EAR_DX, EYE_Y + 20),
    (200.0 + EAR_DX, EYE_Y + 20),
)


def face(keypoints: tuple[tuple[float, float], ...] = FRONTAL, box: tuple[float, ...] = BOX,
         score: float = 0.95) -> Detection:
    x, y, w, h = box
    return Detection((x, y, w, h), score, keypoints)


def textured(size: tuple[int, int] = (400, 400), seed: int = 0, sigma: float = 1.5) -> np.ndarray:
    """A seeded mid-grey RGB texture with detail at every scale down to a few pixels."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 1.0, size).astype(np.float32)
    fine = cv2.GaussianBlur(noise, (0, 0), sigma)
    coarse = cv2.GaussianBlur(noise, (0, 0), 8 * sigma)
    grey = 128 + 45 * fine / fine.std() + 20 * coarse / coarse.std()
    grey = np.clip(grey, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def rotate_points(points: tuple[tuple[float, float], ...], degrees: float,
                  centre: tuple[float, float] = (200.0, 200.0)) -> tuple[tuple[float, float], ...]:
    """Rotate on screen (y down): positive ``degrees`` turns clockwise."""
    a = math.radians(degrees)
    cx, cy = centre
    return tuple(
        (cx + (x - cx) * math.cos(a) - (y - cy) * math.sin(a),
         cy + (x - cx) * math.sin(a) + (y - cy) * math.cos(a))
        for x, y in points
    )


# --- the clean synthetic face passes ------------------------------------------------


def test_clean_face_passes_both_presets() -> None:
    image = textured()
    for config in (QualityConfig.live(), QualityConfig.enrollment()):
        report = q.assess(image, face(), config)
        assert report.reasons == ()
        assert report.passed
    assert report.interocular_px == pytest.approx(IOD)
    assert report.face_px == 200.0
    assert report.inside_fraction == 1.0
    assert 0.0 < report.score <= 1.0


def test_frame_and_array_give_the_same_report() -> None:
    image = textured()
    frame = Frame(camera_id="cam", seq=0, timestamp=0.0, image=image)
    assert q.assess(frame, face()) == q.assess(image, face())


def test_bad_image_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="RGB"):
        q.assess(np.zeros((10, 10, 4), np.uint8), face())


# --- size ------------------------------------------------------------------------------


def test_small_interocular_distance_is_too_small() -> None:
    kps = tuple((200 + (x - 200) * 0.15, EYE_Y + (y - EYE_Y) * 0.15) for x, y in FRONTAL)
    report = q.assess(textured(), face(kps))
    assert report.interocular_px == pytest.approx(IOD * 0.15)
    assert QualityReason.TOO_SMALL in report.reasons


def test_small_box_is_too_small_even_without_keypoints() -> None:
    det = Detection((100.0, 100.0, 20.0, 20.0), 0.9)
    report = q.assess(textured(), det)
    assert report.interocular_px is None and report.pose is None
    assert QualityReason.TOO_SMALL in report.reasons
    big = q.assess(textured(), Detection(BOX, 0.9))
    assert QualityReason.TOO_SMALL not in big.reasons and big.pose is None


# --- sharpness -------------------------------------------------------------------------


def test_blur_lowers_sharpness_and_fires_blurred() -> None:
    image = textured()
    clean = q.sharpness(image, face())
    blurred_image = cv2.GaussianBlur(image, (0, 0), 0.04 * 200)
    blurred = q.sharpness(blurred_image, face())
    assert clean > 5 * blurred
    for config in (QualityConfig.live(), QualityConfig.enrollment()):
        assert QualityReason.BLURRED in q.assess(blurred_image, face(), config).reasons


def test_sharpness_does_not_depend_on_contrast_or_exposure() -> None:
    image = textured()
    dim = (image.astype(np.float32) * 0.5).astype(np.uint8)
    assert q.sharpness(dim, face()) == pytest.approx(q.sharpness(image, face()), rel=0.1)


def test_sharpness_does_not_depend_on_resolution_above_the_working_size() -> None:
    image = textured((800, 800), sigma=3.0)
    big = Detection((200.0, 180.0, 400.0, 440.0), 0.9)
    small_image = cv2.resize(image, (400, 400), interpolation=cv2.INTER_AREA)
    small = Detection((100.0, 90.0, 200.0, 220.0), 0.9)
    assert q.sharpness(small_image, small) == pytest.approx(q.sharpness(image, big), rel=0.25)


def test_flat_or_empty_crop_has_zero_sharpness() -> None:
    flat = np.full((400, 400, 3), 90, np.uint8)
    assert q.sharpness(flat, face()) == 0.0
    outside = Detection((500.0, 500.0, 50.0, 50.0), 0.9)
    assert q.sharpness(textured(), outside) == 0.0
    assert q.exposure(textured(), outside) == q.Exposure(0.0, 0.0, 0.0)


# --- exposure --------------------------------------------------------------------------


def test_darkened_face_is_too_dark() -> None:
    dark = (textured().astype(np.float32) * 0.15).astype(np.uint8)
    for config in (QualityConfig.live(), QualityConfig.enrollment()):
        report = q.assess(dark, face(), config)
        assert QualityReason.TOO_DARK in report.reasons
        assert QualityReason.BLURRED not in report.reasons  # dim is not blurred
        assert QualityReason.OVEREXPOSED not in report.reasons


def test_brightened_face_is_overexposed() -> None:
    bright = np.clip(textured().astype(np.float32) * 2.5, 0, 255).astype(np.uint8)
    report = q.assess(bright, face())
    assert report.exposure.saturated_fraction > 0.5
    assert QualityReason.OVEREXPOSED in report.reasons
    assert QualityReason.TOO_DARK not in report.reasons


def test_flat_face_is_dark_or_overexposed_by_its_mean() -> None:
    image = textured().astype(np.float32)
    grey_low = np.clip(110 + (image - 128) * 0.1, 0, 255).astype(np.uint8)
    grey_high = np.clip(150 + (image - 128) * 0.1, 0, 255).astype(np.uint8)
    low = q.assess(grey_low, face())
    high = q.assess(grey_high, face())
    assert low.exposure.dynamic_range < 30 and high.exposure.dynamic_range < 30
    assert QualityReason.TOO_DARK in low.reasons and QualityReason.OVEREXPOSED not in low.reasons
    assert QualityReason.OVEREXPOSED in high.reasons and QualityReason.TOO_DARK not in high.reasons


def test_exposure_ignores_the_box_rim() -> None:
    """A white wall inside the box's edge is not an overexposed face."""
    image = textured()
    x, y, w, h = (int(v) for v in BOX)
    image[y:y + h, x:x + int(w * 0.08)] = 255
    image[y:y + h, x + w - int(w * 0.08):x + w] = 255
    assert q.exposure(image, face()).saturated_fraction < 0.01


# --- pose ------------------------------------------------------------------------------


def test_frontal_pose_is_zero() -> None:
    pose = q.head_pose(face())
    assert pose is not None
    assert pose.yaw == pytest.approx(0.0, abs=1e-6)
    assert pose.roll == pytest.approx(0.0, abs=1e-6)
    assert pose.pitch == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("angle", [-60.0, -20.0, 15.0, 60.0, 179.0])
def test_roll_is_the_eye_line_angle(angle: float) -> None:
    pose = q.head_pose(face(rotate_points(FRONTAL, angle)))
    assert pose is not None
    assert pose.roll == pytest.approx(angle, abs=1e-6)
    assert pose.yaw == pytest.approx(0.0, abs=1e-6)
    assert pose.pitch == pytest.approx(0.0, abs=1e-6)


def test_rotated_face_is_extreme_pose() -> None:
    det = face(rotate_points(FRONTAL, 60.0))
    for config in (QualityConfig.live(), QualityConfig.enrollment()):
        assert QualityReason.EXTREME_POSE in q.assess(textured(), det, config).reasons


def test_yaw_follows_the_nose_and_flips_with_a_mirror() -> None:
    # The average head turned by 30 degrees, orthographic projection.
    t = math.radians(30.0)
    scale = IOD / 63.0

    def project(x: float, y: float, z: float) -> tuple[float, float]:
        return (200 + scale * (x * math.cos(t) + z * math.sin(t)), EYE_Y + scale * (34 - y))

    kps = (project(-31.5, 34, -27), project(31.5, 34, -27), project(0, 0, 0),
           project(0, -30, -25), project(-72, 25, -100), project(72, 25, -100))
    pose = q.head_pose(face(kps))
    assert pose is not None
    assert pose.yaw == pytest.approx(30.0, abs=0.5)
    mirrored = tuple((400 - x, y) for x, y in kps)
    # A mirror swaps which eye is on the image's left: keep the detector's order.
    mirrored = (mirrored[1], mirrored[0], mirrored[2], mirrored[3], mirrored[5], mirrored[4])
    flipped = q.head_pose(face(mirrored))
    assert flipped is not None and flipped.yaw == pytest.approx(-30.0, abs=0.5)
    assert QualityReason.EXTREME_POSE in q.assess(textured(), face(kps),
                                                  QualityConfig.enrollment(max_yaw_deg=25)).reasons


def test_pitch_follows_the_nose_height() -> None:
    t = math.radians(25.0)  # looking down: the front of the face drops
    scale = IOD / 63.0

    def project(x: float, y: float, z: float) -> tuple[float, float]:
        return (200 + scale * x, EYE_Y + scale * (34 - (y * math.cos(t) - z * math.sin(t))))

    kps = (project(-31.5, 34, -27), project(31.5, 34, -27), project(0, 0, 0),
           project(0, -30, -25), project(-72, 25, -100), project(72, 25, -100))
    pose = q.head_pose(face(kps))
    assert pose is not None
    assert pose.pitch == pytest.approx(25.0, abs=0.5)
    assert pose.yaw == pytest.approx(0.0, abs=1e-6)


def test_pose_needs_four_keypoints() -> None:
    assert q.head_pose(face(FRONTAL[:3])) is None
    assert q.head_pose(face(((200.0, 170.0), (200.0, 170.0), (200, 210), (200, 250)))) is None
    eyes_only = q.head_pose(face(FRONTAL[:4]))
    assert eyes_only is not None and eyes_only.yaw == pytest.approx(0.0, abs=1e-6)


# --- confidence and frame edge ---------------------------------------------------------


def test_low_detector_score_is_low_confidence() -> None:
    assert QualityReason.LOW_CONFIDENCE in q.assess(textured(), face(score=0.4)).reasons
    enrollment = q.assess(textured(), face(score=0.6), QualityConfig.enrollment())
    assert QualityReason.LOW_CONFIDENCE in enrollment.reasons
    assert q.assess(textured(), face(score=0.6)).passed


def test_face_cut_by_the_frame_edge() -> None:
    image = textured()[:, :230]  # the frame ends at x = 230, before the left eye
    report = q.assess(image, face())
    assert report.inside_fraction == pytest.approx(0.65)  # enough box, but an eye is out
    assert QualityReason.PARTIALLY_OUTSIDE_FRAME in report.reasons


def test_box_mostly_outside_the_frame() -> None:
    tall = face(box=(100.0, 90.0, 200.0, 500.0))  # landmarks inside, box runs off the bottom
    report = q.assess(textured(), tall)
    assert report.inside_fraction == pytest.approx(310 / 500)
    assert QualityReason.PARTIALLY_OUTSIDE_FRAME not in report.reasons
    enrollment = q.assess(textured(), tall, QualityConfig.enrollment())
    assert QualityReason.PARTIALLY_OUTSIDE_FRAME in enrollment.reasons


def test_box_slightly_past_the_edge_is_fine() -> None:
    det = face(box=(-10.0, 90.0, 200.0, 220.0),
               keypoints=tuple((x - 110, y) for x, y in FRONTAL))
    report = q.assess(textured(), det)
    assert report.inside_fraction == pytest.approx(0.95)
    assert QualityReason.PARTIALLY_OUTSIDE_FRAME not in report.reasons


def test_inside_fraction_of_an_empty_box_is_zero() -> None:
    assert q.inside_fraction(Detection((0.0, 0.0, 0.0, 10.0), 0.9), 100, 100) == 0.0


# --- overall score ---------------------------------------------------------------------


def test_score_ranks_a_clean_face_above_degraded_ones() -> None:
    image = textured()
    clean = q.assess(image, face()).score
    blurred = q.assess(cv2.GaussianBlur(image, (0, 0), 6), face()).score
    dark = q.assess((image * 0.15).astype(np.uint8), face()).score
    turned = q.assess(image, face(rotate_points(FRONTAL, 50))).score
    unsure = q.assess(image, face(score=0.55)).score
    assert clean > max(blurred, dark, turned, unsure)
    assert all(0.0 <= s <= 1.0 for s in (clean, blurred, dark, turned, unsure))


def test_score_does_not_depend_on_thresholds() -> None:
    image = textured()
    live = q.assess(image, face(), QualityConfig.live())
    strict = q.assess(image, face(), QualityConfig.enrollment(min_score=0.99))
    assert live.score == strict.score and not live.reasons and strict.reasons


# --- enrollment one-face rule ----------------------------------------------------------


def test_no_face() -> None:
    verdict = q.assess_enrollment(textured(), [])
    assert verdict.reasons == (QualityReason.NO_FACE,)
    assert verdict.face is None and verdict.report is None and not verdict.accepted


def test_one_good_face_is_accepted() -> None:
    verdict = q.assess_enrollment(textured(), [face()])
    assert verdict.accepted and verdict.face == face() and verdict.faces == 1
    assert verdict.report is not None and verdict.report.passed


def test_two_similar_faces_are_multiple_faces() -> None:
    other = Detection((300.0, 100.0, 90.0, 90.0), 0.9)  # 0.45 of the largest's side
    verdict = q.assess_enrollment(textured((400, 420)), [other, face()])
    assert verdict.reasons == (QualityReason.MULTIPLE_FACES,)
    assert verdict.face == face()  # the largest is the candidate whatever the order
    assert verdict.ignored == 0


def test_tiny_background_face_is_ignored() -> None:
    background = Detection((320.0, 20.0, 60.0, 60.0), 0.9)  # 0.3 of the largest's side
    verdict = q.assess_enrollment(textured(), [face(), background])
    assert verdict.accepted and verdict.ignored == 1 and verdict.faces == 2
    strict = QualityConfig.enrollment(ignore_faces_smaller_than=0.25)
    assert q.assess_enrollment(textured(), [face(), background], strict).reasons == (
        QualityReason.MULTIPLE_FACES,
    )


def test_enrollment_lists_every_problem() -> None:
    dark = (textured().astype(np.float32) * 0.15).astype(np.uint8)
    other = Detection((10.0, 10.0, 150.0, 150.0), 0.9)
    verdict = q.assess_enrollment(dark, [face(score=0.6), other])
    assert set(verdict.reasons) == {
        QualityReason.MULTIPLE_FACES, QualityReason.TOO_DARK, QualityReason.LOW_CONFIDENCE,
    }
    assert list(verdict.reasons) == sorted(verdict.reasons, key=list(QualityReason).index)


def test_enrollment_is_stricter_than_live() -> None:
    det = face(score=0.65)
    assert q.assess(textured(), det).passed
    assert not q.assess_enrollment(textured(), [det]).accepted


# --- config ----------------------------------------------------------------------------


def test_presets_and_overrides() -> None:
    live, enrollment = QualityConfig.live(), QualityConfig.enrollment()
    assert live == QualityConfig()
    for key, value in q.ENROLLMENT_THRESHOLDS.items():
        assert getattr(enrollment, key) == value
    stricter = [
        enrollment.min_interocular_px > live.min_interocular_px,
        enrollment.min_face_px > live.min_face_px,
        enrollment.min_sharpness > live.min_sharpness,
        enrollment.min_brightness > live.min_brightness,
        enrollment.max_brightness < live.max_brightness,
        enrollment.max_yaw_deg < live.max_yaw_deg,
        enrollment.min_score > live.min_score,
    ]
    assert all(stricter)
    tuned = validate_mapping({"preset": "enrollment", "min_score": 0.9}, QualityConfig, "t")
    assert tuned.min_score == 0.9 and tuned.max_yaw_deg == enrollment.max_yaw_deg


def test_config_refuses_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="min_scor"):
        validate_mapping({"min_scor": 0.5}, QualityConfig, "t")
    with pytest.raises(ConfigError, match="min_score"):
        validate_mapping({"min_score": 1.5}, QualityConfig, "t")
    with pytest.raises(ConfigError, match="preset"):
        validate_mapping({"preset": "strict"}, QualityConfig, "t")


def test_every_config_field_is_described() -> None:
    for name, info in QualityConfig.model_fields.items():
        assert info.description, name


def test_reasons_are_the_fixed_enum() -> None:
    assert [r.value for r in QualityReason] == [
        "no_face", "multiple_faces", "too_small", "blurred", "too_dark", "overexposed",
        "extreme_pose", "low_confidence", "partially_outside_frame",
    ]
