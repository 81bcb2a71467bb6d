"""The bounded frame queue: drops the oldest, counts every drop exactly."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from device.camera.multi import FrameQueue
from device.types import Frame

PIXEL = np.zeros((2, 2, 3), np.uint8)


def frame(camera: str, seq: int) -> Frame:
    return Frame(camera_id=camera, seq=seq, timestamp=float(seq), image=PIXEL)


def test_full_queue_drops_the_oldest_and_counts_per_camera() -> None:
    q = FrameQueue(3)
    dropped = [q.put(frame("a" if i % 2 else "b", i)) for i in range(10)]
    assert [d.seq for d in dropped if d is not None] == [0, 1, 2, 3, 4, 5, 6]
    stats = q.stats()
    assert (stats.put, stats.dropped, stats.depth, stats.taken) == (10, 7, 3, 0)
    assert stats.dropped_by_camera == {"b": 4, "a": 3}
    assert [q.get(timeout=0).seq for _ in range(3)] == [7, 8, 9]
    assert q.stats().taken == 3


def test_get_times_out_with_queue_empty() -> None:
    q = FrameQueue(1)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        FrameQueue(0)


def test_concurrent_producers_every_frame_is_taken_dropped_or_waiting() -> None:
    q = FrameQueue(5)
    producers, per_producer = 4, 2000
    start = threading.Barrier(producers + 1)
    taken: list[Frame] = []
    done = threading.Event()

    def produce(name: str) -> None:
        start.wait()
        for i in range(per_producer):
            q.put(frame(name, i))

    def consume() -> None:
        start.wait()
        while not done.is_set() or len(q):
            try:
                taken.append(q.get(timeout=0.01))
            except queue.Empty:
                continue

    threads = [threading.Thread(target=produce, args=(f"cam{i}",)) for i in range(producers)]
    consumer = threading.Thread(target=consume)
    for t in [*threads, consumer]:
        t.start()
    for t in threads:
        t.join(30)
    done.set()
    consumer.join(30)
    stats = q.stats()
    assert stats.put == producers * per_producer
    assert stats.put == stats.taken + stats.dropped + stats.depth
    assert stats.taken == len(taken)
    assert sum(stats.dropped_by_camera.values()) == stats.dropped
    # per camera, what was taken is in order (FIFO) and nothing is duplicated
    for cam in range(producers):
        seqs = [f.seq for f in taken if f.camera_id == f"cam{cam}"]
        assert seqs == sorted(set(seqs))
        assert len(seqs) + stats.dropped_by_camera.get(f"cam{cam}", 0) == per_producer
