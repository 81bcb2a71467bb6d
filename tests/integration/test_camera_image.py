"""Image file/folder replay on real files, including broken ones written here."""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from device.camera import (
    ImageSource,
    ImageSourceConfig,
    SourceState,
    open_source,
    parse_source_config,
)
from device.errors import CameraError, ImageError
from device.types import Frame


@pytest.fixture
def single(datasets: Path) -> Path:
    return datasets / "media" / "single"


@pytest.fixture
def mixed_folder(tmp_path: Path, single: Path) -> Path:
    """Two good images, three bad ones, a non-image, and a good one in a sub-folder."""
    root = tmp_path / "replay"
    (root / "sub").mkdir(parents=True)
    shutil.copyfile(single / "face.jpg", root / "a_good.jpg")
    (root / "b_empty.jpg").write_bytes(b"")
    data = (single / "face.jpg").read_bytes()
    (root / "c_truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "d_text.jpg").write_text("this is a shopping list, not a photo\n")
    shutil.copyfile(single / "grace_hopper.bmp", root / "e_good.bmp")
    (root / "notes.txt").write_text("ignored: not an image suffix\n")
    shutil.copyfile(single / "obama.jpg", root / "sub" / "f_good.jpg")
    return root


def take(source: ImageSource, n: int) -> list[Frame]:
    frames: list[Frame] = []
    for frame in source:
        frames.append(frame)
        if len(frames) == n:
            break
    return frames


def test_folder_replay_skips_and_counts_bad_images(
    mixed_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = ImageSourceConfig(camera_id="replay", path=mixed_folder)
    with caplog.at_level(logging.WARNING), open_source(cfg) as source:
        frames = list(source)
        health = source.health()
    assert [Path(f.source).name for f in frames] == ["a_good.jpg", "e_good.bmp"]
    assert [f.seq for f in frames] == [0, 1]
    for f in frames:
        assert f.camera_id == "replay"
        assert f.image.dtype == np.uint8 and f.image.ndim == 3 and f.image.shape[2] == 3
    assert frames[0].image.shape == (355, 512, 3)
    assert health.state is SourceState.ENDED
    assert (health.frames_read, health.skipped, health.errors) == (2, 3, 3)
    assert health.last_error is not None and "d_text.jpg" in health.last_error
    logged = caplog.text
    for name in ("b_empty.jpg", "c_truncated.jpg", "d_text.jpg"):
        assert name in logged
    assert "empty" in logged and "truncated" in logged.lower()


def test_recursive_includes_sub_folders_in_sorted_order(mixed_folder: Path) -> None:
    cfg = ImageSourceConfig(camera_id="replay", path=mixed_folder, recursive=True)
    with ImageSource(cfg) as source:
        names = [Path(f.source).relative_to(mixed_folder).as_posix() for f in source]
    assert names == ["a_good.jpg", "e_good.bmp", "sub/f_good.jpg"]


def test_loop_restarts_and_keeps_counting(mixed_folder: Path) -> None:
    cfg = ImageSourceConfig(camera_id="replay", path=mixed_folder, loop=True)
    with ImageSource(cfg) as source:
        frames = take(source, 5)
        health = source.health()
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
    assert [Path(f.source).name for f in frames] == ["a_good.jpg", "e_good.bmp"] * 2 + [
        "a_good.jpg"
    ]
    assert health.skipped == 6  # three bad files on each of two full passes
    timestamps = [f.timestamp for f in frames]
    assert timestamps == sorted(timestamps)


def test_folder_of_only_bad_images_fails_after_one_pass(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.jpg").write_text("not a jpeg")
    with ImageSource(ImageSourceConfig(camera_id="bad", path=tmp_path, loop=True)) as source:
        with pytest.raises(CameraError, match=r"none of the 2 image\(s\) could be read"):
            list(source)
        health = source.health()
    assert health.state is SourceState.FAILED
    assert health.skipped == 2


@pytest.mark.parametrize("kind", ["empty", "truncated", "text"])
def test_a_single_bad_image_file_fails_at_open_naming_it(
    tmp_path: Path, single: Path, kind: str
) -> None:
    path = tmp_path / f"{kind}.jpg"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = (single / "face.jpg").read_bytes()
        path.write_bytes(data[: len(data) // 3])
    else:
        path.write_text("hello, I am text\n")
    with pytest.raises(ImageError, match=re.escape(str(path))):
        open_source(ImageSourceConfig(camera_id="one", path=path))


def test_missing_path_is_a_camera_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(CameraError, match=re.escape(f"{missing}: no such file or folder")):
        open_source(parse_source_config({"type": "image", "camera_id": "x", "path": missing}))


def test_folder_without_images_says_so_and_hints_recursive(tmp_path: Path, single: Path) -> None:
    (tmp_path / "deeper").mkdir()
    shutil.copyfile(single / "face.jpg", tmp_path / "deeper" / "face.jpg")
    with pytest.raises(CameraError, match=r"no image files.*recursive: true"):
        ImageSource(ImageSourceConfig(camera_id="x", path=tmp_path))
    with ImageSource(ImageSourceConfig(camera_id="x", path=tmp_path, recursive=True)) as source:
        assert len(list(source)) == 1


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # 40 wide, 20 high: left half red, right half blue; EXIF 6 = "rotate 90° clockwise
    # to display", so the upright frame is 20 wide, 40 high with red on top.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    image = PILImage.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    image.save(path, quality=95, exif=exif.tobytes())
    assert PILImage.open(path).getexif()[0x0112] == 6

    with ImageSource(ImageSourceConfig(camera_id="exif", path=path)) as source:
        (frame,) = list(source)
    assert frame.image.shape == (40, 20, 3)
    top = frame.image[:15].reshape(-1, 3).mean(axis=0)
    bottom = frame.image[25:].reshape(-1, 3).mean(axis=0)
    assert top[0] > 200 and top[2] < 50
    assert bottom[2] > 200 and bottom[0] < 50


def test_grayscale_images_come_out_rgb(datasets: Path) -> None:
    person = sorted((datasets / "lfw" / "people").iterdir())[0]
    path = sorted(person.glob("*.jpg"))[0]
    with ImageSource(ImageSourceConfig(camera_id="lfw", path=path)) as source:
        (frame,) = list(source)
    assert frame.image.shape == (350, 350, 3)
    assert np.array_equal(frame.image[..., 0], frame.image[..., 1])


def test_single_image_loop_yields_independent_copies(single: Path) -> None:
    cfg = ImageSourceConfig(camera_id="still", path=single / "face.jpg", loop=True)
    with ImageSource(cfg) as source:
        a, b = take(source, 2)
    a.image[:] = 0
    assert b.image.any()


def test_fps_paces_delivery(single: Path) -> None:
    cfg = ImageSourceConfig(camera_id="still", path=single / "face.jpg", loop=True, fps=50)
    started = time.monotonic()
    with ImageSource(cfg) as source:
        frames = take(source, 6)
    assert time.monotonic() - started >= 5 / 50
    assert len(frames) == 6


def test_close_from_another_thread_ends_a_paced_wait(single: Path) -> None:
    cfg = ImageSourceConfig(camera_id="slow", path=single / "face.jpg", loop=True, fps=0.2)
    source = ImageSource(cfg)
    first = threading.Event()
    frames: list[Frame] = []

    def consume() -> None:
        for frame in source:
            frames.append(frame)
            first.set()

    thread = threading.Thread(target=consume)
    thread.start()
    assert first.wait(10)
    started = time.monotonic()
    source.close()  # the consumer is now in a 5 s pacing wait
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 4
    assert len(frames) == 1
    assert source.health().state is SourceState.CLOSED
    source.close()
    assert list(source) == []
