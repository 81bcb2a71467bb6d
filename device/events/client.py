"""The one MQTT client factory: every paho client of a unit and its tools is built here.

:func:`make_client` (or :func:`client_for` from the ``[mqtt]`` section) gives a
:class:`BrokerClient`: paho-mqtt v2 callbacks, MQTT 5, credentials, TLS / mutual TLS,
an optional last will, reconnect backoff with jitter, and

* an MQTT 5 *Maximum Packet Size* in every CONNECT, so the broker never sends the
  client a message larger than it can use; a message that arrives larger anyway is
  dropped before any callback sees it;
* one log line per change of the connection: one WARNING when a broker outage starts
  (connection lost, or the first failed attempt), DEBUG for the further failed attempts,
  and one INFO when the connection is back. paho's own "Client is not connected" and
  socket errors during an outage are expected and logged at DEBUG.

A caller reacts to the connection through ``after_connect``, ``after_connect_fail``
and ``after_disconnect`` (paho's callback signatures), and to messages through
``after_message`` and :meth:`BrokerClient.route`; the client keeps paho's
``on_connect``, ``on_connect_fail``, ``on_disconnect``, ``on_message`` and ``on_log``
for itself.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device.errors import ConfigError
from device.events.config import BrokerAddress, MqttConfig, read_secret, resolve_credential

logger = logging.getLogger(__name__)
_paho_logger = logging.getLogger(f"{__name__}.paho")

#: Maximum Packet Size of a client that receives only small state messages.
DEFAULT_MAX_PACKET_BYTES: Final = 256 * 1024

#: CONNACK reason codes that mean "your credentials are not accepted".
CREDENTIAL_REASONS: Final = frozenset({0x86, 0x87, 0x8C})

_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})

#: paho error lines that only restate a connection problem the client reports itself.
_CONNECTION_NOISE: Final = ("Client is not connected", "failed to receive on socket",
                            "timeout on socket")

MessageCallback = Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]
ConnectCallback = Callable[[mqtt.Client, Any, mqtt.ConnectFlags, ReasonCode, Properties | None],
                           None]
DisconnectCallback = Callable[
    [mqtt.Client, Any, mqtt.DisconnectFlags, ReasonCode, Properties | None], None]
ConnectFailCallback = Callable[[mqtt.Client, Any], None]


@dataclass(frozen=True, slots=True)
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

    @property
    def address(self) -> BrokerAddress:
        """The parsed URL.

        Raises:
            ConfigError: The URL is unusable.
        """
        try:
            return BrokerAddress.parse(self.url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    @classmethod
    def from_config(cls, config: MqttConfig, env: Mapping[str, str] | None = None) -> BrokerLogin:
        """The login of the ``[mqtt]`` section, its password and key file resolved.

        Raises:
            ConfigError: A secret file is missing or unusable.
        """
        password = (read_secret(config.password_file, "MQTT password", env)
                    if config.password_file else None)
        key = resolve_credential(config.key_file, env) if config.key_file else None
        return cls(config.url, config.username, password, config.ca_file, config.cert_file, key)


@dataclass(frozen=True, slots=True)
class Will:
    """A last will: what the broker publishes when the client vanishes."""

    topic: str
    payload: bytes | str
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``min_s``, doubling per failure up to ``max_s``, plus jitter.

    Attributes:
        min_s: First delay, seconds.
        max_s: Longest delay, seconds.
        jitter: Up to this fraction of the delay is added at random, so a fleet that
            lost its broker together does not come back in lock step.
    """

    min_s: int = 1
    max_s: int = 60
    jitter: float = 0.25

    def delay(self, failures: int) -> int:
        """paho's delay before attempt ``failures + 1`` (without the jitter)."""
        if failures <= 0:
            return 0
        return int(min(self.min_s * 2 ** min(failures - 1, 30), self.max_s))


def describe_error(exc: BaseException | None) -> str:
    """Why a connection attempt failed, for a person."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running?)"
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    return f"{type(exc).__name__}: {exc}"


class BrokerClient(mqtt.Client):
    """A paho v2 MQTT 5 client built by :func:`make_client`; see the module doc.

    Attributes:
        address: The broker.
        name: What the client is for, in log lines (``publisher``, ``sync agent``).
        max_packet_bytes: The Maximum Packet Size asked of the broker.
        after_connect: Called after every CONNACK (success or failure).
        after_connect_fail: Called after a connection attempt failed before CONNACK.
        after_disconnect: Called after the connection closed.
        after_message: Called with each message no :meth:`route` took.
    """

    def __init__(self, login: BrokerLogin, client_id: str, *, name: str,
                 max_packet_bytes: int, backoff: Backoff, rng: random.Random | None) -> None:
        super().__init__(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.address = login.address
        self.name = name
        self.client_name = client_id
        self.login_user = login.username
        self.max_packet_bytes = max_packet_bytes
        self.backoff = backoff
        self.after_connect: ConnectCallback | None = None
        self.after_connect_fail: ConnectFailCallback | None = None
        self.after_disconnect: DisconnectCallback | None = None
        self.after_message: MessageCallback | None = None
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # Guarded by self._lock:
        self._connected = False
        self._ever_connected = False
        self._outage_since: float | None = None  # monotonic start of the current outage
        self._reported = False  # the current outage has been logged
        self._failures = 0
        self._refused = False  # the last CONNACK was a refusal (its disconnect is no news)
        self._attempt_error: OSError | None = None
        self._paho_error: str | None = None
        self._last_failure: str | None = None
        self.on_connect = self._fg_connect
        self.on_connect_fail = self._fg_connect_fail
        self.on_disconnect = self._fg_disconnect
        self.on_message = self._fg_message
        self.on_log = self._fg_log

    # ---------------------------------------------------------------- status

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    @property
    def failures(self) -> int:
        """Failed attempts since the last successful connection."""
        with self._lock:
            return self._failures

    @property
    def last_failure(self) -> str | None:
        """Why the connection is down now, for a person; None while connected."""
        with self._lock:
            return self._last_failure

    @property
    def retry_in_s(self) -> int | None:
        """The backoff delay before the next attempt while down (jitter not included)."""
        with self._lock:
            if self._connected or self._failures == 0:
                return None
            return self.backoff.delay(self._failures)

    @property
    def outage_s(self) -> float | None:
        """Seconds the broker has been unavailable (None: connected or never tried)."""
        with self._lock:
            since = self._outage_since
        return None if since is None else time.monotonic() - since

    # ------------------------------------------------------------- lifecycle

    def connect_async(self, host: str, port: int = 1883, keepalive: int = 60,
                      bind_address: str = "", bind_port: int = 0,
                      clean_start: Any = mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                      properties: Properties | None = None) -> None:
        """paho's ``connect_async``, with the Maximum Packet Size always in the CONNECT."""
        if properties is None:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.MaximumPacketSize = self.max_packet_bytes
        self._stop.clear()
        super().connect_async(host, port, keepalive, bind_address, bind_port, clean_start,
                              properties)

    def start(self, keepalive: int, *, clean_start: Any = mqtt.MQTT_CLEAN_START_FIRST_ONLY,
              session_expiry_s: int = 0) -> None:
        """Connect in the background (retrying with backoff) and run the network loop.

        Args:
            keepalive: MQTT keepalive, seconds.
            clean_start: paho's clean start flag (first connection only by default).
            session_expiry_s: MQTT 5 Session Expiry Interval. Above 0 the session is
                persistent: every connection, the first included, resumes it
                (clean start off), and the broker keeps the subscriptions and queues
                QoS 1 messages for them while the client is away, up to this long.
        """
        properties = None
        if session_expiry_s > 0:
            clean_start = False
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = session_expiry_s
        self.connect_async(self.address.host, self.address.port, keepalive,
                           clean_start=clean_start, properties=properties)
        self.loop_start()

    def stop(self) -> None:
        """Disconnect and stop the network loop; nothing of it is logged as a problem."""
        self._stop.set()
        self.disconnect()
        self.loop_stop()

    def disconnect(self, reasoncode: ReasonCode | None = None,
                   properties: Properties | None = None) -> MQTTErrorCode:
        self._stop.set()
        return super().disconnect(reasoncode, properties)

    def jitter_s(self) -> float:
        """The random extra wait before the next attempt, on top of paho's delay.

        Zero before the first connection of a new client. The first attempt after a
        lost connection is jittered too: a fleet that lost its broker together would
        otherwise come back in one burst exactly ``min_s`` later.
        """
        with self._lock:
            failures = self._failures
            if not failures and self._ever_connected and not self._connected:
                failures = 1
        if not failures or self.backoff.jitter <= 0:
            return 0.0
        return self._rng.uniform(0, self.backoff.jitter * self.backoff.delay(failures))

    def reconnect(self) -> MQTTErrorCode:
        """paho's ``reconnect``, after a random extra wait, keeping why an attempt failed."""
        extra = self.jitter_s()
        if extra and self._stop.wait(extra):
            raise ConnectionAbortedError("the client is stopping")
        return self._attempt()

    def _attempt(self) -> MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as exc:
            with self._lock:
                self._attempt_error = exc
            raise

    def try_reconnect(self) -> bool:
        """One attempt now, without waiting: for a caller that runs its own event loop.

        Such a caller schedules attempts itself (paho's delay plus :meth:`jitter_s`) and
        drives the socket with ``loop_read``/``loop_write``/``loop_misc``. A failed
        attempt is counted and reported like one of paho's own loop.

        Returns:
            Whether the CONNECT was sent (the CONNACK arrives through the loop).
        """
        try:
            self._attempt()
        except OSError:
            self._fg_connect_fail(self, None)
            return False
        return True

    # ----------------------------------------------------------- messages

    def route(self, topic_filter: str, callback: MessageCallback) -> None:
        """Hand messages matching ``topic_filter`` to ``callback`` (size-checked first)."""
        def guarded(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            if self._fg_fits(message):
                callback(client, userdata, message)

        self.message_callback_add(topic_filter, guarded)

    def _fg_fits(self, message: mqtt.MQTTMessage) -> bool:
        size = len(message.payload)
        if size <= self.max_packet_bytes:
            return True
        try:
            topic = message.topic[:200]
        except UnicodeDecodeError:
            topic = "(not UTF-8)"
        logger.warning("%s dropped a %d-byte message on %r (the limit is %d bytes)",
                       self.name, size, topic, self.max_packet_bytes)
        return False

    def _fg_message(self, client: mqtt.Client, userdata: Any,
                        message: mqtt.MQTTMessage) -> None:
        if not self._fg_fits(message):
            return
        if self.after_message is not None:
            self.after_message(client, userdata, message)

    # ---------------------------------------------------------- connection

    def _fg_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            with self._lock:
                self._paho_error = text[:300]
            if text.startswith(_CONNECTION_NOISE):
                _paho_logger.debug("%s", text)
            else:
                _paho_logger.error("%s", text)
        elif level == mqtt.MQTT_LOG_WARNING:
            _paho_logger.warning("%s", text)
        else:
            _paho_logger.debug("%s", text)

    def _fg_failed(self, message: str, *, level: int = logging.WARNING) -> None:
        """Count a failed attempt; the first of an outage is logged at ``level``."""
        with self._lock:
            self._failures += 1
            self._last_failure = message
            if self._outage_since is None:
                self._outage_since = time.monotonic()
            first = not self._reported
            self._reported = True
            delay = self.backoff.delay(self._failures)
        logger.log(level if first else logging.DEBUG,
                   "%s: %s (broker %s:%d); retrying in %d s, then with growing delays",
                   self.name, message, self.address.host, self.address.port, delay)

    def _fg_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        with self._lock:
            exc, self._attempt_error = self._attempt_error, None
        if not self._stop.is_set():
            self._fg_failed(f"cannot reach broker: {describe_error(exc)}")
        if self.after_connect_fail is not None:
            self.after_connect_fail(client, userdata)

    def _fg_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                        reason_code: ReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:
            with self._lock:
                self._refused = True
            what = ("broker refused credentials" if reason_code.value in CREDENTIAL_REASONS
                    else "broker refused the connection")
            self._fg_failed(f"{what} ({reason_code.getName()}) for client "
                         f"{self.client_name} user {self.login_user!r}",
                         level=logging.ERROR)
        else:
            with self._lock:
                since, self._outage_since = self._outage_since, None
                attempts, self._failures = self._failures, 0
                again = self._ever_connected or attempts > 0
                self._connected = True
                self._ever_connected = True
                self._reported = False
                self._refused = False
                self._last_failure = None
                self._paho_error = None
            if again:
                down = 0.0 if since is None else time.monotonic() - since
                logger.info("%s: connected to broker %s:%d again after %.1f s (%d failed "
                            "attempt(s); session present: %s)", self.name, self.address.host,
                            self.address.port, down, attempts, flags.session_present)
            else:
                logger.info("%s: connected to broker %s:%d (session present: %s)", self.name,
                            self.address.host, self.address.port, flags.session_present)
        if self.after_connect is not None:
            self.after_connect(client, userdata, flags, reason_code, properties)

    def _fg_disconnect(self, client: mqtt.Client, userdata: Any,
                           flags: mqtt.DisconnectFlags, reason_code: ReasonCode,
                           properties: Properties | None) -> None:
        with self._lock:
            was = self._connected
            self._connected = False
            refused, self._refused = self._refused, False
            detail = self._paho_error or reason_code.getName()
        if self._stop.is_set():
            logger.debug("%s: disconnected from broker %s:%d", self.name, self.address.host,
                         self.address.port)
        elif was:
            with self._lock:
                self._outage_since = time.monotonic()
                self._last_failure = f"connection lost ({reason_code.getName()})"
                self._reported = True
            logger.warning("%s: lost connection to broker %s:%d (%s); reconnecting",
                           self.name, self.address.host, self.address.port,
                           reason_code.getName())
        elif not refused:
            # Closed before CONNACK: TLS 1.3, for one, reports a missing or rejected
            # client certificate only after the handshake, on the first read.
            self._fg_failed(f"connection closed before the broker accepted it ({detail})")
        if self.after_disconnect is not None:
            self.after_disconnect(client, userdata, flags, reason_code, properties)


def make_client(login: BrokerLogin, client_id: str, *, name: str,
                max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES, will: Will | None = None,
                backoff: Backoff | None = None, rng: random.Random | None = None
                ) -> BrokerClient:
    """A :class:`BrokerClient` with credentials, TLS and last will set, not yet connected.

    Args:
        login: The broker and how to log in.
        client_id: The MQTT client id (at most 64 characters are kept).
        name: What the client is for, in log lines.
        max_packet_bytes: The largest packet the broker may send this client.
        will: The last will, if any.
        backoff: Reconnect delays (paho's default of 1 to 60 s when None).
        rng: Randomness of the jitter (seeded in tests).

    Raises:
        ConfigError: The URL or the TLS files are unusable.
    """
    backoff = backoff or Backoff()
    client = BrokerClient(login, client_id[:64], name=name, max_packet_bytes=max_packet_bytes,
                          backoff=backoff, rng=rng)
    address = client.address
    if login.username:
        if login.password and not address.tls and address.host not in _LOOPBACK:
            logger.warning("the MQTT password is sent unencrypted; use an mqtts:// url")
        client.username_pw_set(login.username, login.password)
    if address.tls:
        try:
            client.tls_set(ca_certs=str(login.ca_file) if login.ca_file else None,
                           certfile=str(login.cert_file) if login.cert_file else None,
                           keyfile=str(login.key_file) if login.key_file else None,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load TLS files (ca_file={login.ca_file}, cert_file={login.cert_file}, "
                f"key_file={login.key_file}): {exc}"
            ) from exc
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    client.reconnect_delay_set(backoff.min_s, backoff.max_s)
    return client


def client_for(config: MqttConfig, *, name: str, suffix: str = "",
               env: Mapping[str, str] | None = None, will: Will | None = None,
               max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES,
               rng: random.Random | None = None) -> BrokerClient:
    """The client of the ``[mqtt]`` section: its login, client id (plus ``suffix``), backoff.

    Raises:
        ConfigError: A secret or TLS file is missing or unusable.
    """
    return make_client(BrokerLogin.from_config(config, env),
                       f"{config.effective_client_id}{suffix}", name=name,
                       max_packet_bytes=max_packet_bytes, will=will,
                       backoff=Backoff(config.reconnect_min_s, config.reconnect_max_s), rng=rng)


__all__ = ["DEFAULT_MAX_PACKET_BYTES", "Backoff", "BrokerClient", "BrokerLogin", "Will",
           "client_for", "describe_error", "make_client"]
