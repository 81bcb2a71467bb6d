"""The still-photo face finder with fake detectors: merge of the two passes, zoom-out
coordinates, refinement mapping back to the frame, and the largest-face choice."""

from __future__ import annotations

import numpy as np
import pytest

from device.types import Detection, Image
from device.vision import stills


class Recorder:
    """A detector returning fixed faces (in the coordinates of the image it is given)."""

    def __init__(self, faces: list[Detection] | None = None,
                 by_shape: dict[tuple[int, int], list[Detection]] | None = None) -> None:
        self.faces = faces or []
        self.by_shape = by_shape or {}
        self.shapes: list[tuple[int, ...]] = []

    def detect(self, image: Image, timer: object = None) -> list[Detection]:
        self.shapes.append(image.shape)
        return list(self.by_shape.get(image.shape[:2], self.faces))

    def close(self) -> None:
        pass


def _det(x: float, y: float, size: float, score: float = 0.9) -> Detection:
    kps = tuple((x + size * fx, y + size * fy) for fx, fy in
                [(0.3, 0.35), (0.7, 0.35), (0.5, 0.55), (0.5, 0.75), (0.1, 0.4), (0.9, 0.4)])
    return Detection(box=(x, y, size, size), score=score, keypoints=kps)


def test_zoom_out_pads_and_shifts_back() -> None:
    image = np.full((100, 200, 3), 7, np.uint8)
    padded, pad = stills.zoom_out(image, 0.2)
    assert pad == 40 and padded.shape == (180, 280, 3)
    assert padded[:40].max() == 0 and padded[40:140, 40:240].min() == 7
    assert stills.zoom_out(image, 0.0)[1] == 0
    inner = Recorder([_det(50, 60, 80)])
    (found,) = stills.detect_zoomed_out(image, inner, 0.2)
    assert found.box == (10, 20, 80, 80)
    assert found.keypoints[0] == pytest.approx((10 + 24, 20 + 28))


def test_merge_keeps_one_of_overlapping_faces_and_the_rest() -> None:
    a, b = _det(0, 0, 100, 0.8), _det(300, 0, 50, 0.9)
    twin = _det(5, 5, 100, 0.95)
    merged = stills.merge_detections([a, b], [twin, _det(600, 0, 40, 0.7)])
    assert [d.box for d in merged] == [twin.box, b.box, (600, 0, 40, 40)]
    assert stills.merge_detections([a], [_det(5, 5, 100, 0.5)]) == [a]


def test_close_range_pass_finds_the_large_face_the_full_range_pass_missed() -> None:
    # Full range finds only a small background face; the zoomed-out short range finds
    # the big one in front. The largest is the one returned.
    image = np.zeros((350, 350, 3), np.uint8)
    # On the 700-px refinement crop around the big face (2.5 x 280, from (-180, -170)),
    # the full-range model confirms it; everywhere else it sees only the small face.
    full = Recorder([_det(20, 20, 40)], by_shape={(700, 700): [_det(210, 210, 280)]})
    pad = 70  # 0.2 * 350
    short = Recorder([_det(30 + pad, 40 + pad, 280)])
    finder = stills.StillFaceFinder(full, close_range=short, close_range_margin=0.2)
    found = finder.find(image, largest_only=True)
    assert len(found) == 1 and found[0].box == (30, 40, 280, 280)
    assert short.shapes == [(490, 490, 3)]
    assert [d.box[2] for d in finder.detect(image)] == [280, 40]


def test_a_loose_box_around_a_face_is_the_same_face_not_a_second_one() -> None:
    # The short-range model, seeing a scene photo's face far below its usual scale,
    # boxed head, neck and chest around it (deepface img57): IoU with the tight box
    # 0.26, but the tight box lies wholly inside it. One face, the better score kept.
    tight, loose = _det(903, 283, 252, 0.947), _det(697, 283, 493, 0.507)
    assert stills.merge_detections([tight], [loose]) == [tight]
    assert stills.merge_detections([loose], [tight]) == [tight]
    assert stills.same_face(tight, loose) and stills.same_face(loose, tight)
    assert not stills.same_face(tight, _det(1200, 283, 252))
    image = np.zeros((1365, 2048, 3), np.uint8)
    pad = round(0.2 * 2048)
    finder = stills.StillFaceFinder(Recorder([tight]), close_range=Recorder(
        [stills.shift_detection(loose, pad, pad)]), close_range_margin=0.2)
    assert finder.detect(image) == [tight]


def test_a_close_range_face_the_full_range_model_does_not_confirm_is_dropped() -> None:
    # A scene photo the full-range pass reads (it found the face in front): a face only
    # the close-range pass sees (a blurred crowd, deepface img41) must be confirmed by
    # the full-range model on a crop around it, and here it is not.
    image = np.zeros((2070, 2500, 3), np.uint8)
    front, crowd = _det(607, 544, 885, 0.899), _det(1586, 438, 840, 0.582)
    pad = 500
    near = Recorder([stills.shift_detection(d, pad, pad) for d in (front, crowd)])
    refiner = Recorder([])
    finder = stills.StillFaceFinder(Recorder([front]), close_range=near,
                                    close_range_margin=0.2, refiner=refiner,
                                    refine_scales=(3.0,))
    assert [d.box for d in finder.detect(image)] == [front.box]
    assert len(refiner.shapes) == 2  # the crowd's crop (to confirm), then the front face's
    # Confirmed on its crop (2520 px from (746, -2), shrunk to REFINE_MAX_SIDE), it stays,
    # refined once only.
    s = stills.REFINE_MAX_SIDE / 2520
    refiner.by_shape = {(stills.REFINE_MAX_SIDE, stills.REFINE_MAX_SIDE):
                        [_det(840 * s, 840 * s, 840 * s)]}
    refiner.shapes.clear()
    found = finder.detect(image)
    assert [d.box[2] for d in found] == [front.box[2], pytest.approx(840)]
    assert found[1].box == pytest.approx((1586, 438, 840, 840))
    assert len(refiner.shapes) == 2


