"""Run several frame sources at once, one thread each, into one bounded queue.

Capture must never wait for inference, and memory must not grow when inference
falls behind: :class:`FrameQueue` keeps at most ``maxsize`` frames and, when full,
drops the *oldest* (the newest frame is the one worth processing), counting every
drop per camera. :class:`CameraRunner` owns the threads; a camera that fails is
recorded (:meth:`CameraRunner.failures`, and its source's ``health()``) and the
others carry on.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from device.camera.base import FrameSource, SourceHealth
from device.errors import DeviceError
from device.types import Frame

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counters of a :class:`FrameQueue`.

    Attributes:
        depth: Frames waiting now.
        maxsize: Capacity.
        put: Frames offered so far.
        taken: Frames handed to the consumer so far.
        dropped: Frames discarded because the queue was full (oldest first).
        dropped_by_camera: ``dropped`` split by ``camera_id``.
    """

    depth: int
    maxsize: int
    put: int
    taken: int
    dropped: int
    dropped_by_camera: dict[str, int] = field(default_factory=dict)


class FrameQueue:
    """A thread-safe bounded FIFO of frames that drops the oldest frame when full.

    Every frame offered is either taken, dropped or still waiting:
    ``put == taken + dropped + depth`` at all times.

    Args:
        maxsize: Capacity, at least 1.

    Raises:
        ValueError: ``maxsize`` is less than 1.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, not {maxsize}")
        self._maxsize = maxsize
        self._items: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._put = 0
        self._taken = 0
        self._dropped: Counter[str] = Counter()

    @property
    def maxsize(self) -> int:
        return self._maxsize

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, frame: Frame) -> Frame | None:
        """Append a frame; never blocks. Returns the frame dropped to make room, if any."""
        with self._cond:
            dropped = None
            if len(self._items) >= self._maxsize:
                dropped = self._items.popleft()
                self._dropped[dropped.camera_id] += 1
            self._items.append(frame)
            self._put += 1
            self._cond.notify()
        return dropped

    def get(self, timeout: float | None = None) -> Frame:
        """Take the oldest waiting frame, waiting up to ``timeout`` seconds (``None``: forever).

        Raises:
            queue.Empty: No frame arrived in time.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items), timeout):
                raise queue.Empty
            self._taken += 1
            return self._items.popleft()

    def stats(self) -> QueueStats:
        """A consistent snapshot of the counters."""
        with self._cond:
            return QueueStats(
                depth=len(self._items),
                maxsize=self._maxsize,
                put=self._put,
                taken=self._taken,
                dropped=sum(self._dropped.values()),
                dropped_by_camera=dict(self._dropped),
            )


class CameraRunner:
    """Reads several sources concurrently (a thread per camera) into one :class:`FrameQueue`.

    The runner owns the sources: each is closed when its thread ends and on
    :meth:`stop`. Use it as a context manager (``with CameraRunner(...) as runner``)
    to start on entry and stop on exit.

    Args:
        sources: Sources with distinct ``camera_id``.
        frames: The queue to feed (default: a new one of ``maxsize``).
        maxsize: Capacity of the default queue.

    Raises:
        ValueError: Two sources share a ``camera_id``, or ``maxsize`` is below 1.
    """

    def __init__(
        self,
        sources: Sequence[FrameSource],
        frames: FrameQueue | None = None,
        *,
        maxsize: int = 4,
    ) -> None:
        ids = [s.camera_id for s in sources]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"camera ids must be distinct: {', '.join(duplicates)}")
        self._sources = list(sources)
        self._queue = frames if frames is not None else FrameQueue(maxsize)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._failures: dict[str, BaseException] = {}
        self._threads: list[threading.Thread] = []
        self._started = False
        self._remaining = 0

    @property
    def queue(self) -> FrameQueue:
        """The queue the cameras feed."""
        return self._queue

    def start(self) -> None:
        """Start one daemon thread per source.

        Raises:
            RuntimeError: Already started.
        """
        if self._started:
            raise RuntimeError("CameraRunner already started")
        self._started = True
        self._remaining = len(self._sources)
        if not self._sources:
            self._done.set()
        for source in self._sources:
            thread = threading.Thread(
                target=self._run, args=(source,), name=f"camera-{source.camera_id}", daemon=True
            )
            self._threads.append(thread)
        for thread in self._threads:
            thread.start()

    def _run(self, source: FrameSource) -> None:
        camera_id = source.camera_id
        try:
            for frame in source:
                if self._stop.is_set():
                    break
                self._queue.put(frame)
            logger.info("camera %s: finished", camera_id)
        except DeviceError as exc:
            logger.error("camera %s: stopped: %s", camera_id, exc)
            self._record_failure(camera_id, exc)
        except Exception as exc:
            logger.exception("camera %s: crashed", camera_id)
            self._record_failure(camera_id, exc)
        finally:
            self._close(source)
            with self._lock:
                self._remaining -= 1
                if self._remaining == 0:
                    self._done.set()

    def _record_failure(self, camera_id: str, exc: BaseException) -> None:
        with self._lock:
            self._failures[camera_id] = exc

    @staticmethod
    def _close(source: FrameSource) -> None:
        try:
            source.close()
        except Exception:
            logger.exception("camera %s: close failed", source.camera_id)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every source has ended, failed or been stopped. Returns whether so."""
        return self._done.wait(timeout)

    @property
    def finished(self) -> bool:
        """Whether every camera thread has ended."""
        return self._done.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        """Close every source (ending pacing and backoff waits) and join the threads.

        A close waits for a read in progress, so a live stream can hold this up to
        its read timeout; each thread is joined for at most ``timeout`` seconds.
        """
        self._stop.set()
        for source in self._sources:
            self._close(source)
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("%s: still running %.1f s after stop", thread.name, timeout)

    def failures(self) -> dict[str, BaseException]:
        """The error that ended each failed camera, by ``camera_id``."""
        with self._lock:
            return dict(self._failures)

    def health(self) -> dict[str, SourceHealth]:
        """Each source's health snapshot, by ``camera_id``."""
        return {s.camera_id: s.health() for s in self._sources}

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
