"""An oversized message on a subscribed topic never reaches the unit's memory.

Every client asks the broker for an MQTT 5 Maximum Packet Size, so a real mosquitto
drops a 20 MB message for it instead of sending it. The peak resident memory of this
process (``VmHWM``, reset through ``/proc/self/clear_refs``) is measured around the
message: it must not grow by anything near the message's size. The sender is a
separate ``mosquitto_pub`` process, so its buffer is not counted.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from device.events.client import BrokerLogin, make_client
from device.events.config import MqttConfig
from device.events.mqtt import ConnectionState, Publisher
from device.events.topics import ha_birth_topic, manifest_topic
from device.ops.localbroker import LocalBroker
from device.sync.agent import SyncAgent
from device.sync.config import SyncConfig
from tests.integration.test_mqtt_outage import WAIT, LogWatch, logs
from tests.support.sync import NOW, UNIT, World

__all__ = ["logs"]  # the fixture, imported for its use below

BIG = 20 * 1024 * 1024


def _peak_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as exc:
        pytest.skip(f"cannot reset the peak resident memory here: {exc}")


def _peak_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None, status
    return int(match.group(1)) * 1024


def _resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def _send(broker: LocalBroker, topic: str, payload: bytes | Path) -> None:
    exe = shutil.which("mosquitto_pub")
    if exe is None:
        pytest.skip("mosquitto_pub not installed (mosquitto-clients)")
    data = ["-f", str(payload)] if isinstance(payload, Path) else ["-m", payload.decode()]
    subprocess.run([exe, "-h", broker.host, "-p", str(broker.port), "-q", "1", "-t", topic,
                    *data], check=True, timeout=WAIT)


@pytest.fixture()
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    with path.open("wb") as fh:
        for _ in range(BIG // (1024 * 1024)):
            fh.write(b"x" * (1024 * 1024))
    return path


def test_home_assistant_status_cannot_make_the_publisher_buffer_megabytes(
    broker: LocalBroker, tmp_path: Path, big_file: Path, logs: LogWatch
) -> None:
    config = MqttConfig.model_validate({
        "unit_id": "unit-1", "url": broker.url, "outbox_path": tmp_path / "outbox.sqlite3",
        "health_interval_s": 3600, "home_assistant": {"enabled": True}})
    topic = ha_birth_topic("homeassistant")

    def births(records: list[logging.LogRecord]) -> int:
        return sum("Home Assistant is online" in r.getMessage() for r in records)

    with Publisher(config, cameras=("front",)) as publisher:
        assert publisher.wait_for_state(ConnectionState.CONNECTED, timeout=WAIT)
        _send(broker, topic, b"online")  # proves the subscription is in place
        assert logs.wait_for(lambda r: births(r) == 1)
        resident = _resident_bytes()
        _peak_reset()
        _send(broker, topic, big_file)
        _send(broker, topic, b"online")  # behind the big one on the same topic
        assert logs.wait_for(lambda r: births(r) == 2)
        grown = _peak_bytes() - resident
        assert publisher.status().state is ConnectionState.CONNECTED
    assert grown < BIG // 4, f"peak resident memory grew by {grown} bytes"
    assert not any(str(BIG) in r.getMessage() for r in logs.seen)  # never delivered


def test_a_manifest_topic_cannot_make_the_sync_agent_buffer_megabytes(
    broker: LocalBroker, tmp_path: Path, big_file: Path
) -> None:
    mqtt_cfg = MqttConfig.model_validate({
        "unit_id": UNIT, "url": broker.url, "outbox_path": tmp_path / "outbox.sqlite3"})
    topic = manifest_topic(None)
    with SyncAgent(World(tmp_path).sync(now=NOW), mqtt_cfg, SyncConfig()) as agent:
        _send(broker, topic, b"{junk")
        assert agent.wait_for(lambda s: s.manifests == 1 and s.refused == 1, WAIT)
        resident = _resident_bytes()
        _peak_reset()
        _send(broker, topic, big_file)
        _send(broker, topic, b"{more junk")
        assert agent.wait_for(lambda s: s.refused == 2, WAIT)
        grown = _peak_bytes() - resident
        assert agent.stats().manifests == 2  # the big one never arrived
    assert grown < BIG // 4, f"peak resident memory grew by {grown} bytes"


def test_a_message_over_the_limit_is_dropped_by_the_client_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Defence in depth for a broker that ignores the Maximum Packet Size."""
    client = make_client(BrokerLogin("mqtt://127.0.0.1:1"), "cap-test", name="test client",
                         max_packet_bytes=1024)
    got: list[bytes] = []
    client.after_message = lambda c, u, m: got.append(m.payload)
    client.route("routed/#", lambda c, u, m: got.append(b"routed " + m.payload))
    for topic, size in (("a", 1024), ("a", 1025), ("routed/x", 10), ("routed/x", 5000)):
        message = mqtt.MQTTMessage(mid=1, topic=topic.encode())
        message.payload = b"y" * size
        client._handle_on_message(message)  # paho's dispatch, as from the network thread
    assert got == [b"y" * 1024, b"routed " + b"y" * 10]
    dropped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert dropped == ["test client dropped a 1025-byte message on 'a' (the limit is 1024 bytes)",
                       "test client dropped a 5000-byte message on 'routed/x' (the limit is "
                       "1024 bytes)"]
