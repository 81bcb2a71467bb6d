"""The reconnect schedule: exponential, capped, jittered from a seeded RNG."""

from __future__ import annotations

import random
from itertools import islice

import pytest
from pydantic import ValidationError

from device.camera.reconnect import ReconnectConfig, backoff_delays


def take(config: ReconnectConfig, n: int, seed: int = 0) -> list[float]:
    return list(islice(backoff_delays(config, random.Random(seed)), n))


def test_without_jitter_doubles_up_to_the_cap() -> None:
    cfg = ReconnectConfig(initial_delay_s=0.5, max_delay_s=5.0, multiplier=2.0, jitter=0.0)
    assert take(cfg, 8) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]


def test_multiplier_one_is_a_constant_delay() -> None:
    cfg = ReconnectConfig(initial_delay_s=2.0, max_delay_s=30.0, multiplier=1.0, jitter=0.0)
    assert take(cfg, 4) == [2.0, 2.0, 2.0, 2.0]


def test_jitter_stays_within_its_band_and_never_exceeds_the_cap() -> None:
    cfg = ReconnectConfig(initial_delay_s=1.0, max_delay_s=8.0, multiplier=2.0, jitter=0.25)
    delays = take(cfg, 200, seed=7)
    bases = [min(8.0, 2.0**i) for i in range(200)]
    for delay, base in zip(delays, bases, strict=True):
        assert base * 0.75 <= delay <= min(8.0, base * 1.25)
    # jitter really varies the waits at the cap
    assert len({round(d, 9) for d in delays[10:]}) > 10


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    cfg = ReconnectConfig(jitter=0.2)
    assert take(cfg, 10, seed=3) == take(cfg, 10, seed=3)
    assert take(cfg, 10, seed=3) != take(cfg, 10, seed=4)


def test_schedule_is_endless_without_overflow() -> None:
    cfg = ReconnectConfig(initial_delay_s=0.1, max_delay_s=60.0, multiplier=10.0, jitter=0.0)
    delays = take(cfg, 5000)
    assert delays[-1] == 60.0


def test_max_below_initial_is_refused() -> None:
    with pytest.raises(ValidationError, match="max_delay_s"):
        ReconnectConfig(initial_delay_s=10.0, max_delay_s=1.0)


@pytest.mark.parametrize(
    "field,value",
    [("initial_delay_s", 0), ("multiplier", 0.5), ("jitter", 1.5), ("max_attempts", 0)],
)
def test_out_of_range_values_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValidationError):
        ReconnectConfig.model_validate({field: value})
