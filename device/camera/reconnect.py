"""Live streams that come back: reconnect with capped exponential backoff and jitter.

:func:`backoff_delays` is the schedule (a pure generator over an injected RNG, so it
is reproducible); :class:`StreamSource` is the read loop the RTSP and V4L2 backends
share: connect, read, and on a failed connect or a lost stream record the error in
the health report, wait the next delay and try again, until ``max_attempts``
consecutive failures (if set) or ``close()``.
"""

from __future__ import annotations

import logging
import random
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, Self

import cv2
from pydantic import Field, model_validator

from device.camera.base import BaseSource, SourceState
from device.camera.capture import Capture, bgr_to_rgb, release_quietly
from device.config import Section
from device.errors import CameraError
from device.types import Frame

logger = logging.getLogger(__name__)


class ReconnectConfig(Section):
    """How a live stream is re-opened after it fails."""

    initial_delay_s: float = Field(
        default=0.5, gt=0, le=300, description="Wait before the first retry, seconds."
    )
    max_delay_s: float = Field(
        default=30.0, gt=0, le=3600, description="Longest wait between retries, seconds."
    )
    multiplier: float = Field(
        default=2.0, ge=1, le=10, description="Each consecutive failure multiplies the wait."
    )
    jitter: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Random spread of each wait, as a fraction (0.2: ±20 %), so cameras "
        "that failed together do not retry in lockstep.",
    )
    max_attempts: int | None = Field(
        default=None,
        ge=1,
        description="Give up after this many consecutive failures; unset: retry forever.",
    )
    seed: int | None = Field(
        default=None, description="Seed of the jitter's random numbers; unset: unpredictable."
    )

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Self:
        if self.max_delay_s < self.initial_delay_s:
            raise ValueError("max_delay_s must be at least initial_delay_s")
        return self


def backoff_delays(config: ReconnectConfig, rng: random.Random) -> Iterator[float]:
    """Yield the waits before retry 1, 2, 3, … (an endless schedule).

    Wait *n* is ``initial_delay_s * multiplier**(n-1)``, capped at ``max_delay_s``,
    then spread by ``±jitter`` and capped again, so it never exceeds ``max_delay_s``.
    """
    base = config.initial_delay_s
    while True:
        delay = base
        if config.jitter:
            delay *= 1.0 + rng.uniform(-config.jitter, config.jitter)
        yield min(config.max_delay_s, max(0.0, delay))
        base = min(config.max_delay_s, base * config.multiplier)


class StreamSource(BaseSource):
    """Read loop for live captures, re-opened with backoff when they fail.

    Subclasses implement :meth:`_connect`, returning an opened :class:`Capture` or
    raising :class:`~device.errors.CameraError` with a message that names the input
    (without credentials). A subclass may connect in ``__init__`` (set ``self._cap``)
    to fail fast on a missing device; otherwise the first iteration connects.

    Args:
        camera_id: Configured id of the source.
        source: Human-readable origin, already stripped of credentials.
        reconnect: Backoff settings.
        rng: Random numbers for the jitter; default: seeded from ``reconnect.seed``.
        sleep: Waits the given seconds between retries; default: a wait that ends
            early when the source is closed. Returns anything truthy to give up.
    """

    def __init__(
        self,
        camera_id: str,
        source: str,
        reconnect: ReconnectConfig,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        super().__init__(camera_id, source)
        self._reconnect = reconnect
        self._rng = rng if rng is not None else random.Random(reconnect.seed)
        self._sleep: Callable[[float], object] = sleep if sleep is not None else self._wait
        self._cap: Capture | None = None

    @abstractmethod
    def _connect(self) -> Capture:
        """Open the stream.

        Raises:
            CameraError: It cannot be opened (message names the input, no credentials).
        """

    def _scrub(self, text: str) -> str:
        """Remove secrets from a message before it is logged or stored (hook)."""
        return text

    def _frames(self) -> Iterator[Frame]:
        """Yield frames, reconnecting whenever the stream fails.

        Raises:
            CameraError: ``max_attempts`` consecutive attempts failed.
        """
        delays = backoff_delays(self._reconnect, self._rng)
        failures = 0
        ever_connected = self._cap is not None  # a subclass may open in __init__
        while not self.closed:
            if self._cap is None:
                try:
                    cap = self._connect()
                except CameraError as exc:
                    failures += 1
                    if self._retry_after(str(exc), failures, delays):
                        continue
                    return
                if not self._attach(cap):
                    return
                if ever_connected:
                    self._counter.reconnected()
                    logger.info("camera %s: reconnected to %s", self.camera_id, self.source)
                ever_connected = True
                self._counter.set_state(SourceState.RUNNING)
            ok, raw = self._read()
            if not ok:
                self._detach()
                if self.closed:
                    return
                failures += 1
                message = f"{self.source}: stream lost (no frame could be read)"
                if self._retry_after(message, failures, delays):
                    continue
                return
            if failures:
                failures = 0
                delays = backoff_delays(self._reconnect, self._rng)
            yield self._frame(bgr_to_rgb(raw, self.source), time.time())

    def _retry_after(self, message: str, failures: int, delays: Iterator[float]) -> bool:
        """Record a failure and wait before the next attempt.

        Returns:
            ``True`` to try again, ``False`` if the source was closed meanwhile.

        Raises:
            CameraError: The failure was number ``max_attempts`` in a row.
        """
        message = self._scrub(message)
        limit = self._reconnect.max_attempts
        if limit is not None and failures >= limit:
            raise CameraError(f"gave up after {failures} failed attempt(s): {message}")
        self._counter.error(message)
        self._counter.set_state(SourceState.RECONNECTING)
        delay = next(delays)
        logger.warning("camera %s: %s; retrying in %.2f s (failure %d)",
                       self.camera_id, message, delay, failures)
        abandoned = bool(self._sleep(delay))
        return not (abandoned or self.closed)

    def _attach(self, cap: Capture) -> bool:
        """Keep ``cap`` as the live capture, unless the source was closed meanwhile."""
        with self._lock:
            if self.closed:
                release_quietly(cap, self.source)
                return False
            self._cap = cap
            return True

    def _detach(self) -> None:
        with self._lock:
            release_quietly(self._cap, self.source)
            self._cap = None

    def _read(self) -> tuple[bool, Any]:
        with self._lock:
            if self.closed or self._cap is None:
                return False, None
            try:
                ok, raw = self._cap.read()
            except cv2.error as exc:
                logger.warning("camera %s: read failed: %s", self.camera_id,
                               self._scrub(str(exc)))
                return False, None
        return bool(ok) and raw is not None, raw

    def _release(self) -> None:
        release_quietly(self._cap, self.source)
        self._cap = None
