"""Decisions → journal, audit record, outbox row; crash recovery; acknowledgements."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device.audit import AuditKind, AuditLog, read_records
from device.errors import PublishError
from device.events.outbox import Outbox
from device.events.schema import MatchEvent, NormalisedBox, TrackEndEvent
from device.service.decision import Announce, TrackEnded, UnknownTrack
from device.service.sink import DecisionSink, PendingJournal
from device.service.stages import Match
from device.service.stats import LatencyStats
from device.service.thresholds import Threshold

T0 = 1_714_564_800.0
UNIT = "unit-1"


class FakePublisher:
    """The publisher's outbox side only (no network)."""

    def __init__(self, outbox: Outbox, fail_match: bool = False) -> None:
        self.outbox = outbox
        self.fail_match = fail_match
        self.on_ack: dict[int, Callable[[float], None]] = {}

    def publish_match(self, event: MatchEvent, *,
                      on_ack: Callable[[float], None] | None = None) -> int:
        if self.fail_match:
            raise PublishError("disk full")
        row = self.outbox.put(f"facegate/{UNIT}/{event.camera}/match", event.encode(),
                              identity_id=event.identity_id, event_id=event.event_id)
        if on_ack is not None:
            self.on_ack[row] = on_ack
        return row

    def ack(self, row: int, at: float) -> None:
        """What the real publisher does on the broker's PUBACK."""
        self.outbox.ack(row)
        self.on_ack.pop(row)(at)

    def publish_track_end(self, event: TrackEndEvent) -> int:
        return self.outbox.put(f"facegate/{UNIT}/{event.camera}/track_end", event.encode(),
                               identity_id=event.identity_id, event_id=event.event_id)


def _match(track: int = 3, identity: str = "id-a", arrival: float = 0.0) -> Match:
    announce = Announce("front", track, identity, T0 + 2, 0.95, 0.94, 2, 3)
    return Match(announce, "Ada", 4, T0, NormalisedBox(0.1, 0.2, 0.3, 0.4), arrival)


@pytest.fixture()
def parts(tmp_path: Path):  # type: ignore[no-untyped-def]
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    audit = AuditLog(tmp_path / "audit.db")
    journal = PendingJournal(tmp_path / "pending")
    yield outbox, audit, journal
    outbox.close()
    audit.close()


def _sink(parts: tuple[Outbox, AuditLog, PendingJournal],
          threshold: Threshold | None = None, **kwargs: Any) -> DecisionSink:
    outbox, audit, journal = parts
    return DecisionSink(UNIT, FakePublisher(outbox, **kwargs), audit, journal,
                        threshold=threshold or Threshold(0.93, 1e-4, "config", "dlib-resnet-v1"),
                        model_id="dlib-resnet-v1",
                        latency=LatencyStats(), checkpoint=lambda name: None)


def _audited(audit: AuditLog) -> list[dict[str, object]]:
    _, records = read_records(audit.path)
    return [r.payload_obj() for r in records if r.kind == AuditKind.MATCH_DECISION.value]


def test_a_match_is_audited_and_queued_and_leaves_no_journal(parts: Any) -> None:
    outbox, audit, journal = parts
    sink = _sink(parts)
    event = sink.match(_match())
    rows = outbox.pending()
    assert [r.event_id for r in rows] == [event.event_id]
    payload = json.loads(rows[0].payload)
    assert payload["identity_id"] == "id-a" and payload["false_match_rate"] == 1e-4
    assert payload["gallery_version"] == 4 and payload["faces_considered"] == 3
    [record] = _audited(audit)
    assert record["event_id"] == event.event_id
    assert record["threshold"] == 0.93 and record["similarity"] == pytest.approx(0.95)
    assert record["gallery_version"] == 4
    assert journal.pending() == []
    assert sink.matches == 1 and sink.matches_by_camera == {"front": 1}


def test_a_match_event_carries_both_fmrs_named_apart(parts: Any) -> None:
    from device.lab.calibration import build_table
    from device.service.thresholds import ThresholdPolicy, resolve_threshold

    outbox, _, _ = parts
    rng = np.random.default_rng(0)
    table = build_table(rng.normal(0.75, 0.05, 20_000), model_id="dlib-resnet-v1")
    threshold = resolve_threshold("dlib-resnet-v1", ThresholdPolicy(1e-3), table=table)
    sink = _sink(parts, threshold)
    event = sink.match(_match())  # similarity 0.95
    payload = json.loads(outbox.pending()[0].payload)
    assert payload["false_match_rate"] == threshold.fmr  # the threshold FMR
    assert payload["fmr_at_similarity"] == pytest.approx(table.fmr_at(0.95), rel=1e-2)
    assert payload["fmr_at_similarity"] < payload["false_match_rate"]
    assert payload["fmr_at_similarity_upper_bound"] is table.fmr_is_upper_bound(0.95)
    assert MatchEvent.from_payload(payload) == event
    # Without a table (explicit threshold and its stated FMR) the field is left out.
    plain = _sink(parts).match(_match(track=4))
    assert "fmr_at_similarity" not in plain.to_payload()


