"""The review loop on the unit: signed verdicts over a real mosquitto into a real audit
log, refusals audited and acknowledged, and verdicts for an offline unit delivered when
it returns (persistent MQTT 5 session)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.audit import AuditLog, read_records
from device.events.config import MqttConfig
from device.events.mqtt import Publisher
from device.events.review import ReviewVerdict, sign_verdict
from device.events.topics import Topics
from device.ops.localbroker import LocalBroker
from device.service.review import ReviewConfig, ReviewInbox, load_inbox
from device.sync.keys import generate_key, load_private_key
from tests.support.events import Collector, Received

REPO = Path(__file__).resolve().parents[2]
UNIT = "unit-1"
TOPICS = Topics(UNIT)
KNOWN = [str(uuid.UUID(int=i + 1, version=4)) for i in range(3)]


@dataclass
class Keys:
    reviewer: Ed25519PrivateKey
    stranger: Ed25519PrivateKey
    trusted_dir: Path


@pytest.fixture()
def keys(tmp_path: Path) -> Keys:
    made = generate_key(tmp_path / "console", "alice")
    other = generate_key(tmp_path / "elsewhere", "mallory")
    trusted = tmp_path / "review-keys"
    trusted.mkdir()
    (trusted / "alice.pub").write_bytes(made.public.read_bytes())
    return Keys(load_private_key(made.private), load_private_key(other.private), trusted)


class Unit:
    """The unit's side as the service wires it: audit log, publisher, review inbox."""

    def __init__(self, broker: LocalBroker, state: Path, keys: Keys, **review: Any) -> None:
        self.audit_path = state / "audit.db"
        self.audit = AuditLog(self.audit_path)
        self.config = ReviewConfig(trusted_keys=str(keys.trusted_dir), **review)
        mqtt = MqttConfig.model_validate({
            "unit_id": UNIT, "url": broker.url, "outbox_path": state / "outbox.sqlite3",
            "reconnect_min_s": 1, "reconnect_max_s": 2,
        })
        self.publisher = Publisher(mqtt, session_expiry_s=self.config.session_expiry_s)
        self.inbox: ReviewInbox = load_inbox(UNIT, self.audit, self.publisher, self.config)
        self.publisher.subscribe(TOPICS.review, self.inbox.on_message)
        self.inbox.start()
        # Ready once a watcher sees it online: it subscribes before it says so.
        with Collector(broker.host, broker.port, [TOPICS.status],
                       client_id=f"watch-{uuid.uuid4().hex[:8]}") as watch:
            assert watch.wait_subscribed()
            self.publisher.start()
            assert watch.wait_for(lambda ms: any(m.payload == b"online" for m in ms), 15), \
                "the unit never said it was online"

    def close(self) -> None:
        self.inbox.close()
        self.publisher.close()
        self.audit.close()


@pytest.fixture()
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    with AuditLog(path / "audit.db") as log:
        log.record_service_start("test")
        for i, event_id in enumerate(KNOWN):
            log.record_match(event_id, f"id-{i}", 0.7, 0.6, 1, "front")
    return path


@pytest.fixture()
def console(broker: LocalBroker) -> Iterator[Collector]:
    with Collector(broker.host, broker.port, [TOPICS.review_ack], client_id="console") as c:
        assert c.wait_subscribed()
        yield c
    assert not c.invalid, c.invalid


@pytest.fixture()
def unit(broker: LocalBroker, state: Path, keys: Keys) -> Iterator[Unit]:
    u = Unit(broker, state, keys)
    yield u
    u.close()


def send(console: Collector, data: bytes) -> None:
    info = console.client.publish(TOPICS.review, data, qos=1, retain=False)
    info.wait_for_publish(10)


def ack_for(console: Collector, nonce: str | None, timeout: float = 20.0,
            count: int = 1) -> dict[str, Any]:
    def acks(ms: list[Received]) -> list[dict[str, Any]]:
        return [m.json() for m in ms if m.topic == TOPICS.review_ack
                and m.json()["nonce"] == nonce]

    assert console.wait_for(lambda ms: len(acks(ms)) >= count, timeout), console.messages
    with console._cond:
        return acks(console.messages)[count - 1]


