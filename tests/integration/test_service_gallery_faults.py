"""The recognition service on a damaged, truncated, empty or missing gallery, end to end.

Real BlazeFace and dlib models, an image-folder camera showing a face that is enrolled
in the gallery, a real mosquitto broker and the ``[sync]`` section configured (so the
retained gallery state is published). The same camera and gallery, undamaged, publish
a match (the control); damaged, the service runs without matching, its health file
and its retained health message say the gallery is refused, naming the file and the
recovery, and the retained gallery state says why. With no gallery file at all the
service runs and health says ``missing``. ``facegate run`` on a zero-byte gallery
neither creates a gallery in it nor runs as if it were an empty one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from device.gallery.store import GalleryStore
from device.ops.localbroker import LocalBroker
from device.service.config import FacegateConfig
from device.service.health import format_status, read_health_file
from device.service.pipeline import RecognitionService, build_detector, build_embedder
from tests.support.damage import DAMAGE, PAGE, fingerprint
from tests.support.events import Collector
from tests.support.gallery import FaceMaker, enroll
from tests.support.service import (
    ENROLL,
    enroll_clip_people,
    require_embedder_template,
    service_config,
)
from tests.support.sync import REPO, signing_key

SEEN = "lin-manuel-miranda"  # the enrolled person the camera shows
UNIT = "unit-1"
FRAMES = 6
FACEGATE = str(Path(sys.executable).with_name("facegate"))


@dataclass(frozen=True)
class Scene:
    """A camera folder showing :data:`SEEN`, a gallery holding them, and trusted keys."""

    frames: Path
    gallery: Path
    keys: Path
    model_id: str


@pytest.fixture(scope="module")
def scene(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Scene:
    require_embedder_template()
    root = tmp_path_factory.mktemp("scene")
    frames = root / "frames"
    frames.mkdir()
    for i in range(FRAMES):  # the reference photo the gallery was enrolled from
        shutil.copyfile(datasets / ENROLL / f"{SEEN}.png", frames / f"{i:03d}.png")
    gallery = root / "gallery.db"
    camera = {"type": "image", "camera_id": "front", "path": str(frames)}
    config = service_config(root, "mqtt://127.0.0.1:1", [camera], gallery)
    detector = build_detector(config)
    try:
        with build_embedder(config) as embedder:
            enroll_clip_people(datasets, gallery, detector, embedder)
            model_id = embedder.model_id
    finally:
        detector.close()
    maker = FaceMaker(seed=16, dim=128, model_id=model_id)
    with GalleryStore(gallery) as store:  # strangers, so page 4 is inside the file
        for i in range(30):
            enroll(store, maker, f"Stranger {i:02d}", n=2)
    assert gallery.stat().st_size >= 8 * PAGE
    keys = root / "trusted-keys"
    keys.mkdir()
    (keys / "central.pub").write_bytes(signing_key(0).public_key().public_bytes_raw())
    return Scene(frames, gallery, keys, model_id)


def _config(tmp_path: Path, broker: LocalBroker, scene: Scene, gallery: Path
            ) -> FacegateConfig:
    camera = {"type": "image", "camera_id": "front", "path": str(scene.frames)}
    return service_config(tmp_path, broker.url, [camera], gallery,
                          decision={"k": 1, "n": 1},
                          sync={"trusted_keys": str(scene.keys)})


@dataclass(frozen=True)
class Run:
    config: FacegateConfig
    reason: str
    matches: list[dict[str, Any]]
    health_file: dict[str, Any]
    retained: dict[str, dict[str, Any]]
    frames: int


def _run(tmp_path: Path, broker: LocalBroker, scene: Scene, gallery: Path) -> Run:
    config = _config(tmp_path, broker, scene, gallery)
    with Collector(broker.host, broker.port, [f"facegate/{UNIT}/+/match"]) as collector:
        assert collector.wait_subscribed()
        with RecognitionService(config) as service:
            reason = service.run()
            frames = service.health()["pipeline"]["frames_processed"]
        matches = [m.json() for m in collector.messages]
    retained: dict[str, dict[str, Any]] = {}
    topics = [f"facegate/{UNIT}/health", f"facegate/{UNIT}/gallery/state"]
    with Collector(broker.host, broker.port, topics) as late:  # subscribed after the run
        assert late.wait_for(lambda ms: {m.topic for m in ms} >= set(topics), 10), \
            [m.topic for m in late.messages]
        for message in late.messages:
            assert message.retain, message.topic
            retained[message.topic.removeprefix(f"facegate/{UNIT}/")] = message.json()
    return Run(config, reason, matches, read_health_file(config.health_path), retained, frames)


def test_an_intact_gallery_matches_the_face_the_camera_shows(
        scene: Scene, tmp_path: Path, broker: LocalBroker) -> None:
    gallery = tmp_path / "gallery.db"
    shutil.copyfile(scene.gallery, gallery)
    run = _run(tmp_path, broker, scene, gallery)
    assert run.frames == FRAMES
    assert {m["identity_id"] for m in run.matches} == {SEEN}, run.matches
    for health in (run.health_file, run.retained["health"]):
        assert health["gallery"]["state"] == "loaded" and health["gallery"]["error"] is None
        assert health["status"] == "ok"
    assert run.retained["gallery/state"]["state"] == "active"


@pytest.mark.parametrize("kind", ["page-1", "page-4", "truncated", "zero-bytes"])
def test_a_damaged_gallery_is_refused_by_the_service_and_health_says_why(
        scene: Scene, tmp_path: Path, broker: LocalBroker, kind: str) -> None:
    gallery = tmp_path / "gallery.db"
    shutil.copyfile(scene.gallery, gallery)
    DAMAGE[kind](gallery)
    before = fingerprint(gallery)
    run = _run(tmp_path, broker, scene, gallery)
    assert run.frames == FRAMES  # the camera ran; only matching is off
    assert run.matches == [], f"{kind}: matched on a damaged gallery: {run.matches}"
    for where, health in (("file", run.health_file), ("retained", run.retained["health"])):
        entry = health["gallery"]
        assert entry["state"] == "refused", (kind, where, entry)
        assert health["status"] == "error", (kind, where)
        assert health["gallery_version"] is None
        error = str(entry["error"])
        assert str(gallery) in error and "is damaged and was not used" in error, error
        assert "Recovery:" in error and "restore it from a backup" in error, error
    state = run.retained["gallery/state"]
    assert state["state"] == "failed" and state["version"] == 0, state
    assert str(gallery) in state["message"] and "not usable" in state["message"], state
    assert "Recovery:" in state["message"], state
    text = format_status(run.health_file)
    assert "gallery refused" in text and str(gallery) in text, text
    assert fingerprint(gallery) == before, f"the service modified a {kind} gallery"


def test_without_a_gallery_file_the_service_runs_and_health_says_missing(
        scene: Scene, tmp_path: Path, broker: LocalBroker) -> None:
    gallery = tmp_path / "gallery.db"
    run = _run(tmp_path, broker, scene, gallery)
    assert run.frames == FRAMES and run.matches == []
    for health in (run.health_file, run.retained["health"]):
        assert health["gallery"]["state"] == "missing" and health["gallery"]["error"] is None
        assert health["status"] == "ok"
    assert run.retained["gallery/state"]["state"] == "empty"
    assert not gallery.exists()
    assert "gallery missing" in format_status(run.health_file)


def _toml(config: FacegateConfig, scene: Scene, broker: LocalBroker) -> str:
    return "\n".join([
        f'unit_id = "{UNIT}"',
        f'state_dir = "{config.state_dir}"',
        "[gallery]",
        f'path = "{config.gallery_path}"',
        f"threshold = {config.gallery.threshold}",
        f"threshold_fmr = {config.gallery.threshold_fmr}",
        "[decision]", "k = 1", "n = 1",
        "[health]", "interval_s = 0.5",
        "[mqtt]", f'url = "{broker.url}"',
        "[[cameras]]", 'type = "image"', 'camera_id = "front"', f'path = "{scene.frames}"',
        "",
    ])


def test_facegate_run_refuses_a_zero_byte_gallery(
        scene: Scene, tmp_path: Path, broker: LocalBroker) -> None:
    gallery = tmp_path / "state" / "gallery.db"
    gallery.parent.mkdir(mode=0o700)
    gallery.write_bytes(b"")
    config = _config(tmp_path, broker, scene, gallery)
    toml = tmp_path / "facegate.toml"
    toml.write_text(_toml(config, scene, broker))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with Collector(broker.host, broker.port, [f"facegate/{UNIT}/+/match"]) as collector:
        assert collector.wait_subscribed()
        done = subprocess.run([FACEGATE, "run", "--config", str(toml)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        matches = list(collector.messages)
    log = done.stderr
    assert "created gallery" not in log, log
    assert f"cannot open gallery {gallery}: it is damaged and was not used" in log, log
    assert "the file is empty (0 bytes)" in log and "Recovery:" in log, log
    assert "the service runs without matching until the gallery is replaced" in log, log
    assert done.returncode == 1, log  # a replay that could match nobody did not succeed
    assert "no face was matched: the gallery was refused" in log, log
    assert "0 identities" not in log, log
    assert gallery.stat().st_size == 0
    assert matches == []
    health = read_health_file(config.health_path)
    assert health["gallery"]["state"] == "refused" and health["status"] == "error", health
    assert health["pipeline"]["frames_processed"] == FRAMES
