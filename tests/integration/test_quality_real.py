"""The quality gate's default thresholds on real photos, with the real BlazeFace model.

Clean photos of one person pass the enrollment preset; group photos are refused as
multiple_faces; blurred, darkened, brightened, rotated, shrunk and cut-off variants
made with OpenCV fire the matching reason. The manipulations reuse the clean photo's
detection mapped through the same transform (so a reason is tested even where the
detector would give up), and the detector is also re-run on each variant.

Calibration figures the thresholds in ``device/vision/quality.py`` rest on (BlazeFace
short-range, largest face per photo; ``lfw`` and ``diversity`` crops padded by a
quarter of their height a side, because BlazeFace scores a face that fills the whole
image low: LFW median 0.81 unpadded, 0.89 padded):

=====================  ===  ==========  ====  ====  =====  =====  =======  =====
set                     n   sharpness   mean  iod   |yaw|  |roll| |pitch|  score
                            min / p5    min   min   p99    max    p99      min
=====================  ===  ==========  ====  ====  =====  =====  =======  =====
one person (below)      67  0.16/0.25     87    50     24     18       18   0.77
lfw (300, seed 1)      300  0.05/0.07     62    89     39     25       31   0.66
diversity (300 drawn)  295  0.01/0.03     34     6     71     67       39   0.52
=====================  ===  ==========  ====  ====  =====  =====  =======  =====

Clipped (≥ 250) pixels in the central crop: at most 3.4 % on any clean face. A
Gaussian blur of 4 % of the face's side gives sharpness ≤ 0.027 on all 67 one-person
photos (2 %: ≤ 0.069); ×0.15 brightness a face mean ≤ 28; ×2.5 at least 17 % of the
crop clipped. Pass rates: one-person photos 67/67 enrollment (short and full model);
LFW 299/300 live, 260/300 enrollment (22 blurred, 18 extreme_pose: soft upscaled
crops and 3/4 views); diversity 205/297 live (67 extreme_pose, 32 too_small, 18
blurred: film stills with many profiles, tiny faces and soft frames).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.imageio import read_image
from device.types import Detection, Image
from device.vision import quality as q
from device.vision.blazeface import BlazeFaceConfig, BlazeFaceDetector
from device.vision.quality import QualityConfig, QualityReason

pytestmark = pytest.mark.dataset

LIVE = QualityConfig.live()
ENROLLMENT = QualityConfig.enrollment()
GROUPS = ("couple.jpg", "selfie-many-people.jpg")


@pytest.fixture(scope="module")
def detectors() -> Iterator[dict[str, BlazeFaceDetector]]:
    made = {
        m: BlazeFaceDetector(BlazeFaceConfig(model=m, num_threads=1)) for m in ("short", "full")
    }
    yield made
    for det in made.values():
        det.close()


def one_person_photos(root: Path) -> list[Path]:
    single = [root / "media" / "single" / n for n in ("obama.jpg", "biden.jpg", "grace_hopper.bmp")]
    enroll = sorted((root / "media" / "video" / "enroll").glob("*.png"))
    deepface = [p for p in sorted((root / "deepface").glob("*.jpg")) if p.name not in GROUPS]
    return single + enroll + deepface


def largest(dets: list[Detection]) -> Detection:
    return max(dets, key=lambda d: d.area)


def padded(image: Image) -> Image:
    p = image.shape[0] // 4
    return np.asarray(cv2.copyMakeBorder(image, p, p, p, p, cv2.BORDER_CONSTANT, value=(0, 0, 0)))


@pytest.mark.parametrize("model", ["short", "full"])
def test_clean_one_person_photos_pass_enrollment(
    datasets: Path, detectors: dict[str, BlazeFaceDetector], model: str
) -> None:
    photos = one_person_photos(datasets)
    assert len(photos) == 67
    refused = {}
    for path in photos:
        image = read_image(path)
        verdict = q.assess_enrollment(image, detectors[model].detect(image), ENROLLMENT)
        if not verdict.accepted:
            refused[path.name] = [str(r) for r in verdict.reasons]
        elif verdict.face is not None:
            assert q.assess(image, verdict.face, LIVE).passed, path.name
    assert not refused, refused


@pytest.mark.parametrize(
    "name", ["deepface/couple.jpg", "deepface/selfie-many-people.jpg", "media/single/face.jpg",
             "media/group/two_people.jpg", "media/group/obama_and_biden.jpg"],
)
def test_group_photos_are_multiple_faces(
    datasets: Path, detectors: dict[str, BlazeFaceDetector], name: str
) -> None:
    image = read_image(datasets / name)
    verdict = q.assess_enrollment(image, detectors["full"].detect(image), ENROLLMENT)
    assert QualityReason.MULTIPLE_FACES in verdict.reasons


def test_a_dog_is_not_enrolled(datasets: Path, detectors: dict[str, BlazeFaceDetector]) -> None:
    """Short-range BlazeFace fires on a dog at 0.6; the enrollment score floor refuses it."""
    image = read_image(datasets / "boxes" / "dogs.jpg")
    for det in detectors.values():
        verdict = q.assess_enrollment(image, det.detect(image), ENROLLMENT)
        assert not verdict.accepted
        assert set(verdict.reasons) & {QualityReason.NO_FACE, QualityReason.LOW_CONFIDENCE}


# --- manipulated variants ---------------------------------------------------------------


def mapped(det: Detection, matrix: np.ndarray) -> Detection:
    """``det`` through a 2×3 similarity transform: keypoints exactly, box about its centre."""
    lin, shift = matrix[:, :2], matrix[:, 2]
    kps = np.asarray(det.keypoints) @ lin.T + shift
    x, y, w, h = det.box
    cx, cy = np.array([x + w / 2, y + h / 2]) @ lin.T + shift
    s = math.sqrt(abs(float(np.linalg.det(lin))))
    return Detection(
        (float(cx - w * s / 2), float(cy - h * s / 2), w * s, h * s), det.score,
        tuple((float(a), float(b)) for a, b in kps),
    )


def blur(image: Image, det: Detection) -> tuple[Image, Detection]:
    return np.asarray(cv2.GaussianBlur(image, (0, 0), 0.04 * min(det.box[2:]))), det


def darken(image: Image, det: Detection) -> tuple[Image, Detection]:
    return (image.astype(np.float32) * 0.15).astype(np.uint8), det


def brighten(image: Image, det: Detection) -> tuple[Image, Detection]:
    return np.clip(image.astype(np.float32) * 2.5, 0, 255).astype(np.uint8), det


def rotate(image: Image, det: Detection) -> tuple[Image, Detection]:
    """60° about the face centre, away from the photo's own roll (cv2: + is anticlockwise)."""
    pose = q.head_pose(det)
    assert pose is not None
    x, y, w, h = det.box
    matrix = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), 60.0 if pose.roll < 0 else -60.0, 1.0)
    turned = cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0]))
    return np.asarray(turned), mapped(det, matrix)


