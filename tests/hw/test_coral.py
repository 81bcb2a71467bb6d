"""The Edge TPU backends on a real Coral (skipped without one)."""

from __future__ import annotations

import numpy as np
import pytest

from device.vision.coral_ssd import CoralSsdConfig, CoralSsdDetector
from device.vision.samples import astronaut

pytestmark = pytest.mark.hw


def test_coral_face_detector_finds_the_astronaut(coral: str) -> None:
    image = astronaut()
    with CoralSsdDetector(CoralSsdConfig()) as detector:
        faces = detector.detect(image)
    assert len(faces) == 1, f"{coral}: expected one face, got {faces}"
    x, y, w, h = faces[0].box
    # The portrait's face sits in the upper middle of the 512 x 512 image.
    assert 100 < x + w / 2 < 300 and 50 < y + h / 2 < 250
    assert faces[0].score >= 0.5


def test_coral_detector_is_deterministic(coral: str) -> None:
    image = astronaut()
    with CoralSsdDetector(CoralSsdConfig()) as detector:
        first = detector.detect(image)
        second = detector.detect(image)
    assert [f.box for f in first] == [f.box for f in second]
    assert np.allclose([f.score for f in first], [f.score for f in second])
