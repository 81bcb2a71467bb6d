"""Gallery bundles over MQTT: publishing a bundle (topics in :mod:`device.events.topics`).

Topics (all retained, QoS 1)::

    facegate/fleet/gallery/manifest            the fleet's manifest
    facegate/fleet/gallery/v<N>/chunk/<i>      chunk i of version N's payload (raw bytes)
    facegate/<unit>/gallery/manifest           a per-unit override
    facegate/<unit>/gallery/v<N>/chunk/<i>     its chunks

Chunks are published before the manifest, so a unit that sees a manifest finds its
chunks. Chunk topics carry the version, so chunks of an older bundle never mix
into a newer one (and every chunk is checked against its signed hash anyway).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device.errors import SyncError
from device.events.client import BrokerLogin, make_client
from device.events.topics import (
    FLEET,
    ROOT,
    chunk_topic,
    gallery_base,
    manifest_topic,
    parse_chunk_topic,
)
from device.sync.bundle import read_bundle
from device.sync.manifest import MAX_CHUNK_SIZE, MAX_MANIFEST_BYTES

logger = logging.getLogger(__name__)

#: Room for the MQTT headers and properties around a chunk or a manifest.
PACKET_HEADROOM = 64 * 1024

@dataclass(frozen=True)
class PublishReport:
    """What :func:`publish_bundle` sent.

    Attributes:
        manifest_topic: Where the manifest went.
        chunk_topics: How many chunk messages were sent.
        version: The bundle's version.
        digest: The bundle's digest.
    """

    manifest_topic: str
    chunk_topics: int
    version: int
    digest: str

    def to_json(self) -> dict[str, Any]:
        return {"manifest_topic": self.manifest_topic, "chunks": self.chunk_topics,
                "version": self.version, "bundle_sha256": self.digest}


class _Acks:
    """PUBACKs of one client, by message id."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.done: dict[int, ReasonCode | None] = {}
        self.connected: ReasonCode | None = None

    def on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                   reason_code: ReasonCode, properties: Properties | None) -> None:
        with self.cond:
            self.connected = reason_code
            self.cond.notify_all()

    def on_publish(self, client: mqtt.Client, userdata: Any, mid: int,
                   reason_code: ReasonCode, properties: Properties | None) -> None:
        with self.cond:
            self.done[mid] = reason_code
            self.cond.notify_all()


def publish_bundle(directory: Path, login: BrokerLogin, *, unit: str | None = None,
                   chunks: range | None = None, manifest: bool = True,
                   timeout_s: float = 60.0) -> PublishReport:
    """Publish a bundle's chunks and then its manifest, retained, QoS 1.

    Args:
        directory: The bundle directory.
        login: The broker.
        unit: Publish as a per-unit override for this unit; None for the fleet.
        chunks: Only these chunk indices (all by default; tests use it to
            simulate an interrupted upload).
        manifest: Publish the manifest (after the chunks).
        timeout_s: How long to wait for the broker's acknowledgements.

    Returns:
        What was sent.

    Raises:
        SyncError: The bundle is unreadable, the broker refuses or does not
            acknowledge in time.
        ConfigError: The login is unusable.
    """
    bundle, payload = read_bundle(directory)
    base = gallery_base(unit)
    client = make_client(login, f"facegate-publish-{bundle.digest[:12]}", name="bundle publisher",
                         max_packet_bytes=max(MAX_CHUNK_SIZE, MAX_MANIFEST_BYTES) + PACKET_HEADROOM)
    address = client.address
    acks = _Acks()
    client.after_connect = acks.on_connect
    client.on_publish = acks.on_publish
    try:
        client.connect(address.host, address.port, keepalive=30)
    except OSError as exc:
        raise SyncError(f"cannot reach broker {login.url}: {exc}") from exc
    client.loop_start()
    try:
        with acks.cond:
            if not acks.cond.wait_for(lambda: acks.connected is not None, timeout_s):
                raise SyncError(f"broker {login.url} did not answer within {timeout_s} s")
            if acks.connected is not None and acks.connected.is_failure:
                raise SyncError(f"broker refused the connection ({acks.connected.getName()})")
        mids: list[tuple[int, str]] = []
        indices = range(len(bundle.payload.chunks)) if chunks is None else chunks
        try:
            with payload.open("rb") as fh:
                for index in indices:
                    start, end = bundle.payload.chunk_span(index)
                    fh.seek(start)
                    topic = chunk_topic(base, bundle.version, index)
                    info = client.publish(topic, fh.read(end - start), qos=1, retain=True)
                    mids.append((info.mid, topic))
        except OSError as exc:
            raise SyncError(f"cannot read {payload}: {exc}") from exc
        _wait_acks(acks, mids, timeout_s)
        topic = manifest_topic(unit)
        if manifest:
            info = client.publish(topic, bundle.encode(), qos=1, retain=True)
            _wait_acks(acks, [(info.mid, topic)], timeout_s)
    finally:
        client.stop()
    logger.info("published gallery version %d (%d chunks) on %s", bundle.version,
                len(indices), topic)
    return PublishReport(topic, len(indices), bundle.version, bundle.digest)


def _wait_acks(acks: _Acks, mids: list[tuple[int, str]], timeout_s: float) -> None:
    with acks.cond:
        if not acks.cond.wait_for(lambda: all(m in acks.done for m, _ in mids), timeout_s):
            missing = sum(m not in acks.done for m, _ in mids)
            raise SyncError(f"the broker did not acknowledge {missing} message(s) "
                            f"within {timeout_s} s")
        for mid, topic in mids:
            code = acks.done[mid]
            if code is not None and code.is_failure:
                raise SyncError(f"the broker refused {topic} ({code.getName()})")


__all__ = ["FLEET", "ROOT", "BrokerLogin", "PublishReport", "chunk_topic", "gallery_base",
           "manifest_topic", "parse_chunk_topic", "publish_bundle"]
