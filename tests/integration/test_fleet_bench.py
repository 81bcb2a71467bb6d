"""The fleet bench, short and full: simulated units, a real mosquitto, the console's ingester.

The short form runs in CI: 50 units, enough traffic to matter, a broker restart and a
bundle for everyone; every event must be stored exactly once, by id.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from device.cli import main
from device.events.client import Backoff, BrokerLogin, make_client
from device.ops.localbroker import LocalBroker

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
    reason="mosquitto not installed")


def _run(*args: str) -> dict[str, object]:
    result = CliRunner().invoke(main, ["bench", "fleet", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report: dict[str, object] = json.loads(result.output.strip().splitlines()[-1])
    return report


def _check(report: dict[str, object], units: int) -> None:
    assert report["events_published"] > 0  # type: ignore[operator]
    assert report["events_lost"] == 0, report["lost_decided_after_restart_s"]
    assert report["events_unexpected"] == 0
    assert report["events_stored"] == report["events_published"]
    assert report["units_online_at_end"] == units
    assert report["units_on_new_version"] == units
    assert report["restart_backlog_events"] > 0  # type: ignore[operator]
    spread = report["reconnect_spread_s"]
    assert isinstance(spread, dict) and spread["last"] > spread["first"]


def test_fifty_units_lose_nothing_through_a_broker_restart_and_all_take_the_bundle() -> None:
    report = _run("--units", "50", "--rate", "1200", "--steady", "5", "--outage", "2",
                  "--gallery-identities", "100", "--timeout", "60")
    _check(report, 50)
    assert report["steady_ingested_per_s"] > 50  # type: ignore[operator]


@pytest.mark.slow
def test_a_thousand_units() -> None:
    _check(_run("--units", "1000"), 1000)


def test_the_first_attempt_after_a_lost_connection_is_jittered_too() -> None:
    """A fleet that lost its broker together must not all retry exactly min_s later."""
    with LocalBroker() as broker:
        client = make_client(BrokerLogin(broker.url), "jitter-lost", name="test",
                             backoff=Backoff(4, 60, 0.25), rng=random.Random(5))
        up, down = threading.Event(), threading.Event()
        client.after_connect = lambda *_: up.set()
        client.after_disconnect = lambda *_: down.set()
        client.start(keepalive=30)
        try:
            assert up.wait(10)
            assert client.jitter_s() == 0.0  # connected: nothing to wait for
            broker.stop()
            assert down.wait(10)
            assert client.failures == 0  # lost, not yet failed
            waits = [client.jitter_s() for _ in range(100)]
        finally:
            client.stop()
    assert all(0 <= w <= 0.25 * 4 for w in waits)
    assert len(set(waits)) > 50