def shrink(image: Image, det: Detection) -> tuple[Image, Detection]:
    """The whole photo scaled so the face box is 20 px."""
    s = 20.0 / min(det.box[2:])
    size = (max(1, round(image.shape[1] * s)), max(1, round(image.shape[0] * s)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.asarray(small), mapped(det, np.array([[s, 0, 0], [0, s, 0]], np.float64))


def cut(image: Image, det: Detection) -> tuple[Image, Detection]:
    """The photo cropped at the face's vertical centre line: half the face is gone."""
    x, _, w, _ = det.box
    return np.ascontiguousarray(image[:, : int(x + w / 2)]), det


Manipulation = Callable[[Image, Detection], tuple[Image, Detection]]
MANIPULATIONS: dict[str, tuple[Manipulation, QualityReason, bool]] = {
    # name: (variant, reason, also with the live preset)
    "blur 4%": (blur, QualityReason.BLURRED, True),
    "x0.15": (darken, QualityReason.TOO_DARK, True),
    "x2.5": (brighten, QualityReason.OVEREXPOSED, False),
    "rotate 60": (rotate, QualityReason.EXTREME_POSE, True),
    "face 20 px": (shrink, QualityReason.TOO_SMALL, True),
    "cut in half": (cut, QualityReason.PARTIALLY_OUTSIDE_FRAME, True),
}


def around_face(image: Image, det: Detection, max_face: int = 256) -> Image:
    """The photo cut to the face box grown by 60 % a side, shrunk so the face is at
    most ``max_face`` px (sharpness is measured at 64 px, so nothing is lost; the
    OpenCV variants of 6000-pixel-wide photos would take seconds each)."""
    x, y, w, h = det.box
    x0, y0 = max(0, int(x - 0.6 * w)), max(0, int(y - 0.6 * h))
    x1, y1 = min(image.shape[1], int(x + 1.6 * w)), min(image.shape[0], int(y + 1.6 * h))
    crop = image[y0:y1, x0:x1]
    s = min(1.0, max_face / min(w, h))
    if s < 1.0:
        size = (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop)


@pytest.fixture(scope="module")
def clean_faces(
    datasets: Path, detectors: dict[str, BlazeFaceDetector]
) -> list[tuple[str, Image, Detection]]:
    out = []
    for path in one_person_photos(datasets):
        photo = read_image(path)
        image = around_face(photo, largest(detectors["short"].detect(photo)))
        out.append((path.name, image, largest(detectors["short"].detect(image))))
    return out


@pytest.mark.parametrize("name", list(MANIPULATIONS))
def test_manipulated_photos_fire_the_reason(
    clean_faces: list[tuple[str, Image, Detection]], name: str
) -> None:
    make, reason, live_too = MANIPULATIONS[name]
    missed = []
    for photo, image, det in clean_faces:
        assert q.assess(image, det, ENROLLMENT).passed, photo
        variant, moved = make(image, det)
        presets = (ENROLLMENT, LIVE) if live_too else (ENROLLMENT,)
        for config in presets:
            if reason not in q.assess(variant, moved, config).reasons:
                missed.append((photo, config.preset))
    assert not missed, missed


def test_rotation_is_measured_as_roll(clean_faces: list[tuple[str, Image, Detection]]) -> None:
    for photo, image, det in clean_faces:
        before, after = q.head_pose(det), q.head_pose(rotate(image, det)[1])
        assert before is not None and after is not None
        assert abs(after.roll - before.roll) == pytest.approx(60.0, abs=0.5), photo
        assert after.yaw == pytest.approx(before.yaw, abs=0.5), photo


@pytest.mark.parametrize(
    ("name", "min_rate"),
    [("blur 4%", 1.0), ("x0.15", 1.0), ("x2.5", 0.95), ("rotate 60", 0.95), ("face 20 px", 1.0)],
)
def test_redetected_variants_fire_the_reason(
    clean_faces: list[tuple[str, Image, Detection]],
    detectors: dict[str, BlazeFaceDetector], name: str, min_rate: float,
) -> None:
    """The same, with the detector re-run on each variant (where it still finds the face).

    Measured: every re-detected variant fires (blur 66 found of 67, the rest 67/67).
    BlazeFace's keypoints on a strongly rotated face lean back towards upright and its
    score on a washed-out face drops, so the bar leaves a small margin.
    """
    make, reason, _ = MANIPULATIONS[name]
    found = fired = 0
    for _, image, det in clean_faces:
        variant, _ = make(image, det)
        dets = detectors["short"].detect(variant)
        if dets:
            found += 1
            fired += reason in q.assess(variant, largest(dets), ENROLLMENT).reasons
    assert found >= 0.7 * len(clean_faces)
    assert fired >= min_rate * found, f"{fired}/{found}"


# --- pass rates on the larger sets ------------------------------------------------------


def sample(root: Path, pattern: str, n: int, seed: int) -> list[Path]:
    files = sorted(root.glob(pattern))
    return random.Random(seed).sample(files, min(n, len(files)))


def rates(paths: list[Path], det: BlazeFaceDetector) -> tuple[int, Counter[str], Counter[str]]:
    faces = 0
    live: Counter[str] = Counter()
    enrollment: Counter[str] = Counter()
    for path in paths:
        image = padded(read_image(path))
        dets = det.detect(image)
        if not dets:
            continue
        faces += 1
        face = largest(dets)
        live.update(str(r) for r in q.assess(image, face, LIVE).reasons or ("pass",))
        enrollment.update(str(r) for r in q.assess(image, face, ENROLLMENT).reasons or ("pass",))
    return faces, live, enrollment


def test_lfw_pass_rates(datasets: Path, detectors: dict[str, BlazeFaceDetector]) -> None:
    """Measured: live 299/300, enrollment 260/300 (22 blurred, 18 extreme_pose)."""
    faces, live, enrollment = rates(
        sample(datasets / "lfw" / "people", "*/*.jpg", 300, seed=1), detectors["short"]
    )
    assert faces >= 295
    assert live["pass"] >= 0.97 * faces, live
    assert enrollment["pass"] >= 0.8 * faces, enrollment
    assert not {"too_dark", "overexposed", "too_small", "partially_outside_frame"} & set(enrollment)


def test_diversity_live_pass_rate(datasets: Path, detectors: dict[str, BlazeFaceDetector]) -> None:
    """Low-resolution film stills: measured live 205/297, failing on pose, size, blur."""
    faces, live, _ = rates(
        sample(datasets / "diversity", "*/*.jpg", 300, seed=2), detectors["short"]
    )
    assert faces >= 280
    assert live["pass"] >= 0.6 * faces, live
    assert set(live) <= {"pass", "extreme_pose", "too_small", "blurred", "too_dark",
                         "low_confidence"}, live
