"""The condition benchmark and the clip scorer on real photos with the real encoders.

One detection pass serves every encoder: the encoders must see exactly the same faces
(same photos kept, same faces found at each size, same yaw) and each must give what
it gives when run alone. The clip scorer runs on a short clip written from LFW photos
(person A in the first frames, person B after), so which detections are whose is known.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from device.cli import main
from device.imageio import read_image
from device.lab import clip_scores
from device.lab import conditions as cond
from device.modelzoo import build as model_build
from device.vision import models as model_manifest
from device.vision.blazeface import BlazeFaceConfig, BlazeFaceDetector
from device.vision.dlib_int8 import DlibInt8Embedder, DlibInt8EmbedderConfig
from device.vision.dlib_tflite import DlibTFLiteEmbedder, DlibTFLiteEmbedderConfig
from device.vision.stills import StillFaceFinder

pytest.importorskip("ai_edge_litert.interpreter")
pytest.importorskip("face_recognition_models")
pytestmark = pytest.mark.dataset

FLOAT_ID, INT8_ID = "dlib-resnet-v1", "dlib-resnet-v1-int8"
#: Three LFW people with four photos or more (sorted names).
PEOPLE = ("Colin_Powell", "Hugo_Chavez", "Tony_Blair")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    for model_id in (FLOAT_ID, INT8_ID):
        model_build.build_model(model_manifest.get_spec(model_id), directory)
    return directory


@pytest.fixture(scope="module")
def models(cache: Path) -> Iterator[dict[str, Any]]:
    with StillFaceFinder.from_config(cache_dir=cache) as finder, \
            BlazeFaceDetector(BlazeFaceConfig(), cache_dir=cache) as camera, \
            DlibTFLiteEmbedder(DlibTFLiteEmbedderConfig(), cache_dir=cache) as fp, \
            DlibInt8Embedder(DlibInt8EmbedderConfig(), cache_dir=cache) as q:
        yield {"finder": finder, "camera": camera, "float": fp, "int8": q}


def _photos(datasets: Path, per_person: int = 3) -> tuple[Path, list[str], list[str]]:
    root = datasets / "lfw" / "people"
    rel, labels = [], []
    for person in PEOPLE:
        photos = sorted((root / person).glob("*.jpg"))[:per_person]
        if len(photos) < per_person:
            pytest.skip(f"{root / person}: fewer than {per_person} photos")
        rel += [f"{person}/{p.name}" for p in photos]
        labels += [person] * per_person
    return root, rel, labels


def test_every_encoder_embeds_the_same_faces(datasets: Path, models: dict[str, Any]) -> None:
    root, rel, labels = _photos(datasets)
    both = cond.embed_conditions(root, rel, labels, finder=models["finder"],
                                 camera_detector=models["camera"],
                                 embedders=[models["float"], models["int8"]])
    fp, q = both
    assert (fp.model_id, q.model_id) == (FLOAT_ID, INT8_ID)
    assert fp.paths == q.paths and len(fp.paths) == len(rel)
    np.testing.assert_array_equal(fp.yaw, q.yaw)
    assert fp.upscaled == q.upscaled
    for size in cond.FACE_SIZES:
        np.testing.assert_array_equal(fp.sized[size][1], q.sized[size][1])
    assert fp.sized[96][1].all()  # a 96-px LFW face is found
    # int8 is close to float on the same chips.
    assert float(np.min(np.sum(fp.native * q.native, axis=1))) > 0.98
    (alone,) = cond.embed_conditions(root, rel, labels, finder=models["finder"],
                                     camera_detector=models["camera"],
                                     embedders=[models["float"]])
    np.testing.assert_allclose(alone.native, fp.native, atol=1e-6)
    for size in cond.FACE_SIZES:
        np.testing.assert_allclose(alone.sized[size][0], fp.sized[size][0], atol=1e-6)


#: Photos (under the datasets) whose head turn is plain to see: the nose points to the
#: image's left (negative yaw), to its right (positive), or at the camera.
VISIBLE_POSE = {
    "lfw/people/Bill_Frist/Bill_Frist_0002.jpg": "left",
    "lfw/people/Coco_dEste/Coco_dEste_0001.jpg": "right",
    "lfw/people/Ben_Affleck/Ben_Affleck_0002.jpg": "right",
    "media/single/obama.jpg": "frontal",
}


@pytest.mark.parametrize(("photo", "turn"), sorted(VISIBLE_POSE.items()))
def test_yaw_on_photos_whose_pose_is_visible(datasets: Path, models: dict[str, Any],
                                             photo: str, turn: str) -> None:
    from device.vision.quality import head_pose

    path = datasets / photo
    if not path.exists():
        pytest.skip(f"{path} is not in this copy of the datasets")
    image = read_image(path)
    yaws = []
    for picture in (image, image[:, ::-1].copy()):  # the photo and its mirror
        face = cond.native_face(picture, models["finder"])
        assert face is not None, photo
        pose = head_pose(face)
        assert pose is not None, photo
        yaws.append(pose.yaw)
    yaw, mirrored = yaws
    if turn == "frontal":
        assert abs(yaw) < 15, (photo, yaw)
    else:
        assert (yaw < -35) if turn == "left" else (yaw > 35), (photo, yaw)
    # The mirror turns the head the other way by about as much (the detector is not
    # exactly mirror-symmetric, and a keypoint's error weighs more the more it turns).
    assert mirrored == pytest.approx(-yaw, abs=max(3.0, 0.15 * abs(yaw))), (photo, mirrored)


def test_eval_conditions_prints_one_table_per_encoder(
        datasets: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEGATE_MODEL_DIR", str(cache))
    result = CliRunner().invoke(main, [
        "eval", "conditions", "--root", str(datasets / "diversity"), "--max-images", "4",
        "--embedder", FLOAT_ID, "--embedder", INT8_ID, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output.splitlines()[-1])
    tables = doc["tables"]
    assert [t["model_id"] for t in tables] == [FLOAT_ID, INT8_ID]
    assert tables[0]["photos"] == tables[1]["photos"] >= 18
    assert [r["failures_to_detect"] for r in tables[0]["size"]] == \
        [r["failures_to_detect"] for r in tables[1]["size"]]
    for table in tables:
        thresholds = [s["threshold"] for s in table["demographic"]["at_shipped_threshold"]]
        assert len(thresholds) == 2 and thresholds[0] < thresholds[1]


def _write_clip(path: Path, photos: list[Path]) -> None:
    """Each photo, centred on a 640x360 frame, four frames each (MJPG in AVI)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (640, 360))
    assert writer.isOpened()
    try:
        for photo in photos:
            image = read_image(photo)
            frame = np.zeros((360, 640, 3), np.uint8)
            h, w = image.shape[:2]
            top, left = (360 - h) // 2, (640 - w) // 2
            frame[top:top + h, left:left + w] = image
            for _ in range(4):
                writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    finally:
        writer.release()


