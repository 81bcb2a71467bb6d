"""``facegate demo``: the whole path end to end with no hand set-up.

Enrol → replay → recognise → publish over MQTT → show the events as they arrive.

* **Default (nothing but the repository):** public-domain pictures that ship inside
  scikit-image. ``skimage.data.astronaut()`` is NASA's portrait of astronaut Eileen
  Collins (public domain); she is enrolled from it. The replayed "camera" is a folder
  of frames composed here: the portrait itself, a mirrored, rescaled copy placed off
  centre on a larger canvas (so the match is not the enrolled image), and photos with
  no face (coffee, a cat, a rocket launch, coins), each repeated for a few frames so
  the tracker confirms a track (``tracking.min_hits``).
* **``clip=True``:** with the shared datasets present, the two people of
  ``media/video/enroll`` are enrolled and ``short_hamilton_clip.mp4`` is replayed.

Broker: when none is given, the demo starts a private **mosquitto** on a free
127.0.0.1 port (:class:`~device.ops.localbroker.LocalBroker`): it is the broker
units talk to in the field, installed from the OS package by
``provisioning/setup-dev.sh``, so the demo exercises the same MQTT 5 path as
production; an embedded Python broker would not.

The service runs exactly as ``facegate run`` runs it (:class:`RecognitionService`,
the calibrated threshold at the default target false-match rate), with the replay
policy (``queue_policy = "block"``: every frame is processed, not paced in real time).
A paho v2 subscriber on ``facegate/<unit>/#`` hands every match and track-end event
to a callback as it arrives. The demo waits on conditions, not sleeps: the service
ends when the camera ends, its shutdown flushes the outbox to the broker, and the
demo then waits until every match the service reports has reached the subscriber.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt

from device.config import validate_mapping
from device.enroll.enroll import EnrollmentReport, IdentityRequest, commit, examine, plan
from device.errors import ConfigError, DeviceError, PublishError
from device.events.client import BrokerLogin, make_client
from device.events.schema import MATCH_SCHEMA, TRACK_END_SCHEMA
from device.events.topics import Topics
from device.gallery.records import NewIdentity
from device.service.config import FacegateConfig
from device.service.thresholds import fmr_text
from device.types import Detection, Image
from device.vision.detect import Detector
from device.vision.timing import StageTimer

logger = logging.getLogger(__name__)

#: The demo unit's id (topics ``facegate/demo/...``) and its camera.
UNIT_ID = "demo"
CAMERA_ID = "front"
#: Where the datasets are when neither ``--datasets`` nor ``$FACEGATE_DATASETS`` says.
REPO = Path(__file__).resolve().parents[1]
DATASETS_ENV = "FACEGATE_DATASETS"
CLIP = Path("media/video/short_hamilton_clip.mp4")
CLIP_PEOPLE = (
    ("alex-lacamoire", "Alex Lacamoire"),
    ("lin-manuel-miranda", "Lin-Manuel Miranda"),
)
#: Written into a work directory the demo owns; a given --workdir without it must be empty.
MARKER = ".facegate-demo"
#: Frames each sample picture is shown for (the tracker confirms after min_hits = 3).
FRAMES_PER_PICTURE = 5
#: Seconds to wait for the subscriber, and for the published events to arrive.
SUBSCRIBE_TIMEOUT_S = 15.0
ARRIVAL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Person:
    """Someone the demo enrols: gallery id, display label, reference photo."""

    identity_id: str
    label: str
    photo: Path


@dataclass(frozen=True)
class Scenario:
    """What the demo enrols and what it replays."""

    name: str
    people: tuple[Person, ...]
    camera: dict[str, Any]
    note: str = ""


@dataclass
class DemoResult:
    """What happened, for the summary (text or JSON)."""

    scenario: str
    broker: str
    broker_started: bool
    enrolled: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    threshold: float | None = None
    false_match_rate: float | None = None
    stop_reason: str = ""
    frames: int = 0
    faces_detected: int = 0
    faces_embedded: int = 0
    matches_reported: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    capture_to_ack_p50_ms: float | None = None
    all_arrived: bool = False
    note: str = ""

    @property
    def matches(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("schema") == MATCH_SCHEMA]

    @property
    def track_ends(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("schema") == TRACK_END_SCHEMA]

    def matched_labels(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self.matches:
            counts[str(m["label"])] = counts.get(str(m["label"]), 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "broker": self.broker,
            "broker_started_by_demo": self.broker_started,
            "enrolled": self.enrolled,
            "not_enrolled": self.rejected,
            "threshold": self.threshold,
            "false_match_rate": self.false_match_rate,
            "stop_reason": self.stop_reason,
            "frames": self.frames,
            "faces_detected": self.faces_detected,
            "faces_embedded": self.faces_embedded,
            "matches_reported": self.matches_reported,
            "match_events_received": len(self.matches),
            "track_end_events_received": len(self.track_ends),
            "matched": self.matched_labels(),
            "all_events_arrived": self.all_arrived,
            "capture_to_ack_p50_ms": self.capture_to_ack_p50_ms,
            "note": self.note or None,
        }


# ---------------------------------------------------------------- scenarios


def datasets_root(given: Path | None = None) -> Path:
    """``given``, else ``$FACEGATE_DATASETS``, else ``../shared/datasets`` beside the repo."""
    if given is not None:
        return given
    env = os.environ.get(DATASETS_ENV)
    return Path(env) if env else REPO.parent / "shared" / "datasets"


def clip_scenario(datasets: Path) -> Scenario:
    """The Hamilton clip and its two enrolment photos.

    Raises:
        ConfigError: A file is missing; the message names the path and how to set it.
    """
    needed = [datasets / CLIP] + [datasets / "media/video/enroll" / f"{i}.png"
                                  for i, _ in CLIP_PEOPLE]
    missing = [p for p in needed if not p.is_file()]
    if missing:
        what = (f"{datasets} does not exist" if not datasets.exists()
                else f"missing {', '.join(str(p) for p in missing)}")
        raise ConfigError(
            f"--clip needs the shared datasets, not found: {what}; pass --datasets DIR "
            f"or set ${DATASETS_ENV} to the datasets folder (the one holding "
            f"{CLIP.parent}/)")
    people = tuple(Person(i, label, datasets / "media/video/enroll" / f"{i}.png")
                   for i, label in CLIP_PEOPLE)
    return Scenario(
        "hamilton-clip", people,
        {"type": "video", "camera_id": CAMERA_ID, "path": str(datasets / CLIP),
         "realtime": False},
        note="Alex Lacamoire appears only as a 29-px face at the piano or in deep "
             "profile; at a safe threshold he is not expected to match.")


def _to_uint8_rgb(image: Any) -> Image:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return np.ascontiguousarray(array[..., :3], dtype=np.uint8)


def _write_png(path: Path, image: Image) -> None:
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DeviceError(f"cannot encode {path}")
    path.write_bytes(data.tobytes())


def _on_canvas(image: Image, width: int, height: int, scale: float, x: int, y: int,
               background: tuple[int, int, int] = (96, 104, 112)) -> Image:
    """``image`` rescaled by ``scale`` and pasted at (x, y) on a plain canvas."""
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = background
    h, w = image.shape[:2]
    resized = cv2.resize(image, (round(w * scale), round(h * scale)),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    rh, rw = min(resized.shape[0], height - y), min(resized.shape[1], width - x)
    canvas[y:y + rh, x:x + rw] = resized[:rh, :rw]
    return canvas


def sample_pictures() -> list[tuple[str, Image]]:
    """The default replay, in order: (name, picture), each shown for a few frames.

    All public domain, all inside scikit-image: NASA's portrait of Eileen Collins,
    a mirrored copy of it at 80 % on a 800x600 canvas, off centre, and four photos
    without a face.
    """
    from skimage import data  # slow to import

    from device.vision.samples import astronaut

    portrait = astronaut()
    mirrored = np.ascontiguousarray(portrait[:, ::-1])
    return [
        ("astronaut", portrait),
        ("coffee", _to_uint8_rgb(data.coffee())),  # type: ignore[no-untyped-call]
        ("astronaut-mirrored-rescaled", _on_canvas(mirrored, 800, 600, 0.8, 330, 150)),
        ("chelsea-the-cat", _to_uint8_rgb(data.chelsea())),  # type: ignore[no-untyped-call]
        ("rocket", _to_uint8_rgb(data.rocket())),  # type: ignore[no-untyped-call]
        ("coins", _to_uint8_rgb(data.coins())),  # type: ignore[no-untyped-call]
    ]


def sample_scenario(folder: Path, frames_per_picture: int = FRAMES_PER_PICTURE) -> Scenario:
    """Write the enrolment photo and the replay frames under ``folder``."""
    from device.vision.samples import astronaut

    folder.mkdir(parents=True, exist_ok=True)
    photo = folder / "enroll" / "eileen-collins.png"
    photo.parent.mkdir(exist_ok=True)
    _write_png(photo, astronaut())
    frames = folder / "frames"
    frames.mkdir(exist_ok=True)
    n = 0
    for name, picture in sample_pictures():
        for _ in range(frames_per_picture):
            _write_png(frames / f"{n:04d}-{name}.png", picture)
            n += 1
    return Scenario(
        "skimage-samples",
        (Person("eileen-collins", "Eileen Collins", photo),),
        {"type": "image", "camera_id": CAMERA_ID, "path": str(frames)},
        note="Eileen Collins: NASA portrait (public domain), shipped in scikit-image; "
             "the other pictures hold no face.")


# ---------------------------------------------------------------- pieces


class CountingDetector:
    """A detector that counts the faces it finds (for the summary)."""

    def __init__(self, inner: Detector) -> None:
        self.inner = inner
        self.faces = 0

    def detect(self, image: Image, timer: StageTimer | None = None) -> list[Detection]:
        found = self.inner.detect(image, timer)
        self.faces += len(found)
        return found

    def close(self) -> None:
        self.inner.close()


class EventSubscriber:
    """A paho v2 MQTT 5 subscriber on ``facegate/<unit>/#``; events go to ``on_event``.

    Only match and track-end payloads are events; retained state (status, health,
    audit head) is ignored except that the unit's ``offline`` status is noted.
    """

    def __init__(self, url: str, unit: str,
                 on_event: Callable[[str, dict[str, Any]], None]) -> None:
        from urllib.parse import urlsplit

        self.url = url

        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(f"broker URL {url!r}: use mqtt://host[:port] or mqtts://host[:port]")
        self.unit = unit
        self.events: list[dict[str, Any]] = []
        self._on_event = on_event
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._error: str | None = None
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        login = BrokerLogin(f"{parts.scheme}://{parts.hostname}:{port}", parts.username,
                            parts.password)
        self.topics = Topics(unit)
        self.client = make_client(login, "", name="demo subscriber")
        self.client.after_connect = self._connected
        self.client.on_subscribe = self._subscribed_cb
        self.client.after_message = self._message
        self.client.start(keepalive=30)

    def _connected(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self._error = str(rc)
            return
        client.subscribe(self.topics.everything, qos=1)

    def _subscribed_cb(self, client: Any, userdata: Any, mid: Any, rcs: Any,
                       props: Any) -> None:
        self._subscribed.set()

    def _message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain or not msg.topic.endswith(("/match", "/track_end")):
            return
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            logger.warning("not JSON on %s", msg.topic)
            return
        with self._cond:
            self.events.append(payload)
            self._cond.notify_all()
        try:
            self._on_event(msg.topic, payload)
        except Exception:  # a printing problem must not kill paho's thread
            logger.exception("showing the event from %s failed", msg.topic)

    def wait_subscribed(self, timeout: float) -> None:
        """Raises: PublishError: Not connected and subscribed within ``timeout``."""
        if not self._subscribed.wait(timeout):
            why = f" ({self._error})" if self._error else ""
            raise PublishError(f"could not connect to the broker at {self.url} and subscribe "
                               f"within {timeout:g} s{why}")

    def wait_for_matches(self, count: int, timeout: float) -> bool:
        """Block until ``count`` match events arrived (or ``timeout``)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: sum(1 for e in self.events if e.get("schema") == MATCH_SCHEMA) >= count,
                timeout)

    def close(self) -> None:
        self.client.stop()


