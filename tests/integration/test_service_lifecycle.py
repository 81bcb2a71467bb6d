"""The service's lifecycle with stand-in models: READY, watchdog pings from the frame
loop (and none while inference hangs), STOPPING, a clean shutdown, refused credentials.

Real threads, a real broker, real SQLite files; the detector and embedder are small
stand-ins so the test is about the service, not the models.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from device.audit import AuditKind, read_records
from device.config import validate_mapping
from device.events.mqtt import ConnectionState
from device.events.notify import Notifier
from device.ops.localbroker import BrokerUser, LocalBroker
from device.service.config import FacegateConfig
from device.service.health import read_health_file
from device.service.pipeline import RecognitionService
from device.types import Detection, Embedding, FaceChip, Image
from device.vision.align import AlignTemplate

TEMPLATE = AlignTemplate(
    size=(32, 32), keypoints=("right_eye", "left_eye", "nose_tip", "mouth_center"),
    points=np.array([[10, 12], [22, 12], [16, 18], [16, 24]], dtype=np.float32),
)


class GatedDetector:
    """Finds one face per frame; frame ``hang_at`` blocks until ``release`` is set.

    With ``blink``, the face is there for ``blink`` frames, then gone for as many plus
    twelve (longer than the tracker's max_age): a new track each time.
    """

    def __init__(self, hang_at: int | None = None, blink: int | None = None) -> None:
        self.hang_at = hang_at
        self.blink = blink
        self.calls = 0
        self.hanging = threading.Event()
        self.release = threading.Event()

    def detect(self, image: Image, timer: object = None) -> list[Detection]:
        self.calls += 1
        if self.calls == self.hang_at:
            self.hanging.set()
            self.release.wait(30)
        if self.blink and self.calls % (2 * self.blink + 12) >= self.blink:
            return []
        x, y, side = 100.0, 60.0, 100.0
        kps = ((130.0, 95.0), (170.0, 95.0), (150.0, 115.0), (150.0, 135.0), (102.0, 105.0),
               (198.0, 105.0))
        return [Detection((x, y, side, side), 0.9, kps)]

    def close(self) -> None:
        self.release.set()


class TinyEmbedder:
    model_id = "tiny"
    input_size = (32, 32)
    template = TEMPLATE

    def embed(self, chips: Sequence[FaceChip]) -> list[Embedding]:
        return [Embedding(np.eye(8, dtype=np.float32)[1], "tiny") for _ in chips]

    def close(self) -> None:
        pass


class NotifySocket:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            with self._cond:
                self.messages.append(data.decode())
                self._cond.notify_all()

    def wait_for(self, text: str, timeout: float, after: int = 0) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: any(text in m for m in self.messages[after:]), timeout)

    def count(self) -> int:
        with self._cond:
            return len(self.messages)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture()
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def _frames(folder: Path, count: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:03d}.png"),
                    rng.integers(0, 250, (240, 320, 3), dtype=np.uint8))
    return folder


def _config(tmp_path: Path, url: str, frames: Path, **mqtt: Any) -> FacegateConfig:
    return validate_mapping({
        "unit_id": "unit-1",
        "state_dir": str(tmp_path / "state"),
        "cameras": [{"type": "image", "camera_id": "front", "path": str(frames), "fps": 20}],
        "gallery": {"threshold": 0.9, "threshold_fmr": 1e-4},
        "pipeline": {"watchdog_tick_s": 0.1, "drain_timeout_s": 2},
        "health": {"interval_s": 0.5},
        "mqtt": {"url": url, "reconnect_min_s": 1, "reconnect_max_s": 2, **mqtt},
    }, FacegateConfig, "test")


def test_ready_watchdog_from_the_frame_loop_and_stopping(
    tmp_path: Path, broker: LocalBroker, notify: NotifySocket
) -> None:
    detector = GatedDetector(hang_at=15)
    config = _config(tmp_path, broker.url, _frames(tmp_path / "frames", 60))
    service = RecognitionService(config, detector=detector, embedder=TinyEmbedder(),
                                 notifier=Notifier(str(notify.path)))
    with service:
        assert notify.wait_for("READY=1", 10)
        assert notify.wait_for("WATCHDOG=1", 10)
        assert detector.hanging.wait(10)
        # Inference hangs: the frame loop is stuck, so no ping comes (pings are at
        # most a second apart while it runs).
        hung_at = notify.count()
        assert not notify.wait_for("WATCHDOG=1", 2.5, after=hung_at)
        detector.release.set()
        assert notify.wait_for("WATCHDOG=1", 10, after=hung_at)
        service.request_stop("signal SIGTERM")
        assert service.run() == "signal SIGTERM"
    assert notify.wait_for("STOPPING=1", 5)
    health = read_health_file(config.health_path)
    assert health["pipeline"]["frames_processed"] >= 15
    assert health["cameras"]["front"]["frames"] >= 15
    _, records = read_records(config.audit_path)
    kinds = [r.kind for r in records]
    assert kinds[0] == AuditKind.SERVICE_START.value
    assert kinds[-1] == AuditKind.SERVICE_STOP.value
    assert records[-1].payload_obj()["reason"] == "signal SIGTERM"


def test_a_broker_refusing_credentials_is_reported_and_frames_keep_flowing(
    tmp_path: Path,
) -> None:
    password = tmp_path / "password"
    password.write_text("wrong\n")
    password.chmod(0o600)
    with LocalBroker(workdir=tmp_path / "broker",
                     users=(BrokerUser("unit-1", "right"),)) as broker:
        config = _config(tmp_path, broker.url, _frames(tmp_path / "frames", 400),
                         username="unit-1", password_file=str(password))
        with RecognitionService(config, detector=GatedDetector(),
                                embedder=TinyEmbedder()) as service:
            publisher = service.publisher
            assert publisher is not None
            assert publisher.wait_for_state(ConnectionState.REFUSED, timeout=20)
            assert publisher.wait_for(lambda s: s.failures >= 2, timeout=20)  # retried

            health = service.health_payload()
            assert health["mqtt"]["state"] == "refused"
            assert "refused credentials" in health["mqtt"]["last_error"]
            assert health["pipeline"]["frames_processed"] > 0
            service.request_stop("test over")


def test_a_gallery_written_while_running_is_picked_up(
    tmp_path: Path, broker: LocalBroker
) -> None:
    from device.gallery.records import NewFace, NewIdentity
    from device.gallery.store import GalleryStore
    from tests.support.events import Collector

    config = _config(tmp_path, broker.url, _frames(tmp_path / "frames", 1000))
    with Collector(broker.host, broker.port, ["facegate/unit-1/+/match"]) as collector:
        assert collector.wait_subscribed()
        with RecognitionService(config, detector=GatedDetector(blink=6),
                                embedder=TinyEmbedder()) as service:
            assert service.gallery is not None
            assert service.gallery.current().version == 0  # no gallery file yet
            # `facegate gallery enroll` in another process, while the service runs:
            with GalleryStore(config.gallery_path, model_id="tiny", dim=8,
                              create=True) as store:
                vector = Embedding(np.eye(8, dtype=np.float32)[1], "tiny")
                store.add_identity_with_faces(NewIdentity(label="Ada", id="id-a"),
                                              [NewFace(vector, 1.0, "ab" * 32)])
                store.bump_version(5)
            assert collector.wait_for(bool, 30)
            service.request_stop("test over")
    event = collector.messages[0].json()
    assert event["identity_id"] == "id-a" and event["gallery_version"] == 5
