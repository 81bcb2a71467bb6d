"""The frame queue between the capture threads and the inference worker.

:class:`PipelineQueue` is a :class:`~device.camera.FrameQueue` (bounded; every drop
counted per camera) with two additions the service needs:

* a **policy** for a full queue: ``drop_oldest`` (live cameras: the newest frame is
  the one worth processing) or ``block`` (file replay and benchmarks: capture waits,
  so every frame is processed and results do not depend on timing);
* an **arrival stamp** per frame (monotonic clock), so the worker can measure how long
  a frame waited and the frame-to-acknowledgement latency of the events it causes.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

from device.camera import FrameQueue
from device.service.stats import RateMeter
from device.types import Frame

QueuePolicy = Literal["drop_oldest", "block"]


class PipelineQueue(FrameQueue):
    """A bounded frame queue with a full-queue policy and arrival stamps.

    Args:
        maxsize: Capacity, at least 1.
        policy: ``drop_oldest`` or ``block`` (see the module doc).

    Raises:
        ValueError: ``maxsize`` is below 1 or ``policy`` is unknown.
    """

    def __init__(self, maxsize: int, policy: QueuePolicy = "drop_oldest",
                 rate_window_s: float = 10.0) -> None:
        if policy not in ("drop_oldest", "block"):
            raise ValueError(f"unknown queue policy {policy!r}")
        super().__init__(maxsize)
        self.policy: QueuePolicy = policy
        self._stamps: dict[tuple[str, int], float] = {}
        self._stamp_lock = threading.Lock()
        self._space = threading.Condition()
        self._producers = threading.Lock()
        self._closed = False
        self._rate_window = rate_window_s
        self._rates: dict[str, RateMeter] = {}
        self._last: dict[str, float] = {}

    def arrival_rate(self, camera_id: str) -> float:
        """Frames per second offered by ``camera_id`` over the rate window."""
        with self._stamp_lock:
            meter = self._rates.get(camera_id)
        return meter.rate() if meter is not None else 0.0

    def idle_s(self, camera_id: str) -> float | None:
        """Seconds since ``camera_id`` last offered a frame; ``None`` if it never did."""
        with self._stamp_lock:
            last = self._last.get(camera_id)
        return None if last is None else time.monotonic() - last

    def _arrived(self, frame: Frame, now: float) -> None:
        with self._stamp_lock:
            self._stamps[(frame.camera_id, frame.seq)] = now
            self._last[frame.camera_id] = now
            meter = self._rates.get(frame.camera_id)
            if meter is None:
                meter = self._rates[frame.camera_id] = RateMeter(self._rate_window)
        meter.tick()

    def put(self, frame: Frame) -> Frame | None:
        """Append a frame, stamped with its arrival time.

        With ``drop_oldest`` it never blocks and returns the frame dropped to make
        room, if any. With ``block`` it waits for room (or for :meth:`close`, after
        which the frame is discarded and returned).
        """
        now = time.monotonic()
        if self.policy == "block":
            with self._producers:  # one producer at a time: the room it waited for stays
                with self._space:
                    self._space.wait_for(lambda: self._closed or len(self) < self.maxsize)
                    if self._closed:
                        return frame
                self._arrived(frame, now)
                return super().put(frame)
        self._arrived(frame, now)
        dropped = super().put(frame)
        if dropped is not None:
            with self._stamp_lock:
                self._stamps.pop((dropped.camera_id, dropped.seq), None)
        return dropped

    def get_stamped(self, timeout: float | None = None) -> tuple[Frame, float]:
        """The oldest waiting frame and its arrival time (``time.monotonic()``).

        Raises:
            queue.Empty: No frame arrived within ``timeout`` seconds.
        """
        frame = super().get(timeout)
        with self._stamp_lock:
            stamp = self._stamps.pop((frame.camera_id, frame.seq), time.monotonic())
        with self._space:
            self._space.notify_all()
        return frame, stamp

    def get(self, timeout: float | None = None) -> Frame:
        """Take the oldest waiting frame (see :meth:`get_stamped`).

        Raises:
            queue.Empty: No frame arrived in time.
        """
        return self.get_stamped(timeout)[0]

    def close(self) -> None:
        """Release producers blocked on a full queue; later puts are discarded. Idempotent."""
        with self._space:
            self._closed = True
            self._space.notify_all()
