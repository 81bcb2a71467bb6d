"""Condition benchmark pieces: face-size re-rendering, yaw binning, tables, findings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from device.imageio import read_image
from device.lab import conditions as cond
from device.types import Detection
from device.vision.quality import head_pose

# An average head (millimetres; x to the subject's left on screen, y up, z towards the
# camera), the six BlazeFace keypoints: right eye, left eye, nose tip, mouth, right and
# left ear tragion.
HEAD = np.array([(-31.5, 34, -27), (31.5, 34, -27), (0, 0, 0), (0, -30, -25),
                 (-72, 25, -100), (72, 25, -100)], dtype=np.float64)


def turned(yaw_deg: float, scale: float = 1.2, centre: tuple[float, float] = (320, 180)
           ) -> Detection:
    """The head turned by ``yaw_deg`` about its vertical axis, seen orthographically."""
    t = math.radians(yaw_deg)
    x = HEAD[:, 0] * math.cos(t) + HEAD[:, 2] * math.sin(t)
    points = tuple((centre[0] + scale * px, centre[1] - scale * py)
                   for px, py in zip(x, HEAD[:, 1], strict=True))
    return Detection(box=(centre[0] - 60, centre[1] - 70, 120, 140), score=0.9,
                     keypoints=points)


@pytest.mark.parametrize("yaw", [0.0, 10.0, 20.0, 35.0, 50.0, -25.0, -60.0])
def test_yaw_of_a_rotated_template_is_its_rotation(yaw: float) -> None:
    pose = head_pose(turned(yaw))
    assert pose is not None
    assert pose.yaw == pytest.approx(yaw, abs=0.5)


@pytest.mark.parametrize(("yaw", "name"), [(5.0, "0-15°"), (20.0, "15-30°"), (40.0, "30-45°"),
                                           (70.0, "> 45°"), (-40.0, "30-45°")])
def test_synthetic_yaws_land_in_their_bins(yaw: float, name: str) -> None:
    pose = head_pose(turned(yaw))
    assert pose is not None
    hist = cond.yaw_histogram(np.array([pose.yaw]))
    assert hist[name] == 1 and sum(hist.values()) == 1


def _embedded(labels: list[str], yaws: list[float], vectors: np.ndarray
              ) -> cond.ConditionEmbeddings:
    return cond.ConditionEmbeddings(
        root=Path("set"), model_id="m", paths=tuple(f"{i}.jpg" for i in range(len(labels))),
        labels=tuple(labels), native=vectors.astype(np.float32),
        yaw=np.asarray(yaws, dtype=np.float64), sized={}, upscaled={})


def test_pose_pairs_are_binned_by_the_larger_yaw() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(4, 8))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    # a/a' frontal (0, 10), b/b' turned (20, 50): pairs (a,a') -> 0-15, (b,b') -> >45,
    # (a,b)=20 -> 15-30, (a,b')=50 -> >45, (a',b)=20, (a',b')=50.
    rows = {r.name: r for r in cond.pose_table(_embedded(["a", "a", "b", "b"],
                                                         [0.0, -10.0, 20.0, 50.0], v))}
    assert (rows["0-15°"].genuine, rows["0-15°"].impostors) == (1, 0)
    assert (rows["15-30°"].genuine, rows["15-30°"].impostors) == (0, 2)
    assert (rows["> 45°"].genuine, rows["> 45°"].impostors) == (1, 2)
    assert all(not r.resolvable and r.tar is None for r in rows.values())  # < 1,000 impostors


def test_missed_faces_reject_every_pair() -> None:
    rng = np.random.default_rng(1)
    labels = [f"p{i // 2}" for i in range(60)]
    centres = rng.normal(size=(30, 16))
    v = np.repeat(centres, 2, axis=0) + 0.05 * rng.normal(size=(60, 16))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    found = np.ones(60, dtype=bool)
    found[:10] = False  # five identities' both photos missed
    e = cond.ConditionEmbeddings(
        root=Path("set"), model_id="m", paths=tuple(str(i) for i in range(60)),
        labels=tuple(labels), native=v.astype(np.float32), yaw=np.zeros(60),
        sized={32: (np.where(found[:, None], v, 0).astype(np.float32), found)},
        upscaled={32: 0})
    (row,) = cond.size_table(e, fmr=1e-3)
    assert row.missed == 10 and row.genuine == 30 and row.impostors == 1740
    assert row.tar == pytest.approx(25 / 30)


def _demo(name: str, gallery: int, fpir: float, false_matches: int, impostors: int
          ) -> cond.Demographic:
    from device.lab.openset import OpenSetResult

    result = OpenSetResult(gallery, 1, 1, 0, 0, 1.0, (), ((0.93, fpir, 0.1),))
    return cond.Demographic(Path(name), 0.0, result, ((1e-3, 0.93),), impostors,
                            (false_matches,))


def test_a_set_whose_impostors_match_more_often_is_said_plainly() -> None:
    # The big gallery has the higher FPIR, but the small set's impostor pairs match
    # five times as often at the same threshold: that is the finding, not the FPIR.
    lines = cond.higher_fmr_findings([_demo("lfw", 737, 0.30, 1_000, 1_000_000),
                                      _demo("diversity", 3, 0.04, 500, 100_000)])
    assert len(lines) == 1
    line = lines[0]
    assert "diversity's impostor pairs match at FMR 0.005 (500 of 100,000)" in line
    assert "5.0 times lfw's 0.001 (1,000 of 1,000,000)" in line
    assert "FPIR 0.0400 with a gallery of 3 against 0.3000 with 737" in line


def test_equal_fmr_is_no_finding_and_a_set_without_impostors_is_left_out() -> None:
    assert cond.higher_fmr_findings([_demo("a", 5, 0.1, 10, 1000),
                                     _demo("b", 9, 0.2, 20, 2000)]) == []
    assert cond.higher_fmr_findings([_demo("a", 5, 0.1, 10, 1000),
                                     _demo("b", 1, 0.0, 0, 0)]) == []


def test_impostor_counts_are_cross_identity_pairs_at_or_above_each_threshold() -> None:
    # Four photos of two people on a circle: known cosines between every pair.
    angles = np.radians([0.0, 10.0, 60.0, 90.0])
    v = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    e = cond.ConditionEmbeddings(
        root=Path("set"), model_id="m", paths=("a1", "a2", "b1", "b2"),
        labels=("a", "a", "b", "b"), native=v, yaw=np.zeros(4), sized={}, upscaled={})
    # Cross pairs: 60, 90, 50, 80 degrees -> cosines 0.5, 0, 0.643, 0.174.
    impostors, counts = cond.impostor_counts(e, [0.5, 0.6, 0.9])
    assert impostors == 4 and counts == (2, 1, 0)
    demo = cond.Demographic(Path("set"), 0.0, _demo("x", 1, 0.0, 0, 0).result,
                            ((1e-3, 0.5),), impostors, counts[:1])
    assert demo.fmr(0) == 0.5 and demo.to_json()["at_shipped_threshold"][0]["fmr"] == 0.5


@pytest.mark.parametrize("width", cond.FACE_SIZES)
def test_rerendered_face_width_is_the_target(datasets: Path, width: int) -> None:
    """On a real photo: the face box after re-rendering is within 1 px of the target,
    and the detector finds the face there at about that width."""
    from device.vision.blazeface import BlazeFaceDetector
    from device.vision.stills import StillFaceFinder

    image = read_image(datasets / "media/single/obama.jpg")
    with StillFaceFinder.from_config() as finder:
        face = cond.native_face(image, finder)
    assert face is not None and face.box[2] > 96  # a real shrink for every size
    rendered = cond.render_face_width(image, face.box, width)
    assert rendered.image.shape == (360, 640, 3)
    assert abs(rendered.box[2] - width) <= 1.0
    assert not rendered.upscaled
    # The pixels moved with the box: the re-rendered face is where the box says.
    if width >= 32:
        with BlazeFaceDetector() as detector:
            found = [d for d in detector.detect(rendered.image)
                     if cond.iou(d.box, rendered.box) >= cond.MIN_IOU]
        assert found, f"no face at {width} px"
        assert abs(found[0].box[2] - width) <= 0.25 * width


def test_rendering_a_large_photo_keeps_the_face_on_the_canvas() -> None:
    image = np.zeros((2000, 3000, 3), np.uint8)
    box = (2500.0, 1500.0, 100.0, 120.0)  # near a corner
    rendered = cond.render_face_width(image, box, 96)
    x, y, w, h = rendered.box
    assert x >= 0 and x + w <= 640 and y >= 0 and y + h <= 360
    assert abs(w - 96) <= 1.0
    with pytest.raises(ValueError):
        cond.render_face_width(image, (0, 0, 0, 10), 32)


def _table(model_id: str, root: str, fmr: float | None) -> dict[str, object]:
    sizes = [{"name": f"{s} px", "tar": s / 100} for s in cond.FACE_SIZES]
    pose = [{"name": cond.yaw_bin_name(lo, hi), "tar": 0.5} for lo, hi in cond.YAW_BINS]
    return {"model_id": model_id, "root": root, "size": sizes, "pose": pose,
            "demographic": {"fnir_at_fpir": [{"target_fpir": 1e-2, "fnir": 0.4}],
                            "at_shipped_threshold": [
                                {"target_fmr": 1e-3, "fpir": 0.1, "fmr": fmr},
                                {"target_fmr": 1e-4, "fpir": 0.01, "fmr": 0.0}]}}


def test_plot_has_a_panel_per_condition_and_names_lfw_by_its_set(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image as PILImage

    out = tmp_path / "conditions.png"
    cond.plot_conditions([_table("m", "/d/lfw/people", 1e-3),
                          _table("m", "/d/diversity", None)], out)
    with PILImage.open(out) as png:
        assert png.format == "PNG" and png.width > 3 * png.height
    assert cond._set_label({"model_id": "m", "root": "/d/lfw/people"}) == "m / lfw"


def test_plot_to_an_unwritable_path_is_an_image_error(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from device.errors import ImageError

    with pytest.raises(ImageError, match="cannot write the plot"):
        cond.plot_conditions([_table("m", "/d/x", 1e-3)], tmp_path / "no" / "dir" / "p.png")
