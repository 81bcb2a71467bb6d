"""Ingestion: one MQTT 5 subscriber turns what units publish into store rows.

Events (``<camera>/match``, ``<camera>/track_end``) come through an MQTT 5 shared
subscription (``$share/<group>/facegate/+/+/match``), so replicas of the console split
the stream between them; retained state (status, health, gallery state, audit head,
review acks) comes through a normal subscription in every replica, since the broker
hands retained messages to new plain subscribers only. Each message is parsed with the
unit's own schemas; anything that does not parse is counted and logged, never stored.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device.console.store import Store
from device.errors import DeviceError
from device.events.client import BrokerClient, BrokerLogin, make_client
from device.events.review import parse_ack
from device.events.schema import (
    GALLERY_STATE_SCHEMA,
    HEALTH_SCHEMA,
    MatchEvent,
    TrackEndEvent,
    is_valid_id,
    parse_timestamp,
    validate,
)
from device.events.topics import FLEET, OFFLINE, ONLINE, ROOT

logger = logging.getLogger(__name__)

#: The largest message the console accepts (events and states are a few kB).
MAX_MESSAGE_BYTES: Final = 64 * 1024


@dataclass
class IngestStats:
    """Counters of one subscriber (for logs, tests and the bench)."""

    stored: int = 0
    duplicates: int = 0
    states: int = 0
    refused: int = 0
    received: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)


def _match_row(payload: dict[str, Any], store: Store, now: float) -> dict[str, Any]:
    event = MatchEvent.from_payload(payload)
    unit = store.unit(event.unit)
    return {
        "event_id": event.event_id, "kind": "match", "unit": event.unit,
        "camera": event.camera, "identity_id": event.identity_id, "label": event.label,
        "track_id": event.track_id, "similarity": event.similarity,
        "false_match_rate": event.false_match_rate,
        "fmr_at_similarity": event.fmr_at_similarity,
        "fmr_upper_bound": event.fmr_at_similarity_upper_bound,
        "gallery_version": event.gallery_version, "model_id": event.model_id,
        "review_required": event.review_required, "match_event_id": None,
        "occurred_at": event.decided_at, "received_at": now,
        "gallery_identities": None if unit is None else unit["gallery_identities"],
    }


def _track_end_row(payload: dict[str, Any], now: float) -> dict[str, Any]:
    event = TrackEndEvent.from_payload(payload)
    return {
        "event_id": event.event_id, "kind": "track_end", "unit": event.unit,
        "camera": event.camera, "identity_id": event.identity_id, "label": None,
        "track_id": event.track_id, "match_event_id": event.match_event_id,
        "occurred_at": event.ended_at, "received_at": now,
    }


def _json(data: bytes) -> Any:
    if len(data) > MAX_MESSAGE_BYTES:
        raise DeviceError(f"message of {len(data)} bytes (at most {MAX_MESSAGE_BYTES})")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeviceError(f"not JSON: {exc}") from exc


def handle(store: Store, topic: str, data: bytes, stats: IngestStats | None = None,
           now: float | None = None) -> str:
    """Store one message; what was done: ``stored``, ``duplicate``, ``state``, ``ignored``.

    Raises:
        DeviceError: The message does not parse (wrong schema, unit id mismatch...).
    """
    now = time.time() if now is None else now
    levels = topic.split("/")
    if len(levels) < 3 or levels[0] != ROOT or levels[1] == FLEET:
        return "ignored"
    unit, rest = levels[1], "/".join(levels[2:])
    if not is_valid_id(unit):
        raise DeviceError(f"topic {topic!r}: unit id is not valid")
    if rest == "status":
        text = data.decode("utf-8", "replace").strip()
        if text not in (ONLINE, OFFLINE):
            raise DeviceError(f"status of {unit} is {text[:20]!r}, not online/offline")
        store.set_status(unit, text)
        return "state"
    if rest in ("gallery/manifest", "review") or rest.startswith("gallery/v"):
        return "ignored"  # what the fleet sends to units
    payload = _json(data)
    if not isinstance(payload, dict):
        raise DeviceError(f"{topic}: payload is not a JSON object")
    if payload.get("unit") != unit:
        raise DeviceError(f"{topic}: payload names unit {payload.get('unit')!r}")
    if rest == "health":
        validate(HEALTH_SCHEMA, payload)
        store.set_health(unit, payload, parse_timestamp(payload["at"]))
        return "state"
    if rest == "gallery/state":
        validate(GALLERY_STATE_SCHEMA, payload)
        store.set_gallery(unit, payload)
        return "state"
    if rest == "audit/head":
        _audit_head(store, unit, payload)
        return "state"
    if rest == "review/ack":
        ack = parse_ack(payload)
        if ack.nonce is None or ack.event_id is None:
            # The unit's answer to a malformed verdict: no console verdict to attach it to.
            logger.info("console: %s refused a verdict it could not read (%s)", unit, ack.reason)
            return "state"
        # Stored once per nonce, first wins: a QoS 1 redelivery the unit refuses as
        # replayed never hides the ack that recorded it.
        store.add_ack({"nonce": ack.nonce, "event_id": ack.event_id, "unit": ack.unit,
                       "outcome": ack.outcome,
                       "reason": None if ack.reason is None else str(ack.reason),
                       "at": parse_timestamp(ack.at), "audit_seq": ack.audit_seq,
                       "audit_head": ack.audit_head})
        return "state"
    if len(levels) == 4 and levels[3] in ("match", "track_end"):
        if payload.get("camera") != levels[2]:
            raise DeviceError(f"{topic}: payload names camera {payload.get('camera')!r}")
        row = (_match_row(payload, store, now) if levels[3] == "match"
               else _track_end_row(payload, now))
        return "stored" if store.add_event(row) else "duplicate"
    return "ignored"


def _audit_head(store: Store, unit: str, payload: dict[str, Any]) -> None:
    seq, head, log_id = payload.get("seq"), payload.get("hash"), payload.get("log_id")
    if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0
            and isinstance(head, str) and len(head) == 64
            and isinstance(log_id, str) and 0 < len(log_id) <= 64):
        raise DeviceError(f"audit head of {unit} is malformed")
    at = parse_timestamp(str(payload.get("at", "")))
    store.set_audit_head(unit, log_id, seq, head, at)


@dataclass(frozen=True, slots=True)
class Subscriptions:
    """The topic filters of one replica."""

    group: str | None = "console"

    def shared(self, topic: str) -> str:
        return f"$share/{self.group}/{topic}" if self.group else topic

    def all(self) -> list[tuple[str, int]]:
        """``(filter, qos)`` pairs: events shared, retained state per replica."""
        return [
            (self.shared(f"{ROOT}/+/+/match"), 1), (self.shared(f"{ROOT}/+/+/track_end"), 1),
            (f"{ROOT}/+/status", 1), (f"{ROOT}/+/health", 1), (f"{ROOT}/+/gallery/state", 1),
            (f"{ROOT}/+/audit/head", 1), (f"{ROOT}/+/review/ack", 1),
        ]


class Subscriber:
    """The console's MQTT client: subscribes, stores, and publishes verdicts.

    Args:
        store: Where messages go.
        login: The broker.
        client_id: This replica's client id (each replica its own).
        subscriptions: The filters (the shared group).
        on_stored: Called after each message that changed the store (for live pages).
    """

    def __init__(self, store: Store, login: BrokerLogin, client_id: str, *,
                 subscriptions: Subscriptions | None = None,
                 on_stored: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.stats = IngestStats()
        self.subscriptions = subscriptions or Subscriptions()
        self._on_stored = on_stored
        self.subscribed = threading.Event()
        self.client: BrokerClient = make_client(login, client_id, name="console",
                                                max_packet_bytes=MAX_MESSAGE_BYTES)
        self.client.after_connect = self._connected
        self.client.after_message = self._message
        self.client.on_subscribe = self._suback

    def start(self, keepalive: int = 30, session_expiry_s: int = 3600) -> None:
        """Connect in the background with a persistent session.

        QoS 1 events published while the console was away (up to ``session_expiry_s``)
        wait for it at the broker.
        """
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = session_expiry_s
        address = self.client.address
        self.client.connect_async(address.host, address.port, keepalive, clean_start=False,
                                  properties=properties)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.stop()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
                ) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def _connected(self, client: mqtt.Client, _userdata: Any, _flags: mqtt.ConnectFlags,
                   reason: ReasonCode, _properties: Properties | None) -> None:
        if reason.is_failure:
            return
        client.subscribe(self.subscriptions.all())

    def _suback(self, _client: mqtt.Client, _userdata: Any, _mid: int,
                reasons: list[ReasonCode], _properties: Properties | None) -> None:
        failed = [r.getName() for r in reasons if r.is_failure]
        if failed:
            logger.error("the broker refused console subscriptions: %s", ", ".join(failed))
        self.subscribed.set()

    def _message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.stats.add("received")
        try:
            topic = message.topic
            outcome = handle(self.store, topic, bytes(message.payload))
        except (DeviceError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            self.stats.add("refused")
            logger.warning("console ignored a message: %s", exc)
            return
        except Exception:
            # The network thread must survive a store outage; the message is lost for
            # this replica only when it cannot be stored, and that is logged loudly.
            self.stats.add("refused")
            logger.exception("console could not store a message on %s", message.topic[:200])
            return
        if outcome == "stored":
            self.stats.add("stored")
        elif outcome == "duplicate":
            self.stats.add("duplicates")
        elif outcome == "state":
            self.stats.add("states")
        if outcome in ("stored", "state") and self._on_stored is not None:
            self._on_stored(outcome)