def verdict(key: Ed25519PrivateKey, event_id: str = KNOWN[0], **kw: Any) -> ReviewVerdict:
    kw.setdefault("unit", UNIT)
    kw.setdefault("verdict", "not_this_person")
    kw.setdefault("issued_at", datetime.now(UTC))
    return sign_verdict(key, event_id=event_id, **kw)


def records(path: Path, kind: str) -> list[dict[str, object]]:
    return [r.payload_obj() for r in read_records(path)[1] if r.kind == kind]


def facegate(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``facegate`` console script, running this checkout's code."""
    exe = Path(sys.executable).with_name("facegate")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False, stdin=subprocess.DEVNULL, cwd=REPO)


def test_a_valid_verdict_is_recorded_in_the_chain_and_acknowledged(
    unit: Unit, console: Collector, keys: Keys
) -> None:
    v = verdict(keys.reviewer)
    send(console, v.encode())
    ack = ack_for(console, v.nonce)
    assert (ack["outcome"], ack["reason"], ack["event_id"]) == ("recorded", None, KNOWN[0])
    (review,) = records(unit.audit_path, "review")
    assert review == {"event_id": KNOWN[0], "verdict": "not_this_person",
                      "reviewer": v.reviewer, "nonce": v.nonce, "issued_at": v.issued_at}
    head = unit.audit.head()
    assert (ack["audit_seq"], ack["audit_head"]) == (head.seq, head.hash)
    assert console.on(TOPICS.review_ack)[-1].retain is False  # live delivery, not retained
    unit.close()
    verified = facegate("audit", "verify", "--audit-log", str(unit.audit_path))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    shown = facegate("audit", "show", "--audit-log", str(unit.audit_path))
    assert shown.returncode == 0, shown.stderr
    assert " review " in shown.stdout and KNOWN[0] in shown.stdout


def test_the_ack_is_retained_for_a_console_that_connects_later(
    unit: Unit, console: Collector, keys: Keys, broker: LocalBroker
) -> None:
    v = verdict(keys.reviewer, verdict="confirmed")
    send(console, v.encode())
    ack_for(console, v.nonce)
    with Collector(broker.host, broker.port, [TOPICS.review_ack]) as late:
        assert late.wait_for(bool, 10)
        (msg,) = late.messages
        assert msg.retain and msg.json()["nonce"] == v.nonce


def _forged(key: Ed25519PrivateKey) -> bytes:
    body = json.loads(verdict(key, verdict="confirmed").encode())
    body["verdict"] = "not_this_person"  # altered after signing
    return json.dumps(body).encode()


def _untrusted(keys: Keys) -> bytes:
    return verdict(keys.stranger).encode()


def _expired(keys: Keys) -> bytes:
    return verdict(keys.reviewer, issued_at=datetime.now(UTC) - timedelta(days=31)).encode()


def _future(keys: Keys) -> bytes:
    return verdict(keys.reviewer, issued_at=datetime.now(UTC) + timedelta(hours=1)).encode()


def _unknown(keys: Keys) -> bytes:
    return verdict(keys.reviewer, event_id=str(uuid.uuid4())).encode()


def _wrong_unit(keys: Keys) -> bytes:
    return verdict(keys.reviewer, unit="unit-2").encode()


def _missing_field(keys: Keys) -> bytes:
    body = json.loads(verdict(keys.reviewer).encode())
    del body["issued_at"]
    return json.dumps(body).encode()


def _extra_label(keys: Keys) -> bytes:
    body = json.loads(verdict(keys.reviewer).encode())
    body["label"] = "Alice"
    return json.dumps(body).encode()


def _garbage(keys: Keys) -> bytes:
    return b"\xff\x00 not json"


