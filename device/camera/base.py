"""What every frame source is: the Protocol, its health report, and the shared lifecycle.

A frame source is an iterable of :class:`~device.types.Frame` values (RGB ``uint8``),
a context manager, and has an idempotent, thread-safe :meth:`FrameSource.close`.
:meth:`FrameSource.health` returns a snapshot the pipeline can read from any thread:
state, frames read, bad inputs skipped, reconnects and the last error.

Backends derive from :class:`BaseSource`, which owns the sequence numbers, the
health counters, the close event (so pacing and backoff waits end as soon as the
source is closed) and a lock that keeps ``close()`` from releasing a capture while
another thread is inside ``read()``.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from pydantic import Field

from device.config import Section
from device.errors import CameraError, HardwareError
from device.types import Frame, Image

logger = logging.getLogger(__name__)

#: Allowed camera ids: they appear in MQTT topics and log lines.
CAMERA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class CameraHardwareError(CameraError, HardwareError):
    """A camera device is absent or unusable (both a camera and a hardware problem)."""


class SourceState(StrEnum):
    """Where a frame source is in its life."""

    CREATED = "created"
    """Opened and checked, no frame read yet."""
    RUNNING = "running"
    """Delivering frames."""
    RECONNECTING = "reconnecting"
    """The stream was lost (or never came up) and is being re-opened with backoff."""
    ENDED = "ended"
    """A finite input (file, folder) is exhausted."""
    FAILED = "failed"
    """Gave up; ``last_error`` says why."""
    CLOSED = "closed"
    """Closed by its owner while live (closing an ended or failed source keeps that state)."""


_OUTCOMES = frozenset({SourceState.ENDED, SourceState.FAILED})


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """A snapshot of one source's state and counters.

    Attributes:
        camera_id: The configured id of the source.
        source: Human-readable origin (path, device, URL without credentials).
        state: Current :class:`SourceState`.
        frames_read: Frames delivered so far.
        skipped: Inputs skipped as unreadable (bad images in a folder replay).
        errors: Errors seen so far (skipped inputs, lost streams, failed connects).
        reconnects: Times a lost stream was re-opened successfully.
        last_error: Message of the most recent error, or ``None``.
        last_frame_at: Wall-clock time (epoch seconds) of the last frame delivered.
    """

    camera_id: str
    source: str
    state: SourceState
    frames_read: int = 0
    skipped: int = 0
    errors: int = 0
    reconnects: int = 0
    last_error: str | None = None
    last_frame_at: float | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "camera_id": self.camera_id,
            "source": self.source,
            "state": self.state.value,
            "frames_read": self.frames_read,
            "skipped": self.skipped,
            "errors": self.errors,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "last_frame_at": self.last_frame_at,
        }


@runtime_checkable
class FrameSource(Protocol):
    """A camera, stream, video file or image folder that yields frames.

    Iterate it to read frames (one consumer at a time); it stops when the input ends
    or the source is closed. ``close()`` may be called from any thread, any number
    of times.
    """

    @property
    def camera_id(self) -> str: ...

    def __iter__(self) -> Iterator[Frame]: ...

    def health(self) -> SourceHealth: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class SourceConfigBase(Section):
    """Fields every frame-source section has; each backend adds a ``type`` literal."""

    camera_id: str = Field(
        pattern=CAMERA_ID_PATTERN,
        description="Id of this camera in frames, events, health and logs "
        "(letters, digits, '_', '.', '-'; at most 64).",
    )


class _HealthCounter:
    """The mutable, lock-protected counters behind :class:`SourceHealth`."""

    def __init__(self, camera_id: str, source: str) -> None:
        self._lock = threading.Lock()
        self._snap = SourceHealth(camera_id=camera_id, source=source, state=SourceState.CREATED)

    def snapshot(self) -> SourceHealth:
        with self._lock:
            return self._snap

    def set_state(self, state: SourceState) -> None:
        with self._lock:
            current = self._snap.state
            if current is SourceState.CLOSED:
                return  # final
            if state is SourceState.CLOSED and current in _OUTCOMES:
                return  # closing an ended or failed source keeps how it ended
            self._snap = replace(self._snap, state=state)

    def frame(self, timestamp: float) -> None:
        with self._lock:
            s = self._snap
            self._snap = replace(s, frames_read=s.frames_read + 1, last_frame_at=timestamp)

    def error(self, message: str, *, skipped: bool = False) -> None:
        with self._lock:
            s = self._snap
            self._snap = replace(
                s, errors=s.errors + 1, skipped=s.skipped + int(skipped), last_error=message
            )

    def reconnected(self) -> None:
        with self._lock:
            self._snap = replace(self._snap, reconnects=self._snap.reconnects + 1)


class BaseSource(ABC):
    """Shared lifecycle of the frame-source backends.

    Subclasses implement :meth:`_frames` (yield frames built with :meth:`_frame`) and,
    if they hold a resource, :meth:`_release`. Reads of a shared resource should
    happen under ``self._lock`` so that :meth:`close` from another thread waits for
    them instead of releasing the resource underneath.
    """

    def __init__(self, camera_id: str, source: str) -> None:
        self._camera_id = camera_id
        self._source = source
        self._counter = _HealthCounter(camera_id, source)
        self._closed = threading.Event()
        self._close_once = threading.Lock()
        self._lock = threading.RLock()
        self._seq = 0

    @property
    def camera_id(self) -> str:
        """The configured id of this source."""
        return self._camera_id

    @property
    def source(self) -> str:
        """Human-readable origin, without credentials."""
        return self._source

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed.is_set()

    def health(self) -> SourceHealth:
        """A snapshot of the state and counters; safe to call from any thread."""
        return self._counter.snapshot()

    def __iter__(self) -> Iterator[Frame]:
        """Yield frames until the input ends or the source is closed.

        Raises:
            CameraError: The input cannot be read at all, or a live stream gave up
                reconnecting (the health report then shows ``FAILED`` and the message).
        """
        if self.closed:
            return
        self._counter.set_state(SourceState.RUNNING)
        try:
            for frame in self._frames():
                yield frame
                if self.closed:
                    return
        except Exception as exc:
            self._counter.error(str(exc))
            self._counter.set_state(SourceState.FAILED)
            raise
        if not self.closed:
            self._counter.set_state(SourceState.ENDED)

    @abstractmethod
    def _frames(self) -> Iterator[Frame]:
        """Yield frames; return at the end of the input or once closed."""

    def _frame(self, image: Image, timestamp: float | None = None,
               source: str | None = None) -> Frame:
        """Build the next frame (seq counts up from 0) and count it."""
        ts = time.time() if timestamp is None else timestamp
        frame = Frame(
            camera_id=self._camera_id,
            seq=self._seq,
            timestamp=ts,
            image=image,
            source=self._source if source is None else source,
        )
        self._seq += 1
        self._counter.frame(ts)
        return frame

    def _wait(self, seconds: float) -> bool:
        """Wait up to ``seconds``; return ``True`` at once if the source gets closed."""
        if seconds <= 0:
            return self.closed
        return self._closed.wait(seconds)

    def _release(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Free held resources; called once, under ``self._lock``."""

    def close(self) -> None:
        """Stop iteration and free resources. Idempotent and thread-safe."""
        with self._close_once:
            if self._closed.is_set():
                return
            self._closed.set()
        with self._lock:
            try:
                self._release()
            finally:
                self._counter.set_state(SourceState.CLOSED)
        logger.debug("camera %s: closed", self._camera_id)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(camera_id={self._camera_id!r}, source={self._source!r})"
