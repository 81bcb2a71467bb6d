"""The MQTT publisher: outbox in, broker acknowledgements out.

:class:`Publisher` owns a client of :mod:`device.events.client` (MQTT 5, QoS 1,
reconnect backoff, one log line per outage and one per recovery) and a sender thread:

* :meth:`Publisher.publish_match` validates and privacy-checks a
  :class:`~device.events.schema.MatchEvent`, commits it to the durable
  :class:`~device.events.outbox.Outbox` and returns; it never waits for the network.
* The sender thread hands outbox rows to paho in insertion order, at most
  ``max_inflight`` at a time, and deletes a row only when the broker's PUBACK for it
  arrives with a success reason code. Rows sent when the connection drops stay in
  paho's session and are resent (with DUP) after reconnecting; rows of a previous
  process are resent from the outbox on start. Delivery is at least once: a
  subscriber de-duplicates on ``event_id``.
* Retained state (``status``, ``health``, ``gallery/state``, ``audit/head``, Home
  Assistant discovery) goes straight to the broker when connected; the latest value
  of each is remembered and republished on every (re)connect.

A CONNACK with a failure reason code means *not connected*: the state becomes
``refused``, the client logs the reason (``broker refused credentials (Bad user name or
password) ...; retrying in 4 s``) and paho retries with backoff. The status (and so
health) always describes the connection as it is now: ``last_error`` is cleared on
every successful connection.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device.errors import PublishError
from device.events.client import (
    CREDENTIAL_REASONS,
    BrokerClient,
    MessageCallback,
    Will,
    client_for,
)
from device.events.config import MqttConfig
from device.events.homeassistant import Discovery, parse_birth
from device.events.outbox import Outbox, OutboxStats
from device.events.schema import (
    HEALTH_SCHEMA,
    MatchEvent,
    TrackEndEvent,
    encode,
    format_timestamp,
    is_valid_id,
    prepare,
)
from device.events.topics import OFFLINE, ONLINE, STATE_TOPICS, Topics

logger = logging.getLogger(__name__)

#: How long a row whose PUBACK carried a failure reason waits before it is resent.
REJECT_HOLDOFF_S: Final = 5.0
#: MQTT 5 PUBACK reason: accepted, but no subscription matched.
_NO_MATCHING_SUBSCRIBERS: Final = 0x10

#: Pause of the sender after the outbox failed.
SENDER_RETRY_S: Final = 5.0

#: Acknowledgement callbacks kept for rows not acknowledged yet (the oldest are dropped:
#: rows purged or erased from the outbox behind the publisher's back never are).
MAX_ACK_CALLBACKS: Final = 4096

#: Extra room in paho's own in-flight window for retained state messages.
_STATE_HEADROOM: Final = 32

#: Called once an event's row has left the outbox on the broker's PUBACK, with the
#: monotonic time the PUBACK arrived.
AckCallback = Callable[[float], None]


class ConnectionState(enum.StrEnum):
    """Where the publisher's broker connection stands."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class PublisherStatus:
    """A snapshot for health and logs.

    Attributes:
        state: Connection state.
        last_error: The most recent connection or delivery problem, for a person.
        connected_since: Epoch seconds of the current connection; None when down.
        connects: Successful connections since start.
        failures: Consecutive failed attempts since the last success.
        retry_in_s: Delay before the next attempt, when one is pending.
        inflight: Events sent and awaiting the broker's acknowledgement.
        acked: Events acknowledged since start.
        outbox: Outbox counters.
    """

    state: ConnectionState
    last_error: str | None
    connected_since: float | None
    connects: int
    failures: int
    retry_in_s: int | None
    inflight: int
    acked: int
    outbox: OutboxStats

    @property
    def broker_down(self) -> bool:
        """The broker cannot be reached or refuses the unit: events wait in the outbox."""
        return self.state in (
            ConnectionState.REFUSED,
            ConnectionState.UNREACHABLE,
            ConnectionState.DISCONNECTED,
        )

    def mqtt_health(self) -> dict[str, Any]:
        """The ``mqtt`` section of the health payload."""
        return {
            "state": str(self.state),
            "last_error": None if self.last_error is None else self.last_error[:500],
            "connected_since": (
                None if self.connected_since is None else format_timestamp(self.connected_since)
            ),
            "connects": self.connects,
            "failures": self.failures,
        }

    def outbox_health(self, now: float) -> dict[str, Any]:
        """The ``outbox`` section of the health payload."""
        oldest = self.outbox.oldest_created_at
        return {
            "depth": self.outbox.depth,
            "dropped": self.outbox.dropped,
            "expired": self.outbox.expired,
            "purged": self.outbox.purged,
            "oldest_age_s": None if oldest is None else round(max(now - oldest, 0.0), 1),
            "inflight": self.inflight,
            "acked": self.acked,
        }


