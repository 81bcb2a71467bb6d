"""Split one scan over rows across a few threads, handing out slices on demand."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Executor

#: Slices per thread: enough that a core busy with something else (the detector, on
#: a Pi) takes fewer slices instead of holding the query up.
SLICES_PER_THREAD = 4


def plan_slices(
    n: int, executor: Executor | None, threads: int, *, min_rows: int
) -> tuple[int, int]:
    """The ``(step, count)`` of the slices :func:`run_sliced` cuts ``0..n`` into.

    Slice ``lo..hi`` is number ``lo // step``, so a caller can give each slice its own
    output slot (``count`` of them). Same arguments as :func:`run_sliced`.
    """
    if executor is None or threads <= 1 or n < min_rows:
        return max(n, 1), 1
    step = (-(-n // (SLICES_PER_THREAD * threads)) + 63) // 64 * 64
    return step, -(-n // step)


def run_sliced(
    fn: Callable[[int, int], object], n: int, executor: Executor | None, threads: int,
    *, min_rows: int,
) -> None:
    """Call ``fn(lo, hi)`` over ``0..n`` in slices, on the caller's thread and workers.

    The caller works too and returns when every slice is done. It never waits for a
    worker that has not started: one that starts late finds no slice left and exits,
    so an oversubscribed machine costs at most the slices actually being run.
    Slice bounds are multiples of 64 rows, so no two threads write one cache line of
    a float32 output.

    Args:
        fn: Work on rows ``lo..hi-1``; must release the GIL to run in parallel.
        n: Rows.
        executor: Runs up to ``threads - 1`` helpers; ``None`` runs everything here.
        threads: Threads working on the scan, the caller included.
        min_rows: Below this, one thread does it all (a hand-off costs more).

    Raises:
        BaseException: Whatever ``fn`` raised, after every slice has finished.
    """
    step, total = plan_slices(n, executor, threads, min_rows=min_rows)
    if total == 1 or executor is None:
        fn(0, n)
        return
    counter = itertools.count()  # next() is atomic under the GIL
    lock = threading.Lock()
    finished = threading.Event()
    done = [0]
    errors: list[BaseException] = []

    def work() -> None:
        while True:
            i = next(counter)
            if i >= total:
                return
            try:
                fn(i * step, min(n, (i + 1) * step))
            except BaseException as exc:  # re-raised by the caller
                errors.append(exc)
            with lock:
                done[0] += 1
                if done[0] == total:
                    finished.set()

    for _ in range(threads - 1):
        try:
            executor.submit(work)
        except RuntimeError:  # executor shut down meanwhile: fewer hands, same result
            break
    work()
    finished.wait()
    if errors:
        raise errors[0]
