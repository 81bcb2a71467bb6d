"""Home Assistant discovery: published on connect, again on HA's birth, hostile input ignored."""

from __future__ import annotations

import os
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device.events.config import MqttConfig
from device.events.mqtt import ConnectionState, Publisher
from device.ops.localbroker import LocalBroker
from tests.support.events import Collector, make_event

CAMERAS = ("front", "back")


def send(broker: LocalBroker, topic: str, payloads: list[bytes]) -> None:
    """Publish payloads in order (QoS 1) from a throw-away client; wait for each PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for payload in payloads:
            info = client.publish(topic, payload, qos=1)
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def test_discovery_on_connect_and_on_home_assistant_birth(
    broker: LocalBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = MqttConfig.model_validate(
        {
            "unit_id": "unit-1",
            "url": broker.url,
            "outbox_path": tmp_path / "outbox.sqlite3",
            "home_assistant": {"enabled": True},
        }
    )
    configs = [f"homeassistant/sensor/facegate_unit-1/{c}_last_match/config" for c in CAMERAS]

    def config_count(collector: Collector) -> int:
        return sum(len(collector.on(t)) for t in configs)

    with (
        Collector(broker.host, broker.port, ["homeassistant/sensor/#", "facegate/#"]) as ha,
        Publisher(config, cameras=CAMERAS, sw_version="0.1.0") as publisher,
    ):
        assert ha.wait_subscribed()
        assert ha.wait_for(lambda _: config_count(ha) >= 2, 10)
        sensor = ha.on(configs[0])[0].json()
        assert sensor["availability_topic"] == "facegate/unit-1/status"
        assert sensor["state_topic"] == "facegate/unit-1/front/match"
        assert sensor["device"]["sw_version"] == "0.1.0"
        ha.clear()

        # Hostile or unexpected payloads on the subscribed topic: logged, ignored.
        hostile = [
            os.urandom(1_000_000),
            b"\xff\xfe\xfd online",
            b"ONLINE",
            b"",
            b"online" * 1000,
            b"offline",
        ]
        send(broker, "homeassistant/status", [*hostile, b"online"])
        # The birth came after the hostile messages on the same topic, so once its
        # republication is in, the others have been handled: none triggered one.
        assert ha.wait_for(lambda _: config_count(ha) >= 2, 10)
        assert config_count(ha) == 2
        assert publisher.status().state is ConnectionState.CONNECTED

        event = make_event(1)
        publisher.publish_match(event)
        assert ha.wait_for(lambda _: event.event_id in ha.event_ids(), 10)
        assert not ha.invalid
    # The megabyte is over the client's MQTT 5 Maximum Packet Size: the broker never
    # delivers it, so the unit neither buffers nor parses it.
    assert "1000000-byte" not in caplog.text
    assert "ignored a 6000-byte message" in caplog.text
    assert "ignored a non-UTF-8 message" in caplog.text
    assert "ignored unexpected Home Assistant status 'ONLINE'" in caplog.text


def test_callbacks_survive_messages_no_broker_would_send(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = MqttConfig.model_validate(
        {
            "unit_id": "unit-1",
            "outbox_path": tmp_path / "outbox.sqlite3",
            "home_assistant": {"enabled": True},
        }
    )
    publisher = Publisher(config, cameras=CAMERAS)
    try:
        weird = mqtt.MQTTMessage(mid=1, topic=b"\xff\xfe/x")
        weird.payload = b"\x00" * 10
        publisher._on_message(None, None, weird)  # type: ignore[arg-type]
        birth = mqtt.MQTTMessage(mid=2, topic=b"homeassistant/status")
        birth.payload = b"online"
        # Not connected: republishing fails inside the handler, which logs it.
        publisher._on_birth(None, None, birth)  # type: ignore[arg-type]
    finally:
        publisher.close()
    assert "unexpected topic '(not UTF-8)'" in caplog.text
    assert "error handling a Home Assistant status message; ignored" in caplog.text
