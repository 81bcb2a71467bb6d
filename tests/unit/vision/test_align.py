"""Alignment: the similarity fit recovers known transforms, the warp puts pixels where the
matrix says (continuous pixel coordinates), the template parses and maps as documented."""

from __future__ import annotations

import math

import numpy as np
import pytest

from device.errors import ModelError
from device.types import Detection
from device.vision import align as al


def _similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, -s, tx], [s, c, ty]])


@pytest.mark.parametrize(
    ("scale", "angle", "tx", "ty"),
    [(1.0, 0.0, 0.0, 0.0), (0.37, 12.0, -40.0, 7.5), (2.5, -170.0, 300.0, -2.0),
     (0.01, 90.0, 1, 1)],
)
def test_fit_recovers_a_known_similarity(scale: float, angle: float, tx: float, ty: float) -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 500, (6, 2))
    truth = _similarity(scale, angle, tx, ty)
    dst = al.apply_transform(truth, src)
    np.testing.assert_allclose(al.similarity_transform(src, dst), truth, atol=1e-9 * max(1, scale))


def test_fit_is_least_squares_under_noise() -> None:
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 200, (200, 2))
    truth = _similarity(0.6, 25.0, 10.0, -3.0)
    dst = al.apply_transform(truth, src) + rng.normal(0, 0.5, (200, 2))
    fit = al.similarity_transform(src, dst)
    np.testing.assert_allclose(fit[:, :2], truth[:, :2], atol=0.01)
    np.testing.assert_allclose(fit[:, 2], truth[:, 2], atol=0.3)
    # No other similarity does better: perturbing any parameter raises the residual.
    base = ((al.apply_transform(fit, src) - dst) ** 2).sum()
    for k in range(6):
        bumped = fit.copy()
        bumped.flat[k] += 1e-3
        if k in (0, 4):  # keep it a similarity: a and d move together
            bumped.flat[4 - k] += 1e-3
        assert ((al.apply_transform(bumped, src) - dst) ** 2).sum() >= base


def test_fit_never_reflects() -> None:
    src = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0], [3.0, 7.0]])
    mirrored = src * np.array([-1.0, 1.0])
    fit = al.similarity_transform(src, mirrored)
    assert np.linalg.det(fit[:, :2]) > 0


def test_fit_with_weights_ignores_zero_weight_points() -> None:
    src = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [50.0, 50.0]])
    truth = _similarity(2.0, 30.0, 5.0, 5.0)
    dst = al.apply_transform(truth, src)
    dst[3] += 100.0  # an outlier with no weight
    fit = al.similarity_transform(src, dst, weights=[1, 1, 1, 0])
    np.testing.assert_allclose(fit, truth, atol=1e-9)


@pytest.mark.parametrize(
    ("src", "dst", "message"),
    [
        (np.zeros((1, 2)), np.zeros((1, 2)), "at least 2 points"),
        (np.zeros((3, 2)), np.zeros((4, 2)), r"two \(N, 2\)"),
        (np.zeros((3, 3)), np.zeros((3, 3)), r"two \(N, 2\)"),
        (np.ones((3, 2)), np.zeros((3, 2)), "coincide"),
        (np.array([[0.0, 0.0], [np.nan, 1.0]]), np.zeros((2, 2)), "finite"),
    ],
)
def test_fit_refuses_bad_points(src: np.ndarray, dst: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        al.similarity_transform(src, dst)


def test_invert_transform() -> None:
    m = _similarity(0.5, 33.0, 12.0, -8.0)
    pts = np.array([[1.0, 2.0], [30.0, -4.0]])
    there = al.apply_transform(m, pts)
    np.testing.assert_allclose(al.apply_transform(al.invert_transform(m), there), pts, atol=1e-12)
    with pytest.raises(ValueError, match="singular"):
        al.invert_transform(np.zeros((2, 3)))


def _dot_image(width: int, height: int, x: int, y: int) -> np.ndarray:
    img = np.zeros((height, width, 3), np.uint8)
    img[y - 2 : y + 3, x - 2 : x + 3] = 255
    return img


def _centroid(img: np.ndarray) -> np.ndarray:
    w = img[..., 0].astype(np.float64)
    ys, xs = np.mgrid[: w.shape[0], : w.shape[1]]
    return np.array([(w * (xs + 0.5)).sum() / w.sum(), (w * (ys + 0.5)).sum() / w.sum()])


def test_identity_warp_returns_the_image() -> None:
    img = np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    chip = al.warp(img, np.array([[1.0, 0, 0], [0, 1.0, 0]]), (60, 40))
    np.testing.assert_array_equal(chip.image, img)
    assert chip.detection is None
    assert chip.transform.shape == (2, 3)


@pytest.mark.parametrize(("scale", "angle"), [(0.5, 0.0), (0.8, 20.0), (1.7, -35.0)])
def test_warp_puts_a_point_where_the_matrix_maps_it(scale: float, angle: float) -> None:
    img = _dot_image(300, 200, 170, 90)
    source = _centroid(img)  # (170.5, 90.5) in continuous coordinates
    m = _similarity(scale, angle, 0.0, 0.0)
    m[:, 2] = np.array([75.0, 75.0]) - m[:, :2] @ source  # the dot to the chip centre
    chip = al.warp(img, m, (150, 150))
    np.testing.assert_allclose(_centroid(chip.image), [75.0, 75.0], atol=0.05)


def test_border_modes() -> None:
    img = np.full((10, 10, 3), 200, np.uint8)
    shift = np.array([[1.0, 0, 5], [0, 1.0, 0]])  # the left 5 columns come from outside
    black = al.warp(img, shift, (10, 10), border="constant").image
    edge = al.warp(img, shift, (10, 10), border="replicate").image
    assert black[:, :4].max() == 0
    assert edge.min() == 200
    with pytest.raises(ValueError, match="border"):
        al.warp(img, shift, (10, 10), border="wrap")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("image", "matrix", "size", "message"),
    [
        (np.zeros((10, 10), np.uint8), np.eye(2, 3), (5, 5), "RGB uint8"),
        (np.zeros((10, 10, 3), np.float32), np.eye(2, 3), (5, 5), "RGB uint8"),
        (np.zeros((10, 10, 3), np.uint8), np.eye(3), (5, 5), r"\(2, 3\)"),
        (np.zeros((10, 10, 3), np.uint8), np.eye(2, 3), (0, 5), "positive"),
    ],
)
def test_warp_refuses_bad_input(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int],
                                message: str) -> None:
    with pytest.raises(ValueError, match=message):
        al.warp(image, matrix, size)


