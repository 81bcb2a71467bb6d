"""No loss: every committed event reaches a subscriber at least once, in order.

A child process produces events and publishes them while the broker goes down and up;
it is SIGKILLed at seeded random points and restarted on the same outbox. A
subscriber with a persistent session (so the broker queues for it while it
reconnects) must see every event id the child reported as committed.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.events.config import MqttConfig
from device.events.mqtt import ConnectionState, Publisher
from device.events.outbox import Outbox
from device.ops.localbroker import LocalBroker
from tests.support.events import Child, Collector, event_id_for, make_event

UNIT = "unit-1"


@pytest.fixture()
def collector(broker: LocalBroker) -> Iterator[Collector]:
    with Collector(
        broker.host,
        broker.port,
        [f"facegate/{UNIT}/+/match"],
        client_id="noloss-subscriber",
        persistent=True,
    ) as c:
        assert c.wait_subscribed()
        yield c
    assert not c.invalid, c.invalid[:3]


def _config(broker: LocalBroker, tmp_path: Path) -> MqttConfig:
    return MqttConfig.model_validate(
        {
            "unit_id": UNIT,
            "url": broker.url,
            "outbox_path": tmp_path / "outbox.sqlite3",
            "reconnect_min_s": 1,
            "reconnect_max_s": 1,
            "max_inflight": 8,
            "health_interval_s": 3600,
        }
    )


def run_kill_rounds(
    broker: LocalBroker, collector: Collector, tmp_path: Path, seed: int, rounds: int, per: int
) -> None:
    rng = random.Random(seed)
    config = _config(broker, tmp_path).model_dump_json()
    committed: list[str] = []
    left_pending = 0  # rows a killed child left for its successor to replay
    for round_no in range(rounds):
        start = round_no * per
        scenario = rng.choice(["up", "down-then-up", "up-then-down"])
        if scenario == "down-then-up":
            broker.stop()
        elif not broker.running:
            broker.start()
        kill_at = rng.randint(1, per)
        toggle_at = rng.randint(0, kill_at)
        child = Child("publisher", config, str(start), str(per))
        try:
            assert child.wait_for(lambda lines, n=toggle_at: len(lines) >= n, 60), child.lines
            if scenario == "down-then-up":
                broker.start()
            elif scenario == "up-then-down":
                broker.stop()
            assert child.wait_for(lambda lines, n=kill_at: len(lines) >= n, 60), child.lines
            child.kill()
            committed += child.committed()
        finally:
            child.close()
        with Outbox(tmp_path / "outbox.sqlite3", max_rows=1_000_000) as outbox:
            assert outbox.integrity_check() == "ok"
            left_pending += outbox.depth()

    if not broker.running:
        broker.start()
    child = Child("publisher", config, "0", "0")
    try:
        assert child.wait_line("flushed", 60), (child.lines, child.stop())
        want = set(committed)
        got = collector.wait_for(lambda _: want <= set(collector.event_ids()), 60)
        missing = want - set(collector.event_ids())
        assert got, f"{len(missing)} committed event(s) never arrived (seed {seed})"
    finally:
        child.stop()
        child.close()

    index = {event_id_for(i): i for i in range(rounds * per)}
    first_seen = [index[e] for e in dict.fromkeys(collector.event_ids())]
    assert first_seen == sorted(first_seen), "events were first delivered out of order"
    assert len(committed) >= rounds
    assert left_pending > 0, "no kill left rows to replay; the seed tests nothing"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [7, 11])
def test_sigkill_and_broker_outages_lose_nothing(
    broker: LocalBroker, collector: Collector, tmp_path: Path, seed: int
) -> None:
    run_kill_rounds(broker, collector, tmp_path, seed, rounds=4, per=30)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sigkill_stress(broker: LocalBroker, collector: Collector, tmp_path: Path) -> None:
    seed = int(os.environ.get("FACEGATE_SEED", "2024"))
    run_kill_rounds(broker, collector, tmp_path, seed, rounds=30, per=200)


def test_events_in_flight_when_the_broker_stops_are_resent(
    broker: LocalBroker, collector: Collector, tmp_path: Path
) -> None:
    config = _config(broker, tmp_path)
    events = [make_event(i) for i in range(60)]
    with Publisher(config) as publisher:
        assert publisher.wait_for_state(ConnectionState.CONNECTED, timeout=10)
        for event in events[:10]:
            publisher.publish_match(event)
        assert publisher.flush(10)

        # Freeze the broker so PUBACKs stop: the in-flight window fills and the rest
        # waits in the outbox. Then shut it down (SIGTERM is handled on SIGCONT).
        assert broker._proc is not None
        pid = broker._proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            for event in events[10:]:
                publisher.publish_match(event)
            assert publisher.wait_for(lambda s: s.inflight == config.max_inflight, timeout=10)
            # The window is a bound: no more go out while none are acknowledged.
            assert not publisher.wait_for(lambda s: s.inflight > config.max_inflight, 0.5)
            assert publisher.status().outbox.depth == 50
            os.kill(pid, signal.SIGTERM)
        finally:
            os.kill(pid, signal.SIGCONT)
        broker.stop()
        assert publisher.wait_for_state(
            ConnectionState.DISCONNECTED, ConnectionState.UNREACHABLE, timeout=10
        )
        assert publisher.status().outbox.depth > 0

        broker.start()
        assert publisher.flush(30)
    want = [e.event_id for e in events]
    assert collector.wait_for(lambda _: set(want) <= set(collector.event_ids()), 30)
    assert list(dict.fromkeys(collector.event_ids())) == want