def test_a_track_end_follows_its_match(parts: Any) -> None:
    outbox, _, _ = parts
    sink = _sink(parts)
    event = sink.match(_match())
    ended = sink.track_ended(TrackEnded("front", 3, "id-a", T0 + 9, T0 + 2, T0 + 8, 120, 3,
                                        0.96))
    assert ended is not None and ended.match_event_id == event.event_id
    payload = json.loads(outbox.pending()[-1].payload)
    assert payload["frames_seen"] == 120 and payload["schema"] == "facegate/track_end/1"
    # A track announced by an earlier process (or never) has nothing to follow up.
    assert sink.track_ended(TrackEnded("front", 9, "id-a", T0, T0, T0, 1, 2, 0.9)) is None
    sink.unknown(UnknownTrack("front", 5, T0, T0, 10, 3))
    assert sink.unknown_tracks == 1


def test_a_failed_outbox_keeps_the_decision_in_the_journal(parts: Any) -> None:
    outbox, audit, journal = parts
    with pytest.raises(PublishError, match="disk full"):
        _sink(parts, fail_match=True).match(_match())
    [(event_id, _)] = journal.pending()
    assert outbox.pending() == []
    assert [r["event_id"] for r in _audited(audit)] == [event_id]
    # The next start finishes it: queued once, audited once.
    assert _sink(parts).recover() == 1
    assert [r.event_id for r in outbox.pending()] == [event_id]
    assert [r["event_id"] for r in _audited(audit)] == [event_id]
    assert journal.pending() == []


def test_recovery_of_a_decision_killed_before_its_audit_record(parts: Any) -> None:
    outbox, audit, journal = parts
    event = MatchEvent(UNIT, "front", 1, "id-b", "Bob", 0.97, 1e-4, 2, "dlib-resnet-v1", T0,
                       T0 + 1, 2, NormalisedBox(0.1, 0.1, 0.2, 0.2))
    journal.write(event.event_id, {"kind": "match", "payload": event.to_payload(),
                                   "threshold": 0.91})
    (journal.folder / "half-written.tmp").write_text("{")
    assert _sink(parts).recover() == 1
    [record] = _audited(audit)
    assert record["event_id"] == event.event_id and record["threshold"] == 0.91
    assert [r.event_id for r in outbox.pending()] == [event.event_id]
    assert not list(journal.folder.iterdir())


def test_recovery_after_everything_but_the_journal_removal_adds_nothing(parts: Any) -> None:
    outbox, audit, journal = parts
    sink = _sink(parts)
    event = sink.match(_match())
    journal.write(event.event_id, {"kind": "match", "payload": event.to_payload(),
                                   "threshold": 0.93})
    assert _sink(parts).recover() == 1
    assert len(outbox.pending()) == 1
    assert len(_audited(audit)) == 1


def test_an_acknowledged_event_gives_a_frame_to_ack_sample(parts: Any) -> None:
    outbox, _, _ = parts
    sink = _sink(parts)
    sink.match(_match(arrival=9.75))
    sink.match(_match(track=4, arrival=9.5))
    assert sink.awaiting() == 2
    assert "capture_to_ack" not in sink.latency.summary()
    publisher: FakePublisher = sink.publisher  # type: ignore[assignment]
    publisher.ack(outbox.pending()[0].id, at=10.0)  # the PUBACK's time
    stats = sink.latency.summary()["capture_to_ack"]
    assert stats.count == 1 and stats.p50 == pytest.approx(250.0)
    assert sink.awaiting() == 1


def test_every_step_of_a_match_passes_a_named_checkpoint(parts: Any) -> None:
    outbox, audit, journal = parts
    seen: list[tuple[str, int, int, int]] = []

    def checkpoint(name: str) -> None:  # what is on disk when each step starts
        seen.append((name, len(journal.pending()), len(_audited(audit)),
                     len(outbox.pending())))

    sink = DecisionSink(UNIT, FakePublisher(outbox), audit, journal,
                        threshold=Threshold(0.93, 1e-4, "config", "dlib-resnet-v1"),
                        model_id="dlib-resnet-v1", latency=LatencyStats(),
                        checkpoint=checkpoint)
    sink.match(_match())
    assert seen == [("sink.journal", 0, 0, 0), ("sink.audit", 1, 0, 0),
                    ("sink.outbox", 1, 1, 0), ("sink.unjournal", 1, 1, 1)]
    assert journal.pending() == []
