"""RTSP: reconnect with backoff, redaction — exercised without an RTSP server.

The opener is injected: it returns a real ``cv2.VideoCapture`` over a small video
file, which "dies" at the end of the file just as a stream does when a camera
drops, or a capture on a missing file, which fails to open like an unreachable
camera. Waits are recorded instead of slept.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from itertools import islice
from pathlib import Path

import cv2
import pytest

from device.camera import (
    ReconnectConfig,
    RtspSource,
    RtspSourceConfig,
    SourceState,
    backoff_delays,
    open_source,
)
from device.camera.capture import Capture
from device.camera.rtsp import FFMPEG_OPTIONS_ENV, _ffmpeg_transport
from device.errors import CameraError
from device.types import Frame
from tests.integration.test_camera_video import index_of, write_video

SECRET = "s3cret-Pa55"
URL = f"rtsp://admin:{SECRET}@192.0.2.10:554/Streaming/Channels/101?token=tok-{SECRET}"
REDACTED = "rtsp://***:***@192.0.2.10:554/Streaming/Channels/101?token=***"


class Recorder:
    """Records the waits the source asks for, returning at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class Opener:
    """Opens real captures: failing ones (missing file) for the first ``fail`` calls."""

    def __init__(self, video: Path, fail: int = 0, missing: Path | None = None) -> None:
        self.video = video
        self.fail = fail
        self.missing = missing or video.with_name("no-such-stream.avi")
        self.urls: list[str] = []
        self.called = threading.Event()

    def __call__(self, url: str) -> Capture:
        self.urls.append(url)
        self.called.set()
        if len(self.urls) <= self.fail:
            return cv2.VideoCapture(str(self.missing), cv2.CAP_FFMPEG)
        return cv2.VideoCapture(str(self.video), cv2.CAP_FFMPEG)


def config(**reconnect: object) -> RtspSourceConfig:
    settings: dict[str, object] = {"initial_delay_s": 1.0, "max_delay_s": 8.0, "jitter": 0.0}
    settings.update(reconnect)
    return RtspSourceConfig(camera_id="door", url=URL,
                            reconnect=ReconnectConfig.model_validate(settings))


def take(source: RtspSource, n: int) -> list[Frame]:
    frames: list[Frame] = []
    for frame in source:
        frames.append(frame)
        if len(frames) == n:
            break
    return frames


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "stream.avi", frames=12)


def assert_no_secret(*texts: object) -> None:
    for text in texts:
        assert SECRET not in str(text)
        assert "admin" not in str(text)


