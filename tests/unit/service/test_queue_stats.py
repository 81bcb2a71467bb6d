"""The pipeline queue (drop or block, arrival stamps), latency stats and rate meters."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from device.service.queue import PipelineQueue
from device.service.stats import LatencyStats, RateMeter, StageClock
from device.types import Frame

IMAGE = np.zeros((2, 2, 3), dtype=np.uint8)


def _frame(seq: int, camera: str = "front") -> Frame:
    return Frame(camera, seq, float(seq), IMAGE)


def test_drop_oldest_counts_drops_and_forgets_their_stamps() -> None:
    q = PipelineQueue(2, "drop_oldest")
    for seq in range(5):
        q.put(_frame(seq))
    stats = q.stats()
    assert (stats.put, stats.dropped, stats.depth) == (5, 3, 2)
    assert stats.dropped_by_camera == {"front": 3}
    frame, stamp = q.get_stamped(timeout=0)
    assert frame.seq == 3 and stamp > 0
    assert q.get(timeout=0).seq == 4
    assert q._stamps == {}  # nothing left behind for dropped frames
    with pytest.raises(queue.Empty):
        q.get(timeout=0)


def test_block_makes_the_producer_wait_and_drops_nothing() -> None:
    q = PipelineQueue(1, "block")
    q.put(_frame(0))
    done = threading.Event()

    def produce() -> None:
        q.put(_frame(1))
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    assert not done.wait(0.2)  # full: the producer waits
    assert q.get(timeout=1).seq == 0
    assert done.wait(5)
    assert q.get(timeout=1).seq == 1
    assert q.stats().dropped == 0
    producer.join()


def test_close_releases_a_blocked_producer() -> None:
    q = PipelineQueue(1, "block")
    q.put(_frame(0))
    result: list[object] = []
    producer = threading.Thread(target=lambda: result.append(q.put(_frame(1))))
    producer.start()
    q.close()
    producer.join(5)
    assert not producer.is_alive()
    assert result[0] is not None  # the frame was discarded, not queued
    assert len(q) == 1


def test_arrival_rate_per_camera() -> None:
    q = PipelineQueue(100, "drop_oldest")
    for seq in range(20):
        q.put(_frame(seq, "a"))
    assert q.arrival_rate("a") > 0
    assert q.arrival_rate("b") == 0.0
    idle = q.idle_s("a")
    assert idle is not None and 0 <= idle < 5
    assert q.idle_s("b") is None


def test_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="policy"):
        PipelineQueue(2, "fifo")  # type: ignore[arg-type]


def test_latency_percentiles_over_the_newest_samples() -> None:
    stats = LatencyStats(capacity=100)
    for ms in range(1, 201):  # only 101..200 are kept
        stats.add("detect", float(ms))
    summary = stats.summary()["detect"]
    assert summary.count == 200
    assert summary.p50 == pytest.approx(150.5)
    assert summary.p95 == pytest.approx(195.05)
    assert summary.max == 200.0
    assert summary.to_json()["p95_ms"] == pytest.approx(195.05)


def test_rate_meter_counts_a_window_and_falls_when_idle() -> None:
    now = [0.0]
    meter = RateMeter(window_s=10.0, clock=lambda: now[0])
    for _ in range(11):
        meter.tick()
        now[0] += 0.1
    assert meter.rate() == pytest.approx(10 / 1.1)
    now[0] += 60.0
    assert meter.rate() == 0.0
    assert meter.total == 11


def test_stage_clock_laps() -> None:
    ticks = iter([0.0, 0.010, 0.025, 0.030])
    clock = StageClock(clock=lambda: next(ticks))
    assert clock.lap("detect") == pytest.approx(10.0)
    assert clock.lap("quality") == pytest.approx(15.0)
    clock.skip()
    assert [name for name, _ in clock.laps] == ["detect", "quality"]
