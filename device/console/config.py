"""``console.toml``: where the console listens, its broker, store and keys.

Example::

    [web]
    host = "127.0.0.1"
    port = 8080
    # tls_cert = "/etc/facegate-console/cert.pem"   # required off loopback,
    # tls_key = "/etc/facegate-console/key.pem"     # unless serve --behind-proxy

    [broker]
    url = "mqtt://127.0.0.1:1883"
    client_id = "facegate-console-1"                # one per replica

    [store]
    url = "sqlite:////var/lib/facegate-console/console.sqlite3"
    # url = "postgresql://console@db.example/console"

    [keys]
    dir = "/var/lib/facegate-console/reviewer-keys"
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field

from device.config import Section, load_toml
from device.events.client import BrokerLogin
from device.events.config import read_secret


class WebConfig(Section):
    """The ``[web]`` section."""

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=1, le=65535)
    tls_cert: Path | None = Field(None, description="TLS certificate (PEM).")
    tls_key: Path | None = Field(None, description="Its private key (PEM).")
    session_secret_file: Path | None = Field(
        None, description="Secret that signs session cookies; made (0600) beside the store "
        "when unset. Replicas behind one address share it.")
    session_max_age_s: int = Field(8 * 3600, ge=60, description="A login lasts this long.")
    lockout_attempts: int = Field(10, ge=3, le=100, description="Wrong passwords in a row "
                                  "that lock an account.")
    lockout_s: float = Field(900.0, ge=10, description="How long a locked account stays locked.")
    health_stale_s: float = Field(120.0, gt=0, description="A unit whose retained health is "
                                  "older than this is flagged.")
    audit_stale_s: float = Field(900.0, gt=0, description="A unit whose audit head has not "
                                 "advanced for this long while its events arrive is flagged.")

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class BrokerConfig(Section):
    """The ``[broker]`` section."""

    url: str = Field("mqtt://127.0.0.1:1883", description="mqtt://host[:port] or mqtts://...")
    client_id: str = Field("facegate-console", min_length=1, max_length=64,
                           description="This replica's MQTT client id (each replica its own).")
    shared_group: str | None = Field(
        "console", pattern=r"^[A-Za-z0-9_-]{1,32}$",
        description="MQTT 5 shared-subscription group of the event topics; replicas with "
        "the same group split the events. None: a plain subscription.")
    username: str | None = None
    password_file: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: int = Field(30, ge=5, le=3600)
    session_expiry_s: int = Field(3600, ge=0, description="How long the broker keeps QoS 1 "
                                  "events for a console that is away.")

    def login(self) -> BrokerLogin:
        """The broker login, its password read.

        Raises:
            ConfigError: The password file is unusable.
        """
        password = (read_secret(self.password_file, "MQTT password")
                    if self.password_file else None)
        return BrokerLogin(self.url, self.username, password, self.ca_file, self.cert_file,
                           self.key_file)


class StoreConfig(Section):
    """The ``[store]`` section."""

    url: str = Field("sqlite:///console.sqlite3", description="sqlite:///<file> or "
                     "postgresql://<user>@<host>[:port]/<db>.")


class KeysConfig(Section):
    """The ``[keys]`` section: reviewers' signing keys (one per reviewer account)."""

    dir: Path = Field(Path("reviewer-keys"), description="Where `console user add --role "
                      "reviewer` writes each reviewer's Ed25519 key pair.")


class ConsoleConfig(Section):
    """The whole ``console.toml``."""

    web: WebConfig = Field(default_factory=WebConfig)
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    keys: KeysConfig = Field(default_factory=KeysConfig)


def load_config(path: Path) -> ConsoleConfig:
    """Read ``console.toml``; relative paths are taken from its directory.

    Raises:
        ConfigError: The file is missing, not TOML, or has an unknown or bad key.
    """
    config = load_toml(path, ConsoleConfig)
    base = path.resolve().parent

    def rel(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else base / p

    store_url = config.store.url
    prefix = "sqlite:///"
    if store_url.startswith(prefix) and not store_url[len(prefix):].startswith("/"):
        store_url = f"{prefix}{base / store_url[len(prefix):]}"
    web = config.web.model_copy(update={
        k: rel(getattr(config.web, k)) or getattr(config.web, k)
        for k in ("tls_cert", "tls_key", "session_secret_file")})
    return config.model_copy(update={
        "web": web,
        "store": StoreConfig(url=store_url),
        "keys": KeysConfig(dir=rel(config.keys.dir) or config.keys.dir),
    })
