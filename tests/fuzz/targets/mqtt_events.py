"""The event publisher's subscriptions: Home Assistant's ``homeassistant/status``
(``parse_birth`` and ``Publisher._on_birth``) and its catch-all ``_on_message``.

Both run on paho's network thread and must never raise; ``parse_birth`` returns
``"online"``, ``"offline"`` or None. Inputs are ``topic NUL payload``.
"""

from __future__ import annotations

from pathlib import Path

from tests.fuzz.harness import Harness, split_message

NAME = "mqtt_events"
INSTRUMENT = ("device.events",)
MAX_LEN = 4096


def prepare(workdir: Path) -> Harness:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from device.events.config import MqttConfig
    from device.events.homeassistant import parse_birth
    from device.events.mqtt import Publisher

    config = MqttConfig.model_validate({"unit_id": "door-1",
                                        "outbox_path": str(workdir / "outbox.db"),
                                        "home_assistant": {"enabled": True}})
    publisher = Publisher(config, cameras=("front",))
    birth = publisher._discovery.birth_topic if publisher._discovery else "homeassistant/status"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fuzz-events",
                         protocol=mqtt.MQTTv5)
    seeds = tuple(birth.encode() + b"\x00" + p for p in (b"online", b"offline", b" online\n"))
    seeds += (b"facegate/door-1/whatever\x00{}", b"\xff\xfe\x00online")

    def one_input(data: bytes) -> None:
        topic, payload = split_message(data)
        if parse_birth(payload) not in (None, "online", "offline"):
            raise AssertionError("parse_birth returned something else")
        message = mqtt.MQTTMessage(mid=1, topic=topic)
        message.payload = payload
        if topic == birth.encode():
            publisher._on_birth(client, None, message)
        else:
            publisher._on_message(client, None, message)

    return Harness(seeds, one_input)