TEMPLATE = al.AlignTemplate(
    size=(150, 150),
    keypoints=("right_eye", "left_eye", "mouth_center"),
    points=np.array([[46.0, 46.0], [101.0, 46.0], [73.5, 104.0]], np.float32),
    border="replicate",
    box=(6.0, 0.0, 134.0, 138.0),
)


def test_align_maps_the_keypoints_onto_the_template() -> None:
    # A face whose keypoints are the template's under a known similarity.
    to_frame = _similarity(2.3, 15.0, 400.0, 120.0)
    kps = al.apply_transform(to_frame, TEMPLATE.points)
    six = [tuple(kps[0]), tuple(kps[1]), (0.0, 0.0), tuple(kps[2]), (0.0, 0.0), (0.0, 0.0)]
    detection = Detection(box=(380.0, 100.0, 300.0, 300.0), score=0.9, keypoints=tuple(six))
    frame = np.zeros((800, 1000, 3), np.uint8)
    chip = al.align(frame, detection, TEMPLATE)
    assert chip.image.shape == (150, 150, 3)
    assert chip.detection is detection
    np.testing.assert_allclose(chip.transform, al.invert_transform(to_frame), atol=1e-4)
    np.testing.assert_allclose(al.apply_transform(chip.transform, kps), TEMPLATE.points, atol=1e-3)
    assert TEMPLATE.indices == (0, 1, 3)


def test_align_needs_keypoints() -> None:
    with pytest.raises(ValueError, match="keypoints"):
        al.align(np.zeros((10, 10, 3), np.uint8), Detection((0, 0, 5, 5), 0.9), TEMPLATE)


def test_box_transform_maps_a_box_onto_the_template_box() -> None:
    m = al.box_transform((100.0, 50.0, 200.0, 206.0), TEMPLATE)
    corners = al.apply_transform(m, [[100.0, 50.0], [300.0, 256.0]])
    # One scale, centres matched: the box lands on the template's box up to aspect.
    centre = corners.mean(axis=0)
    np.testing.assert_allclose(centre, [6.0 + 67.0, 0.0 + 69.0], atol=1e-9)
    assert m[0, 1] == pytest.approx(0.0, abs=1e-12)
    assert m[0, 0] == pytest.approx(m[1, 1])
    with pytest.raises(ValueError, match="positive size"):
        al.box_transform((0.0, 0.0, 0.0, 5.0), TEMPLATE)


def test_template_from_manifest_entry() -> None:
    extra = {"template": {
        "size": [150, 150], "keypoints": ["right_eye", "left_eye", "mouth_center"],
        "points": [[46, 46], [101, 46], [73.5, 104]], "border": "replicate",
        "box": [6, 0, 134, 138],
    }}
    template = al.AlignTemplate.from_manifest("m", extra)
    assert template.size == (150, 150)
    assert template.keypoints == TEMPLATE.keypoints
    np.testing.assert_allclose(template.points, TEMPLATE.points)
    assert template.box == (6.0, 0.0, 134.0, 138.0)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (None, "has no .*template"),
        ({"size": [150, 150], "keypoints": ["nose"], "points": [[1, 2]]}, "2 named keypoints"),
        ({"size": [150, 150], "keypoints": ["right_eye", "chin"], "points": [[1, 2], [3, 4]]},
         "unknown keypoint"),
        ({"size": [150, 150], "keypoints": ["right_eye", "left_eye"], "points": [[1, 2]]},
         "one \\(x, y\\) per name"),
        ({"keypoints": ["right_eye", "left_eye"], "points": [[1, 2], [3, 4]]}, "size"),
        ({"size": [150, 150], "keypoints": ["right_eye", "left_eye"], "points": [[1, 2], [3, 4]],
          "border": "mirror"}, "border"),
    ],
)
def test_malformed_templates_are_refused(template: object, message: str) -> None:
    extra = {} if template is None else {"template": template}
    with pytest.raises(ModelError, match=message):
        al.AlignTemplate.from_manifest("dlib-resnet-v1", extra)


def test_the_shipped_template_parses() -> None:
    from device.vision.models import get_spec

    spec = get_spec("dlib-resnet-v1")
    template = al.AlignTemplate.from_manifest(spec.id, spec.extra)
    assert template.size == (150, 150)
    pts = np.asarray(template.points)
    # Eyes level and symmetric about the chip's centre line, mouth below them.
    names = list(template.keypoints)
    right, left = pts[names.index("right_eye")], pts[names.index("left_eye")]
    assert abs(right[1] - left[1]) < 2.0
    assert abs((right[0] + left[0]) / 2 - 75.0) < 3.0
    assert pts[names.index("mouth_center")][1] > right[1] + 40
