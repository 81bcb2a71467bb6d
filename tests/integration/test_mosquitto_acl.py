"""provisioning/mosquitto.acl on a real mosquitto: each unit on its own subtree only."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from device.events.client import BrokerClient, BrokerLogin, make_client
from device.ops.localbroker import BrokerUser, LocalBroker

ACL = Path(__file__).resolve().parents[2] / "provisioning" / "mosquitto.acl"
NOT_AUTHORIZED = 0x87
USERS = {name: f"pw-{name}" for name in ("unit-1", "unit-2", "console", "operator")}


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    with LocalBroker(tmp_path / "broker",
                     users=tuple(BrokerUser(u, p) for u, p in USERS.items()),
                     extra_config=(f"acl_file {ACL}",)) as b:
        yield b


class Probe:
    """One logged-in client that records SUBACKs, PUBACKs and messages."""

    def __init__(self, broker: LocalBroker, user: str) -> None:
        self.client: BrokerClient = make_client(
            BrokerLogin(broker.url, user, USERS[user]), f"acl-{user}", name=user)
        self.cond = threading.Condition()
        self.acks: dict[int, ReasonCode] = {}
        self.granted: dict[int, list[ReasonCode]] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.connected: ReasonCode | None = None
        self.client.after_connect = self._connect
        self.client.on_publish = self._puback
        self.client.on_subscribe = self._suback
        self.client.after_message = self._message
        self.client.start(keepalive=30)
        with self.cond:
            assert self.cond.wait_for(lambda: self.connected is not None, 10)
        assert self.connected is not None and not self.connected.is_failure, self.connected

    def _connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        with self.cond:
            self.connected = reason
            self.cond.notify_all()

    def _puback(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        with self.cond:
            self.acks[mid] = reason
            self.cond.notify_all()

    def _suback(self, _c: mqtt.Client, _u: Any, mid: int, reasons: list[ReasonCode],
                _p: Any) -> None:
        with self.cond:
            self.granted[mid] = reasons
            self.cond.notify_all()

    def _message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((message.topic, bytes(message.payload)))
            self.cond.notify_all()

    def publish(self, topic: str, payload: bytes = b"x") -> int:
        mid = self.client.publish(topic, payload, qos=1).mid
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.acks, 10)
        return self.acks[mid].value

    def subscribe(self, topic: str) -> int:
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.granted, 10)
        return self.granted[mid][0].value

    def wait_message(self, topic: str, timeout: float = 10) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: any(t == topic for t, _ in self.messages),
                                      timeout)

    def close(self) -> None:
        self.client.stop()


def test_a_unit_may_use_its_own_subtree_and_not_another_units(broker: LocalBroker) -> None:
    console, unit1, unit2 = (Probe(broker, u) for u in ("console", "unit-1", "unit-2"))
    try:
        assert console.subscribe("$share/console/facegate/+/+/match") == 1
        assert console.subscribe("facegate/+/status") == 1
        # unit-1 on its own subtree: accepted and delivered
        assert unit1.subscribe("facegate/unit-1/review") == 1
        assert unit1.publish("facegate/unit-1/door/match", b"{}") == 0
        assert console.wait_message("facegate/unit-1/door/match")
        # unit-1 on unit-2's subtree: refused, never delivered
        assert unit1.publish("facegate/unit-2/status", b"offline") == NOT_AUTHORIZED
        assert unit1.publish("facegate/unit-2/door/match", b"{}") == NOT_AUTHORIZED
        # mosquitto grants a subscription and checks read access per message: unit-1
        # may subscribe to unit-2's subtree and still receive nothing of it
        unit1.subscribe("facegate/unit-2/#")
        unit1.subscribe("facegate/+/door/match")
        assert unit2.publish("facegate/unit-2/status", b"online") == 0
        assert unit2.publish("facegate/unit-2/door/match", b"{}") == 0
        assert console.wait_message("facegate/unit-2/door/match")
        assert unit2.publish("facegate/unit-1/review", b"{}") == NOT_AUTHORIZED
        # the console's verdict reaches unit-1 (after unit-2's messages were routed)
        assert console.publish("facegate/unit-1/review", b"{}") == 0
        assert unit1.wait_message("facegate/unit-1/review")
        assert [t for t, _ in unit1.messages if t.startswith("facegate/unit-2/")] == []
        assert [t for t, _ in unit1.messages].count("facegate/unit-1/review") == 1
        # nor can the console pose as a unit
        assert console.publish("facegate/unit-1/status", b"online") == NOT_AUTHORIZED
        assert not any(t == "facegate/unit-2/status" and p == b"offline"
                       for t, p in console.messages)
    finally:
        for probe in (console, unit1, unit2):
            probe.close()


def test_only_the_operator_publishes_gallery_bundles(broker: LocalBroker) -> None:
    operator, unit1 = Probe(broker, "operator"), Probe(broker, "unit-1")
    try:
        assert unit1.subscribe("facegate/fleet/gallery/#") == 1
        assert operator.publish("facegate/fleet/gallery/manifest", b"{}") == 0
        assert unit1.wait_message("facegate/fleet/gallery/manifest")
        assert unit1.publish("facegate/fleet/gallery/manifest", b"{}") == NOT_AUTHORIZED
    finally:
        operator.close()
        unit1.close()