def prepare_workdir(workdir: Path | None) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    """The work directory: a new temporary one, or ``workdir`` (emptied if the demo owns it).

    Raises:
        ConfigError: ``workdir`` holds files but not the demo's marker (not ours to clear).
    """
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="facegate-demo-")
        root = Path(tmp.name)
        (root / MARKER).write_text("facegate demo work directory\n")
        return root, tmp
    workdir.mkdir(parents=True, exist_ok=True)
    entries = list(workdir.iterdir())
    if entries and not (workdir / MARKER).is_file():
        raise ConfigError(f"--workdir {workdir} is not empty and was not made by the demo; "
                          "give an empty or new folder")
    for entry in entries:  # a previous demo run's state: start afresh
        if entry.name == MARKER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (workdir / MARKER).write_text("facegate demo work directory\n")
    return workdir, None


def enroll_people(gallery: Path, people: Sequence[Person], threads: int = 2) -> EnrollmentReport:
    """Enrol ``people`` into a new gallery with the enrolment quality checks.

    One batch; a rejected photo leaves only its person out (``skip_rejected``).

    Raises:
        DeviceError: Models unusable, or nobody could be enrolled.
    """
    from device.gallery.store import GalleryStore
    from device.vision.blazeface import BlazeFaceConfig, BlazeFaceDetector
    from device.vision.dlib_tflite import DlibTFLiteEmbedder, DlibTFLiteEmbedderConfig

    requests = [IdentityRequest(NewIdentity(label=p.label, id=p.identity_id,
                                            enrolled_by="facegate demo",
                                            legal_basis="public-domain demo imagery"),
                                (p.photo,)) for p in people]
    short = BlazeFaceDetector(BlazeFaceConfig(model="short", num_threads=threads))
    full = BlazeFaceDetector(BlazeFaceConfig(model="full", num_threads=threads))
    embedder = DlibTFLiteEmbedder(DlibTFLiteEmbedderConfig(num_threads=threads))
    try:
        examined = examine(requests, short, embedder, refiner=full)
    finally:
        short.close()
        full.close()
        embedder.close()
    checked = plan(None, requests, examined, skip_rejected=True)
    if not checked.acceptable:
        raise DeviceError(f"nobody could be enrolled: {checked.reason}; "
                          + "; ".join(f"{r.label}: {r.problem}" for r in checked.reports))
    face = next(e.face for rows in examined for e in rows if e.face is not None)
    with GalleryStore(gallery, model_id=face.embedding.model_id,
                      dim=int(face.embedding.vector.shape[0]), create=True) as store:
        return commit(store, requests, examined, skip_rejected=True,
                            actor="facegate demo")


