"""Home Assistant discovery payloads and defensive parsing of its status topic."""

from __future__ import annotations

import pytest

from device.events.homeassistant import Discovery, parse_birth
from device.events.schema import encode
from device.events.topics import Topics


def test_one_sensor_per_camera_with_unit_availability() -> None:
    discovery = Discovery("homeassistant", Topics("unit-1"), ("front", "back"), "0.1.0")
    messages = discovery.messages()
    assert [t for t, _ in messages] == [
        "homeassistant/sensor/facegate_unit-1/front_last_match/config",
        "homeassistant/sensor/facegate_unit-1/back_last_match/config",
    ]
    _, config = messages[0]
    assert config["state_topic"] == "facegate/unit-1/front/match"
    assert config["availability_topic"] == "facegate/unit-1/status"
    assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
    assert config["unique_id"] == "facegate_unit-1_front_last_match"
    assert config["device"]["identifiers"] == ["facegate_unit-1"]
    assert len({c["unique_id"] for _, c in messages}) == 2
    for _, payload in messages:
        encode(payload)  # passes the privacy guard
    assert discovery.birth_topic == "homeassistant/status"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"online", "online"),
        (b"offline", "offline"),
        (b" online\n", "online"),
        (b"ONLINE", None),
        (b"\xff\xfe\x00online", None),
        (b"online" * 10_000, None),
        (b"", None),
        (bytearray(b"online"), "online"),
    ],
)
def test_birth_payloads(payload: bytes, expected: str | None) -> None:
    assert parse_birth(payload) == expected


def test_topics() -> None:
    from device.errors import PublishError

    topics = Topics("unit-1")
    assert topics.status == "facegate/unit-1/status"
    assert topics.match("front") == "facegate/unit-1/front/match"
    assert topics.state("audit/head") == "facegate/unit-1/audit/head"
    with pytest.raises(PublishError, match="unknown state topic"):
        topics.state("../x")
    with pytest.raises(PublishError):
        topics.match("+")
    with pytest.raises(PublishError):
        Topics("unit/1")
