"""Several cameras at once into one bounded queue: failures isolated, drops counted exactly."""

from __future__ import annotations

import queue
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

from device.camera import (
    BaseSource,
    CameraRunner,
    FrameQueue,
    ImageSource,
    ImageSourceConfig,
    ReconnectConfig,
    RtspSource,
    RtspSourceConfig,
    SourceState,
    VideoSource,
    VideoSourceConfig,
)
from device.camera.capture import Capture
from device.types import Frame
from tests.integration.test_camera_video import write_video


@pytest.fixture
def folder(tmp_path: Path, datasets: Path) -> Path:
    root = tmp_path / "stills"
    root.mkdir()
    for name in ("face.jpg", "obama.jpg", "grace_hopper.bmp"):
        shutil.copyfile(datasets / "media" / "single" / name, root / name)
    (root / "broken.jpg").write_bytes(b"")
    return root


def dead_rtsp(tmp_path: Path) -> RtspSource:
    def opener(url: str) -> Capture:
        return cv2.VideoCapture(str(tmp_path / "unreachable.avi"), cv2.CAP_FFMPEG)

    cfg = RtspSourceConfig(
        camera_id="gate", url="rtsp://u:pw@198.51.100.7/live",
        reconnect=ReconnectConfig(initial_delay_s=0.001, max_delay_s=0.002, max_attempts=3),
    )
    return RtspSource(cfg, opener=opener)


class Exploding(BaseSource):
    """A source with a bug: raises something that is not a DeviceError."""

    def __init__(self) -> None:
        super().__init__("buggy", "test")

    def _frames(self) -> Iterator[Frame]:
        raise RuntimeError("bug in a backend")
        yield  # pragma: no cover


def drain(frames: FrameQueue) -> list[Frame]:
    out: list[Frame] = []
    while True:
        try:
            out.append(frames.get(timeout=0))
        except queue.Empty:
            return out


def test_failing_cameras_do_not_stop_the_others(tmp_path: Path, folder: Path) -> None:
    video = write_video(tmp_path / "v.avi", frames=12)
    sources = [
        ImageSource(ImageSourceConfig(camera_id="stills", path=folder)),
        dead_rtsp(tmp_path),
        VideoSource(VideoSourceConfig(camera_id="clip", path=video)),
        Exploding(),
    ]
    with CameraRunner(sources, maxsize=100) as runner:
        assert runner.wait(60)
        frames = drain(runner.queue)
        failures = runner.failures()
        health = runner.health()
    by_camera: dict[str, list[int]] = {}
    for f in frames:
        by_camera.setdefault(f.camera_id, []).append(f.seq)
    assert by_camera == {"stills": [0, 1, 2], "clip": list(range(12))}
    assert sorted(failures) == ["buggy", "gate"]
    assert "gave up after 3 failed attempt(s)" in str(failures["gate"])
    assert "pw" not in str(failures["gate"])
    assert isinstance(failures["buggy"], RuntimeError)
    assert health["gate"].state is SourceState.FAILED
    assert health["buggy"].state is SourceState.FAILED
    assert health["stills"].state is SourceState.ENDED and health["stills"].skipped == 1
    assert health["clip"].state is SourceState.ENDED
    assert runner.queue.stats().dropped == 0


def test_drops_are_counted_exactly_when_nobody_consumes(tmp_path: Path) -> None:
    a = write_video(tmp_path / "a.avi", frames=12)
    b = write_video(tmp_path / "b.avi", frames=9)
    frames = FrameQueue(4)
    runner = CameraRunner([
        VideoSource(VideoSourceConfig(camera_id="a", path=a)),
        VideoSource(VideoSourceConfig(camera_id="b", path=b)),
    ], frames)
    with runner:
        assert runner.wait(60)
    stats = frames.stats()
    assert (stats.put, stats.dropped, stats.depth) == (21, 17, 4)
    left = drain(frames)
    for camera, total in (("a", 12), ("b", 9)):
        kept = [f.seq for f in left if f.camera_id == camera]
        assert stats.dropped_by_camera.get(camera, 0) + len(kept) == total
        assert kept == list(range(total - len(kept), total))  # the newest survive


def test_stop_ends_endless_sources_promptly(tmp_path: Path, folder: Path) -> None:
    video = write_video(tmp_path / "slow.avi", frames=5, fps=0.5)
    sources = [
        ImageSource(ImageSourceConfig(camera_id="stills", path=folder, loop=True, fps=0.5)),
        VideoSource(VideoSourceConfig(camera_id="clip", path=video, loop=True, realtime=True)),
    ]
    runner = CameraRunner(sources, maxsize=8)
    runner.start()
    seen = {runner.queue.get(timeout=30).camera_id, runner.queue.get(timeout=30).camera_id}
    assert seen == {"stills", "clip"}
    assert not runner.finished
    runner.stop(timeout=10)
    assert runner.wait(0)
    assert runner.failures() == {}
    assert all(h.state is SourceState.CLOSED for h in runner.health().values())


def test_duplicate_camera_ids_are_refused(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", frames=2)
    cfg = VideoSourceConfig(camera_id="same", path=video)
    with pytest.raises(ValueError, match="same"):
        CameraRunner([VideoSource(cfg), VideoSource(cfg)])


def test_runner_cannot_start_twice_and_handles_no_sources() -> None:
    runner = CameraRunner([])
    runner.start()
    assert runner.wait(0)
    with pytest.raises(RuntimeError, match="already started"):
        runner.start()
    runner.stop()