def test_clip_scores_a_person_in_their_frames_above_everyone_else(
        datasets: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = datasets / "lfw" / "people"
    blair = sorted((root / "Tony_Blair").glob("*.jpg"))
    powell = sorted((root / "Colin_Powell").glob("*.jpg"))
    clip = tmp_path / "clip.avi"
    _write_clip(clip, [blair[1], blair[2], powell[1], powell[2]])
    monkeypatch.setenv("FACEGATE_MODEL_DIR", str(cache))
    result = CliRunner().invoke(main, [
        "eval", "clip", "--video", str(clip), "--reference", f"blair={blair[0]}",
        "--reference", f"powell={powell[0]}", "--on-screen", "blair=0-7",
        "--on-screen", "powell=8-15", "--embedder", FLOAT_ID, "--embedder", INT8_ID,
        "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    people = json.loads(result.output.splitlines()[-1])["people"]
    assert [(p["model_id"], p["person"]) for p in people] == [
        (FLOAT_ID, "blair"), (FLOAT_ID, "powell"), (INT8_ID, "blair"), (INT8_ID, "powell")]
    for p in people:
        assert p["in_window"] >= 8  # one face per frame in their frames
        assert p["separable"], p
        assert p["best_in_window"] > p["best_outside"] + 0.02
        assert p["top"][0]["in_window"]
        assert set(p["matchable_at"]) == {"0.001", "0.0001"}


def test_clip_refuses_what_it_cannot_read(datasets: Path, tmp_path: Path) -> None:
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"not a video")
    photo = next((datasets / "lfw" / "people" / "Tony_Blair").glob("*.jpg"))
    runner = CliRunner()
    result = runner.invoke(main, ["eval", "clip", "--video", str(bad), "--reference",
                                  f"a={photo}", "--on-screen", "b=0-3"])
    assert result.exit_code == 2 and "no --reference for that id" in result.output
    result = runner.invoke(main, ["eval", "clip", "--video", str(bad), "--reference",
                                  f"a={photo}", "--on-screen", "a=5-3"])
    assert result.exit_code == 2 and "FIRST <= LAST" in result.output


@pytest.mark.parametrize(("text", "windows"), [
    ("0-34", [(0, 34)]), ("0-22,78-214", [(0, 22), (78, 214)]), ("7", [(7, 7)])])
def test_frame_windows_parse(text: str, windows: list[tuple[int, int]]) -> None:
    assert clip_scores.parse_windows(text) == windows


@pytest.mark.parametrize("text", ["", "a-b", "5-3", "-1-4", "3-"])
def test_malformed_frame_windows_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="frame window"):
        clip_scores.parse_windows(text)
