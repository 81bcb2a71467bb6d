"""Simulated units for the fleet bench: real MQTT 5 clients, many per thread.

Each :class:`SimUnit` is one :class:`~device.events.client.BrokerClient` from the
project's client factory, with its own client id, a last will (``offline``, retained),
a retained ``online`` status, health and gallery state published on every connection,
match events (schema-valid :class:`~device.events.schema.MatchEvent`) kept in an
in-memory outbox until the broker's PUBACK says a subscriber got it (a PUBACK with
*no matching subscribers* means the broker dropped it: sent again a second later), and
a light gallery-sync client: it verifies the fleet manifest's signature, fetches the
retained chunks, checks each against its signed hash and reports the new version on
its retained gallery state.

A :class:`Shard` drives many units from one thread: a selector over their sockets
(paho's external-loop API: ``loop_read``/``loop_write``/``loop_misc`` and the
``on_socket_*`` callbacks), a timer heap for events and reconnects, and reconnect
attempts scheduled like paho's own loop (the delay doubling from ``min_s`` up to
``max_s``) plus the client's jitter. Everything a unit does runs in its shard's
thread; other threads talk to a shard only through :meth:`Shard.call`.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import logging
import queue
import random
import selectors
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device.events.client import BrokerClient, BrokerLogin, Will, make_client
from device.events.schema import (
    GALLERY_STATE_SCHEMA,
    HEALTH_SCHEMA,
    MatchEvent,
    NormalisedBox,
    format_timestamp,
    prepare,
)
from device.events.topics import OFFLINE, ONLINE, Topics, manifest_topic, parse_chunk_topic
from device.sync.keys import TrustedKeys
from device.sync.manifest import MAX_CHUNK_SIZE, Manifest, parse_manifest, verify
from device.sync.mqtt import PACKET_HEADROOM
from device.sync.reasons import SyncRefusedError

logger = logging.getLogger(__name__)

#: One match per unit per this many seconds on average (Poisson), before ``--rate``.
BASE_MATCH_INTERVAL_S: Final = 600.0

#: The model id the simulated units and the bench's gallery share.
BENCH_MODEL: Final = "fleet-bench"
CAMERA: Final = "door"
#: MQTT 5 PUBACK reason: the broker accepted the message and no subscription matched.
NO_MATCHING_SUBSCRIBERS: Final = 0x10
#: How long an event nobody received waits before it is sent again.
UNROUTED_RETRY_S: Final = 1.0
_MISC_PERIOD_S: Final = 0.5
_READ: Final = selectors.EVENT_READ
_WRITE: Final = selectors.EVENT_WRITE


@dataclass
class UnitCounters:
    """What one simulated unit did (read by the bench after its shard stopped)."""

    published: dict[str, float] = field(default_factory=dict)  # event id -> decided at
    connects: list[float] = field(default_factory=list)  # time.time() of each CONNACK
    attempts: int = 0
    failed_attempts: int = 0
    republished: int = 0
    unrouted: int = 0  # PUBACKs saying "no matching subscribers"


class SimUnit:
    """One simulated unit; all methods run in its shard's thread.

    Args:
        name: Unit id (one topic level).
        login: The broker.
        trusted: Keys whose gallery manifests the unit accepts.
        rng: The unit's randomness (event ids, identities, similarities, jitter).
        gallery_version: The version the unit starts with.
    """

    def __init__(self, name: str, login: BrokerLogin, trusted: TrustedKeys,
                 rng: random.Random, gallery_version: int = 1) -> None:
        self.name = name
        self.topics = Topics(name)
        self.rng = rng
        self.trusted = trusted
        self.gallery_version = gallery_version
        self.gallery_identities = 0
        self.client: BrokerClient = make_client(
            login, f"facegate-{name}", name=f"unit {name}",
            max_packet_bytes=MAX_CHUNK_SIZE + PACKET_HEADROOM,
            will=Will(self.topics.status, OFFLINE), rng=random.Random(rng.getrandbits(64)))
        self.client.after_connect = self._connected
        self.client.after_disconnect = self._disconnected
        self.client.after_connect_fail = self._connect_failed
        self.client.on_publish = self._acked
        self.client.route(manifest_topic(), self._manifest)
        self.client.route(manifest_topic(name), self._manifest)
        self.client.route(f"{self.topics.base}/gallery/+/chunk/+", self._chunk)
        self.client.route("facegate/fleet/gallery/+/chunk/+", self._chunk)
        self.counters = UnitCounters()
        self.outbox: dict[str, tuple[str, bytes]] = {}  # event id -> (topic, payload)
        self._unsent: list[str] = []  # outbox entries not yet handed to paho
        self._mids: dict[int, str] = {}
        self._track = 0
        self._started = time.time()
        self._reconnect_delay: float | None = None
        self._transfer: tuple[Manifest, str, set[int]] | None = None
        self.shard: Shard | None = None
        self.online = False

    # ------------------------------------------------------------ connection

    def begin(self) -> None:
        """The first connection attempt (later ones are scheduled by the callbacks)."""
        address = self.client.address
        self.client.connect_async(address.host, address.port, keepalive=60)
        self.attempt()

    def attempt(self) -> None:
        self.counters.attempts += 1
        if not self.client.try_reconnect():
            self.counters.failed_attempts += 1

    def _schedule_reconnect(self) -> None:
        backoff = self.client.backoff
        delay = (float(backoff.min_s) if self._reconnect_delay is None
                 else min(self._reconnect_delay * 2, float(backoff.max_s)))
        self._reconnect_delay = delay
        if self.shard is not None:
            self.shard.later(delay + self.client.jitter_s(), self.attempt)

    def _connect_failed(self, _client: mqtt.Client, _userdata: Any) -> None:
        self._schedule_reconnect()

    def _disconnected(self, _client: mqtt.Client, _userdata: Any, _flags: Any,
                      _reason: ReasonCode, _properties: Properties | None) -> None:
        self.online = False
        if self.shard is not None and not self.shard.stopping:
            self._schedule_reconnect()

    def _connected(self, client: mqtt.Client, _userdata: Any, _flags: mqtt.ConnectFlags,
                   reason: ReasonCode, _properties: Properties | None) -> None:
        if reason.is_failure:
            return  # the broker closes the connection; the disconnect schedules a retry
        self._reconnect_delay = None
        self.online = True
        self.counters.connects.append(time.time())
        client.subscribe([(manifest_topic(), 1), (manifest_topic(self.name), 1)])
        client.publish(self.topics.status, ONLINE, qos=1, retain=True)
        self.publish_health()
        self.publish_gallery_state()
        if self._transfer is not None:
            client.subscribe(self._chunk_filter(self._transfer[1], self._transfer[0].version), 1)
        unsent, self._unsent = self._unsent, []
        for event_id in unsent:
            self._send(event_id)

    # ---------------------------------------------------------------- state

    def publish_health(self) -> None:
        payload = {
            "schema": HEALTH_SCHEMA, "unit": self.name, "at": format_timestamp(time.time()),
            "status": "ok", "uptime_s": round(time.time() - self._started, 3),
            "gallery_version": self.gallery_version,
            "cameras": {CAMERA: {"state": "running", "fps": 10.0, "frames_dropped": 0}},
            "mqtt": {"state": "connected", "last_error": None,
                     "connects": len(self.counters.connects)},
            "outbox": {"depth": len(self.outbox), "dropped": 0},
        }
        self.client.publish(self.topics.health, prepare(HEALTH_SCHEMA, payload), qos=1,
                            retain=True)

    def publish_gallery_state(self) -> None:
        payload = {
            "schema": GALLERY_STATE_SCHEMA, "unit": self.name, "state": "active",
            "version": self.gallery_version, "identities": self.gallery_identities,
            "model_id": BENCH_MODEL, "updated_at": format_timestamp(time.time()),
            "last_refusal": None,
        }
        self.client.publish(self.topics.gallery_state, prepare(GALLERY_STATE_SCHEMA, payload),
                            qos=1, retain=True)

    # ---------------------------------------------------------------- events

    def emit(self) -> str:
        """Decide one match now, keep it in the outbox and send it when connected."""
        now = time.time()
        self._track += 1
        event = MatchEvent(
            unit=self.name, camera=CAMERA, track_id=self._track,
            identity_id=f"p-{self.rng.randrange(10_000):04d}", label="Enrolled person",
            similarity=round(self.rng.uniform(0.6, 0.95), 4), false_match_rate=1e-4,
            gallery_version=self.gallery_version, model_id=BENCH_MODEL, first_seen=now - 1.5,
            decided_at=now, faces_considered=3, box=NormalisedBox(0.4, 0.3, 0.1, 0.15),
            event_id=str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            fmr_at_similarity=2e-6)
        self.outbox[event.event_id] = (self.topics.match(CAMERA), event.encode())
        self.counters.published[event.event_id] = now
        if self.online:
            self._send(event.event_id)
        else:
            self._unsent.append(event.event_id)
        return event.event_id

    def _send(self, event_id: str) -> None:
        entry = self.outbox.get(event_id)
        if entry is None:
            return
        info = self.client.publish(entry[0], entry[1], qos=1)
        self._mids[info.mid] = event_id

    def _acked(self, _client: mqtt.Client, _userdata: Any, mid: int, reason: ReasonCode,
               _properties: Properties | None) -> None:
        event_id = self._mids.pop(mid, None)
        if event_id is None:
            return
        if reason.is_failure:
            logger.warning("%s: the broker refused event %s (%s); sending it again", self.name,
                           event_id, reason.getName())
            self.counters.republished += 1
            self._send(event_id)
            return
        if reason.value == NO_MATCHING_SUBSCRIBERS:
            # Accepted and dropped: nobody subscribes (a console whose shared subscription
            # the broker lost in a restart). Not delivered, so it stays in the outbox.
            self.counters.unrouted += 1
            if self.shard is not None:
                self.shard.later(UNROUTED_RETRY_S, lambda: self._resend(event_id))
            return
        self.outbox.pop(event_id, None)

    def _resend(self, event_id: str) -> None:
        if event_id not in self.outbox:
            return
        if self.online:
            self._send(event_id)
        else:
            self._unsent.append(event_id)

    # --------------------------------------------------------------- gallery

    @property
    def transfer_progress(self) -> int | None:
        """Chunks received of the bundle being fetched; None when none is."""
        return None if self._transfer is None else len(self._transfer[2])

    @staticmethod
    def _chunk_filter(base: str, version: int) -> str:
        return f"{base}/v{version}/chunk/+"

    def _manifest(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        base = message.topic.rsplit("/", 1)[0]
        try:
            manifest = parse_manifest(bytes(message.payload))
            verify(manifest, self.trusted, 1)
        except SyncRefusedError as exc:
            logger.warning("%s refused a manifest on %s: %s", self.name, message.topic,
                           exc.detail)
            return
        if manifest.version <= self.gallery_version or manifest.expires < time.time():
            return
        if manifest.units is not None and self.name not in manifest.units:
            return
        if self._transfer is not None:
            client.unsubscribe(self._chunk_filter(self._transfer[1], self._transfer[0].version))
        self._transfer = (manifest, base, set())
        client.subscribe(self._chunk_filter(base, manifest.version), 1)

    def _chunk(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        parsed = parse_chunk_topic(message.topic)
        if self._transfer is None or parsed is None:
            return
        manifest, base, have = self._transfer
        chunk_base, version, index = parsed
        if chunk_base != base or version != manifest.version:
            return
        hashes = manifest.payload.chunks
        if index >= len(hashes) or hashlib.sha256(message.payload).hexdigest() != hashes[index]:
            logger.warning("%s: chunk %s does not match its signed hash", self.name,
                           message.topic)
            return
        have.add(index)
        if len(have) == len(hashes):
            client.unsubscribe(self._chunk_filter(base, manifest.version))
            self._transfer = None
            self.gallery_version = manifest.version
            self.gallery_identities = manifest.identities
            self.publish_gallery_state()


class Shard(threading.Thread):
    """One thread driving many :class:`SimUnit` over a selector.

    Args:
        units: The units of this shard.
        name: Thread name.
        events_per_unit_s: Mean match rate of each unit (Poisson), while emitting.
        rng: Randomness of the event times.
        health_interval_s: Period of each unit's retained health.
    """

    def __init__(self, units: list[SimUnit], name: str, *, events_per_unit_s: float,
                 rng: random.Random, health_interval_s: float = 30.0) -> None:
        super().__init__(name=name, daemon=True)
        self.units = units
        self.rate = events_per_unit_s
        self.rng = rng
        self.health_interval_s = health_interval_s
        self.stopping = False
        self.emitting = threading.Event()
        self.error: BaseException | None = None
        self._selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], queue.SimpleQueue[Any]]] = (
            queue.SimpleQueue())
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, _READ, None)
        for unit in units:
            unit.shard = self
            client = unit.client
            client.on_socket_open = self._opened
            client.on_socket_close = self._closed
            client.on_socket_register_write = self._want_write
            client.on_socket_unregister_write = self._done_writing

    # ------------------------------------------------------------ interface

    def later(self, delay_s: float, action: Callable[[], None]) -> None:
        """Run ``action`` in this thread after ``delay_s`` (call from this thread only)."""
        self._seq += 1
        heapq.heappush(self._timers, (time.monotonic() + max(0.0, delay_s), self._seq, action))

    def call(self, action: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Run ``action`` in this thread and return its result (from another thread).

        Raises:
            TimeoutError: The shard did not run it in time.
        """
        answer: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._calls.put((action, answer))
        self._wake_w.send(b"x")
        try:
            result = answer.get(timeout=timeout)
        except queue.Empty as exc:
            raise TimeoutError(f"{self.name} did not answer within {timeout} s") from exc
        if isinstance(result, BaseException):
            raise result
        return result

    def stop(self) -> None:
        """Disconnect every unit cleanly and end the thread."""
        def shutdown() -> None:
            self.stopping = True
            for unit in self.units:
                unit.client.disconnect()
        if self.is_alive():
            self.call(shutdown)
            self.join(30)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------ paho hooks

    def _opened(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._selector.register(sock, _READ, client)

    def _closed(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):  # never registered, or closed
            self._selector.unregister(sock)

    def _want_write(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.modify(sock, _READ | _WRITE, client)

    def _done_writing(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.modify(sock, _READ, client)

    # ------------------------------------------------------------------ loop

    def _schedule_event(self, unit: SimUnit) -> None:
        def fire() -> None:
            if self.emitting.is_set() and not self.stopping:
                unit.emit()
            self._schedule_event(unit)
        self.later(self.rng.expovariate(self.rate), fire)

    def _schedule_health(self, unit: SimUnit) -> None:
        def fire() -> None:
            if unit.online and not self.stopping:
                unit.publish_health()
            self._schedule_health(unit)
        self.later(self.health_interval_s * self.rng.uniform(0.5, 1.5), fire)

    def run(self) -> None:
        try:
            for unit in self.units:
                unit.begin()
                if self.rate > 0:
                    self._schedule_event(unit)
                self._schedule_health(unit)
            self._loop()
        except BaseException as exc:
            self.error = exc
            logger.exception("%s stopped", self.name)

    def _loop(self) -> None:
        last_misc = time.monotonic()
        stop_by: float | None = None
        while True:
            self._run_calls()
            if self.stopping:
                stop_by = stop_by or time.monotonic() + 10.0
                if len(self._selector.get_map()) <= 1 or time.monotonic() > stop_by:
                    return
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, action = heapq.heappop(self._timers)
                if not self.stopping:
                    action()
            wait = _MISC_PERIOD_S if not self._timers else min(
                _MISC_PERIOD_S, max(0.0, self._timers[0][0] - time.monotonic()))
            for key, mask in self._selector.select(wait):
                client = key.data
                if client is None:
                    self._drain_wake()
                    continue
                if mask & _READ:
                    client.loop_read()
                if mask & _WRITE:
                    client.loop_write()
            if time.monotonic() - last_misc >= _MISC_PERIOD_S:
                last_misc = time.monotonic()
                for unit in self.units:
                    unit.client.loop_misc()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _run_calls(self) -> None:
        while True:
            try:
                action, answer = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                answer.put(action())
            except Exception as exc:
                answer.put(exc)
