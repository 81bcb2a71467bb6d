"""BlazeFace with the real model: dlib's face-box set, mapping back, tiling."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.imageio import read_image
from device.types import Detection
from device.vision import samples
from device.vision.blazeface import BlazeFaceConfig, BlazeFaceDetector
from device.vision.boxes import iou_matrix
from device.vision.tiling import TilingConfig


def _corners(dets: list[Detection]) -> np.ndarray:
    return np.array([[x, y, x + w, y + h] for x, y, w, h in (d.box for d in dets)],
                    np.float32).reshape(-1, 4)


def _match(truth: np.ndarray, found: np.ndarray, min_iou: float = 0.5) -> int:
    """Greedy one-to-one matching by IoU; number of matched ground-truth boxes."""
    iou = iou_matrix(truth, found)
    pairs = sorted(((iou[i, j], i, j) for i in range(len(truth)) for j in range(len(found))),
                   reverse=True)
    used_t: set[int] = set()
    used_f: set[int] = set()
    for value, i, j in pairs:
        if value >= min_iou and i not in used_t and j not in used_f:
            used_t.add(i)
            used_f.add(j)
    return len(used_t)


def _ground_truth(root: Path) -> dict[str, np.ndarray]:
    truth: dict[str, np.ndarray] = {}
    for name in ("testing.xml", "training.xml"):
        for image in ET.parse(root / name).getroot().iter("image"):
            truth[image.get("file", "")] = np.array(
                [[int(b.get("left", 0)), int(b.get("top", 0)),
                  int(b.get("left", 0)) + int(b.get("width", 0)),
                  int(b.get("top", 0)) + int(b.get("height", 0))] for b in image.iter("box")],
                np.float32,
            )
    return truth


@pytest.fixture(scope="module")
def detectors() -> Iterator[dict[str, BlazeFaceDetector]]:
    made = {
        "whole": BlazeFaceDetector(BlazeFaceConfig()),
        "tiled": BlazeFaceDetector(BlazeFaceConfig(tiling=TilingConfig(enabled=True))),
    }
    yield made
    for det in made.values():
        det.close()


@pytest.mark.dataset
@pytest.mark.parametrize(("mode", "min_recall"), [("whole", 0.95), ("tiled", 1.0)])
def test_dlib_face_boxes_recall_and_precision(
    datasets: Path, detectors: dict[str, BlazeFaceDetector], mode: str, min_recall: float
) -> None:
    root = datasets / "boxes"
    truth = _ground_truth(root)
    assert sum(len(t) for t in truth.values()) == 43 and len(truth) == 9
    matched = unmatched = 0
    for name, boxes in truth.items():
        found = _corners(detectors[mode].detect(read_image(root / name)))
        hits = _match(boxes, found)
        matched += hits
        unmatched += len(found) - hits
    assert matched / 43 >= min_recall, f"{mode}: {matched}/43 faces found"
    assert unmatched <= 1, f"{mode}: {unmatched} detections match no face"


@pytest.mark.dataset
@pytest.mark.parametrize("mode", ["whole", "tiled"])
def test_no_face_on_the_dogs(
    datasets: Path, detectors: dict[str, BlazeFaceDetector], mode: str
) -> None:
    assert detectors[mode].detect(read_image(datasets / "boxes" / "dogs.jpg")) == []


@pytest.mark.parametrize(
    "crop",
    [(0, 30, 512, 330), (130, 0, 380, 512), (101, 17, 478, 512), (0, 0, 512, 512)],
    ids=["landscape", "portrait", "odd", "square"],
)
def test_boxes_map_back_to_the_frame_for_any_aspect_ratio(
    detectors: dict[str, BlazeFaceDetector], crop: tuple[int, int, int, int]
) -> None:
    """Crops of other shapes (same model-space scale): the face stays where it is."""
    photo = samples.astronaut()
    ref = detectors["whole"].detect(photo)[0]
    x0, y0, x1, y1 = crop
    [face] = detectors["whole"].detect(np.ascontiguousarray(photo[y0:y1, x0:x1]))
    # The model is not shift-invariant below its stride (4 input px = 2.7 photo px
    # here): shifting the crop moves its output by up to ~2 input px. A mapping
    # mistake would be off by the padding (40 input px = 107 photo px for the
    # landscape crop) or a scale, far beyond this.
    tolerance = 0.06 * ref.box[2]
    shift = np.array([x0, y0])
    np.testing.assert_allclose(np.array(face.box[:2]) + shift, ref.box[:2], atol=tolerance)
    np.testing.assert_allclose(face.box[2:], ref.box[2:], atol=tolerance)
    np.testing.assert_allclose(
        np.array(face.keypoints) + shift, np.array(ref.keypoints), atol=tolerance
    )


def test_tiling_finds_a_40_pixel_face_in_a_1080p_frame(
    detectors: dict[str, BlazeFaceDetector],
) -> None:
    photo = samples.astronaut()
    ref = detectors["whole"].detect(photo)[0]
    scale = 40 / ref.box[2]  # the face becomes 40 px wide
    side = round(512 * scale)
    small = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
    frame = np.full((1080, 1920, 3), 90, np.uint8)
    x0, y0 = 1333, 611  # off any tile grid line
    frame[y0 : y0 + side, x0 : x0 + side] = small
    assert detectors["whole"].detect(frame) == []
    [face] = detectors["tiled"].detect(frame)
    expected = np.array(ref.box) * scale + [x0, y0, 0, 0]
    np.testing.assert_allclose(face.box, expected, atol=6.0)