def health_payload(unit: str, pipeline: Mapping[str, Any], status: PublisherStatus | None,
                   *, now: float | None = None) -> dict[str, Any]:
    """The whole ``facegate/health/1`` payload: the one place it is assembled.

    Args:
        unit: The unit id.
        pipeline: The service's part (``status``, ``uptime_s``, ``cameras``, ...);
            empty for a bare publisher.
        status: The publisher's status (the ``mqtt`` and ``outbox`` sections); None
            before a publisher exists.
        now: Seconds since the epoch (default: the wall clock).
    """
    now = time.time() if now is None else now
    payload: dict[str, Any] = {"schema": HEALTH_SCHEMA, "unit": unit,
                               "at": format_timestamp(now), **pipeline}
    if status is not None:
        payload["mqtt"] = status.mqtt_health()
        payload["outbox"] = status.outbox_health(now)
    return payload


class Publisher:
    """Publishes a unit's events and state to an MQTT broker; see the module doc.

    Use as a context manager, or call :meth:`start` and :meth:`close`.

    Args:
        config: The ``[mqtt]`` configuration section.
        cameras: Camera ids (for Home Assistant discovery).
        health_provider: Called every ``health_interval_s`` (and on each connect) with
            the publisher's status; returns the whole ``facegate/health/1`` payload
            (assembled by :func:`health_payload`). Without one the publisher
            publishes the event layer's part alone.
        outbox: An open outbox to use instead of opening ``config.outbox_path``; the
            caller keeps ownership.
        env: Environment for ``$CREDENTIALS_DIRECTORY`` lookups (default os.environ).
        sw_version: Software version reported to Home Assistant.
        session_expiry_s: MQTT 5 session expiry; above 0 the session is persistent, so
            messages on :meth:`subscribe` topics published while the unit was away are
            delivered when it returns (see :meth:`BrokerClient.start`).

    Raises:
        PublishError: A camera id is not a valid topic level or the outbox cannot be
            opened.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        cameras: Sequence[str] = (),
        health_provider: Callable[[PublisherStatus], Mapping[str, Any]] | None = None,
        outbox: Outbox | None = None,
        env: Mapping[str, str] | None = None,
        sw_version: str = "",
        session_expiry_s: int = 0,
    ) -> None:
        bad = [c for c in cameras if not is_valid_id(c)]
        if bad:
            raise PublishError(f"camera ids {bad} are not valid topic levels")
        self.config = config
        self.topics = Topics(config.unit_id)
        self._address = config.address
        self._env = env
        self._health_provider = health_provider
        self._owns_outbox = outbox is None
        self._outbox = outbox or Outbox(config.outbox_path, config.outbox_max_rows)
        self._discovery = (
            Discovery(config.home_assistant.prefix, self.topics, tuple(cameras), sw_version)
            if config.home_assistant.enabled
            else None
        )
        self._session_expiry_s = session_expiry_s
        self._subscriptions: list[tuple[str, MessageCallback, int]] = []
        self._client: BrokerClient | None = None
        self._sender: threading.Thread | None = None
        self._cond = threading.Condition()
        # Everything below is guarded by self._cond.
        self._state = ConnectionState.STOPPED
        self._last_error: str | None = None
        self._connected_since: float | None = None
        self._connects = 0
        self._failures = 0
        self._retry_delay: int | None = None  # mirrors paho's backoff
        self._inflight: dict[int, int] = {}  # outbox row id -> mid
        self._mid_rows: dict[int, int | None] = {}  # mid -> row id (None: state message)
        self._early: dict[int, ReasonCode] = {}  # PUBACKs that beat publish() returning
        self._acked_rows: list[int] = []
        self._ack_at: dict[int, float] = {}  # acked row id -> monotonic PUBACK time
        # Row id -> callback; guarded by _queue_lock, which also spans the outbox put,
        # so a row is never acknowledged before its callback is registered.
        self._queue_lock = threading.Lock()
        self._ack_callbacks: OrderedDict[int, AckCallback] = OrderedDict()
        self._applying = 0  # acks taken from _acked_rows, not yet counted
        self._rejected_rows: list[int] = []
        self._retained: dict[str, bytes] = {}
        self._cursor = 0
        self._hold_until = 0.0
        self._health_due = 0.0
        self._wake = True
        self._stopping = False
        self._closed = False
        self._acked_total = 0
        self._stats = OutboxStats(0, 0, 0, 0, None)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start connecting (in the background) and sending; returns at once.

        Raises:
            ConfigError: A secret or TLS file is missing or unusable.
            PublishError: The publisher was closed.
        """
        with self._cond:
            if self._closed:
                raise PublishError("publisher is closed")
            if self._client is not None:
                return
        client = self._make_client()
        with self._cond:
            self._client = client
            self._state = ConnectionState.CONNECTING
        logger.info(
            "publishing as %s to %s://%s:%d (outbox %s)",
            self.config.effective_client_id,
            "mqtts" if self._address.tls else "mqtt",
            self._address.host,
            self._address.port,
            self._outbox.path,
        )
        client.start(self.config.keepalive, session_expiry_s=self._session_expiry_s)
        self._sender = threading.Thread(target=self._run_sender, name="mqtt-sender", daemon=True)
        self._sender.start()

    def _make_client(self) -> BrokerClient:
        cfg = self.config
        client = client_for(cfg, name="event publisher", env=self._env,
                            will=Will(self.topics.status, OFFLINE))
        client.max_inflight_messages_set(cfg.max_inflight + _STATE_HEADROOM)
        client.after_connect = self._on_connect
        client.after_connect_fail = self._on_connect_fail
        client.after_disconnect = self._on_disconnect
        client.after_message = self._on_message
        client.on_publish = self._on_publish
        if self._discovery is not None:
            client.route(self._discovery.birth_topic, self._on_birth)
        for topic_filter, callback, _ in self._subscriptions:
            client.route(topic_filter, callback)
        return client

    def subscribe(self, topic_filter: str, callback: MessageCallback, *, qos: int = 1) -> None:
        """Before :meth:`start`: hand messages on ``topic_filter`` to ``callback`` and
        subscribe to it on every connection.

        ``callback`` runs on paho's network thread: it must return quickly and never
        raise (hand the message to a worker).

        Raises:
            PublishError: The publisher was started already.
        """
        with self._cond:
            if self._client is not None or self._closed:
                raise PublishError("subscribe() must be called before the publisher starts")
            self._subscriptions.append((topic_filter, callback, qos))

    def close(self, timeout: float = 5.0) -> None:
        """Flush what can be flushed within ``timeout``, say ``offline``, disconnect.

        Unacknowledged events stay in the outbox for the next start. Idempotent.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            client = self._client
            connected = self._state is ConnectionState.CONNECTED
        if client is not None:
            if connected:
                self.flush(timeout)
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            if self._sender is not None:
                self._sender.join(timeout)
            with self._cond:
                connected = self._state is ConnectionState.CONNECTED
            if connected:
                info = client.publish(self.topics.status, OFFLINE, qos=1, retain=True)
                try:
                    info.wait_for_publish(timeout)
                except (RuntimeError, ValueError) as exc:
                    # The connection went away meanwhile: the last will says offline.
                    logger.info("could not say offline before disconnecting: %s", exc)
            client.stop()
            self._apply_acks()
        with self._cond:
            self._state = ConnectionState.CLOSED
            self._connected_since = None
        if self._owns_outbox:
            self._outbox.close()
        logger.info("publisher closed")

    def __enter__(self) -> Publisher:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ public API

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    def publish_match(self, event: MatchEvent, *, on_ack: AckCallback | None = None) -> int:
        """Validate, privacy-check and durably queue a match event; returns its row id.

        Returns once the event is committed to the outbox; delivery happens in the
        background, at least once. ``on_ack`` is called (on the sender thread, with
        the PUBACK's monotonic time) once the broker acknowledged the event and its
        row left the outbox; never for an event that expires or is erased unsent.

        Raises:
            PublishError: The event is for another unit, fails the schema or the
                privacy guard, or the outbox cannot be written.
        """
        return self._queue_event(event, self.topics.match(event.camera), on_ack)

    def publish_track_end(self, event: TrackEndEvent) -> int:
        """Durably queue a track-end update (like :meth:`publish_match`); returns its row id.

        Raises:
            PublishError: The event is for another unit, fails the schema or the
                privacy guard, or the outbox cannot be written.
        """
        return self._queue_event(event, self.topics.track_end(event.camera), None)

    def _queue_event(self, event: MatchEvent | TrackEndEvent, topic: str,
                     on_ack: AckCallback | None) -> int:
        """Check the unit, commit the event to the outbox, wake the sender; the row id."""
        if event.unit != self.config.unit_id:
            raise PublishError(
                f"event of unit {event.unit!r} given to the publisher of {self.config.unit_id!r}"
            )
        with self._queue_lock:
            row_id = self._outbox.put(
                topic,
                event.encode(),
                qos=self.config.qos,
                expiry_s=self.config.match_expiry_s,
                identity_id=event.identity_id,
                event_id=event.event_id,
            )
            if on_ack is not None:
                self._ack_callbacks[row_id] = on_ack
                while len(self._ack_callbacks) > MAX_ACK_CALLBACKS:
                    self._ack_callbacks.popitem(last=False)
        with self._cond:
            self._wake = True
            self._cond.notify_all()
        return row_id

    def publish_state(self, suffix: str, payload: Mapping[str, Any]) -> None:
        """Publish a retained state message (``health``, ``gallery/state``, ``audit/head``).

        Sent now when connected; in any case remembered and republished on every
        reconnect (the latest value only).

        Raises:
            PublishError: Unknown suffix, or the payload fails its schema or the
                privacy guard.
        """
        topic = self.topics.state(suffix)
        schema_id = STATE_TOPICS[suffix]
        data = prepare(schema_id, payload) if schema_id else encode(dict(payload))
        with self._cond:
            self._retained[topic] = data
            connected = self._state is ConnectionState.CONNECTED
        if connected:
            self._publish_raw(topic, data, retain=True)

    def publish_health(self) -> None:
        """Publish the health payload now (it is also published every interval).

        Raises:
            PublishError: The payload fails the health schema or the privacy guard.
        """
        status = self.status()
        payload: Mapping[str, Any]
        try:
            payload = (self._health_provider(status) if self._health_provider is not None
                       else health_payload(self.config.unit_id, {}, status))
        except Exception:
            logger.exception("health provider failed; publishing the event layer's part only")
            payload = health_payload(self.config.unit_id, {}, status)
        self.publish_state("health", payload)

    def delete_for_identity(self, identity_id: str) -> int:
        """Erase an identity's pending events from the outbox (file and WAL).

        Events already handed to the network cannot be recalled.

        Raises:
            PublishError: The erasure failed or is incomplete.
        """
        return self._outbox.delete_for_identity(identity_id)

    def status(self) -> PublisherStatus:
        """A snapshot of the connection and outbox state."""
        try:
            stats = self._outbox.stats()
        except PublishError:
            stats = self._stats  # closed: the last known numbers
        with self._cond:
            self._stats = stats
            waiting = self._state in (
                ConnectionState.REFUSED,
                ConnectionState.UNREACHABLE,
                ConnectionState.DISCONNECTED,
            )
            return PublisherStatus(
                state=self._state,
                last_error=self._last_error,
                connected_since=self._connected_since,
                connects=self._connects,
                failures=self._failures,
                retry_in_s=self._retry_delay if waiting else None,
                inflight=len(self._inflight),
                acked=self._acked_total,
                outbox=stats,
            )

    def wait_for_state(self, *states: ConnectionState, timeout: float) -> bool:
        """Block until the connection is in one of ``states``; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._state in states, timeout)

    def wait_for(self, predicate: Callable[[PublisherStatus], bool], timeout: float) -> bool:
        """Block until ``predicate(self.status())`` holds; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.status()), timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until every outbox row is acknowledged; False on timeout.

        Raises:
            PublishError: The outbox is closed.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._wake = True
            self._cond.notify_all()
            while True:
                idle = not (self._inflight or self._acked_rows or self._applying)
                if idle and self._outbox.depth() == 0:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))

    # ------------------------------------------------------------------ paho callbacks

    def _advance_delay(self) -> int:
        """Mirror paho's backoff: min, then doubling up to max (cond held)."""
        cfg = self.config
        if self._retry_delay is None:
            self._retry_delay = cfg.reconnect_min_s
        else:
            self._retry_delay = min(self._retry_delay * 2, cfg.reconnect_max_s)
        return self._retry_delay

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # The client logs the outage; this keeps the state for health.
        with self._cond:
            if self._closed:
                return
            self._failures += 1
            self._state = ConnectionState.UNREACHABLE
            self._last_error = self._client_failure() or "cannot reach broker"
            self._advance_delay()
            self._cond.notify_all()

    def _client_failure(self) -> str | None:
        client = self._client
        return None if client is None else client.last_failure

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            with self._cond:  # the client logged it
                self._failures += 1
                self._state = ConnectionState.REFUSED
                self._advance_delay()
                if reason_code.value in CREDENTIAL_REASONS:
                    self._last_error = f"broker refused credentials ({reason_code.getName()})"
                else:
                    self._last_error = f"broker refused the connection ({reason_code.getName()})"
                self._cond.notify_all()
            return
        with self._cond:
            self._state = ConnectionState.CONNECTED
            self._connected_since = time.time()
            self._connects += 1
            self._failures = 0
            self._retry_delay = None
            self._last_error = None  # health reports the current condition
            self._wake = True
            self._hold_until = 0.0  # a new connection may come with new permissions
            self._health_due = 0.0
            retained = list(self._retained.items())
            self._cond.notify_all()
        # Subscribe first: the broker handles one connection's packets in order, so by the
        # time anyone sees this unit "online" its subscriptions exist (a console may send
        # it a verdict the moment it does).
        for topic_filter, _, qos in self._subscriptions:
            client.subscribe(topic_filter, qos=qos)
        self._publish_raw(self.topics.status, ONLINE.encode(), retain=True)
        for topic, data in retained:
            self._publish_raw(topic, data, retain=True)
        if self._discovery is not None:
            client.subscribe(self._discovery.birth_topic, qos=1)
            self._publish_discovery()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            was = self._state
            self._connected_since = None
            self._cond.notify_all()
            if self._closed or self._stopping:
                self._state = ConnectionState.CLOSED
                return
            if was is ConnectionState.REFUSED:
                return  # a refused CONNACK: on_connect already said why
            # The client logged it (once per outage); this keeps the state for health.
            if was is ConnectionState.CONNECTED:
                self._state = ConnectionState.DISCONNECTED
                self._last_error = f"connection lost ({reason_code.getName()})"
                if self._inflight:
                    logger.debug("%d event(s) in flight will be resent after reconnecting",
                                len(self._inflight))
            else:
                # Closed before CONNACK (TLS 1.3 reports a rejected client certificate
                # only after the handshake).
                self._failures += 1
                self._state = ConnectionState.UNREACHABLE
                self._last_error = self._client_failure() or (
                    f"connection closed before the broker accepted it ({reason_code.getName()})")
            self._advance_delay()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            if mid in self._mid_rows:
                self._settle(mid, self._mid_rows.pop(mid), reason_code)
            else:
                self._early[mid] = reason_code

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic[:200]
        except UnicodeDecodeError:
            topic = "(not UTF-8)"
        logger.warning(
            "ignored a %d-byte message on unexpected topic %r", len(message.payload), topic
        )

    def _on_birth(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Runs on paho's network thread: nothing a remote sender puts in the message
        # may raise out of here (it would stop the network loop).
        try:
            if parse_birth(message.payload) == ONLINE:
                logger.info("Home Assistant is online: republishing discovery")
                self._publish_discovery()
        except Exception:
            logger.exception("error handling a Home Assistant status message; ignored")

    # ------------------------------------------------------------------ sending

    def _publish_discovery(self) -> None:
        assert self._discovery is not None
        for topic, payload in self._discovery.messages():
            self._publish_raw(topic, encode(payload), retain=True)

    def _publish_raw(
        self,
        topic: str,
        data: bytes,
        *,
        retain: bool,
        row_id: int | None = None,
        properties: Properties | None = None,
    ) -> None:
        """Hand one QoS 1 message to paho and track its PUBACK."""
        client = self._client
        if client is None:
            raise PublishError("publisher not started")
        info = client.publish(topic, data, qos=1, retain=retain, properties=properties)
        with self._cond:
            if row_id is not None:
                self._inflight[row_id] = info.mid
            early = self._early.pop(info.mid, None)
            if early is not None:
                self._settle(info.mid, row_id, early)
            else:
                self._mid_rows[info.mid] = row_id

    def _settle(self, mid: int, row_id: int | None, reason: ReasonCode) -> None:
        """Record a PUBACK (cond held)."""
        if row_id is None:
            if reason.is_failure:
                logger.warning("broker rejected a state message (%s)", reason.getName())
            return
        self._inflight.pop(row_id, None)
        if reason.is_failure:
            self._rejected_rows.append(row_id)
            self._last_error = f"broker rejected an event ({reason.getName()})"
        elif reason.value == _NO_MATCHING_SUBSCRIBERS and self.config.require_subscriber:
            self._rejected_rows.append(row_id)  # kept, sent again after the hold-off
            self._last_error = "no subscriber took an event (0x10); it is kept and resent"
        else:
            self._acked_rows.append(row_id)
            self._ack_at[row_id] = time.monotonic()
        self._cond.notify_all()

    def _apply_acks(self) -> None:
        """Delete acknowledged rows from the outbox (sender thread, or close)."""
        with self._cond:
            acked, self._acked_rows = self._acked_rows, []
            self._applying = len(acked)
            rejected, self._rejected_rows = self._rejected_rows, []
            if rejected:
                self._cursor = min(self._cursor, min(rejected) - 1)
                self._hold_until = time.monotonic() + REJECT_HOLDOFF_S
                self._wake = True
        if acked:
            try:
                self._outbox.ack(*acked)
            except PublishError:
                with self._cond:
                    self._acked_rows[:0] = acked  # try again next round
                    self._applying = 0
                raise
            with self._cond:
                times = [self._ack_at.pop(row, time.monotonic()) for row in acked]
            self._run_ack_callbacks(acked, times)  # before flush() may return
            with self._cond:
                self._acked_total += len(acked)
                self._applying = 0
                self._cond.notify_all()
        if rejected:
            logger.warning(
                "broker rejected %d event(s); resending in %g s", len(rejected), REJECT_HOLDOFF_S
            )

    def _run_ack_callbacks(self, rows: Sequence[int], times: Sequence[float]) -> None:
        """Call the callbacks of rows that left the outbox (no lock held while called)."""
        with self._queue_lock:
            due = [(cb, at) for row, at in zip(rows, times, strict=True)
                   if (cb := self._ack_callbacks.pop(row, None)) is not None]
        for callback, at in due:
            try:
                callback(at)
            except Exception:
                logger.exception("acknowledgement callback failed; ignored")

    def _forget_callbacks(self, rows: Sequence[int]) -> None:
        """Rows that left the outbox unsent (expired, invalid) are never acknowledged."""
        with self._queue_lock:
            for row in rows:
                self._ack_callbacks.pop(row, None)

    def _ready(self, now: float) -> bool:
        """Whether the sender has something to do (cond held)."""
        if self._stopping or self._acked_rows or self._rejected_rows:
            return True
        if self._state is not ConnectionState.CONNECTED:
            return False
        if now >= self._health_due:
            return True
        return (
            self._wake
            and now >= self._hold_until
            and len(self._inflight) < self.config.max_inflight
        )

    def _run_sender(self) -> None:
        while True:
            with self._cond:
                while not self._ready(time.monotonic()):
                    now = time.monotonic()
                    wait = 5.0
                    if self._state is ConnectionState.CONNECTED:
                        wait = min(wait, self._health_due - now + 0.01)
                    if self._hold_until > now:
                        wait = min(wait, self._hold_until - now + 0.01)
                    self._cond.wait(max(wait, 0.01))
                stopping = self._stopping
            try:
                self._apply_acks()
                if stopping:
                    return
                self._send_step()
            except PublishError as exc:  # the outbox failed (disk full, I/O): retry
                logger.error("event sender: %s; retrying in %g s", exc, SENDER_RETRY_S)
                with self._cond:
                    self._last_error = str(exc)
                    self._cond.wait(SENDER_RETRY_S)
            except Exception as exc:
                # A bug must not silently stop delivery for the life of the process.
                logger.exception("event sender failed; retrying in %g s", SENDER_RETRY_S)
                with self._cond:
                    self._last_error = f"event sender failed: {exc!r}"[:500]
                    self._cond.wait(SENDER_RETRY_S)

    def _send_step(self) -> None:
        now = time.monotonic()
        with self._cond:
            connected = self._state is ConnectionState.CONNECTED
            health_due = connected and now >= self._health_due
            if health_due:
                self._health_due = now + self.config.health_interval_s
            can_send = connected and self._wake and now >= self._hold_until
            inflight = set(self._inflight)
            window = self.config.max_inflight - len(inflight)
            cursor = self._cursor
            if can_send and window > 0:
                self._wake = False
        if health_due:
            try:
                self.publish_health()
            except PublishError as exc:
                logger.error("health not published: %s", exc)
        if not can_send or window <= 0:
            return
        rows = [
            r
            for r in self._outbox.pending(limit=window + len(inflight), after_id=cursor)
            if r.id not in inflight
        ][:window]
        expired: list[int] = []
        invalid: list[int] = []
        wall = time.time()
        for row in rows:
            remaining = row.remaining_expiry(wall)
            properties = None
            if remaining is not None:
                if remaining <= 0:
                    expired.append(row.id)
                    continue
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.MessageExpiryInterval = max(1, math.ceil(remaining))
            try:
                self._publish_raw(
                    row.topic, row.payload, retain=False, row_id=row.id, properties=properties
                )
            except ValueError as exc:
                logger.error("outbox row %d cannot be sent and is dropped: %s", row.id, exc)
                invalid.append(row.id)
        if rows:
            with self._cond:
                self._cursor = max(self._cursor, rows[-1].id)
                if len(rows) == window:
                    self._wake = True  # maybe more behind; acks will free the window
        if expired:
            self._outbox.expire(*expired)
            self._forget_callbacks(expired)
            logger.info("%d event(s) expired before they could be sent", len(expired))
        if invalid:
            self._outbox.discard(*invalid)
            self._forget_callbacks(invalid)
