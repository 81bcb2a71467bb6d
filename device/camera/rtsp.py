"""RTSP cameras through OpenCV's FFmpeg backend, reconnecting with backoff.

Credentials in the URL (``rtsp://user:pass@host/…`` or secret query parameters) are
used only to open the stream: logs, errors, the health report, ``Frame.source`` and
the config's ``repr`` show the URL with them replaced by ``***``.

The capture is made by an *opener* (URL → capture-like object), by default
:func:`open_ffmpeg_stream`; pass another to read through a different library, or in
tests to exercise the reconnect logic without an RTSP server.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import cv2
from pydantic import ConfigDict, Field

from device.camera.base import SourceConfigBase
from device.camera.capture import Capture, release_quietly
from device.camera.reconnect import ReconnectConfig, StreamSource
from device.errors import CameraError

logger = logging.getLogger(__name__)

#: Query parameters whose values are treated as secrets (substring match, any case).
SECRET_QUERY_KEYS = ("pass", "pwd", "secret", "token", "key", "auth", "sig", "user")

#: The OpenCV environment variable that carries FFmpeg capture options.
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"

# Guards the process-wide environment variable while one capture opens with it.
_ENV_LOCK = threading.Lock()

Opener = Callable[[str], Capture]


class RtspSourceConfig(SourceConfigBase):
    """An RTSP camera or stream."""

    # Validation errors must not echo the URL: it may carry a password.
    model_config = ConfigDict(hide_input_in_errors=True)

    type: Literal["rtsp"] = Field(default="rtsp", description="Backend: RTSP stream.")
    url: str = Field(
        pattern=r"^rtsps?://[^/\s]+",
        description="Stream URL, rtsp://[user:password@]host[:port]/path; credentials are "
        "never logged.",
    )
    transport: Literal["tcp", "udp"] = Field(
        default="tcp", description="RTP transport; TCP survives lossy Wi-Fi and NAT better."
    )
    open_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="Give up opening the stream after this long."
    )
    read_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="Treat the stream as lost after this long "
        "without a frame."
    )
    reconnect: ReconnectConfig = Field(
        default_factory=ReconnectConfig, description="Backoff between reconnect attempts."
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "url" else value


def _is_secret_key(key: str) -> bool:
    low = key.lower()
    return any(word in low for word in SECRET_QUERY_KEYS)


def redact_url(url: str) -> str:
    """The URL with user, password and secret-looking query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***:***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if _is_secret_key(k) else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The secret substrings of a URL (user info, secret query values), longest first."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found: list[str] = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        found.append(userinfo)
        found.extend(p for p in userinfo.split(":", 1) if p)
    found.extend(v for k, v in parse_qsl(parts.query, keep_blank_values=True)
                 if v and _is_secret_key(k))
    return sorted(set(found), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """Replace the URL and any of its secrets in ``text`` (e.g. a library's message)."""
    text = text.replace(url, redact_url(url))
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return text


@contextmanager
def _ffmpeg_transport(transport: str) -> Iterator[None]:
    """Set FFmpeg's ``rtsp_transport`` for one open (OpenCV reads it from the env).

    With the variable unset OpenCV already uses TCP, so that case changes nothing and
    takes no lock (opens of TCP cameras never wait for each other). Options an
    operator put in the variable are kept; only the transport is set. Opens that do
    change the variable are serialised; a TCP open that races a UDP open may see UDP.
    """
    if transport == "tcp" and FFMPEG_OPTIONS_ENV not in os.environ:
        yield
        return
    with _ENV_LOCK:
        previous = os.environ.get(FFMPEG_OPTIONS_ENV)
        options = dict(
            item.split(";", 1) for item in (previous or "").split("|") if ";" in item
        )
        options["rtsp_transport"] = transport
        os.environ[FFMPEG_OPTIONS_ENV] = "|".join(f"{k};{v}" for k, v in options.items())
        try:
            yield
        finally:
            if previous is None:
                del os.environ[FFMPEG_OPTIONS_ENV]
            else:
                os.environ[FFMPEG_OPTIONS_ENV] = previous


def open_ffmpeg_stream(url: str, config: RtspSourceConfig) -> Capture:
    """Open ``url`` with OpenCV's FFmpeg backend and the config's timeouts and transport."""
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, round(config.open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, round(config.read_timeout_s * 1000),
    ]
    with _ffmpeg_transport(config.transport):
        return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)


class RtspSource(StreamSource):
    """Frames from an RTSP stream; a lost stream is re-opened with backoff.

    The stream is opened on first iteration (so a camera that boots after the unit
    is picked up); failures are retried per ``config.reconnect`` and shown in
    :meth:`health`.

    Args:
        config: The source's section.
        opener: Makes a capture from the full URL; default :func:`open_ffmpeg_stream`.
        rng: Random numbers for the backoff jitter; default seeded from the config.
        sleep: Waits between retries; default ends early when the source is closed.
    """

    def __init__(
        self,
        config: RtspSourceConfig,
        *,
        opener: Opener | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        super().__init__(config.camera_id, redact_url(config.url), config.reconnect,
                         rng=rng, sleep=sleep)
        self._config = config
        self._opener: Opener = (
            opener if opener is not None else lambda url: open_ffmpeg_stream(url, config)
        )

    def _scrub(self, text: str) -> str:
        return scrub(text, self._config.url)

    def _connect(self) -> Capture:
        """Open the stream.

        Raises:
            CameraError: It cannot be opened; the message carries no credentials.
        """
        logger.info("camera %s: opening %s", self.camera_id, self.source)
        try:
            cap = self._opener(self._config.url)
        except (cv2.error, OSError) as exc:
            raise CameraError(
                f"{self.source}: cannot open stream: {self._scrub(str(exc))}"
            ) from None
        if not cap.isOpened():
            release_quietly(cap, self.source)
            raise CameraError(
                f"{self.source}: cannot open stream (unreachable host, refused connection, "
                f"wrong path or credentials, or no answer within {self._config.open_timeout_s:g} s)"
            )
        return cap
