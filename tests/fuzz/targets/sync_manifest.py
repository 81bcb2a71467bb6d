"""The sync agent's manifest handler: what its worker does with a manifest message.

``SyncAgent._handle_manifest`` parses, verifies and vets the bytes received on a
manifest topic and begins a chunk transfer for an acceptable one. Its worker
catches :class:`SyncError` (another process holds the gallery lock) and nothing
else, so any other exception would stop gallery sync: a crash. Each input goes in
as received and re-signed by a trusted key (to reach the vetting behind the
signature check).
"""

from __future__ import annotations

from pathlib import Path

from tests.fuzz.harness import Harness

NAME = "sync_manifest"
INSTRUMENT = ("device.sync", "device.events.schema", "json")
MAX_LEN = 70 * 1024


def prepare(workdir: Path) -> Harness:
    from device.errors import SyncError
    from device.events.config import MqttConfig
    from device.sync.agent import SyncAgent
    from device.sync.config import SyncConfig
    from device.sync.mqtt import manifest_topic
    from tests.fuzz.targets._world import build, resign
    from tests.support.sync import UNIT

    bundles = build(workdir / "world")
    agent = SyncAgent(bundles.sync(), MqttConfig(unit_id=UNIT,
                                                       outbox_path=workdir / "outbox.db"),
                      SyncConfig(prefer_url=False))
    topics = (manifest_topic(None), manifest_topic(UNIT))

    def one_input(data: bytes) -> None:
        topic = topics[data[0] % 2] if data else topics[0]
        for raw in (data, resign(data, bundles.key)):
            if raw is None:
                continue
            try:
                agent._handle_manifest(topic, raw)
            except SyncError:
                pass
            finally:
                agent._abandon()

    return Harness(bundles.manifests(), one_input)
