"""A broker outage as the log and health see it, with a real mosquitto stopped and restarted.

Per outage each client logs one WARNING when it starts and one INFO when the connection
is back; paho's "Client is not connected" of every failed attempt stays at DEBUG and
nothing is logged at ERROR. Health describes the connection as it is now: the error of
an outage is gone once reconnected, and a broker that cannot be reached makes the
service's status ``degraded``, not ``ok``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from device.events.config import MqttConfig
from device.events.mqtt import ConnectionState, Publisher
from device.ops.localbroker import LocalBroker
from device.service.health import format_status
from device.service.pipeline import RecognitionService
from device.sync.agent import SyncAgent
from device.sync.config import SyncConfig
from tests.integration.test_service_lifecycle import GatedDetector, TinyEmbedder, _config, _frames
from tests.support.sync import NOW, UNIT, World

CLIENT_LOG = "device.events.client"
WAIT = 30.0


class LogWatch(logging.Handler):
    """Lets a test wait for a log record (caplog holds the same records)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.cond = threading.Condition()
        self.seen: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        with self.cond:
            self.seen.append(record)
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[list[logging.LogRecord]], bool]) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.seen), WAIT)


@pytest.fixture()
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[LogWatch]:
    watch = LogWatch()
    root = logging.getLogger()
    root.addHandler(watch)
    with caplog.at_level(logging.DEBUG):
        yield watch
    root.removeHandler(watch)


def _count(records: list[logging.LogRecord], level: int, text: str, name: str = CLIENT_LOG
           ) -> int:
    return sum(r.levelno == level and r.name == name and text in r.getMessage()
               for r in records)


def assert_one_outage(records: list[logging.LogRecord], client: str) -> None:
    """One WARNING when the outage began, one INFO when it ended, no ERROR at all."""
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{client}: lost connection to broker")
    infos = [r.getMessage() for r in records if r.levelno == logging.INFO and r.name == CLIENT_LOG]
    assert len(infos) == 1, infos
    assert infos[0].startswith(f"{client}: connected to broker") and "again after" in infos[0]
    assert not [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    # paho did complain about every failed attempt; the client keeps that at DEBUG.
    assert any(r.levelno == logging.DEBUG and "Client is not connected" in r.getMessage()
               for r in records if r.name == f"{CLIENT_LOG}.paho")
    assert _count(records, logging.DEBUG, "cannot reach broker: connection refused") >= 2


def test_publisher_logs_each_outage_once_and_health_shows_the_current_state(
    broker: LocalBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture, logs: LogWatch
) -> None:
    config = MqttConfig.model_validate({
        "unit_id": "unit-1", "url": broker.url, "outbox_path": tmp_path / "outbox.sqlite3",
        "reconnect_min_s": 1, "reconnect_max_s": 1, "health_interval_s": 3600})
    with Publisher(config) as publisher:
        assert publisher.wait_for_state(ConnectionState.CONNECTED, timeout=WAIT)
        for _outage in range(2):
            caplog.clear()
            broker.stop()
            assert publisher.wait_for(lambda s: s.failures >= 3, WAIT)  # several attempts
            down = publisher.status()
            assert down.state is ConnectionState.UNREACHABLE and down.broker_down
            assert down.last_error is not None
            assert down.last_error.startswith("cannot reach broker: connection refused")
            broker.start()
            assert publisher.wait_for_state(ConnectionState.CONNECTED, timeout=WAIT)
            up = publisher.status()
            assert not up.broker_down and up.mqtt_health()["last_error"] is None
            assert_one_outage(list(caplog.records), "event publisher")


def test_sync_agent_logs_each_outage_once(
    broker: LocalBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture, logs: LogWatch
) -> None:
    world = World(tmp_path)
    mqtt = MqttConfig.model_validate({
        "unit_id": UNIT, "url": broker.url, "outbox_path": tmp_path / "outbox.sqlite3",
        "reconnect_min_s": 1, "reconnect_max_s": 1})
    with SyncAgent(world.sync(now=NOW), mqtt, SyncConfig()):
        assert logs.wait_for(lambda r: _count(r, logging.INFO, "sync agent: connected") == 1)
        caplog.clear()
        start = len(logs.seen)
        broker.stop()
        assert logs.wait_for(lambda r: _count(r[start:], logging.DEBUG,
                                              "sync agent: cannot reach broker") >= 3)
        broker.start()
        assert logs.wait_for(lambda r: _count(r[start:], logging.INFO, "again after") == 1)
        assert_one_outage(list(caplog.records), "sync agent")


def test_an_unreachable_broker_degrades_health_until_it_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, logs: LogWatch
) -> None:
    later = LocalBroker(workdir=tmp_path / "broker")  # its port: nothing listens yet
    config = _config(tmp_path, later.url, _frames(tmp_path / "frames", 400),
                     reconnect_max_s=1)
    try:
        with RecognitionService(config, detector=GatedDetector(),
                                embedder=TinyEmbedder()) as service:
            publisher = service.publisher
            assert publisher is not None
            assert publisher.wait_for(lambda s: s.failures >= 3, WAIT)
            health = service.health_payload()
            assert health["status"] == "degraded"
            assert health["mqtt"]["state"] == "unreachable"
            text = format_status(health)
            assert "unit unit-1: degraded" in text
            assert "mqtt unreachable (cannot reach broker: connection refused" in text
            warned = [r.getMessage() for r in caplog.records
                      if r.levelno >= logging.WARNING and r.name == CLIENT_LOG]
            assert warned == [f"event publisher: cannot reach broker: connection refused (is "
                              f"the broker running?) (broker 127.0.0.1:{later.port}); retrying "
                              "in 1 s, then with growing delays"]

            later.start()
            assert publisher.wait_for_state(ConnectionState.CONNECTED, timeout=WAIT)
            health = service.health_payload()
            assert (health["status"], health["mqtt"]["last_error"]) == ("ok", None)
            assert "mqtt connected;" in format_status(health)
            service.request_stop("test over")
    finally:
        later.close()
    assert not [r.getMessage() for r in caplog.records
                if r.levelno >= logging.ERROR and r.name.startswith(CLIENT_LOG)]
