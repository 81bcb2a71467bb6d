"""The client factory's pure parts: backoff delays, error descriptions, the packet cap."""

from __future__ import annotations

import pytest

from device.errors import ConfigError
from device.events.client import Backoff, BrokerLogin, client_for, describe_error, make_client
from device.events.config import MqttConfig


def test_backoff_doubles_up_to_the_maximum() -> None:
    assert [Backoff(1, 8).delay(n) for n in range(6)] == [0, 1, 2, 4, 8, 8]


def test_errors_are_described_for_a_person() -> None:
    assert describe_error(ConnectionRefusedError()) == "connection refused (is the broker running?)"
    assert describe_error(TimeoutError()) == "connection timed out"
    assert describe_error(None) == "unknown error"


def test_every_client_asks_for_a_maximum_packet_size() -> None:
    config = MqttConfig.model_validate({"unit_id": "unit-1", "outbox_path": "/tmp/x.sqlite3",
                                        "reconnect_min_s": 2, "reconnect_max_s": 9})
    client = client_for(config, name="test", max_packet_bytes=4096)
    client.connect_async("127.0.0.1", 1)
    assert client._connect_properties.MaximumPacketSize == 4096
    assert client.backoff == Backoff(2, 9)


def test_credentials_in_the_url_are_refused() -> None:
    with pytest.raises(ConfigError, match="no credentials in the broker url"):
        make_client(BrokerLogin("mqtt://user:pw@127.0.0.1"), "x", name="test")


def test_jitter_is_zero_before_a_failure_and_within_its_band_after() -> None:
    import random

    from device.ops.localbroker import free_port

    client = make_client(BrokerLogin(f"mqtt://127.0.0.1:{free_port()}"), "jitter", name="test",
                         backoff=Backoff(2, 60, 0.25), rng=random.Random(3))
    assert client.jitter_s() == 0.0
    client.connect_async(client.address.host, client.address.port)
    assert client.try_reconnect() is False  # nothing listens: counted, not raised
    assert client.failures == 1
    assert "connection refused" in (client.last_failure or "")
    waits = [client.jitter_s() for _ in range(200)]
    assert all(0 <= w <= 0.25 * 2 for w in waits)
    assert len(set(waits)) > 100

