"""Gallery bundles over MQTT: topics, client set-up, and publishing a bundle.

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
import re
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device.errors import ConfigError, SyncError
from device.events.config import BrokerAddress
from device.events.schema import is_valid_id
from device.sync.bundle import read_bundle

logger = logging.getLogger(__name__)

ROOT: Final = "facegate"
FLEET: Final = "fleet"
_CHUNK_RE: Final = re.compile(
    r"facegate/([A-Za-z0-9][A-Za-z0-9_-]{0,63})/gallery/v(\d{1,16})/chunk/(\d{1,7})")


def gallery_base(unit: str | None = None) -> str:
    """``facegate/fleet/gallery`` or ``facegate/<unit>/gallery``.

    Raises:
        ConfigError: ``unit`` is not a valid topic level, or is ``fleet``.
    """
    if unit is None:
        return f"{ROOT}/{FLEET}/gallery"
    if not is_valid_id(unit) or unit == FLEET:
        raise ConfigError(f"unit id {unit!r} cannot be used as a topic level here")
    return f"{ROOT}/{unit}/gallery"


def manifest_topic(unit: str | None = None) -> str:
    """The manifest topic of the fleet (``unit`` None) or of one unit.

    Raises:
        ConfigError: As :func:`gallery_base`.
    """
    return f"{gallery_base(unit)}/manifest"


def chunk_topic(base: str, version: int, index: int) -> str:
    """``<base>/v<version>/chunk/<index>``."""
    return f"{base}/v{version}/chunk/{index}"


def parse_chunk_topic(topic: str) -> tuple[str, int, int] | None:
    """``(base, version, index)`` of a chunk topic; None for anything else."""
    match = _CHUNK_RE.fullmatch(topic)
    if match is None:
        return None
    return f"{ROOT}/{match.group(1)}/gallery", int(match.group(2)), int(match.group(3))


@dataclass(frozen=True)
class BrokerLogin:
    """How to reach and log in to a broker.

    Attributes:
        url: ``mqtt://host[:port]`` or ``mqtts://host[:port]``.
        username: MQTT username, if any.
        password: Its password, if any.
        ca_file: CA bundle for TLS; system CAs when None.
        cert_file: Client certificate for mutual TLS.
        key_file: Its key.
    """

    url: str
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class _AfterDisconnect(logging.Filter):
    """Drop paho 2.2's spurious ERROR "Client is not connected" after our own disconnect.

    paho's network thread runs one more loop iteration after ``disconnect()`` has
    closed the socket and logs this at ERROR; a real connection loss is reported by
    ``on_disconnect`` instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.ERROR
                    and str(record.msg).startswith("Client is not connected."))


def make_client(login: BrokerLogin, client_id: str) -> tuple[mqtt.Client, BrokerAddress]:
    """A paho v2 MQTT 5 client with credentials and TLS set, not yet connected.

    Raises:
        ConfigError: The URL or the TLS files are unusable.
    """
    try:
        address = BrokerAddress.parse(login.url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    paho_log = logging.getLogger(f"{__name__}.paho")
    if not any(isinstance(f, _AfterDisconnect) for f in paho_log.filters):
        paho_log.addFilter(_AfterDisconnect())
    client.enable_logger(paho_log)
    if login.username:
        client.username_pw_set(login.username, login.password)
    if address.tls:
        try:
            client.tls_set(ca_certs=str(login.ca_file) if login.ca_file else None,
                           certfile=str(login.cert_file) if login.cert_file else None,
                           keyfile=str(login.key_file) if login.key_file else None,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load TLS files: {exc}") from exc
    return client, address


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
    client, address = make_client(login, f"facegate-publish-{bundle.digest[:12]}")
    acks = _Acks()
    client.on_connect = acks.on_connect
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
        client.disconnect()
        client.loop_stop()
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
