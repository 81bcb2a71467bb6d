"""Video-file replay through OpenCV on real files: the dataset clip and videos made here."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.camera import SourceState, VideoSource, VideoSourceConfig, open_source
from device.errors import CameraError
from device.types import Frame

CLIP = Path("media") / "video" / "short_hamilton_clip.mp4"


def write_video(path: Path, frames: int = 12, fps: float = 10.0, size: tuple[int, int] = (64, 48),
                fourcc: str = "MJPG") -> Path:
    """Write a small real video: frame i is solid BGR (0, 0, 255) — pure red — with
    brightness encoding i in its top-left block, so order and colour can be checked."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"cannot write {path} with {fourcc}"
    for i in range(frames):
        image = np.zeros((height, width, 3), np.uint8)
        image[:, :] = (0, 0, 255)  # BGR red
        image[:16, :16] = (10 * i % 250,) * 3  # frame index as a gray level
        writer.write(image)
    writer.release()
    return path


def index_of(frame: Frame) -> int:
    return round(float(frame.image[2:14, 2:14].mean()) / 10)


def take(source: VideoSource, n: int) -> list[Frame]:
    frames: list[Frame] = []
    for frame in source:
        frames.append(frame)
        if len(frames) == n:
            break
    return frames


@pytest.fixture
def small_video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "small.avi")


def test_dataset_clip_all_frames_rgb(datasets: Path) -> None:
    cfg = VideoSourceConfig(camera_id="clip", path=datasets / CLIP, start_time=1000.0)
    with open_source(cfg) as source:
        assert isinstance(source, VideoSource)
        assert source.declared_frames == 275
        count = 0
        first: Frame | None = None
        last: Frame | None = None
        for frame in source:
            if first is None:
                first = frame
            last = frame
            count += 1
        health = source.health()
    assert count == 275
    assert first is not None and last is not None
    assert first.image.shape == (360, 640, 3) and first.image.dtype == np.uint8
    assert first.image.flags.c_contiguous
    assert (first.seq, last.seq) == (0, 274)
    assert first.timestamp == pytest.approx(1000.0)
    assert last.timestamp == pytest.approx(1000.0 + 274 / source.fps, abs=0.05)
    assert first.source.endswith("short_hamilton_clip.mp4")
    assert health.state is SourceState.ENDED
    assert (health.frames_read, health.errors, health.last_error) == (275, 0, None)


def test_frames_are_converted_from_bgr_to_rgb(small_video: Path) -> None:
    with VideoSource(VideoSourceConfig(camera_id="v", path=small_video)) as source:
        frames = list(source)
    assert len(frames) == 12
    r, g, b = frames[0].image[30:, 30:].reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 40 and b < 40
    assert [index_of(f) for f in frames] == list(range(12))


def test_file_timestamps_follow_the_file_position(small_video: Path) -> None:
    cfg = VideoSourceConfig(camera_id="v", path=small_video, start_time=0.0)
    with VideoSource(cfg) as source:
        stamps = [f.timestamp for f in source]
    assert stamps == pytest.approx([i / 10 for i in range(12)], abs=1e-3)


def test_wall_timestamps_are_the_read_time(small_video: Path) -> None:
    before = time.time()
    with VideoSource(VideoSourceConfig(camera_id="v", path=small_video,
                                       timestamps="wall")) as source:
        stamps = [f.timestamp for f in source]
    after = time.time()
    assert all(before <= t <= after for t in stamps)
    assert stamps == sorted(stamps)


def test_loop_continues_seq_and_keeps_timestamps_increasing(small_video: Path) -> None:
    cfg = VideoSourceConfig(camera_id="v", path=small_video, loop=True, start_time=0.0)
    with VideoSource(cfg) as source:
        frames = take(source, 30)
    assert [f.seq for f in frames] == list(range(30))
    assert [index_of(f) for f in frames] == [i % 12 for i in range(30)]
    assert [f.timestamp for f in frames] == pytest.approx([i / 10 for i in range(30)], abs=1e-3)


def test_realtime_paces_at_the_file_rate(tmp_path: Path) -> None:
    path = write_video(tmp_path / "fast.avi", frames=6, fps=50.0)
    started = time.monotonic()
    with VideoSource(VideoSourceConfig(camera_id="v", path=path, realtime=True)) as source:
        assert len(list(source)) == 6
    assert time.monotonic() - started >= 5 / 50


def test_mp4_written_here_reads_back(tmp_path: Path) -> None:
    path = write_video(tmp_path / "small.mp4", fourcc="mp4v", frames=8)
    with VideoSource(VideoSourceConfig(camera_id="v", path=path)) as source:
        frames = list(source)
    assert len(frames) == 8 and frames[0].image.shape == (48, 64, 3)


def test_truncated_video_ends_early_and_is_reported(tmp_path: Path) -> None:
    whole = write_video(tmp_path / "whole.avi", frames=30, size=(160, 120))
    data = whole.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with VideoSource(VideoSourceConfig(camera_id="v", path=cut)) as source:
        frames = list(source)
        health = source.health()
    assert 0 < len(frames) < 30
    assert health.state is SourceState.ENDED
    assert health.errors == 1
    assert health.last_error is not None
    assert "cut.avi" in health.last_error and "truncated" in health.last_error


def test_truncated_copy_of_the_dataset_clip_is_refused(tmp_path: Path, datasets: Path) -> None:
    data = (datasets / CLIP).read_bytes()
    cut = tmp_path / "clip_cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: lost
    with pytest.raises(CameraError, match=r"clip_cut\.mp4: not a video"):
        VideoSource(VideoSourceConfig(camera_id="v", path=cut))


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("notes.mp4", b"just some text, not a video\n" * 20, "not a video"),
        ("empty.mp4", b"", "empty"),
    ],
)
def test_not_a_video_is_a_camera_error_naming_it(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CameraError, match=rf"{re.escape(name)}.*{message}"):
        open_source(VideoSourceConfig(camera_id="v", path=path))


def test_missing_file_and_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match=r"gone\.mp4: no such video file"):
        VideoSource(VideoSourceConfig(camera_id="v", path=tmp_path / "gone.mp4"))
    with pytest.raises(CameraError, match="not a regular file"):
        VideoSource(VideoSourceConfig(camera_id="v", path=tmp_path))


def test_close_mid_replay_from_another_thread(tmp_path: Path) -> None:
    path = write_video(tmp_path / "slow.avi", frames=5, fps=0.5)  # 2 s per frame
    source = VideoSource(VideoSourceConfig(camera_id="v", path=path, realtime=True))
    first = threading.Event()
    got: list[Frame] = []

    def consume() -> None:
        for frame in source:
            got.append(frame)
            first.set()

    thread = threading.Thread(target=consume)
    thread.start()
    assert first.wait(10)
    source.close()
    thread.join(10)
    assert not thread.is_alive()
    assert len(got) == 1
    assert source.health().state is SourceState.CLOSED
    source.close()
