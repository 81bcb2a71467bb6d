"""What the console refuses to store: anything that does not parse with the unit's schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device.console.ingest import Subscriptions, handle
from device.console.store import open_store
from device.errors import DeviceError
from tests.support.console import health_payload, match_payload


@pytest.fixture()
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = open_store(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    yield s
    s.close()


def test_payload_naming_another_unit_is_refused(store) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DeviceError, match="names unit"):
        handle(store, "facegate/unit-2/front/match", json.dumps(match_payload("unit-1")).encode())
    assert store.count_events() == 0


def test_match_with_an_extra_field_is_refused(store) -> None:  # type: ignore[no-untyped-def]
    payload = match_payload()
    payload["embedding"] = [0.1] * 4
    with pytest.raises(DeviceError):
        handle(store, "facegate/unit-1/front/match", json.dumps(payload).encode())
    assert store.count_events() == 0


@pytest.mark.parametrize("data", [b"\xff\xd8\xff\xe0JFIF", b"not json", b"[1,2]", b"online!"])
def test_garbage_is_refused(store, data: bytes) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DeviceError):
        handle(store, "facegate/unit-1/health", data)
    with pytest.raises(DeviceError):
        handle(store, "facegate/unit-1/status", data)


def test_what_units_receive_is_ignored(store) -> None:  # type: ignore[no-untyped-def]
    assert handle(store, "facegate/fleet/gallery/manifest", b"{}") == "ignored"
    assert handle(store, "facegate/unit-1/gallery/v3/chunk/0", b"\x00" * 10) == "ignored"
    assert handle(store, "facegate/unit-1/review", b"{}") == "ignored"
    assert handle(store, "facegate/unit-1/health", json.dumps(health_payload()).encode()) == "state"


def test_events_are_shared_and_retained_state_is_not() -> None:
    subs = dict(Subscriptions("console").all())
    assert "$share/console/facegate/+/+/match" in subs
    assert "$share/console/facegate/+/+/track_end" in subs
    for state in ("status", "health", "gallery/state", "audit/head", "review/ack"):
        assert f"facegate/+/{state}" in subs
    assert all(q == 1 for q in subs.values())
    assert "facegate/+/+/match" in dict(Subscriptions(None).all())


def test_a_track_end_is_read_with_the_track_end_schema_only(store) -> None:  # type: ignore[no-untyped-def]
    """The payload's own ``schema`` does not pick the schema it is checked against."""
    with pytest.raises(DeviceError, match="not a facegate/track_end/1 payload"):
        handle(store, "facegate/unit-1/front/track_end", json.dumps(match_payload()).encode())
    assert store.count_events() == 0
