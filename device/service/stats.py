"""Latency histograms and rate meters for health and benchmarks.

Both are thread-safe (the worker records, the health thread reads) and bounded:
:class:`LatencyStats` keeps the latest ``capacity`` samples of each stage in a ring,
:class:`RateMeter` the event times of the last ``window_s`` seconds (at most
``max_events``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Summary of one stage's latest samples, milliseconds.

    Attributes:
        count: Samples recorded since start (not only those kept).
        p50: Median of the kept samples.
        p95: 95th percentile of the kept samples.
        mean: Mean of the kept samples.
        max: Largest kept sample.
    """

    count: int
    p50: float
    p95: float
    mean: float
    max: float

    def to_json(self) -> dict[str, float | int]:
        return {"count": self.count, "p50_ms": round(self.p50, 3), "p95_ms": round(self.p95, 3),
                "mean_ms": round(self.mean, 3), "max_ms": round(self.max, 3)}


class LatencyStats:
    """Per-stage latency samples (milliseconds) in fixed-size rings.

    Args:
        capacity: Samples kept per stage (the newest).
    """

    def __init__(self, capacity: int = 2048) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self._capacity = capacity
        self._lock = threading.Lock()
        self._rings: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}

    def add(self, stage: str, ms: float) -> None:
        """Record one sample of ``stage``."""
        with self._lock:
            ring = self._rings.get(stage)
            if ring is None:
                ring = self._rings[stage] = np.empty(self._capacity, dtype=np.float64)
                self._counts[stage] = 0
            n = self._counts[stage]
            ring[n % self._capacity] = ms
            self._counts[stage] = n + 1

    def add_many(self, samples: Iterable[tuple[str, float]]) -> None:
        """Record several ``(stage, ms)`` samples."""
        for stage, ms in samples:
            self.add(stage, ms)

    def summary(self) -> dict[str, Percentiles]:
        """Percentiles of every stage seen so far, in first-seen order."""
        with self._lock:
            kept = {s: (self._rings[s][: min(n, self._capacity)].copy(), n)
                    for s, n in self._counts.items()}
        out: dict[str, Percentiles] = {}
        for stage, (values, count) in kept.items():
            if values.size == 0:
                continue
            p50, p95 = np.percentile(values, [50, 95])
            out[stage] = Percentiles(count, float(p50), float(p95), float(values.mean()),
                                     float(values.max()))
        return out


class RateMeter:
    """Events per second over a sliding window.

    Args:
        window_s: Length of the window.
        max_events: Events kept at most (bounds memory at high rates).
        clock: Monotonic clock.
    """

    def __init__(self, window_s: float = 10.0, max_events: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window_s
        self._clock = clock
        self._times: deque[float] = deque(maxlen=max_events)
        self._lock = threading.Lock()
        self._total = 0

    def tick(self, n: int = 1) -> None:
        """Count ``n`` events now."""
        now = self._clock()
        with self._lock:
            self._times.extend([now] * n)
            self._total += n

    @property
    def total(self) -> int:
        """Events counted since start."""
        with self._lock:
            return self._total

    def rate(self) -> float:
        """Events per second over the window (0 before two events)."""
        now = self._clock()
        with self._lock:
            while self._times and now - self._times[0] > self._window:
                self._times.popleft()
            if len(self._times) < 2:
                return 0.0
            # n events since the first one: n - 1 intervals. Measured up to now, so the
            # rate falls when events stop.
            return (len(self._times) - 1) / max(now - self._times[0], 1e-9)


class StageClock:
    """Times consecutive stages of one frame: ``lap("detect")`` after each stage.

    Args:
        clock: ``time.perf_counter`` by default.
    """

    __slots__ = ("_clock", "_last", "laps")

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._last = clock()
        self.laps: list[tuple[str, float]] = []

    def lap(self, stage: str) -> float:
        """Milliseconds since the previous lap (or start), recorded under ``stage``."""
        now = self._clock()
        ms = (now - self._last) * 1000.0
        self._last = now
        self.laps.append((stage, ms))
        return ms

    def skip(self) -> None:
        """Restart the lap clock without recording (time spent outside any stage)."""
        self._last = self._clock()
