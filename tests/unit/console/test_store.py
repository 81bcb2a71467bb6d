"""The console's store on SQLite and on a real PostgreSQL server: one schema, idempotent."""

from __future__ import annotations

import json
import uuid

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from device.console.ingest import handle
from device.console.store import EventFilter, open_store
from device.console.tables import metadata
from tests.support.console import (
    audit_head_payload,
    gallery_payload,
    health_payload,
    match_payload,
    track_end_payload,
)


def _bytes(payload: object) -> bytes:
    return json.dumps(payload).encode()


def test_migrations_create_exactly_the_tables(store_url: str) -> None:
    store = open_store(store_url)
    try:
        with store.engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), metadata)
        assert diff == []
        open_store(store_url).close()  # migrating again is a no-op
    finally:
        store.close()


def test_an_event_is_stored_once_whatever_the_redeliveries(store_url: str) -> None:
    store = open_store(store_url)
    try:
        match = match_payload()
        topic = "facegate/unit-1/front/match"
        assert handle(store, topic, _bytes(match)) == "stored"
        for _ in range(3):
            assert handle(store, topic, _bytes(match)) == "duplicate"
        end = track_end_payload(match)
        assert handle(store, "facegate/unit-1/front/track_end", _bytes(end)) == "stored"
        assert handle(store, "facegate/unit-1/front/track_end", _bytes(end)) == "duplicate"
        assert store.count_events() == 2
        [row] = store.events(EventFilter(kind="match"))
        assert row["event_id"] == match["event_id"]
        assert row["similarity"] == match["similarity"]
        assert row["fmr_at_similarity"] == match["fmr_at_similarity"]
        assert store.review_queue()[0]["event_id"] == match["event_id"]
    finally:
        store.close()


def test_events_filter_by_unit_camera_identity_and_time(store_url: str) -> None:
    store = open_store(store_url)
    try:
        t = 1_700_000_000.0
        for i, (unit, camera, who) in enumerate([("u1", "front", "p1"), ("u1", "back", "p2"),
                                                 ("u2", "front", "p1")]):
            handle(store, f"facegate/{unit}/{camera}/match",
                   _bytes(match_payload(unit, camera, who, decided_at=t + 60 * i)))
        assert len(store.events(EventFilter(unit="u1"))) == 2
        assert len(store.events(EventFilter(camera="front"))) == 2
        assert len(store.events(EventFilter(identity_id="p1"))) == 2
        assert len(store.events(EventFilter(since=t + 30))) == 2
        assert len(store.events(EventFilter(since=t + 30, until=t + 90))) == 1
        assert len(store.events(EventFilter(unit="u2", identity_id="p2"))) == 0
    finally:
        store.close()


def test_unit_state_and_audit_head_advance(store_url: str) -> None:
    store = open_store(store_url)
    try:
        handle(store, "facegate/unit-1/status", b"online")
        handle(store, "facegate/unit-1/health", _bytes(health_payload()))
        handle(store, "facegate/unit-1/gallery/state", _bytes(gallery_payload(identities=250)))
        handle(store, "facegate/unit-1/audit/head", _bytes(audit_head_payload(seq=5)))
        first = store.unit("unit-1")
        assert first is not None
        assert first["status"] == "online" and first["gallery_identities"] == 250
        # The same head again (a broker restart replays it): advanced_at does not move.
        with store.engine.begin() as tx:
            tx.execute(sa.text("UPDATE units SET audit_advanced_at = 1.0"))
        handle(store, "facegate/unit-1/audit/head", _bytes(audit_head_payload(seq=5)))
        assert store.unit("unit-1")["audit_advanced_at"] == 1.0  # type: ignore[index]
        handle(store, "facegate/unit-1/audit/head", _bytes(audit_head_payload(seq=6)))
        moved = store.unit("unit-1")
        assert moved is not None and moved["audit_seq"] == 6 and moved["audit_advanced_at"] > 1
        handle(store, "facegate/unit-1/status", b"offline")
        assert store.unit("unit-1")["status"] == "offline"  # type: ignore[index]
    finally:
        store.close()


def test_an_ack_is_stored_once(store_url: str) -> None:
    store = open_store(store_url)
    try:
        ack = {"schema": "facegate/review-ack/1", "unit": "unit-1",
               "event_id": str(uuid.uuid4()), "nonce": str(uuid.uuid4()),
               "outcome": "refused", "reason": "untrusted_key",
               "at": "2024-05-01T12:00:00.000Z", "audit_seq": 12, "audit_head": "ab" * 32}
        assert handle(store, "facegate/unit-1/review/ack", _bytes(ack)) == "state"
        assert handle(store, "facegate/unit-1/review/ack", _bytes(ack)) == "state"
        with store.engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM acks")).scalar_one() == 1
    finally:
        store.close()


def test_a_verdict_the_unit_refused_neither_closes_the_event_nor_counts(store_url: str) -> None:
    """Refused (an untrusted key, say): back in the queue, out of the field accuracy; a
    verdict not acknowledged yet (an offline unit) keeps the event out of the queue."""
    store = open_store(store_url)
    try:
        refused, waiting = match_payload(identity="p-1"), match_payload(identity="p-2")
        for match in (refused, waiting):
            handle(store, "facegate/unit-1/front/match", _bytes(match))
        nonces = {}
        for match, verdict in ((refused, "not_this_person"), (waiting, "confirmed")):
            nonces[match["event_id"]] = str(uuid.uuid4())
            store.add_verdict({"nonce": nonces[match["event_id"]],
                               "event_id": match["event_id"], "unit": "unit-1",
                               "verdict": verdict, "reviewer": "mallory",
                               "reviewer_key": "cd" * 32, "note": None,
                               "issued_at": 1_700_000_000.0, "published": True})
        ack = {"schema": "facegate/review-ack/1", "unit": "unit-1",
               "event_id": refused["event_id"], "nonce": nonces[refused["event_id"]],
               "outcome": "refused", "reason": "untrusted_key",
               "at": "2024-05-01T12:00:00.000Z", "audit_seq": 12, "audit_head": "ab" * 32}
        handle(store, "facegate/unit-1/review/ack", _bytes(ack))
        assert [e["event_id"] for e in store.review_queue()] == [refused["event_id"]]
        assert [(m["identity_id"], m["verdict"]) for m in store.judged_matches()] == [
            ("p-2", "confirmed")]
        assert len(store.reviewed()) == 2  # both still listed, with the refusal shown
    finally:
        store.close()
