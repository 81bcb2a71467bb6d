"""Helpers for the event-layer tests: child processes to SIGKILL, and a subscriber.

Run as ``python -m tests.support.events MODE ...`` from the repository
root to get a child process:

* ``outbox-writer PATH START COUNT``: puts COUNT rows, printing ``committed <id>``
  after each commit, then ``done``; stays alive until stdin closes.
* ``outbox-open-tx PATH``: opens a write transaction on the outbox, inserts a row,
  prints ``in-transaction`` and waits (to be killed mid-transaction).
* ``publisher CONFIG_JSON START COUNT``: runs a :class:`Publisher`, prints
  ``committed <event_id>`` after each ``publish_match`` returns, ``produced`` when
  all are queued, ``flushed`` once the outbox is empty; stays alive until stdin closes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parents[2]
T0 = 1_714_564_800.0
EVENT_NS = uuid.UUID("6f1c2a2e-8a8e-4a8e-9d7e-0e0b5b3f4c21")


def event_id_for(index: int) -> str:
    """A deterministic event id, so a restarted child re-creates the same ones."""
    return str(uuid.uuid5(EVENT_NS, f"event-{index}"))


def make_event(index: int, unit: str = "unit-1", camera: str = "front", **overrides: Any) -> Any:
    from device.events.schema import MatchEvent, NormalisedBox

    fields: dict[str, Any] = {
        "unit": unit,
        "camera": camera,
        "track_id": index,
        "identity_id": f"id-{index % 7}",
        "label": f"Person {index % 7}",
        "similarity": 0.6,
        "false_match_rate": 1e-4,
        "gallery_version": 1,
        "model_id": "dlib-resnet-v1",
        "first_seen": T0 + index,
        "decided_at": T0 + index + 0.5,
        "faces_considered": 3,
        "box": NormalisedBox(0.1, 0.1, 0.2, 0.2),
        "event_id": event_id_for(index),
    }
    fields.update(overrides)
    return MatchEvent(**fields)


# ---------------------------------------------------------------- child processes


class Child:
    """A child process whose stdout lines are collected by a reader thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.events", *args],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.lines) or self._eof, timeout) and (
                predicate(self.lines)
            )

    def wait_line(self, text: str, timeout: float) -> bool:
        return self.wait_for(lambda lines: text in lines, timeout)

    def committed(self) -> list[str]:
        with self._cond:
            return [line.split()[1] for line in self.lines if line.startswith("committed ")]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)

    def stop(self, timeout: float = 15.0) -> str:
        """Close stdin (the child exits cleanly) and return its stderr."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        return self.proc.stderr.read() if self.proc.stderr else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _wait_stdin_eof() -> None:
    sys.stdin.read()


def _outbox_writer(path: str, start: str, count: str) -> None:
    from device.events.outbox import Outbox

    with Outbox(Path(path), max_rows=1_000_000) as outbox:
        for i in range(int(start), int(start) + int(count)):
            row = outbox.put("facegate/u/c/match", json.dumps({"n": i}).encode(), event_id=str(i))
            print(f"committed {row}", flush=True)
        print("done", flush=True)
        _wait_stdin_eof()


def _outbox_open_tx(path: str) -> None:
    import sqlite3

    from device.events.outbox import Outbox

    Outbox(Path(path)).close()  # make sure the schema exists
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    for i in range(50):
        conn.execute(
            "INSERT INTO outbox (topic, payload, qos, created_at, event_id) VALUES (?, ?, 1, ?, ?)",
            ("facegate/u/c/match", b"x" * 5000, time.time(), f"uncommitted-{i}"),
        )
    print("in-transaction", flush=True)
    _wait_stdin_eof()


def _publisher(config_json: str, start: str, count: str) -> None:
    import logging

    from device.events.config import MqttConfig
    from device.events.mqtt import ConnectionState, Publisher

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    config = MqttConfig.model_validate(json.loads(config_json))
    with Publisher(config, cameras=("front",)) as publisher:
        if int(count) == 0:
            publisher.wait_for_state(ConnectionState.CONNECTED, timeout=30)
            print("connected", flush=True)
        for i in range(int(start), int(start) + int(count)):
            event = make_event(i, unit=config.unit_id)
            publisher.publish_match(event)
            print(f"committed {event.event_id}", flush=True)
        print("produced", flush=True)
        if publisher.flush(60):
            print("flushed", flush=True)
        _wait_stdin_eof()


def main(argv: list[str]) -> None:
    modes: dict[str, Callable[..., None]] = {
        "outbox-writer": _outbox_writer,
        "outbox-open-tx": _outbox_open_tx,
        "publisher": _publisher,
    }
    modes[argv[0]](*argv[1:])


# ---------------------------------------------------------------- subscriber


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    expiry: int | None = None

    def json(self) -> Any:
        return json.loads(self.payload)


def check_payload(topic: str, payload: bytes) -> None:
    """Validate a received facegate payload by topic; raises on any mismatch."""
    from device.errors import PublishError
    from device.events.schema import (
        GALLERY_STATE_SCHEMA,
        HEALTH_SCHEMA,
        MATCH_SCHEMA,
        REVIEW_ACK_SCHEMA,
        validate,
    )
    from device.privacy import check_payload as privacy_guard

    parts = topic.split("/")
    if parts[-1] == "status" and parts[0] == "facegate":
        if payload not in (b"online", b"offline"):
            raise PublishError(f"status payload {payload!r}")
        return
    document = json.loads(payload)
    privacy_guard(document)
    if parts[0] == "facegate" and parts[-1] == "match":
        validate(MATCH_SCHEMA, document)
    elif parts[0] == "facegate" and parts[-1] == "health":
        validate(HEALTH_SCHEMA, document)
    elif parts[0] == "facegate" and parts[-2:] == ["gallery", "state"]:
        validate(GALLERY_STATE_SCHEMA, document)
    elif parts[0] == "facegate" and parts[-2:] == ["review", "ack"]:
        validate(REVIEW_ACK_SCHEMA, document)


class Collector:
    """A paho v2 subscriber that records and validates every message it receives.

    Args:
        host, port: Broker.
        topics: Filters to subscribe to (QoS 1).
        client_id: For a persistent session (``persistent=True``) across restarts.
        persistent: ``clean_start=False`` with a one-hour session expiry, so messages
            published while this subscriber is disconnected are queued for it.
        tls: Keyword arguments for ``tls_set``.
        username, password: Credentials.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topics: Iterable[str],
        *,
        client_id: str = "",
        persistent: bool = False,
        tls: dict[str, Any] | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.messages: list[Received] = []
        self.invalid: list[tuple[str, str]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._topics = list(topics)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if tls:
            self.client.tls_set(**tls)
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        properties = None
        if persistent:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
        self.client.connect_async(
            host, port, keepalive=10, clean_start=not persistent, properties=properties
        )
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            client.subscribe([(t, 1) for t in self._topics])

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, rcs: Any, props: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        expiry = getattr(msg.properties, "MessageExpiryInterval", None)
        received = Received(msg.topic, bytes(msg.payload), bool(msg.retain), expiry)
        try:
            check_payload(received.topic, received.payload)
        except Exception as exc:
            with self._cond:
                self.invalid.append((received.topic, str(exc)))
        with self._cond:
            self.messages.append(received)
            self._cond.notify_all()

    def wait_subscribed(self, timeout: float = 10.0) -> bool:
        return self._subscribed.wait(timeout)

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.messages), timeout)

    def wait_payload(self, topic: str, payload: bytes, timeout: float) -> bool:
        return self.wait_for(
            lambda ms: any(m.topic == topic and m.payload == payload for m in ms), timeout
        )

    def event_ids(self) -> list[str]:
        with self._cond:
            return [m.json()["event_id"] for m in self.messages if m.topic.endswith("/match")]

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- TLS


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(folder: Path, name: str = "facegate test") -> Pki:
    """Generate a throw-away PKI with ``cryptography`` (EC P-256, valid one day)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)

    pki = Pki(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert, key = leaf("127.0.0.1", server=True)
    pki.server_cert.write_bytes(cert)
    pki.server_key.write_bytes(key)
    cert, key = leaf("unit-1", server=False)
    pki.client_cert.write_bytes(cert)
    pki.client_key.write_bytes(key)
    for path in (pki.server_key, pki.client_key):
        path.chmod(0o600)
    return pki


if __name__ == "__main__":
    main(sys.argv[1:])
