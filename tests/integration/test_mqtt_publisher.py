"""The publisher against a real mosquitto: delivery, validation, outages, credentials, LWT."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device.errors import ConfigError, PublishError
from device.events.config import MqttConfig
from device.events.mqtt import ConnectionState, Publisher, PublisherStatus, health_payload
from device.events.outbox import Outbox
from device.events.schema import GALLERY_STATE_SCHEMA, format_timestamp
from device.ops.localbroker import BrokerUser, LocalBroker
from tests.support.events import Child, Collector, make_event

UNIT = "unit-1"
STATUS = f"facegate/{UNIT}/status"


def config(broker: LocalBroker, tmp_path: Path, **fields: Any) -> MqttConfig:
    values: dict[str, Any] = {
        "unit_id": UNIT,
        "url": broker.url,
        "outbox_path": tmp_path / "outbox.sqlite3",
        "reconnect_min_s": 1,
        "reconnect_max_s": 2,
    }
    values.update(fields)
    return MqttConfig.model_validate(values)


@pytest.fixture()
def collector(broker: LocalBroker) -> Iterator[Collector]:
    with Collector(
        broker.host, broker.port, ["facegate/#"], client_id="collector", persistent=True
    ) as c:
        assert c.wait_subscribed()
        yield c
    assert not c.invalid, c.invalid


def unique_in_order(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def test_events_are_delivered_in_order_and_valid(
    broker: LocalBroker, collector: Collector, tmp_path: Path
) -> None:
    events = [make_event(i) for i in range(25)]
    with Publisher(config(broker, tmp_path), cameras=("front",)) as publisher:
        assert publisher.wait_for_state(ConnectionState.CONNECTED, timeout=10)
        for event in events:
            publisher.publish_match(event)
        assert publisher.flush(10)
        status = publisher.status()
        assert (status.acked, status.inflight, status.outbox.depth) == (25, 0, 0)
        want = [e.event_id for e in events]
        assert collector.wait_for(lambda _: set(want) <= set(collector.event_ids()), 10)
    assert unique_in_order(collector.event_ids()) == want
    matches = collector.on(f"facegate/{UNIT}/front/match")
    assert all(not m.retain for m in matches)
    assert matches[0].json()["review_required"] is True
    assert collector.wait_payload(STATUS, b"online", 5)
    assert collector.wait_payload(STATUS, b"offline", 5), "a clean close says offline"
    assert collector.on(f"facegate/{UNIT}/health"), "health is published on connect"


def test_state_topics_are_retained_and_validated(
    broker: LocalBroker, collector: Collector, tmp_path: Path
) -> None:
    gallery = {
        "schema": GALLERY_STATE_SCHEMA,
        "unit": UNIT,
        "state": "active",
        "version": 4,
        "identities": 10,
        "model_id": "dlib-resnet-v1",
        "updated_at": format_timestamp(time.time()),
    }
    head = {"seq": 12, "hash": "e3" * 32}
    with Publisher(config(broker, tmp_path)) as publisher:
        publisher.publish_state("gallery/state", gallery)  # before connecting: kept, sent later
        assert publisher.wait_for_state(ConnectionState.CONNECTED, timeout=10)
        publisher.publish_state("audit/head", head)
        with pytest.raises(PublishError, match="identities"):
            publisher.publish_state("gallery/state", {**gallery, "identities": -1})
        with pytest.raises(PublishError, match="privacy guard"):
            publisher.publish_state("audit/head", {"embedding": [0.1] * 128})
        with pytest.raises(PublishError, match="unknown state topic"):
            publisher.publish_state("cmd/open-door", {})
        assert collector.wait_for(lambda _: bool(collector.on(f"facegate/{UNIT}/audit/head")), 10)
    with Collector(broker.host, broker.port, ["facegate/#"]) as late:
        assert late.wait_for(lambda ms: len({m.topic for m in ms}) >= 4, 10)
        assert all(m.retain for m in late.messages)
        assert late.on(f"facegate/{UNIT}/gallery/state")[0].json() == gallery
        assert late.on(f"facegate/{UNIT}/audit/head")[0].json() == head
        assert late.on(STATUS)[0].payload == b"offline"
        assert not late.invalid


def test_health_is_periodic_and_reports_the_outbox(
    broker: LocalBroker, collector: Collector, tmp_path: Path
) -> None:
    calls: list[int] = []

    def provider(status: PublisherStatus) -> dict[str, Any]:
        calls.append(1)
        return health_payload(UNIT, {"status": "ok", "cameras": {
            "front": {"state": "running", "fps": 9.5}}}, status)

    cfg = config(broker, tmp_path, health_interval_s=0.2, outbox_max_rows=3)
    outbox = Outbox(cfg.outbox_path, max_rows=3)
    for i in range(5):  # two dropped before the publisher even starts
        outbox.put(f"facegate/{UNIT}/front/match", make_event(i).encode())
    try:
        with Publisher(cfg, health_provider=provider, outbox=outbox) as publisher:
            topic = f"facegate/{UNIT}/health"
            assert collector.wait_for(lambda _: len(collector.on(topic)) >= 3, 10)
            assert publisher.flush(10)
        health = collector.on(topic)[-1].json()
        assert health["cameras"]["front"]["fps"] == 9.5
        assert health["outbox"]["dropped"] == 2
        assert health["mqtt"]["state"] == "connected"
        assert len(calls) >= 3
    finally:
        outbox.close()


def test_an_ack_callback_runs_once_on_the_pubacks_time_after_the_row_left_the_outbox(
    broker: LocalBroker, collector: Collector, tmp_path: Path
) -> None:
    acked: list[tuple[int, float, int]] = []
    with Publisher(config(broker, tmp_path)) as publisher:
        assert publisher.wait_for_state(ConnectionState.CONNECTED, timeout=10)
        before = time.monotonic()
        rows = []
        for i in range(3):
            rows.append(publisher.publish_match(
                make_event(i),
                on_ack=lambda at, i=i: acked.append((i, at, publisher.outbox.depth()))))
        assert publisher.flush(10)  # returns once the callbacks ran
        assert len(acked) == 3
        after = time.monotonic()
    assert sorted(i for i, _, _ in acked) == [0, 1, 2]
    assert all(before <= at <= after for _, at, _ in acked)
    # Called once the row is gone: the outbox never still holds the acked event.
    assert all(depth <= 2 - n for n, (_, _, depth) in enumerate(acked))
    # The broker acks the publisher and delivers to the collector independently: wait.
    assert collector.wait_for(lambda _: len(collector.on(f"facegate/{UNIT}/front/match")) == 3,
                              10)


def test_broker_outage_events_accumulate_then_arrive_in_order(
    broker: LocalBroker, collector: Collector, tmp_path: Path
) -> None:
    first = [make_event(i) for i in range(5)]
    during = [make_event(i) for i in range(5, 45)]
    with Publisher(config(broker, tmp_path)) as publisher:
        assert publisher.wait_for_state(ConnectionState.CONNECTED, timeout=10)
        for event in first:
            publisher.publish_match(event)
        assert publisher.flush(10)

        broker.stop()
        assert publisher.wait_for_state(
            ConnectionState.DISCONNECTED, ConnectionState.UNREACHABLE, timeout=10
        )
        for event in during:
            publisher.publish_match(event)  # never blocks on the network
        status = publisher.status()
        assert status.outbox.depth == len(during)
        assert status.state is not ConnectionState.CONNECTED
        assert status.last_error

        broker.start()
        assert publisher.wait_for_state(ConnectionState.CONNECTED, timeout=15)
        assert publisher.flush(15)
        assert publisher.status().outbox.depth == 0
        want = [e.event_id for e in first + during]
        assert collector.wait_for(lambda _: set(want) <= set(collector.event_ids()), 15)
    assert unique_in_order(collector.event_ids()) == want


def test_expired_events_are_dropped_and_live_ones_carry_expiry(
    broker: LocalBroker, collector: Collector, tmp_path: Path
) -> None:
    cfg = config(broker, tmp_path, match_expiry_s=60)
    stale = Outbox(cfg.outbox_path, clock=lambda: time.time() - 3600)
    stale.put(f"facegate/{UNIT}/front/match", make_event(0).encode(), expiry_s=60)
    stale.close()
    with Publisher(cfg) as publisher:
        assert publisher.wait_for_state(ConnectionState.CONNECTED, timeout=10)
        publisher.publish_match(make_event(1))
        assert publisher.flush(10)
        assert publisher.status().outbox.expired == 1
        assert collector.wait_for(lambda _: make_event(1).event_id in collector.event_ids(), 10)
    assert make_event(0).event_id not in collector.event_ids()
    (live,) = collector.on(f"facegate/{UNIT}/front/match")
    assert live.expiry is not None
    assert 0 < live.expiry <= 60


def test_wrong_credentials_are_reported_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "creds" / "mqtt-password"
    secret.parent.mkdir()
    secret.write_text("wrong\n")
    secret.chmod(0o600)
    env = {"CREDENTIALS_DIRECTORY": str(secret.parent)}
    user = BrokerUser("unit-1", "right")
    with LocalBroker(workdir=tmp_path / "b", users=(user,)) as broker:
        cfg = config(broker, tmp_path, username="unit-1", password_file="mqtt-password")
        with caplog.at_level(logging.ERROR), Publisher(cfg, env=env) as publisher:
            assert publisher.wait_for(lambda s: s.failures >= 2, timeout=15), publisher.status()
            status = publisher.status()
            assert status.state is ConnectionState.REFUSED
            assert status.last_error is not None
            assert "refused credentials" in status.last_error
            assert status.connects == 0
        assert "refused credentials" in caplog.text
        assert "retrying in" in caplog.text
        assert "wrong" not in caplog.text

        secret.write_text("right\n")
        with Publisher(cfg, env=env) as publisher:
            assert publisher.wait_for_state(ConnectionState.CONNECTED, timeout=10)


def test_missing_password_file_fails_at_start(broker: LocalBroker, tmp_path: Path) -> None:
    cfg = config(broker, tmp_path, username="u", password_file=str(tmp_path / "nope"))
    publisher = Publisher(cfg, env={})
    with pytest.raises(ConfigError, match="not found"):
        publisher.start()
    publisher.close()
    publisher.close()


def test_api_misuse(broker: LocalBroker, tmp_path: Path) -> None:
    publisher = Publisher(config(broker, tmp_path))
    with pytest.raises(PublishError, match="unit"):
        publisher.publish_match(make_event(0, unit="unit-2"))
    row = publisher.publish_match(make_event(0))  # queued before start: fine
    assert publisher.outbox.pending()[0].id == row
    publisher.close()
    with pytest.raises(PublishError, match="closed"):
        publisher.start()
    with pytest.raises(PublishError, match="closed"):
        publisher.publish_match(make_event(1))
    assert publisher.status().state is ConnectionState.CLOSED
    with pytest.raises(PublishError, match="not valid topic levels"):
        Publisher(config(broker, tmp_path), cameras=("a/b",))


def test_erasure_removes_pending_events(broker: LocalBroker, tmp_path: Path) -> None:
    publisher = Publisher(config(broker, tmp_path))
    try:
        for i in range(14):  # identity_id is id-(i % 7)
            publisher.publish_match(make_event(i))
        assert publisher.delete_for_identity("id-3") == 2
        remaining = [json.loads(r.payload)["identity_id"] for r in publisher.outbox.pending()]
        assert "id-3" not in remaining
        assert len(remaining) == 12
    finally:
        publisher.close()


def test_last_will_on_sigkill_and_online_again_after_restart(
    broker: LocalBroker, collector: Collector, tmp_path: Path
) -> None:
    cfg = config(broker, tmp_path).model_dump_json()
    child = Child("publisher", cfg, "0", "0")
    try:
        assert child.wait_line("connected", 20), child.proc.stderr
        assert collector.wait_payload(STATUS, b"online", 10)
        collector.clear()
        child.kill()
        assert collector.wait_payload(STATUS, b"offline", 10), "last will not delivered"
    finally:
        child.close()
    with Collector(broker.host, broker.port, [STATUS]) as late:
        assert late.wait_for(bool, 10)
        assert (late.messages[0].payload, late.messages[0].retain) == (b"offline", True)

    child = Child("publisher", cfg, "0", "0")
    try:
        assert child.wait_line("connected", 20)
        assert collector.wait_payload(STATUS, b"online", 10)
        with Collector(broker.host, broker.port, [STATUS]) as late:
            assert late.wait_for(bool, 10)
            assert (late.messages[0].payload, late.messages[0].retain) == (b"online", True)
    finally:
        child.stop()
        child.close()


def test_a_rejected_puback_keeps_the_event(
    broker: LocalBroker, collector: Collector, tmp_path: Path
) -> None:
    # Anonymous clients may read everything but write only status and health.
    acl = broker.workdir / "acl"
    acl.write_text(f"topic read #\ntopic write {STATUS}\ntopic write facegate/{UNIT}/health\n")
    conf = broker.workdir / "mosquitto.conf"
    original = conf.read_text()
    broker.stop()
    conf.write_text(original + f"acl_file {acl}\n")
    broker.start()
    assert collector.wait_subscribed()

    events = [make_event(i) for i in range(3)]
    with Publisher(config(broker, tmp_path)) as publisher:
        assert publisher.wait_for_state(ConnectionState.CONNECTED, timeout=10)
        for event in events:
            publisher.publish_match(event)
        assert publisher.wait_for(
            lambda s: "rejected an event" in (s.last_error or ""), timeout=10
        ), publisher.status()
        status = publisher.status()
        assert "Not authorized" in (status.last_error or "")
        assert status.outbox.depth == 3
        assert status.acked == 0

        acl.write_text("topic readwrite #\n")  # permission granted: resent after reconnect
        broker.stop()
        broker.start()
        assert publisher.flush(15)
    want = {e.event_id for e in events}
    assert collector.wait_for(lambda _: want <= set(collector.event_ids()), 10)


def test_with_require_subscriber_an_event_nobody_took_is_kept_and_resent(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """A PUBACK with reason 0x10 (no subscriber matched) does not lose the event.

    This is what a broker restart does to a consumer on a shared subscription: until
    the group's members are back, the broker accepts events and hands them to nobody.
    """
    events = [make_event(i) for i in range(2)]
    with Publisher(config(broker, tmp_path, require_subscriber=True)) as publisher:
        assert publisher.wait_for_state(ConnectionState.CONNECTED, timeout=10)
        for event in events:
            publisher.publish_match(event)
        assert publisher.wait_for(
            lambda s: "no subscriber took an event" in (s.last_error or ""), timeout=10
        ), publisher.status()
        assert publisher.status().outbox.depth == 2 and publisher.status().acked == 0
        with Collector(broker.host, broker.port, [f"facegate/{UNIT}/+/match"],
                       client_id="late-consumer") as late:
            assert late.wait_subscribed()
            assert publisher.flush(30)  # resent after the hold-off, now taken
            want = {e.event_id for e in events}
            assert late.wait_for(lambda _: want <= set(late.event_ids()), 10)
        assert publisher.status().outbox.depth == 0


def test_by_default_an_event_nobody_took_counts_as_delivered(
    broker: LocalBroker, tmp_path: Path
) -> None:
    with Publisher(config(broker, tmp_path)) as publisher:
        assert publisher.wait_for_state(ConnectionState.CONNECTED, timeout=10)
        publisher.publish_match(make_event(0))
        assert publisher.flush(10)
        assert publisher.status().outbox.depth == 0 and publisher.status().acked == 1
