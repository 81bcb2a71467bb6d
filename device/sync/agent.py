"""The unit's sync service: MQTT in, verified galleries and state reports out.

:class:`SyncAgent` subscribes to the fleet manifest topic and the unit's override
topic (see :mod:`device.events.topics`). For each manifest it receives:

1. :meth:`GallerySync.examine` parses it under the size cap, verifies the
   signatures and vets it (expiry, unit, model, version, delta base, payload cap)
   *before anything is downloaded*; a refusal is reported on the state topic.
2. The payload comes from the signed HTTPS URL (when ``prefer_url`` and the
   manifest names one) or as MQTT chunks. Chunks are subscribed a window at a
   time, each checked against its signed hash before it is written; chunks
   already on disk from an interrupted transfer are re-verified and not
   subscribed to again.
3. :meth:`GallerySync.apply` builds, checks and switches; the state is
   published retained on ``facegate/<unit>/gallery/state``.

The MQTT client asks the broker (MQTT 5 *Maximum Packet Size*) never to send it
more than a chunk plus headroom, so not even a hostile broker writer can make the
unit buffer a huge message. MQTT callbacks only queue work and write verified
chunks; building and switching happen on the agent's own worker thread, so the
network loop is never blocked by an apply. A new acceptable manifest with a
higher version supersedes a transfer in progress.

The pipeline starts it with :meth:`SyncAgent.start` and stops it with
:meth:`SyncAgent.close` (or uses it as a context manager).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device.errors import PublishError, SyncError
from device.events.client import BrokerClient, client_for
from device.events.config import MqttConfig
from device.events.schema import GALLERY_STATE_SCHEMA, prepare
from device.events.topics import (
    Topics,
    chunk_topic,
    gallery_base,
    manifest_topic,
    parse_chunk_topic,
)
from device.sync.apply import ApplyResult, GallerySync
from device.sync.config import SyncConfig
from device.sync.manifest import MAX_CHUNK_SIZE, Manifest
from device.sync.mqtt import PACKET_HEADROOM
from device.sync.reasons import SyncRefusedError
from device.sync.state import GalleryState
from device.sync.transport import ChunkStore, PartialPayload

logger = logging.getLogger(__name__)


class StatePublisher(Protocol):
    """Anything that publishes retained unit state, e.g. :class:`device.events.mqtt.Publisher`."""

    def publish_state(self, suffix: str, payload: Mapping[str, Any]) -> None:
        """Publish ``payload`` retained on ``facegate/<unit>/<suffix>``."""


@dataclass(frozen=True)
class AgentStats:
    """Counters of a running agent (for health and tests).

    Attributes:
        manifests: Manifest messages received.
        chunks_stored: Chunks received, verified and written.
        chunks_reused: Chunks found valid on disk instead of fetched again.
        chunks_rejected: Chunk messages refused (wrong hash or length).
        applied: Bundles applied.
        refused: Bundles refused.
        errors: Bundles that failed for another reason (download, build).
        transfer: ``(version, chunks present, chunks total)`` of the transfer in
            progress, if any.
        last: The last outcome.
    """

    manifests: int = 0
    chunks_stored: int = 0
    chunks_reused: int = 0
    chunks_rejected: int = 0
    applied: int = 0
    refused: int = 0
    errors: int = 0
    transfer: tuple[int, int, int] | None = None
    last: ApplyResult | None = None


@dataclass
class _Transfer:
    """A chunk transfer in progress (guarded by the agent's condition)."""

    manifest: Manifest
    base: str
    store: ChunkStore
    subscribed: set[int] = field(default_factory=set)


class SyncAgent:
    """Receives gallery bundles over MQTT and applies them; see the module docstring.

    The agent sets ``sync.on_state`` to its own publisher of state reports.

    Args:
        sync: The unit's :class:`GallerySync` (its ``on_switched`` reloads the index).
        mqtt_config: The unit's broker settings (``unit_id``, URL, credentials, TLS).
        config: The ``[sync]`` section.
        state_publisher: Publish state through this (the event publisher) instead
            of the agent's own MQTT connection.
        env: Environment for credential lookups (default ``os.environ``).

    Raises:
        ConfigError: The unit id cannot be used (``fleet``).
    """

    def __init__(self, sync: GallerySync, mqtt_config: MqttConfig,
                 config: SyncConfig | None = None, *,
                 state_publisher: StatePublisher | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.sync = sync
        self.config = config or SyncConfig()
        self.mqtt_config = mqtt_config
        self.unit = mqtt_config.unit_id
        self._topics = Topics(self.unit)
        self._manifest_topics = {manifest_topic(None): gallery_base(None)}
        if self.config.unit_override:
            self._manifest_topics[manifest_topic(self.unit)] = gallery_base(self.unit)
        self._topic_of = {base: topic for topic, base in self._manifest_topics.items()}
        self._state_publisher = state_publisher
        self._env = env
        self._cond = threading.Condition()
        # Guarded by self._cond:
        self._pending: dict[str, bytes] = {}
        self._events: deque[tuple[SyncRefusedError, Manifest]] = deque()
        self._transfer: _Transfer | None = None
        self._stats = AgentStats()
        self._stop = False
        self._retry_at: float | None = None
        self._retry_items: dict[str, bytes] = {}
        self._retry_delay = self.config.retry_min_s
        self._last_state: bytes | None = None
        self._expiry_at: float | None = None
        self._expiry_reported: float | None = None
        self._connected = False
        self._client: BrokerClient | None = None
        self._worker: threading.Thread | None = None
        sync.on_state = self._on_state

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Recover the gallery files, report the current state, connect, start working.

        Raises:
            SyncError: Recovery failed or the agent was closed.
            ConfigError: Credentials or TLS files are unusable.
        """
        with self._cond:
            if self._stop:
                raise SyncError("the sync agent is closed")
            if self._client is not None:
                return
        self.sync.recover()
        self._on_state(self.sync.status())
        self._watch_expiry()
        client = client_for(
            self.mqtt_config, name="sync agent", suffix="-sync", env=self._env,
            max_packet_bytes=max(MAX_CHUNK_SIZE, self.config.max_manifest_bytes) + PACKET_HEADROOM)
        client.after_connect = self._on_connect
        client.after_disconnect = self._on_disconnect
        client.after_message = self._on_message
        with self._cond:
            self._client = client
        client.start(self.mqtt_config.keepalive, clean_start=True)
        self._worker = threading.Thread(target=self._run, name="gallery-sync", daemon=True)
        self._worker.start()
        logger.info("gallery sync agent for unit %s listening on %s", self.unit,
                    ", ".join(self._manifest_topics))

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker (after the apply in progress, if any) and disconnect. Idempotent."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            client, self._client = self._client, None
        if self._worker is not None:
            self._worker.join(timeout)
            if self._worker.is_alive():
                logger.warning("gallery sync worker still busy after %.0f s", timeout)
        if client is not None:
            client.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ---------------------------------------------------------------- status

    def stats(self) -> AgentStats:
        """A snapshot of the counters."""
        with self._cond:
            return self._stats

    def wait_for(self, predicate: Callable[[AgentStats], bool], timeout: float) -> bool:
        """Block until ``predicate(stats)`` holds or ``timeout`` passes; returns whether it held."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self._stats), timeout)

    def _count(self, **increments: int) -> None:
        """Add to counters (cond held)."""
        self._stats = replace(self._stats, **{k: getattr(self._stats, k) + v
                                              for k, v in increments.items()})
        self._cond.notify_all()

    def _set(self, **values: Any) -> None:
        """Set fields of the stats (cond held)."""
        self._stats = replace(self._stats, **values)
        self._cond.notify_all()

    # ------------------------------------------------------------------ state

    def _on_state(self, state: GalleryState) -> None:
        payload = state.payload(self.unit)
        if self._state_publisher is not None:
            try:
                self._state_publisher.publish_state("gallery/state", payload)
            except PublishError as exc:
                logger.error("cannot publish gallery state: %s", exc)
            return
        try:
            data = prepare(GALLERY_STATE_SCHEMA, payload)
        except PublishError as exc:
            logger.error("gallery state refused by its schema: %s", exc)
            return
        with self._cond:
            self._last_state = data
            client = self._client if self._connected else None
        if client is not None:
            client.publish(self._topics.gallery_state, data, qos=1, retain=True)

    # --------------------------------------------------------- MQTT callbacks

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:
            return  # the client logged it
        with self._cond:
            self._connected = True
            state = self._last_state if self._state_publisher is None else None
            transfer = self._transfer
            resubscribe = sorted(transfer.subscribed) if transfer else []
        client.subscribe([(t, 1) for t in self._manifest_topics])
        if transfer is not None and resubscribe:
            client.subscribe([(chunk_topic(transfer.base, transfer.manifest.version, i), 1)
                              for i in resubscribe])
        if state is not None:
            client.publish(self._topics.gallery_state, state, qos=1, retain=True)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason_code: ReasonCode, properties: Properties | None) -> None:
        with self._cond:  # the client logs the outage
            self._connected = False

    def _on_message(self, client: mqtt.Client, userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # raising here would stop paho's network loop
            logger.warning("ignored a %d-byte message on a topic that is not UTF-8",
                           len(message.payload))
            return
        data = bytes(message.payload)
        if topic in self._manifest_topics:
            with self._cond:
                self._pending[topic] = data
                self._count(manifests=1)
            return
        parsed = parse_chunk_topic(topic)
        if parsed is None:
            return
        base, version, index = parsed
        unsubscribe: list[str] = []
        subscribe: list[str] = []
        with self._cond:
            t = self._transfer
            if (t is None or t.base != base or t.manifest.version != version
                    or index >= len(t.manifest.payload.chunks)):
                return
            try:
                stored = t.store.put(index, data)
            except SyncRefusedError as exc:
                self._events.append((exc, t.manifest))
                self._count(chunks_rejected=1)
                return
            except OSError as exc:
                logger.error("cannot store chunk %d of version %d: %s", index, version, exc)
                return
            if stored:
                self._count(chunks_stored=1)
            if index in t.subscribed:
                t.subscribed.discard(index)
                unsubscribe.append(topic)
            subscribe = self._widen(t)
            self._set(transfer=self._progress(t))
        if unsubscribe:
            client.unsubscribe(unsubscribe)
        if subscribe:
            client.subscribe([(s, 1) for s in subscribe])

    def _widen(self, t: _Transfer) -> list[str]:
        """Subscribe to further missing chunks up to the window (cond held)."""
        out: list[str] = []
        for index in t.store.missing:
            if len(t.subscribed) >= self.config.chunk_window:
                break
            if index not in t.subscribed:
                t.subscribed.add(index)
                out.append(chunk_topic(t.base, t.manifest.version, index))
        return out

    @staticmethod
    def _progress(t: _Transfer) -> tuple[int, int, int]:
        total = len(t.manifest.payload.chunks)
        return t.manifest.version, total - len(t.store.missing), total

    # ---------------------------------------------------------------- worker

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(self._has_work, timeout=self._next_wait())
                if self._stop:
                    return
                pending, self._pending = self._pending, {}
                events = list(self._events)
                self._events.clear()
                ready = self._transfer if (self._transfer and self._transfer.store.complete
                                           ) else None
                if self._retry_at is not None and self._retry_at <= time.monotonic():
                    self._retry_at = None
                    for topic, raw in self._retry_items.items():
                        pending.setdefault(topic, raw)
                    self._retry_items = {}
            for exc, manifest in events:
                self._record(self.sync.report_refused(exc, manifest))
            for topic in sorted(pending, key=lambda t: t != manifest_topic(None)):
                try:
                    self._handle_manifest(topic, pending[topic])
                except SyncError as exc:  # another process holds the gallery lock
                    logger.warning("%s; trying again later", exc)
                    self._schedule_retry(topic, pending[topic])
            if ready is not None:
                try:
                    self._finish(ready)
                except SyncError as exc:
                    logger.warning("%s; trying again later", exc)
                    topic = self._topic_of[ready.base]
                    self._schedule_retry(topic, ready.manifest.encode())
            self._watch_expiry()

    def _watch_expiry(self) -> None:
        """Report a stale gallery once its manifest expires; remember the next deadline."""
        expires = self.sync.expiry()
        if expires is not None and expires <= self.sync.now():
            if self._expiry_reported != expires:
                result = self.sync.check_expiry()
                if result is not None:
                    self._record(result)
                self._expiry_reported = expires
            expires = None
        with self._cond:
            self._expiry_at = expires

    def _has_work(self) -> bool:
        t = self._transfer
        due = self._retry_at is not None and self._retry_at <= time.monotonic()
        return bool(self._stop or self._pending or self._events or due
                    or (t is not None and t.store.complete))

    def _next_wait(self) -> float | None:
        """Seconds until a retry or the live gallery's expiry is due (None: no deadline)."""
        waits: list[float] = []
        if self._retry_at is not None:
            waits.append(self._retry_at - time.monotonic())
        if self._expiry_at is not None:  # re-checked at least hourly: clocks get set
            waits.append(min(self._expiry_at - self.sync.now(), 3600.0))
        return max(0.0, min(waits)) if waits else None

    def _schedule_retry(self, topic: str, raw: bytes) -> None:
        """Try a manifest again later, with doubling delays."""
        with self._cond:
            self._retry_items[topic] = raw
            if self._retry_at is None:
                self._retry_at = time.monotonic() + self._retry_delay
                self._retry_delay = min(self._retry_delay * 2, self.config.retry_max_s)
            self._cond.notify_all()

    def _record(self, result: ApplyResult) -> None:
        counter = {"ok": "applied", "refused": "refused", "error": "errors"}.get(result.outcome)
        with self._cond:
            if counter:
                self._count(**{counter: 1})
            self._set(last=result)
            if result.outcome == "ok":
                self._retry_delay = self.config.retry_min_s

    def _handle_manifest(self, topic: str, raw: bytes) -> None:
        if not raw:
            logger.info("manifest on %s cleared", topic)
            return
        examined = self.sync.examine(raw)
        if isinstance(examined, ApplyResult):
            self._record(examined)
            return
        manifest = examined
        with self._cond:
            current = self._transfer
        if current is not None:
            if current.manifest.digest == manifest.digest:
                return
            if current.manifest.version >= manifest.version:
                logger.info("ignoring version %d while version %d downloads",
                            manifest.version, current.manifest.version)
                return
            logger.info("version %d supersedes the download of version %d",
                        manifest.version, current.manifest.version)
            self._abandon()
        if manifest.payload.url is not None and self.config.prefer_url:
            result = self.sync.apply(manifest, self.sync.fetch_url)
            self._record(result)
            if result.outcome == "error" and result.reason == "download":
                self._schedule_retry(topic, raw)
            return
        self._begin(manifest, self._manifest_topics[topic])

    def _begin(self, manifest: Manifest, base: str) -> None:
        try:
            stage = self.sync.staging_dir(manifest)
            store = ChunkStore(stage, manifest.payload)
            reused = store.scan()
        except OSError as exc:
            self._record(self.sync.report_error("download", exc, manifest))
            return
        t = _Transfer(manifest, base, store)
        with self._cond:
            self._transfer = t
            self._count(chunks_reused=len(reused))
            self._set(transfer=self._progress(t))
            subscribe = self._widen(t)
            client = self._client if self._connected else None
        logger.info("downloading gallery version %d: %d of %d chunks already here",
                    manifest.version, len(reused), len(manifest.payload.chunks))
        if client is not None and subscribe:
            client.subscribe([(s, 1) for s in subscribe])
        if store.complete:
            with self._cond:
                self._cond.notify_all()

    def _abandon(self) -> None:
        with self._cond:
            t, self._transfer = self._transfer, None
            self._set(transfer=None)
            client = self._client if self._connected else None
        if t is not None and client is not None and t.subscribed:
            client.unsubscribe([chunk_topic(t.base, t.manifest.version, i)
                                for i in sorted(t.subscribed)])

    def _finish(self, t: _Transfer) -> None:
        self._abandon()

        def assemble(manifest: Manifest, part: PartialPayload) -> Path:
            return t.store.assemble(part)

        self._record(self.sync.apply(t.manifest, assemble))


__all__ = ["AgentStats", "StatePublisher", "SyncAgent"]
