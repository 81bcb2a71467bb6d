"""Two console replicas, one shared subscription, one PostgreSQL: every event stored once."""

from __future__ import annotations

import json
import threading
import time

from device.console.ingest import Subscriber, Subscriptions
from device.console.store import EventFilter, open_store
from device.events.client import BrokerLogin, make_client
from tests.support.console import create_database, health_payload, match_payload

EVENTS = 300


def _wait(predicate, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_two_replicas_store_every_event_once(broker, pg_cluster: str) -> None:  # type: ignore[no-untyped-def]
    url = create_database(pg_cluster)
    stores = [open_store(url), open_store(url)]
    login = BrokerLogin(broker.url)
    replicas = [Subscriber(store, login, f"console-{i}", subscriptions=Subscriptions("console"))
                for i, store in enumerate(stores)]
    for replica in replicas:
        replica.start()
    unit = make_client(login, "unit-1", name="test unit")
    connected = threading.Event()
    unit.after_connect = lambda *a: connected.set()
    unit.start(30)
    try:
        assert connected.wait(20)
        assert all(r.subscribed.wait(20) for r in replicas)
        unit.publish("facegate/unit-1/status", b"online", qos=1, retain=True)
        unit.publish("facegate/unit-1/health", json.dumps(health_payload()).encode(), qos=1,
                     retain=True)
        payloads = [match_payload(identity=f"p-{i % 7}") for i in range(EVENTS)]
        ids = [p["event_id"] for p in payloads]
        # Every event twice: what a unit's QoS 1 redelivery after a lost PUBACK does. The
        # copies go in a second pass: back to back, round-robin would hand each replica
        # always the same copy of every event, and which replica stores one is a race.
        for _ in range(2):
            infos = [unit.publish("facegate/unit-1/front/match", json.dumps(p).encode(), qos=1)
                     for p in payloads]
            for info in infos:
                info.wait_for_publish(10)
        assert _wait(lambda: stores[0].count_events() == EVENTS
                     and sum(r.stats.stored + r.stats.duplicates for r in replicas) == 2 * EVENTS)
        stored = [r.stats.stored for r in replicas]
        assert sum(stored) == EVENTS, stored
        assert all(s > 0 for s in stored), f"the shared subscription did not split: {stored}"
        rows = stores[1].events(EventFilter(kind="match", limit=EVENTS * 2))
        assert sorted(r["event_id"] for r in rows) == sorted(ids)
        # Retained state reaches every replica (normal subscription), stored once.
        assert _wait(lambda: all(r.stats.states >= 2 for r in replicas))
        assert [u["unit"] for u in stores[0].units()] == ["unit-1"]
    finally:
        unit.stop()
        for replica in replicas:
            replica.stop()
        for store in stores:
            store.close()
