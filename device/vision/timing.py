"""Per-stage wall-clock timing for detectors (benchmarks and health metrics)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageTimer:
    """Accumulates milliseconds per named stage; a stage may run several times."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` body and add it to ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000.0


class NullTimer(StageTimer):
    """A timer that records nothing (the default on the hot path)."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield
