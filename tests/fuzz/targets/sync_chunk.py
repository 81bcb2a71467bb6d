"""The sync agent's MQTT message callback, with a chunk transfer in progress.

``SyncAgent._on_message`` runs on paho's network thread for every message on the
manifest topics and the chunk topics; an exception out of it stops the network
loop, so it must never raise. Inputs are ``topic NUL payload``.
"""

from __future__ import annotations

from pathlib import Path

from tests.fuzz.harness import Harness, split_message

NAME = "sync_chunk"
INSTRUMENT = ("device.sync",)
MAX_LEN = 8192


def prepare(workdir: Path) -> Harness:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from device.events.config import MqttConfig
    from device.sync.agent import SyncAgent
    from device.sync.config import SyncConfig
    from device.sync.manifest import parse_manifest
    from device.sync.mqtt import chunk_topic, gallery_base, manifest_topic
    from tests.fuzz.targets._world import build
    from tests.support.sync import UNIT

    bundles = build(workdir / "world")
    agent = SyncAgent(bundles.sync(), MqttConfig(unit_id=UNIT,
                                                       outbox_path=workdir / "outbox.db"),
                      SyncConfig(prefer_url=False))
    raw = (bundles.delta.directory / "manifest.json").read_bytes()
    agent._handle_manifest(manifest_topic(None), raw)
    transfer = agent._transfer
    if transfer is None:
        raise RuntimeError("the fuzz world's delta did not start a transfer")
    manifest = parse_manifest(raw)
    payload = (bundles.delta.directory / "payload").read_bytes()
    base = gallery_base(None)
    seeds = [chunk_topic(base, manifest.version, i).encode() + b"\x00"
             + payload[slice(*manifest.payload.chunk_span(i))]
             for i in range(len(manifest.payload.chunks))]
    seeds += [manifest_topic(None).encode() + b"\x00" + raw,
              chunk_topic(gallery_base(UNIT), 2, 0).encode() + b"\x00abc",
              b"facegate/fleet/gallery/v1/chunk/0\x00"]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fuzz-sync",
                         protocol=mqtt.MQTTv5)

    def one_input(data: bytes) -> None:
        topic, body = split_message(data)
        message = mqtt.MQTTMessage(mid=1, topic=topic)
        message.payload = body
        try:
            agent._on_message(client, None, message)
        finally:
            transfer.store._have.clear()  # every input meets the same transfer
            transfer.subscribed.clear()
            agent._pending.clear()

    return Harness(tuple(seeds), one_input)