def test_stream_that_dies_is_reopened_and_frames_keep_counting(
    video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    opener, sleep = Opener(video), Recorder()
    cfg = config(jitter=0.3, seed=None)
    with caplog.at_level(logging.DEBUG), RtspSource(
        cfg, opener=opener, rng=random.Random(42), sleep=sleep
    ) as source:
        frames = take(source, 30)
        health = source.health()
    # 12 frames per "connection": the stream died twice and came back twice
    assert [f.seq for f in frames] == list(range(30))
    assert [index_of(f) for f in frames] == [i % 12 for i in range(30)]
    assert len(opener.urls) == 3 and set(opener.urls) == {URL}  # the opener gets the real URL
    assert health.reconnects == 2 and health.errors == 2
    assert health.frames_read == 30
    assert health.last_error == f"{REDACTED}: stream lost (no frame could be read)"
    # each loss is the first failure after good frames: the backoff restarts each time
    rng = random.Random(42)
    expected = [next(backoff_delays(cfg.reconnect, rng)) for _ in range(2)]
    assert sleep.delays == expected
    assert all(0.7 <= d <= 1.3 for d in sleep.delays)
    assert {f.source for f in frames} == {REDACTED}
    assert frames[0].image.shape == (48, 64, 3)
    assert "reconnected" in caplog.text
    assert_no_secret(caplog.text, health, repr(source), *(r.getMessage() for r in caplog.records))


def test_failed_opens_follow_the_backoff_schedule_then_recover(video: Path) -> None:
    opener, sleep = Opener(video, fail=4), Recorder()
    with RtspSource(config(), opener=opener, sleep=sleep) as source:
        frames = take(source, 5)
        health = source.health()
    assert sleep.delays == [1.0, 2.0, 4.0, 8.0]
    assert len(frames) == 5 and frames[0].seq == 0
    assert health.errors == 4 and health.reconnects == 0  # the first connection is no REconnect
    assert health.state is SourceState.RUNNING
    assert health.last_error is not None and health.last_error.startswith(
        f"{REDACTED}: cannot open stream")


def test_gives_up_after_max_attempts_without_leaking_the_password(
    video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    opener, sleep = Opener(video, fail=100), Recorder()
    source = RtspSource(config(max_attempts=3), opener=opener, sleep=sleep)
    with caplog.at_level(logging.DEBUG), pytest.raises(CameraError) as info:
        list(source)
    message = str(info.value)
    assert message.startswith("gave up after 3 failed attempt(s): ")
    assert REDACTED in message
    assert sleep.delays == [1.0, 2.0]  # no wait after the last attempt
    health = source.health()
    assert health.state is SourceState.FAILED and health.last_error == message
    source.close()
    assert source.health().state is SourceState.FAILED  # closing keeps how it ended
    assert_no_secret(message, caplog.text, health, info.value.__cause__, info.value.__context__)


def test_library_errors_are_scrubbed_before_they_are_shown(video: Path) -> None:
    def opener(url: str) -> Capture:
        raise cv2.error(f"could not open {url} (user admin, password {SECRET})")

    source = RtspSource(config(max_attempts=1), opener=opener, sleep=Recorder())
    with pytest.raises(CameraError) as info:
        list(source)
    assert REDACTED in str(info.value)
    assert_no_secret(info.value, info.value.__cause__, info.value.__context__, source.health())


def test_close_ends_a_backoff_wait_at_once(video: Path) -> None:
    opener = Opener(video, fail=100)
    source = RtspSource(config(initial_delay_s=60.0, max_delay_s=60.0), opener=opener)
    done = threading.Event()

    def consume() -> None:
        for _ in source:
            pass
        done.set()

    thread = threading.Thread(target=consume)
    thread.start()
    assert opener.called.wait(10)
    started = time.monotonic()
    source.close()
    assert done.wait(10)
    thread.join(10)
    assert time.monotonic() - started < 10
    assert source.health().state is SourceState.CLOSED


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_real_ffmpeg_open_of_a_refused_stream(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    env_before = os.environ.get(FFMPEG_OPTIONS_ENV)
    url = f"rtsp://admin:{SECRET}@127.0.0.1:{closed_port()}/live"
    cfg = RtspSourceConfig(camera_id="lab", url=url, transport=transport, open_timeout_s=5,
                           reconnect=ReconnectConfig(max_attempts=1))
    source = open_source(cfg)
    with caplog.at_level(logging.DEBUG), pytest.raises(CameraError, match="cannot open stream"):
        list(source)
    assert os.environ.get(FFMPEG_OPTIONS_ENV) == env_before
    assert_no_secret(caplog.text, source.health())


def test_transport_option_keeps_operator_options_and_is_restored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(FFMPEG_OPTIONS_ENV, "stimeout;5000000|rtsp_transport;tcp")
    with _ffmpeg_transport("udp"):
        assert os.environ[FFMPEG_OPTIONS_ENV] == "stimeout;5000000|rtsp_transport;udp"
    assert os.environ[FFMPEG_OPTIONS_ENV] == "stimeout;5000000|rtsp_transport;tcp"
    monkeypatch.delenv(FFMPEG_OPTIONS_ENV)
    with _ffmpeg_transport("tcp"):  # OpenCV's default: nothing to set
        assert FFMPEG_OPTIONS_ENV not in os.environ


def test_schedule_helper_matches_what_the_source_waits(video: Path) -> None:
    cfg = config(jitter=0.5, max_attempts=6)
    sleep = Recorder()
    source = RtspSource(cfg, opener=Opener(video, fail=100), rng=random.Random(7), sleep=sleep)
    with pytest.raises(CameraError):
        list(source)
    expected = list(islice(backoff_delays(cfg.reconnect, random.Random(7)), 5))
    assert sleep.delays == expected


def test_seed_in_config_makes_the_jitter_reproducible(video: Path) -> None:
    def run() -> list[float]:
        sleep = Recorder()
        source = RtspSource(config(jitter=0.5, seed=11, max_attempts=5),
                            opener=Opener(video, fail=100), sleep=sleep)
        with pytest.raises(CameraError):
            list(source)
        return sleep.delays

    assert run() == run()
