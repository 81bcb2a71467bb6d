"""Which cases `facegate bench detect` measures."""

from __future__ import annotations

from device.lab.detect_bench import BenchCase, default_cases


def test_tiled_cases_at_each_size_and_thread_count_with_their_min_face() -> None:
    cases = default_cases(sizes=[(640, 360)], threads=[1, 2],
                          tiled_sizes=[(640, 360), (1280, 720)], min_face=24)
    assert cases == [
        BenchCase(640, 360, 1, False), BenchCase(640, 360, 2, False),
        BenchCase(640, 360, 1, True, 24), BenchCase(1280, 720, 1, True, 24),
        BenchCase(640, 360, 2, True, 24), BenchCase(1280, 720, 2, True, 24),
    ]


def test_default_tiled_case_is_1080p_down_to_40_px() -> None:
    tiled = [c for c in default_cases(threads=[1]) if c.tiled]
    assert tiled == [BenchCase(1920, 1080, 1, True, 40)]
