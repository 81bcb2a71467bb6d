"""Replay pacing: release frames at their media time on the monotonic clock."""

from __future__ import annotations

import time
from collections.abc import Callable

#: When replay falls this far behind (a slow consumer), re-anchor instead of bursting.
MAX_LAG_S = 1.0


class Pacer:
    """Waits until a frame's offset from the start of replay has elapsed.

    The first call anchors the media clock to now. A replay that falls more than
    :data:`MAX_LAG_S` behind is re-anchored, so a stall is followed by normal pacing,
    not a burst of catch-up frames.

    Args:
        wait: Waits up to the given seconds; returns ``True`` to abandon (closed).
        clock: Monotonic clock in seconds.
    """

    def __init__(
        self,
        wait: Callable[[float], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wait = wait
        self._clock = clock
        self._anchor: float | None = None

    def reset(self) -> None:
        """Forget the anchor; the next frame is released at once (e.g. on loop)."""
        self._anchor = None

    def wait_until(self, offset_s: float) -> bool:
        """Wait until ``offset_s`` seconds after the anchor. Returns ``True`` if abandoned."""
        now = self._clock()
        if self._anchor is None:
            self._anchor = now - offset_s
            return False
        delay = self._anchor + offset_s - now
        if delay < -MAX_LAG_S:
            self._anchor = now - offset_s
            return False
        return self._wait(delay) if delay > 0 else False
