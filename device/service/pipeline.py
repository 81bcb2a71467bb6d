"""The recognition service: threads, queues, lifecycle, watchdog and health.

Thread layout (all bounded)::

    camera-<id> ×N ──put──▶ PipelineQueue ──get──▶ inference worker ──▶ DecisionSink
    (CameraRunner: one      (queue_size frames;     detect → quality →    journal → audit
     thread per camera;      drop_oldest counts      track → embed →       → outbox (SQLite)
     decode happens here)    drops per camera, or    search → decide            │
                             block for replays)      WATCHDOG=1 per frame  mqtt-sender + paho
                                                     or per idle tick           │ PUBACK →
                                                                   capture-to-ack callback
    housekeeping: health file, gallery check, retention, audit head (its own thread)
    gallery-sync (with [sync]): verified bundle → Housekeeping.reload_gallery (index swap)
    review (with [review]): signed verdict (publisher's client) → audit record → retained ack

* One inference worker owns the detector, the embedder and every camera's tracker
  and decider, so none of them needs a lock. It takes frames with a timeout and
  pings the systemd watchdog after each frame and each idle timeout — from the frame
  loop itself, so a hung inference stops the pings and systemd restarts the unit.
* A camera that cannot be opened is reported (health ``failed`` with the error) and
  the others run; the service ends by itself only when every camera has ended or
  failed.
* The gallery is a :class:`~device.gallery.live.LiveGallery`: the worker reads
  the active version once per frame; a sync swaps in a new index while the old one
  keeps answering, so matching never stops. Every reload (sync, retention purge,
  changed file) goes through :meth:`Housekeeping.reload_gallery`.
* The flow is one-way: the frame loop hands decisions to the sink, the sink to the
  outbox, the publisher sends from it. Periodic side jobs live in
  :class:`~device.service.housekeeping.Housekeeping`.
* Shutdown (SIGTERM/SIGINT → :meth:`RecognitionService.request_stop`): ``STOPPING=1``,
  the cameras stop, the worker processes what is queued (up to ``drain_timeout_s``)
  and ends every track, the outbox is given the same time to drain, then everything
  is closed and the audit log records ``service_stop``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from device import __version__
from device.audit import AuditLog
from device.camera import CameraRunner, FrameSource, SourceHealth, SourceState, open_source
from device.errors import DeviceError
from device.events.mqtt import ConnectionState, Publisher, PublisherStatus
from device.events.notify import Notifier
from device.gallery.live import LiveGallery
from device.service.config import FacegateConfig
from device.service.decision import TrackEnded, UnknownTrack
from device.service.gallery import GalleryStatus, GalleryWatcher, gallery_version, open_gallery
from device.service.health import camera_state, health_payload, read_temperature, temperature_file
from device.service.housekeeping import Housekeeping
from device.service.queue import PipelineQueue
from device.service.retention import RetentionJob
from device.service.review import ReviewInbox, load_inbox
from device.service.sink import DecisionSink, PendingJournal
from device.service.stages import STAGES, FrameProcessor, FrameResult, Match
from device.service.stats import LatencyStats, RateMeter
from device.service.thresholds import Threshold, log_expected_fpir
from device.statelock import SERVICE_HOLDER, StateLock
from device.sync.agent import SyncAgent
from device.sync.config import make_sync
from device.types import FaceChip, Frame
from device.vision.detect import Detector, create_detector
from device.vision.embed import Embedder, create_embedder

logger = logging.getLogger(__name__)

#: Stages in health, in pipeline order.
STAGE_ORDER = ("queue_wait", *STAGES, "publish", "total")

#: Seconds between watchdog pings at most (systemd's WatchdogSec is 30 s on a unit).
WATCHDOG_PING_S = 1.0


def probe_dim(embedder: Embedder) -> int:
    """Embed one grey chip: warms the interpreter up and gives the embedding size.

    Raises:
        ModelError: The embedder fails on it.
    """
    width, height = embedder.input_size
    chip = FaceChip(image=np.full((height, width, 3), 128, dtype=np.uint8), detection=None,
                    transform=np.zeros((2, 3), dtype=np.float32))
    (embedding,) = embedder.embed([chip])
    return int(embedding.vector.shape[0])


def build_detector(config: FacegateConfig) -> Detector:
    """The configured detector with the service's thread count.

    Raises:
        ModelError: The model cannot be loaded.
        HardwareError: The backend's device is absent.
    """
    section = config.detector
    if hasattr(section, "num_threads"):
        section = section.model_copy(update={"num_threads": config.stage_threads(section)})
    return create_detector(section, cache_dir=config.model_dir)


def build_embedder(config: FacegateConfig) -> Embedder:
    """The configured embedder with the service's thread count.

    Raises:
        ModelError: The model or its manifest entry is missing or unusable.
        HardwareError: The backend's device is absent.
    """
    section = config.embedder
    if hasattr(section, "num_threads"):
        section = section.model_copy(update={"num_threads": config.stage_threads(section)})
    return create_embedder(section, cache_dir=config.model_dir)


class RecognitionService:
    """The ``facegate run`` service. Use as a context manager, or :meth:`start` + :meth:`close`.

    Args:
        config: The unit's configuration.
        config_sha256: Digest of the configuration file (recorded in the audit log).
        detector: A detector to use instead of building the configured one (the
            service closes it).
        embedder: Likewise for the embedder.
        notifier: systemd notifications (default: ``$NOTIFY_SOCKET``, a no-op without).
        env: Environment for credential lookups (default ``os.environ``).
    """

    def __init__(
        self,
        config: FacegateConfig,
        *,
        config_sha256: str | None = None,
        detector: Detector | None = None,
        embedder: Embedder | None = None,
        notifier: Notifier | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self._config_sha256 = config_sha256
        self._detector = detector
        self._embedder = embedder
        self._notifier = notifier or Notifier()
        self._env = env
        self.latency = LatencyStats(config.health.latency_samples)
        self._fps_out = RateMeter(config.health.rate_window_s)
        self._fps_out_by_camera: dict[str, RateMeter] = {
            c: RateMeter(config.health.rate_window_s) for c in config.camera_ids
        }
        self.queue = PipelineQueue(config.pipeline.queue_size, config.pipeline.queue_policy,
                                   config.health.rate_window_s)
        self._audit: AuditLog | None = None
        self._gallery: LiveGallery | None = None
        self._publisher: Publisher | None = None
        self._sink: DecisionSink | None = None
        self._sync_agent: SyncAgent | None = None
        self._review: ReviewInbox | None = None
        self._housekeeping: Housekeeping | None = None
        self._state_lock = StateLock(config.state_dir, SERVICE_HOLDER)
        self._gallery_status = GalleryStatus(config.gallery_path)
        self._retention: RetentionJob | None = None
        self._processor: FrameProcessor | None = None
        self._runner: CameraRunner | None = None
        self._sources: list[FrameSource] = []
        self._open_failures: dict[str, str] = {}
        self.threshold: Threshold | None = None
        self._worker: threading.Thread | None = None
        self._temperature_file = config.health.temperature_file or temperature_file()
        self._stop = threading.Event()  # the service should stop
        self._drain = threading.Event()  # the worker should drain and exit
        self._worker_done = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._reason = ""
        self._started_at = time.monotonic()
        self._frames = 0
        self._errors = 0
        self._worker_error: str | None = None
        self._last_ping = 0.0
        self._started = False

    # ---- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Open everything, start the threads and tell systemd ``READY=1``.

        Raises:
            DeviceError: A model, the gallery, the audit log, the outbox, a secret or
                the threshold policy is unusable (cameras that cannot be opened are
                reported in health instead).
        """
        if self._started:
            raise DeviceError("the service was already started")
        self._started = True
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The one writer of the outbox and the audit log; `gallery delete` checks this.
        self._state_lock.acquire()
        self._audit = AuditLog(cfg.audit_path)
        self._audit.record_service_start(__version__, config_sha256=self._config_sha256)
        if self._detector is None:
            self._detector = build_detector(cfg)
        if self._embedder is None:
            self._embedder = build_embedder(cfg)
        dim = probe_dim(self._embedder)
        model_id = self._embedder.model_id
        self.threshold = cfg.match_threshold(model_id)
        logger.info("threshold %.4f (threshold FMR %g, from %s)", self.threshold.value,
                    self.threshold.fmr, self.threshold.source)
        sync = None
        if cfg.sync is not None and cfg.sync.enabled:
            sync = make_sync(cfg.sync, cfg.gallery_path, unit_id=cfg.unit_id,
                             model_id=model_id, dim=dim, audit=self._audit, env=self._env)
            sync.recover()  # a crash mid-switch is repaired before the gallery is read
        self._gallery = open_gallery(cfg.gallery_path, model_id=model_id, dim=dim,
                                     precision=cfg.gallery.precision,
                                     status=self._gallery_status)
        watcher = GalleryWatcher(self._gallery, cfg.gallery_path, model_id=model_id, dim=dim,
                                 status=self._gallery_status)
        self._gallery_loaded()
        self._processor = FrameProcessor(
            self._detector, self._embedder, self._gallery, threshold=self.threshold.value,
            quality=cfg.quality, tracking=cfg.tracking, decision=cfg.decision,
            max_embeddings_per_track=cfg.pipeline.max_embeddings_per_track,
            min_quality_gain=cfg.pipeline.min_quality_gain,
            embed_after_match=cfg.pipeline.embed_after_match,
        )
        review = cfg.review if cfg.review is not None and cfg.review.enabled else None
        self._publisher = Publisher(cfg.mqtt, cameras=cfg.camera_ids,
                                    health_provider=self._health_for, env=self._env,
                                    sw_version=__version__,
                                    session_expiry_s=review.session_expiry_s if review else 0)
        if review is not None:
            self._review = load_inbox(cfg.unit_id, self._audit, self._publisher, review,
                                      env=self._env)
            self._publisher.subscribe(self._publisher.topics.review, self._review.on_message)
            self._review.start()
        self._retention = RetentionJob(cfg.retention, cfg.audit, gallery_path=cfg.gallery_path,
                                       audit=self._audit, outbox=self._publisher.outbox)
        self._housekeeping = Housekeeping(
            cfg.unit_id, health_path=cfg.health_path, health=self.health_payload,
            interval_s=cfg.health.interval_s, audit=self._audit, publisher=self._publisher,
            head_interval_s=cfg.audit.head_interval_s, watcher=watcher,
            on_reloaded=self._gallery_loaded, retention=self._retention,
            purge_interval_s=cfg.retention.purge_interval_s,
        )
        # Retention before the first frame is matched or the first event sent: expired
        # identities leave the gallery (and their unsent events the outbox).
        self._housekeeping.run_retention()
        self._publisher.start()
        self._sink = DecisionSink(
            cfg.unit_id, self._publisher, self._audit, PendingJournal(cfg.state_dir / "pending"),
            threshold=self.threshold, model_id=model_id, latency=self.latency,
        )
        recovered = self._sink.recover()
        if recovered:
            logger.warning("finished %d decision(s) interrupted by the previous run", recovered)
        if sync is not None:
            sync.on_switched = self._switch_gallery  # the pipeline keeps matching
            self._sync_agent = SyncAgent(sync, cfg.mqtt, cfg.sync,
                                         state_publisher=self._publisher, env=self._env)
            self._sync_agent.start()
        self._open_cameras()
        self._worker = threading.Thread(target=self._run_worker, name="inference", daemon=True)
        self._worker.start()
        self._runner = CameraRunner(self._sources, self.queue)
        self._runner.start()
        self._housekeeping.start()
        with contextlib.suppress(DeviceError):
            self._publisher.publish_health()
        running = len(self._sources)
        self._notifier.ready(f"{running} of {len(cfg.cameras)} camera(s) running")
        logger.info("service started: %d of %d camera(s), gallery version %s", running,
                    len(cfg.cameras), gallery_version(self._gallery))

    def _switch_gallery(self, path: Path, version: int) -> None:
        """The sync's hook: the switched file is loaded (old index answers meanwhile).

        Raises:
            DeviceError: It cannot be loaded (the sync then undoes the switch).
        """
        assert self._housekeeping is not None
        if not self._housekeeping.reload_gallery(strict=True):
            logger.debug("gallery %s (version %d) was already loaded", path, version)

    def _gallery_loaded(self) -> None:
        """Log the threshold and the expected false-positive identification rate."""
        if self._gallery is None or self.threshold is None:
            return
        active = self._gallery.current()
        log_expected_fpir(self.threshold, len(active.labels), len(active.index),
                          f"gallery version {active.version}")

    def _open_cameras(self) -> None:
        for section in self.config.cameras:
            try:
                self._sources.append(open_source(section))
            except DeviceError as exc:
                self._open_failures[section.camera_id] = str(exc)
                logger.error("camera %s cannot be opened: %s; the other cameras run",
                             section.camera_id, exc)

    def request_stop(self, reason: str) -> None:
        """Ask the service to stop (signal handlers call this); returns at once."""
        with self._lock:
            if not self._reason:
                self._reason = reason
        self._stop.set()

    @property
    def publisher(self) -> Publisher | None:
        """The MQTT publisher (once started)."""
        return self._publisher

    @property
    def gallery(self) -> LiveGallery | None:
        """The active gallery holder (its ``on_switched`` is the sync's reload hook)."""
        return self._gallery

    def run(self) -> str:
        """Block until a stop is requested or every camera is done; returns why.

        Raises:
            DeviceError: The service was not started.
        """
        if not self._started:
            raise DeviceError("the service was not started")
        self._stop.wait()
        with self._lock:
            return self._reason

    def close(self) -> None:
        """Stop and release everything (idempotent); see the module doc for the order."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            reason = self._reason or "shutdown"
            self._reason = reason
        self._stop.set()
        self._notifier.stopping(f"stopping: {reason}")
        logger.info("stopping (%s)", reason)
        drain = self.config.pipeline.drain_timeout_s
        if self._runner is not None:
            self.queue.close()
            self._runner.stop(timeout=max(drain, 1.0))
        self._drain.set()
        if self._worker is not None:
            self._worker.join(drain + 30.0)
            if self._worker.is_alive():
                logger.error("the inference worker did not stop; closing around it")
        if self._sync_agent is not None:
            self._sync_agent.close()
        if (self._publisher is not None and self._sink is not None
                and self._publisher.status().state is ConnectionState.CONNECTED):
            self._publisher.flush(drain)  # else the outbox keeps them for next time
        if self._housekeeping is not None:
            self._housekeeping.stop()
        if self._review is not None:
            self._review.close(drain)  # before the audit log records the stop
        if self._audit is not None:
            try:
                self._audit.record_service_stop(reason)
            except DeviceError as exc:
                logger.error("service stop not recorded in the audit log: %s", exc)
        if self._housekeeping is not None:
            self._housekeeping.finish()  # the last health file and audit head
        for closer in (self._publisher, self._audit, self._gallery, self._detector,
                       self._embedder):
            if closer is not None:
                try:
                    closer.close()
                except Exception:
                    logger.exception("closing %s failed", type(closer).__name__)
        self._notifier.close()
        self._state_lock.release()
        logger.info("service stopped (%s)", reason)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException as exc:
            self.request_stop(f"error: start failed: {exc}"[:200])
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and not self._reason:
            self.request_stop(f"error: {exc}"[:200])
        self.close()

    # ---- the frame loop ------------------------------------------------------------

    def _ping(self) -> None:
        now = time.monotonic()
        if now - self._last_ping >= WATCHDOG_PING_S:
            self._last_ping = now
            self._notifier.watchdog()

    def _run_worker(self) -> None:
        tick = self.config.pipeline.watchdog_tick_s
        deadline: float | None = None
        try:
            while True:
                if self._drain.is_set() and deadline is None:
                    deadline = time.monotonic() + self.config.pipeline.drain_timeout_s
                if deadline is not None and time.monotonic() > deadline:
                    left = len(self.queue)
                    if left:
                        logger.warning("%d queued frame(s) not processed at shutdown", left)
                    break
                try:
                    frame, arrival = self.queue.get_stamped(timeout=tick)
                except queue.Empty:
                    self._ping()
                    if deadline is not None:
                        break  # drained
                    self._check_finished()
                    continue
                self._process(frame, arrival)
                self._ping()
            self._finish_tracks()
        except Exception as exc:  # a bug: stop the unit (systemd restarts it)
            logger.exception("the inference worker failed")
            self._worker_error = repr(exc)[:300]
            self.request_stop(f"error: inference worker failed: {exc!r}"[:200])
        finally:
            self._worker_done.set()

    def _check_finished(self) -> None:
        runner = self._runner
        if runner is None or not runner.finished or len(self.queue):
            return
        failed = [c for c, h in self._camera_health().items() if h.state is SourceState.FAILED]
        if failed or self._open_failures:
            self.request_stop("every camera stopped; failed: "
                              + ", ".join(sorted(set(failed) | set(self._open_failures))))
        else:
            self.request_stop("every camera ended")

    def _process(self, frame: Frame, arrival: float) -> None:
        assert self._processor is not None
        wait_ms = (time.monotonic() - arrival) * 1000.0
        started = time.perf_counter()
        try:
            result = self._processor.process(frame, arrival)
        except (DeviceError, ValueError) as exc:
            self._errors += 1
            log = logger.error if self._errors <= 10 or self._errors % 100 == 0 else logger.debug
            log("camera %s frame %d not processed: %s", frame.camera_id, frame.seq, exc)
            return
        self._deliver(result)
        self.latency.add("queue_wait", wait_ms)
        self.latency.add_many(result.laps)
        self.latency.add("total", (time.perf_counter() - started) * 1000.0)
        self._frames += 1
        self._fps_out.tick()
        meter = self._fps_out_by_camera.get(frame.camera_id)
        if meter is not None:
            meter.tick()

    def _deliver(self, result: FrameResult) -> None:
        assert self._sink is not None
        for outcome in result.outcomes:
            try:
                if isinstance(outcome, Match):
                    self._sink.match(outcome)
                elif isinstance(outcome, TrackEnded):
                    self._sink.track_ended(outcome)
                elif isinstance(outcome, UnknownTrack):
                    self._sink.unknown(outcome)
            except DeviceError as exc:
                # The journal keeps a match that got that far; the next start finishes it.
                self._errors += 1
                logger.error("decision not delivered: %s", exc)

    def _finish_tracks(self) -> None:
        assert self._processor is not None
        outcomes = self._processor.flush()
        self._deliver(FrameResult("", 0, 0, 0, tuple(outcomes), ()))

    # ---- health --------------------------------------------------------------------

    def _camera_health(self) -> dict[str, SourceHealth]:
        return {s.camera_id: s.health() for s in self._sources}

    def health(self) -> dict[str, Any]:
        """The pipeline's part of the ``facegate/health/1`` payload (any thread)."""
        cfg = self.config
        stats = self.queue.stats()
        sources = self._camera_health()
        processor = self._processor
        sink = self._sink
        cameras: dict[str, Any] = {}
        states: list[str] = []
        for camera_id in cfg.camera_ids:
            entry: dict[str, Any]
            if camera_id in self._open_failures:
                entry = {"state": "failed", "frames": 0, "frames_dropped": 0,
                         "last_error": self._open_failures[camera_id][:500]}
            else:
                h = sources.get(camera_id)
                if h is None:  # not opened yet (start-up) or never started
                    h = SourceHealth(camera_id, "", SourceState.CLOSED)
                entry = {
                    "state": camera_state(h, idle_s=self.queue.idle_s(camera_id),
                                          stall_after_s=cfg.health.stall_after_s),
                    "fps": round(self.queue.arrival_rate(camera_id), 2),
                    "frames": h.frames_read,
                    "frames_dropped": stats.dropped_by_camera.get(camera_id, 0),
                    "reconnects": h.reconnects,
                    "last_error": None if h.last_error is None else h.last_error[:500],
                }
            meter = self._fps_out_by_camera.get(camera_id)
            entry["fps_out"] = round(meter.rate(), 2) if meter else 0.0
            entry["frames_processed"] = processor.frames(camera_id) if processor else 0
            entry["tracks"] = processor.active_tracks(camera_id) if processor else 0
            entry["unknown_tracks"] = processor.unknown_tracks(camera_id) if processor else 0
            entry["matches"] = sink.matches_by_camera.get(camera_id, 0) if sink else 0
            entry["queue_depth"] = stats.depth
            cameras[camera_id] = entry
            states.append(entry["state"])
        summary = self.latency.summary()
        ack = summary.pop("capture_to_ack", None)
        fps_in = sum(self.queue.arrival_rate(c) for c in cfg.camera_ids)
        pipeline: dict[str, Any] = {
            "fps_in": round(fps_in, 2),
            "fps_out": round(self._fps_out.rate(), 2),
            "frames_in": stats.put,
            "frames_processed": self._frames,
            "frames_dropped": stats.dropped,
            "queue_depth": stats.depth,
            "queue_size": stats.maxsize,
            "faces_embedded": processor.embeddings if processor else 0,
            "matches": sink.matches if sink else 0,
            "errors": self._errors,
            "threshold": self.threshold.value if self.threshold else None,
            "false_match_rate": self.threshold.fmr if self.threshold else None,
            "stages": {name: summary[name].to_json() for name in STAGE_ORDER
                       if name in summary},
            "capture_to_ack": ack.to_json() if ack else None,
        }
        if (self._worker_error or (states and all(s == "failed" for s in states))
                or not self._gallery_status.matching):
            status = "error"
        elif (any(s in ("failed", "stalled") for s in states) or self._errors
              or (self._publisher is not None and self._publisher.status().broker_down)):
            status = "degraded"  # a broker outage too: the unit's events are not delivered
        else:
            status = "ok"
        gallery = gallery_version(self._gallery) if self._gallery else None
        return {
            "status": status,
            "uptime_s": round(time.monotonic() - self._started_at, 1),
            "temperature_c": read_temperature(self._temperature_file),
            "gallery_version": gallery,
            "gallery": self._gallery_status.to_json(),
            "cameras": cameras,
            "pipeline": pipeline,
            **({"retention": self._retention.last.to_json()}
               if self._retention is not None and self._retention.last is not None else {}),
        }

    def health_payload(self) -> dict[str, Any]:
        """The whole health payload (as published), for the local health file."""
        status = self._publisher.status() if self._publisher is not None else None
        return health_payload(self.config.unit_id, self.health(), status)

    def _health_for(self, status: PublisherStatus) -> dict[str, Any]:
        """The publisher's health provider: the same payload, with its status."""
        return health_payload(self.config.unit_id, self.health(), status)
