"""What the fuzzer found, as plain tests (the raw inputs are replayed in test_fuzz.py)."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device.events.config import MqttConfig
from device.sync.agent import SyncAgent
from device.sync.config import SyncConfig
from device.sync.manifest import parse_manifest, parse_time
from device.sync.reasons import Reason, SyncRefusedError
from tests.fuzz.targets._world import build
from tests.support.sync import UNIT


def test_sync_agent_ignores_a_topic_that_is_not_utf8(tmp_path: Path) -> None:
    """paho hands on_message a topic it cannot decode; raising there stops its loop."""
    bundles = build(tmp_path / "world")
    agent = SyncAgent(bundles.sync(), MqttConfig(unit_id=UNIT, outbox_path=tmp_path / "o.db"),
                      SyncConfig(prefer_url=False))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    message = mqtt.MQTTMessage(mid=1, topic=b"\xa0\x9efacegate/fleet/gallery/manifest")
    message.payload = b"{}"
    agent._on_message(client, None, message)
    assert agent.stats().manifests == 0


@pytest.mark.parametrize("text", ["0675-06-15T15:06:40Z", "1969-12-31T23:59:59Z"])
def test_a_manifest_time_before_1970_is_refused(text: str) -> None:
    """Such a time parsed, but the manifest's own encoding of it did not (year 675
    prints as "675"), so the bytes a unit verified were not the bytes it was sent."""
    with pytest.raises(SyncRefusedError, match="before 1970") as info:
        parse_time(text, "created")
    assert info.value.reason is Reason.MALFORMED
    assert parse_time("1970-01-01T00:00:00Z", "created") == 0


def test_every_manifest_that_parses_round_trips(tmp_path: Path) -> None:
    bundles = build(tmp_path / "world")
    for raw in bundles.manifests():
        manifest = parse_manifest(raw)
        assert parse_manifest(manifest.encode()) == manifest
