"""The private broker really speaks MQTT 5, enforces credentials and keeps retained messages."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from device.ops.localbroker import BrokerUser, LocalBroker


def _client(broker: LocalBroker, username: str | None = None, password: str | None = None):  # type: ignore[no-untyped-def]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if username:
        c.username_pw_set(username, password)
    return c


def test_retained_message_survives_restart(broker: LocalBroker) -> None:
    pub = _client(broker)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    info = pub.publish("facegate/t/status", b"online", qos=1, retain=True)
    info.wait_for_publish(5)
    assert info.is_published()
    pub.loop_stop()
    pub.disconnect()

    broker.stop()
    assert not broker.running
    broker.start()

    got = threading.Event()
    payloads: list[bytes] = []

    def on_message(client, userdata, msg):  # type: ignore[no-untyped-def]
        payloads.append(msg.payload)
        got.set()

    sub = _client(broker)
    sub.on_message = on_message
    sub.connect(broker.host, broker.port)
    sub.subscribe("facegate/t/status", qos=1)
    sub.loop_start()
    try:
        assert got.wait(5), "retained message not delivered after restart"
        assert payloads == [b"online"]
    finally:
        sub.loop_stop()
        sub.disconnect()


def test_credentials_enforced(tmp_path: Path) -> None:
    user = BrokerUser("unit1", "s3cret")
    with LocalBroker(workdir=tmp_path / "b", users=(user,)) as b:
        results: dict[str, ReasonCode] = {}
        for name, pw in (("good", "s3cret"), ("bad", "wrong")):
            done = threading.Event()

            def on_connect(client, userdata, flags, rc, props, name=name, done=done):  # type: ignore[no-untyped-def]
                results[name] = rc
                done.set()

            c = _client(b, "unit1", pw)
            c.on_connect = on_connect
            c.connect(b.host, b.port)
            c.loop_start()
            assert done.wait(5)
            c.loop_stop()
            c.disconnect()
        assert not results["good"].is_failure
        assert results["bad"].is_failure


def test_missing_mosquitto_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from device.errors import PublishError
    from device.ops import localbroker

    monkeypatch.setattr(localbroker.shutil, "which", lambda name: None)
    monkeypatch.setattr(localbroker.Path, "exists", lambda self: False)
    with pytest.raises(PublishError, match="mosquitto is not installed"):
        LocalBroker()
