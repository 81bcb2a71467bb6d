"""TLS with a private CA, client certificates (mutual TLS) and username/password."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from device.errors import ConfigError
from device.events.config import MqttConfig
from device.events.mqtt import ConnectionState, Publisher
from device.ops.localbroker import BrokerTLS, BrokerUser, LocalBroker
from tests.support.events import Collector, Pki, make_event, make_pki

USER = BrokerUser("unit-1", "tls-s3cret")


@dataclass(frozen=True)
class TlsSetup:
    broker: LocalBroker
    pki: Pki
    creds: Path
    tmp: Path

    def config(self, **fields: Any) -> MqttConfig:
        values: dict[str, Any] = {
            "unit_id": "unit-1",
            "url": self.broker.url,
            "outbox_path": self.tmp / "outbox.sqlite3",
            "ca_file": self.pki.ca,
            "cert_file": self.pki.client_cert,
            "key_file": "mqtt-client.key",  # a systemd credential name
            "username": USER.username,
            "password_file": "mqtt-password",
            "reconnect_min_s": 1,
            "reconnect_max_s": 1,
        }
        values.update(fields)
        return MqttConfig.model_validate(values)

    @property
    def env(self) -> dict[str, str]:
        return {"CREDENTIALS_DIRECTORY": str(self.creds)}


@pytest.fixture()
def tls(tmp_path: Path) -> Iterator[TlsSetup]:
    pki = make_pki(tmp_path / "pki")
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt-client.key").write_bytes(pki.client_key.read_bytes())
    (creds / "mqtt-password").write_text(USER.password + "\n")
    for path in creds.iterdir():
        path.chmod(0o600)
    broker = LocalBroker(
        workdir=tmp_path / "broker",
        users=(USER,),
        tls=BrokerTLS(pki.server_cert, pki.server_key, pki.ca, require_certificate=True),
    )
    with broker:
        assert broker.url.startswith("mqtts://")
        yield TlsSetup(broker, pki, creds, tmp_path)


def test_mutual_tls_with_password_delivers_events(tls: TlsSetup) -> None:
    client_tls = {
        "ca_certs": str(tls.pki.ca),
        "certfile": str(tls.pki.client_cert),
        "keyfile": str(tls.pki.client_key),
        "tls_version": ssl.PROTOCOL_TLS_CLIENT,
    }
    with Collector(
        tls.broker.host,
        tls.broker.port,
        ["facegate/#"],
        tls=client_tls,
        username=USER.username,
        password=USER.password,
    ) as collector:
        assert collector.wait_subscribed()
        with Publisher(tls.config(), env=tls.env) as publisher:
            assert publisher.wait_for_state(ConnectionState.CONNECTED, timeout=10)
            events = [make_event(i) for i in range(5)]
            for event in events:
                publisher.publish_match(event)
            assert publisher.flush(10)
        want = {e.event_id for e in events}
        assert collector.wait_for(lambda _: want <= set(collector.event_ids()), 10)
        assert not collector.invalid


def test_without_a_client_certificate_the_broker_refuses(tls: TlsSetup) -> None:
    config = tls.config(cert_file=None, key_file=None)
    with Publisher(config, env=tls.env) as publisher:
        assert publisher.wait_for(lambda s: s.failures >= 1 or s.connects > 0, timeout=15)
        status = publisher.status()
        assert status.connects == 0
        assert status.state is not ConnectionState.CONNECTED
        assert status.last_error


def test_a_broker_certificate_from_another_ca_is_not_trusted(tls: TlsSetup) -> None:
    other = make_pki(tls.tmp / "other-pki", name="someone else")
    config = tls.config(ca_file=other.ca)
    with Publisher(config, env=tls.env) as publisher:
        assert publisher.wait_for_state(ConnectionState.UNREACHABLE, timeout=15)
        last_error = publisher.status().last_error
        assert last_error is not None
        assert "certificate verification failed" in last_error


def test_unusable_key_file_is_a_config_error(tls: TlsSetup) -> None:
    (tls.creds / "broken.key").write_text("not a key")
    publisher = Publisher(tls.config(key_file="broken.key"), env=tls.env)
    try:
        with pytest.raises(ConfigError, match="cannot load TLS files"):
            publisher.start()
    finally:
        publisher.close()