REFUSALS = {
    "forged signature": (lambda k: _forged(k.reviewer), "bad_signature"),
    "untrusted key": (_untrusted, "untrusted_key"),
    "expired": (_expired, "expired"),
    "issued in the future": (_future, "expired"),
    "unknown event": (_unknown, "unknown_event"),
    "wrong unit": (_wrong_unit, "wrong_unit"),
    "missing field": (_missing_field, "malformed"),
    "a label smuggled in": (_extra_label, "malformed"),
    "not json": (_garbage, "malformed"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_bad_verdict_is_refused_audited_and_acknowledged(
    case: str, unit: Unit, console: Collector, keys: Keys
) -> None:
    make, reason = REFUSALS[case]
    data = make(keys)
    send(console, data)
    try:
        sent = json.loads(data)
    except ValueError:
        sent = {}
    nonce = sent.get("nonce")
    ack = ack_for(console, nonce)
    assert (ack["outcome"], ack["reason"]) == ("refused", reason), ack
    assert ack["event_id"] == sent.get("event_id")
    (refusal,) = records(unit.audit_path, "review_refused")
    assert refusal["reason"] == reason
    assert refusal["event_id"] == sent.get("event_id")
    assert refusal["reviewer"] == sent.get("reviewer")
    assert (ack["audit_seq"], ack["audit_head"]) == (unit.audit.head().seq,
                                                     unit.audit.head().hash)
    assert not records(unit.audit_path, "review")
    assert "Alice" not in json.dumps(records(unit.audit_path, "review_refused"))
    assert unit.audit.verify().ok


def test_a_replayed_verdict_is_refused_and_audited(
    unit: Unit, console: Collector, keys: Keys
) -> None:
    first = verdict(keys.reviewer)
    send(console, first.encode())
    assert ack_for(console, first.nonce)["outcome"] == "recorded"
    send(console, first.encode())  # the same signed message again
    again = ack_for(console, first.nonce, count=2)
    assert (again["outcome"], again["reason"]) == ("refused", "replayed")
    # A fresh nonce does not make a second verdict by the same reviewer on the event new.
    second = verdict(keys.reviewer, verdict="confirmed")
    send(console, second.encode())
    assert ack_for(console, second.nonce)["reason"] == "replayed"
    assert len(records(unit.audit_path, "review")) == 1
    refusals = records(unit.audit_path, "review_refused")
    assert [r["reason"] for r in refusals] == ["replayed", "replayed"]
    assert [r["nonce"] for r in refusals] == [first.nonce, second.nonce]
    # Another event by the same reviewer is a new verdict.
    third = verdict(keys.reviewer, event_id=KNOWN[1])
    send(console, third.encode())
    assert ack_for(console, third.nonce)["outcome"] == "recorded"


def test_a_verdict_published_while_the_unit_is_offline_arrives_when_it_returns(
    broker: LocalBroker, state: Path, console: Collector, keys: Keys
) -> None:
    first = Unit(broker, state, keys)
    assert first.publisher.wait_for(lambda s: s.state == "connected", 20)
    first.close()  # the broker keeps the session (and its subscription)
    v = verdict(keys.reviewer, event_id=KNOWN[2], verdict="cannot_tell")
    send(console, v.encode())
    assert not console.on(TOPICS.review_ack)
    back = Unit(broker, state, keys)
    try:
        ack = ack_for(console, v.nonce)
        assert ack["outcome"] == "recorded"
        assert records(back.audit_path, "review")[0]["event_id"] == KNOWN[2]
    finally:
        back.close()


def test_without_a_session_expiry_an_offline_unit_misses_the_verdict(
    broker: LocalBroker, state: Path, console: Collector, keys: Keys
) -> None:
    """The persistent session is what carries verdicts across an absence."""
    first = Unit(broker, state, keys, session_expiry_s=0)
    assert first.publisher.wait_for(lambda s: s.state == "connected", 20)
    first.close()
    v = verdict(keys.reviewer, event_id=KNOWN[2])
    send(console, v.encode())
    back = Unit(broker, state, keys, session_expiry_s=0)
    try:
        assert back.publisher.wait_for(lambda s: s.state == "connected", 20)
        probe = verdict(keys.reviewer, event_id=KNOWN[1])  # a live one still arrives
        send(console, probe.encode())
        ack_for(console, probe.nonce)
        assert [r["event_id"] for r in records(back.audit_path, "review")] == [KNOWN[1]]
    finally:
        back.close()


def test_the_signature_covers_every_field_but_the_signature(keys: Keys) -> None:
    v = verdict(keys.reviewer)
    body = json.loads(v.encode())
    signature = base64.b64decode(body.pop("signature"))
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    keys.reviewer.public_key().verify(signature, canonical)
    assert replace(v, signature=b"").signed_bytes() == canonical
