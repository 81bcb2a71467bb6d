"""MQTT configuration and secrets read from files (systemd credentials)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from device.errors import ConfigError
from device.events.config import (
    BrokerAddress,
    MqttConfig,
    read_secret,
    resolve_credential,
)


def test_defaults_and_derived_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/facegate")
    config = MqttConfig(unit_id="unit-1")
    assert config.outbox_path == Path("/var/lib/facegate/outbox.sqlite3")
    assert config.address == BrokerAddress("127.0.0.1", 1883, tls=False)
    assert config.effective_client_id == "facegate-unit-1"
    assert config.qos == 1
    assert not config.home_assistant.enabled
    for name, field in MqttConfig.model_fields.items():
        assert field.description, f"{name} has no description"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker.lan", BrokerAddress("broker.lan", 1883, False)),
        ("mqtts://broker.lan", BrokerAddress("broker.lan", 8883, True)),
        ("mqtts://10.0.0.2:9883/", BrokerAddress("10.0.0.2", 9883, True)),
    ],
)
def test_urls(url: str, expected: BrokerAddress) -> None:
    assert MqttConfig(unit_id="u", url=url).address == expected


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url": "http://x"}, "mqtt:// or mqtts://"),
        ({"url": "mqtt://user:pw@x"}, "no credentials in the broker url"),
        ({"url": "mqtt://x/topic"}, "host"),
        ({"url": "mqtt://x:99999"}, "bad port"),
        ({"url": "mqtt://x", "ca_file": "/ca.pem"}, "need an mqtts:// url"),
        ({"url": "mqtts://x", "cert_file": "/c.pem"}, "go together"),
        ({"password_file": "pw"}, "needs a username"),
        ({"unit_id": "a/b"}, "unit_id"),
        ({"qos": 0}, "qos"),
        ({"colour": "red"}, "colour"),
        ({"reconnect_min_s": 10, "reconnect_max_s": 5}, "reconnect_max_s"),
    ],
)
def test_bad_configs_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MqttConfig.model_validate({"unit_id": "u", **fields})


def test_credential_name_resolves_in_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("s3cret\n")
    (creds / "mqtt-password").chmod(0o600)
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert resolve_credential("mqtt-password", env) == creds / "mqtt-password"
    assert read_secret("mqtt-password", "MQTT password", env) == "s3cret"


def test_paths_work_without_systemd(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2")
    secret.chmod(0o600)
    assert read_secret(str(secret), "MQTT password", {}) == "hunter2"


def test_missing_secret_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LoadCredential=mqtt-password"):
        resolve_credential("mqtt-password", {})
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    with pytest.raises(ConfigError, match=str(tmp_path / "nope")):
        resolve_credential("nope", env)


def test_empty_or_exposed_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_secret(str(empty), "MQTT password", {})
    exposed = tmp_path / "exposed"
    exposed.write_text("pw")
    exposed.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert read_secret(str(exposed), "MQTT password", {}) == "pw"
    assert "readable by other users" in caplog.text
    assert "pw" not in caplog.text.replace(str(exposed), "")


def test_readme_config_example_is_valid() -> None:
    import tomllib
    from importlib import resources

    text = resources.files("device.events").joinpath("README.md").read_text("utf-8")
    example = text.split("## Configuration", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    config = MqttConfig.model_validate(tomllib.loads(example)["mqtt"])
    assert config.address.tls
    assert config.home_assistant.enabled