def demo_config(workdir: Path, broker_url: str, camera: dict[str, Any],
                gallery: Path) -> FacegateConfig:
    """The unit's configuration for the run (what ``facegate run --config`` would load)."""
    data: dict[str, Any] = {
        "unit_id": UNIT_ID,
        "state_dir": str(workdir / "state"),
        "cameras": [camera],
        # No explicit threshold: the shipped calibration at the default target FMR.
        "gallery": {"path": str(gallery)},
        "pipeline": {"queue_policy": "block", "drain_timeout_s": 30},
        "health": {"interval_s": 1.0},
        "mqtt": {"url": broker_url, "reconnect_min_s": 1, "reconnect_max_s": 2},
    }
    return validate_mapping(data, FacegateConfig, "facegate demo")


# ---------------------------------------------------------------- the run


Say = Callable[[str], None]
OnEvent = Callable[[str, dict[str, Any]], None]


class Demo:
    """One demo run. :meth:`run` does everything; :meth:`request_stop` ends it early.

    Args:
        clip: Replay the Hamilton clip (needs the datasets) instead of the samples.
        datasets: The datasets folder (``clip`` only); default as :func:`datasets_root`.
        broker_url: An existing broker; None starts a private mosquitto.
        workdir: Keep everything here; None: a temporary folder, removed at the end.
        say: Progress lines.
        on_event: Each event as it arrives (topic, payload).
        build_models: Build the embedder model into the cache if it is missing.
    """

    def __init__(self, *, clip: bool = False, datasets: Path | None = None,
                 broker_url: str | None = None, workdir: Path | None = None,
                 say: Say | None = None, on_event: OnEvent | None = None,
                 build_models: bool = True) -> None:
        self.clip = clip
        self.datasets = datasets
        self.broker_url = broker_url
        self.workdir = workdir
        self.say: Say = say or (lambda text: logger.info("%s", text))
        self.on_event: OnEvent = on_event or (lambda topic, payload: None)
        self.build_models = build_models
        self._service: Any = None
        self._stop_reason: str | None = None
        self._lock = threading.Lock()

    def request_stop(self, reason: str) -> None:
        """Stop the service (signal handlers call this)."""
        with self._lock:
            self._stop_reason = reason
            service = self._service
        if service is not None:
            service.request_stop(reason)

    def run(self) -> DemoResult:
        """Run the demo end to end; everything it started is stopped when it returns.

        Raises:
            DeviceError: Datasets missing, models unusable, broker unreachable, nobody
                enrolled, the service failed to start.
        """
        scenario_datasets = datasets_root(self.datasets) if self.clip else None
        if scenario_datasets is not None:
            clip_scenario(scenario_datasets)  # fail before anything is started
        root, tmp = prepare_workdir(self.workdir)
        try:
            return self._run_in(root, scenario_datasets)
        finally:
            if tmp is not None:
                tmp.cleanup()

    def _run_in(self, root: Path, datasets: Path | None) -> DemoResult:
        from device.ops.localbroker import LocalBroker

        scenario = (clip_scenario(datasets) if datasets is not None
                    else sample_scenario(root / "samples"))
        self.say(f"work directory {root}")
        if self.build_models:
            self._models()
        broker: LocalBroker | None = None
        if self.broker_url is None:
            broker = LocalBroker(workdir=root / "broker")
            broker.start()
            url = broker.url
            self.say(f"broker: mosquitto started on {url} (private to this demo; stopped at "
                     "the end)")
        else:
            url = self.broker_url
            self.say(f"broker: {url}")
        result = DemoResult(scenario.name, url, broker is not None, note=scenario.note)
        try:
            subscriber = EventSubscriber(url, UNIT_ID, self.on_event)
            try:
                subscriber.wait_subscribed(SUBSCRIBE_TIMEOUT_S)
                self.say(f"subscribed to facegate/{UNIT_ID}/#")
                self._enroll(root, scenario, result)
                self._recognise(root, scenario, result, subscriber, url)
            finally:
                subscriber.close()
            result.events = list(subscriber.events)
        finally:
            if broker is not None:
                broker.close()
        return result

    def _models(self) -> None:
        from device.modelzoo import build as model_build

        for r in model_build.build_all(progress=self.say):
            self.say(f"model {r.model_id}: " + (f"built in {r.seconds:.1f} s" if r.built
                                                 else "ready"))

    def _enroll(self, root: Path, scenario: Scenario, result: DemoResult) -> None:
        gallery = root / "gallery.db"
        report = enroll_people(gallery, scenario.people)
        for ident in report.identities:
            if ident.enrolled:
                result.enrolled[str(ident.identity_id)] = ident.label
                photos = ", ".join(p.path.name for p in ident.accepted)
                self.say(f"enrolled {ident.label} ({ident.identity_id}) from {photos}")
            else:
                reasons = "; ".join(f"{p.path.name}: {', '.join(p.reasons)} ({p.detail})"
                                    for p in ident.rejected) or (ident.problem or "")
                result.rejected[ident.label] = reasons
                self.say(f"NOT enrolled {ident.label}: {reasons}")

    def _recognise(self, root: Path, scenario: Scenario, result: DemoResult,
                   subscriber: EventSubscriber, url: str) -> None:
        from device.service.pipeline import RecognitionService, build_detector

        config = demo_config(root, url, scenario.camera, root / "gallery.db")
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (root / "config.json").write_text(config.model_dump_json(indent=2))  # a record
        detector = CountingDetector(build_detector(config))
        source = scenario.camera["path"]
        self.say(f"replaying {source} as camera {CAMERA_ID!r} (every frame, not paced)")
        service = RecognitionService(config, detector=detector)
        with service:
            with self._lock:
                self._service = service
                early = self._stop_reason
            if early is not None:
                service.request_stop(early)
            if service.threshold is not None:
                result.threshold = service.threshold.value
                result.false_match_rate = service.threshold.fmr
                self.say(f"threshold {service.threshold.value:.4f} (threshold FMR "
                         f"{fmr_text(service.threshold.fmr)}, from the shipped calibration)")
            result.stop_reason = service.run()
        # close() stopped the cameras, ended every track and flushed the outbox to the
        # broker; the health file it wrote last holds the final counts.
        with self._lock:
            self._service = None
        health = json.loads(config.health_path.read_text())
        pipeline = health["pipeline"]
        result.frames = int(pipeline["frames_processed"])
        result.faces_embedded = int(pipeline["faces_embedded"])
        result.matches_reported = int(pipeline["matches"])
        result.faces_detected = detector.faces
        ack = pipeline.get("capture_to_ack")
        result.capture_to_ack_p50_ms = None if not ack else float(ack["p50_ms"])
        result.all_arrived = subscriber.wait_for_matches(result.matches_reported,
                                                         ARRIVAL_TIMEOUT_S)
        outbox = health.get("outbox", {}).get("depth")
        if outbox:
            self.say(f"{outbox} event(s) still in the outbox (broker unreachable?)")


