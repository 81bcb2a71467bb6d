"""Configuration of the event layer, and reading secrets from files.

Secrets never sit in the configuration file: the MQTT password and the TLS client
key are files, named either by path or by a bare credential name that is looked up
in ``$CREDENTIALS_DIRECTORY``. The latter is how systemd passes ``LoadCredential=``
secrets to a hardened service, e.g.::

    LoadCredential=mqtt-password:/etc/facegate/mqtt-password
    LoadCredential=mqtt-client.key:/etc/facegate/mqtt-client.key

with ``password_file = "mqtt-password"`` and ``key_file = "mqtt-client.key"``.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from device.config import Section
from device.errors import ConfigError
from device.paths import default_state_dir

logger = logging.getLogger(__name__)

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
OUTBOX_FILENAME = "outbox.sqlite3"


class HomeAssistantConfig(Section):
    """Home Assistant MQTT discovery."""

    enabled: bool = Field(
        default=False,
        description="Publish Home Assistant discovery configs (one sensor per camera).",
    )
    prefix: str = Field(
        default="homeassistant",
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        description="Home Assistant's discovery prefix; its birth topic is <prefix>/status.",
    )


class MqttConfig(Section):
    """Where and how the unit publishes its events."""

    url: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="Broker address: mqtt://host[:port] (1883) or mqtts://host[:port] (8883, TLS).",
    )
    unit_id: str = Field(
        pattern=_ID_PATTERN,
        description="This unit's id: one topic level in facegate/<unit>/...",
    )
    client_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="MQTT client id; facegate-<unit_id> when unset.",
    )
    username: str | None = Field(
        default=None, min_length=1, description="MQTT username; none for anonymous."
    )
    password_file: str | None = Field(
        default=None,
        description=(
            "File holding the MQTT password: a path, or a credential name in "
            "$CREDENTIALS_DIRECTORY (systemd LoadCredential=)."
        ),
    )
    ca_file: Path | None = Field(
        default=None,
        description="CA bundle that signed the broker's certificate; system CAs when unset.",
    )
    cert_file: Path | None = Field(
        default=None, description="Client certificate (PEM) for mutual TLS."
    )
    key_file: str | None = Field(
        default=None,
        description=(
            "Client private key (PEM) for mutual TLS: a path, or a credential name in "
            "$CREDENTIALS_DIRECTORY."
        ),
    )
    keepalive: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive, seconds.")
    qos: Literal[1] = Field(default=1, description="QoS of every publication; always 1.")
    match_expiry_s: int | None = Field(
        default=None,
        gt=0,
        description=(
            "MQTT 5 message expiry of match events, seconds after they are stored; "
            "a stale event is dropped (and counted) instead of sent. None: no expiry."
        ),
    )
    reconnect_min_s: int = Field(
        default=1, ge=1, le=600, description="First reconnect delay, seconds (doubles per failure)."
    )
    reconnect_max_s: int = Field(
        default=60, ge=1, le=3600, description="Longest reconnect delay, seconds."
    )
    max_inflight: int = Field(
        default=16, ge=1, le=1000, description="Events sent but not yet acknowledged, at most."
    )
    health_interval_s: float = Field(
        default=30.0, gt=0, description="Period of the retained health message, seconds."
    )
    require_subscriber: bool = Field(
        default=False,
        description=(
            "Keep an event whose PUBACK says no subscriber took it (MQTT 5 reason 0x10) "
            "and send it again later. Set it where the consumer reads through a shared "
            "subscription (the console): a broker restart can leave the shared group "
            "empty for a moment, and the event would otherwise be acknowledged to nobody."
        ),
    )
    outbox_path: Path = Field(
        default_factory=lambda: default_state_dir() / OUTBOX_FILENAME,
        description=(
            "SQLite file of the durable outbox; outbox.sqlite3 in the state directory "
            "($STATE_DIRECTORY under systemd) when unset."
        ),
    )
    outbox_max_rows: int = Field(
        default=10_000,
        ge=1,
        description="Outbox capacity; the oldest events are dropped, and counted, beyond it.",
    )
    home_assistant: HomeAssistantConfig = Field(
        default_factory=HomeAssistantConfig, description="Home Assistant MQTT discovery."
    )

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        address = BrokerAddress.parse(self.url)
        if not address.tls and (self.ca_file or self.cert_file or self.key_file):
            raise ValueError("ca_file, cert_file and key_file need an mqtts:// url")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        if self.password_file and not self.username:
            raise ValueError("password_file needs a username")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        return self

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress.parse(self.url)

    @property
    def effective_client_id(self) -> str:
        return self.client_id or f"facegate-{self.unit_id}"


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """A parsed broker URL."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse ``mqtt://host[:port]`` or ``mqtts://host[:port]``.

        Raises:
            ValueError: Another scheme, credentials in the URL, a path, or a bad port.
                (pydantic turns it into a validation error naming the field.)
        """
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"broker url {url!r} must start with mqtt:// or mqtts://")
        if parts.username or parts.password:
            raise ValueError("put no credentials in the broker url; use username and password_file")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"broker url {url!r} must be mqtt[s]://host[:port] only")
        if not parts.hostname:
            raise ValueError(f"broker url {url!r} has no host")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ValueError(f"broker url {url!r} has a bad port: {exc}") from exc
        return cls(parts.hostname, port, tls)


def resolve_credential(value: str, env: Mapping[str, str] | None = None) -> Path:
    """Locate a secret file given as a path or as a systemd credential name.

    A bare name (no ``/``) is first looked up in ``$CREDENTIALS_DIRECTORY``; anything
    else, or a name not found there, is taken as a path.

    Raises:
        ConfigError: No such file; the message says where it looked.
    """
    environ = os.environ if env is None else env
    tried: list[str] = []
    creds = environ.get("CREDENTIALS_DIRECTORY")
    if "/" not in value and creds:
        candidate = Path(creds) / value
        if candidate.is_file():
            return candidate
        tried.append(str(candidate))
    path = Path(value).expanduser()
    if path.is_file():
        return path
    tried.append(str(path))
    hint = (
        ""
        if creds or "/" in value
        else f" (under systemd, add LoadCredential={value}:/path/to/{value} to the unit)"
    )
    raise ConfigError(f"secret file {value!r} not found; looked at {', '.join(tried)}{hint}")


def read_secret(value: str, what: str, env: Mapping[str, str] | None = None) -> str:
    """Read a one-line secret (a password) from a file; trailing newlines are removed.

    Warns when the file is readable by other users.

    Raises:
        ConfigError: The file is missing, unreadable, not UTF-8 or empty.
    """
    path = resolve_credential(value, env)
    try:
        mode = path.stat().st_mode
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} from {path}: {exc}") from exc
    if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWOTH):
        logger.warning("%s file %s is readable by other users; chmod 600 it", what, path)
    secret = text.rstrip("\r\n")
    if not secret:
        raise ConfigError(f"{what} file {path} is empty")
    return secret