def test_a_close_range_face_stands_when_the_full_range_pass_found_none() -> None:
    # A tight crop the full-range model cannot read at all: nothing to confirm with.
    image = np.zeros((350, 350, 3), np.uint8)
    finder = stills.StillFaceFinder(Recorder([]), close_range=Recorder([_det(82, 60, 352)]),
                                    close_range_margin=0.2, refiner=Recorder([]))
    assert [d.box for d in finder.detect(image)] == [(12, -10, 352, 352)]


def test_former_retry_keyword_still_works() -> None:
    short = Recorder([_det(100, 100, 100)])
    finder = stills.StillFaceFinder(Recorder(), retry=short, close_range_margin=0.0)
    assert finder.close_range is short
    assert finder.find(np.zeros((300, 300, 3), np.uint8))[0].box == (100, 100, 100, 100)


def test_refinement_maps_the_crop_back_to_the_frame() -> None:
    image = np.zeros((400, 400, 3), np.uint8)
    first = _det(150, 150, 100)
    # In the 300-px crop around it (from (50, 50)), the face sits at (102, 98) size 96.
    refiner = Recorder(by_shape={(300, 300): [_det(102, 98, 96), _det(0, 0, 30)]})
    refined = stills.refine_detection(image, first, refiner, scales=(3.0,))
    assert refined.box == pytest.approx((152, 148, 96, 96))
    assert refined.keypoints[3] == pytest.approx((152 + 48, 148 + 72))
    assert refined.score == first.score


def test_refinement_of_a_huge_face_shrinks_the_crop_and_scales_back() -> None:
    image = np.zeros((1200, 1200, 3), np.uint8)
    first = _det(300, 300, 600)  # crop side 1800 -> shrunk to REFINE_MAX_SIDE
    m = stills.REFINE_MAX_SIDE
    s = m / 1800
    inner = _det(600 * s, 600 * s, 600 * s)  # the crop starts at (-300, -300)
    refiner = Recorder(by_shape={(m, m): [inner]})
    refined = stills.refine_detection(image, first, refiner, scales=(3.0,))
    assert refined.box == pytest.approx((300, 300, 600, 600), abs=1e-6)


def test_refinement_keeps_the_first_pass_when_nothing_or_another_face_is_found() -> None:
    image = np.zeros((400, 400, 3), np.uint8)
    first = _det(150, 150, 100)
    assert stills.refine_detection(image, first, Recorder([]), scales=(3.0,)) is first
    elsewhere = Recorder(by_shape={(300, 300): [_det(0, 0, 40)]})
    assert stills.refine_detection(image, first, elsewhere, scales=(3.0,)) is first


def test_only_the_largest_face_is_refined_when_asked() -> None:
    image = np.zeros((600, 600, 3), np.uint8)
    refiner = Recorder([])
    finder = stills.StillFaceFinder(Recorder([_det(0, 0, 50), _det(200, 200, 200)]),
                                    refiner=refiner, refine_scales=(2.5, 3.0))
    finder.find(image, largest_only=True)
    assert len(refiner.shapes) == 2  # one face, two crops
    finder.find(image)
    assert len(refiner.shapes) == 6


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="refine_scales"):
        stills.StillFaceFinder(Recorder(), refine_scales=(0.5,))
    with pytest.raises(ValueError, match="refine_scales"):
        stills.StillFaceFinder(Recorder(), refine_scales=())


def test_refinement_averages_the_crops() -> None:
    image = np.zeros((400, 400, 3), np.uint8)
    first = _det(150, 150, 100)
    # Crop at 2x: side 200 from (100, 100); at 3x: side 300 from (50, 50). The face is
    # found 2 px right in one and 2 px left in the other: the mean is centred.
    refiner = Recorder(by_shape={(200, 200): [_det(52, 50, 100)],
                                 (300, 300): [_det(98, 100, 100)]})
    refined = stills.refine_detection(image, first, refiner, scales=(2.0, 3.0))
    assert refined.box == pytest.approx((150, 150, 100, 100))
    assert refined.keypoints[0] == pytest.approx((180, 185))


def test_mirrored_refinement_maps_back_and_swaps_left_and_right() -> None:
    image = np.zeros((400, 400, 3), np.uint8)
    first = _det(150, 150, 100)
    # The detector sees the same symmetric face in the crop and in its mirror: mapped
    # back, with left and right swapped, the mirrored pass must agree with the plain one.
    refiner = Recorder(by_shape={(300, 300): [_det(100, 100, 100)]})
    plain = stills.refine_detection(image, first, refiner, scales=(3.0,))
    both = stills.refine_detection(image, first, refiner, scales=(3.0,), mirror=True)
    assert len(refiner.shapes) == 3
    assert both.box == pytest.approx(plain.box)
    np.testing.assert_allclose(both.keypoints, plain.keypoints)
    assert both.keypoints[0] == pytest.approx((180, 185))  # right eye: image left
    assert both.keypoints[4] == pytest.approx((160, 190))  # right ear: image left
