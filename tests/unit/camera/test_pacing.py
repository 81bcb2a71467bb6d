"""Replay pacing against a fake clock (no real waiting)."""

from __future__ import annotations

import pytest

from device.camera.pacing import MAX_LAG_S, Pacer


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return False


def test_frames_are_released_at_their_offsets() -> None:
    t = FakeTime()
    pacer = Pacer(t.wait, t.clock)
    for i in range(4):
        assert pacer.wait_until(i * 0.1) is False
    assert t.waits == pytest.approx([0.1, 0.1, 0.1])


def test_slow_consumer_time_is_not_waited_again() -> None:
    t = FakeTime()
    pacer = Pacer(t.wait, t.clock)
    pacer.wait_until(0.0)
    t.now += 0.08  # the consumer took 80 ms
    pacer.wait_until(0.1)
    assert t.waits == pytest.approx([0.02])


def test_a_long_stall_re_anchors_instead_of_bursting() -> None:
    t = FakeTime()
    pacer = Pacer(t.wait, t.clock)
    pacer.wait_until(0.0)
    t.now += MAX_LAG_S + 5
    assert pacer.wait_until(0.1) is False  # re-anchored: released at once
    pacer.wait_until(0.2)
    assert t.waits == pytest.approx([0.1])


def test_abandon_is_reported() -> None:
    t = FakeTime()
    pacer = Pacer(lambda s: True, t.clock)
    pacer.wait_until(0.0)
    assert pacer.wait_until(1.0) is True
