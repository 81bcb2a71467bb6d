"""The still-photo finder (what ``identify``, ``enroll`` and ``embed`` use) and ``detect``
agree on every deepface photo: the same faces, boxes overlapping by IoU >= 0.7.

The finder adds a zoomed-out close-range pass and keypoint refinement to ``detect``'s
full-range BlazeFace pass; neither may invent a face or inflate a box on a photo the
full-range pass reads. A photo where the close-range pass legitimately adds a true face
that ``detect`` misses is listed in :data:`TRUE_FACES_ONLY_THE_FINDER_SEES`, with why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from device.cli.face_tools import open_finder
from device.imageio import read_image
from device.types import Detection
from device.vision.blazeface import DEFAULT_THRESHOLD, BlazeFaceConfig, BlazeFaceDetector
from device.vision.stills import StillFaceFinder
from device.vision.tiling import TilingConfig
from tests.conftest import datasets_root

pytestmark = pytest.mark.dataset

MIN_IOU = 0.7

#: Photo name -> (extra faces, why each is a true face ``detect`` misses). None so far:
#: on every deepface photo the close-range pass only re-boxes faces ``detect`` finds.
TRUE_FACES_ONLY_THE_FINDER_SEES: dict[str, tuple[int, str]] = {}


def _photos() -> list[object]:
    folder = datasets_root() / "deepface"
    photos = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not photos:
        return [pytest.param(None, marks=pytest.mark.skip(
            reason=f"no deepface photos at {folder} (set FACEGATE_DATASETS)"))]
    return [pytest.param(p, id=p.name) for p in photos]


@pytest.fixture(scope="module")
def passes() -> Iterator[tuple[BlazeFaceDetector, StillFaceFinder]]:
    # Exactly what `facegate detect` (defaults) and `facegate identify` open.
    detect = BlazeFaceDetector(BlazeFaceConfig(model="full", threshold=DEFAULT_THRESHOLD,
                                               num_threads=2, tiling=TilingConfig()))
    finder = open_finder(2)
    yield detect, finder
    detect.close()
    finder.close()


def _iou(a: Detection, b: Detection) -> float:
    (ax, ay, aw, ah), (bx, by, bw, bh) = a.box, b.box
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


@pytest.mark.parametrize("photo", _photos())
def test_identify_finds_the_faces_detect_finds(
    photo: Path, passes: tuple[BlazeFaceDetector, StillFaceFinder]
) -> None:
    detect, finder = passes
    image = read_image(photo)
    detected = detect.detect(image)
    found = finder.detect(image)
    extra, _why = TRUE_FACES_ONLY_THE_FINDER_SEES.get(photo.name, (0, ""))

    def boxes(faces: list[Detection]) -> list[list[int]]:
        return [[round(v) for v in f.box] for f in faces]

    assert len(found) == len(detected) + extra, (
        f"{photo.name}: detect {boxes(detected)}, identify's finder {boxes(found)}")
    unmatched = list(found)
    for face in detected:
        best = max(unmatched, key=lambda f: _iou(f, face))
        assert _iou(best, face) >= MIN_IOU, (
            f"{photo.name}: detect's face {boxes([face])} is {boxes([best])} in the finder "
            f"(IoU {_iou(best, face):.2f} < {MIN_IOU})")
        unmatched.remove(best)