def format_event(payload: dict[str, Any]) -> str | None:
    """One readable line for a match event (None for other events)."""
    if payload.get("schema") != MATCH_SCHEMA:
        return None
    at = str(payload.get("decided_at", ""))
    clock = at[11:] if len(at) > 11 else at  # HH:MM:SS.mmmZ (UTC)
    fmr_here = payload.get("fmr_at_similarity")
    at_text = fmr_text(None if fmr_here is None else float(fmr_here),
                       bool(payload.get("fmr_at_similarity_upper_bound")))
    return (f"{clock}  {payload['camera']:<6} MATCH {payload['label']:<20} "
            f"similarity {float(payload['similarity']):.4f}  threshold FMR "
            f"{fmr_text(float(payload['false_match_rate']))}  FMR at this similarity "
            f"{at_text}  review_required {'yes' if payload.get('review_required') else 'no'}")


def format_summary(result: DemoResult) -> list[str]:
    """The closing summary, as lines."""
    matched = result.matched_labels()
    lines = [
        "summary:",
        f"  frames processed   {result.frames}",
        f"  faces detected     {result.faces_detected} (embedded {result.faces_embedded})",
        f"  match events       {len(result.matches)} received of {result.matches_reported} "
        f"published" + ("" if result.all_arrived else "  (NOT all arrived)"),
        f"  track-end events   {len(result.track_ends)}",
    ]
    if matched:
        lines.append("  matched            " + ", ".join(f"{label} x{n}"
                                                        for label, n in sorted(matched.items())))
    for label in sorted(set(result.enrolled.values()) - set(matched)):
        lines.append(f"  not matched        {label}")
    for label, why in sorted(result.rejected.items()):
        lines.append(f"  not enrolled       {label}: {why}")
    if result.threshold is not None:
        lines.append(f"  threshold          {result.threshold:.4f} (threshold FMR "
                     f"{fmr_text(result.false_match_rate)})")
    p50 = result.capture_to_ack_p50_ms
    lines.append("  capture-to-ack p50 " + (f"{p50:.1f} ms" if p50 is not None else "n/a"))
    lines.append(f"  service stopped    {result.stop_reason}")
    if result.note:
        lines.append(f"  note               {result.note}")
    return lines
