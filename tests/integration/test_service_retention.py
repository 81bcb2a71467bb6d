"""Retention and the audit head inside the running service (stand-in models, a real
broker, real SQLite files).

* An identity that expired while the unit was off is purged at start, before the first
  frame is matched: it is never announced although every face matches it, its unsent
  event leaves the outbox without being sent, and the audit log says so.
* An identity that expires while the service runs is purged by the periodic run and
  the live index drops it.
* The audit chain head is published retained on ``facegate/<unit>/audit/head`` at
  ``[audit] head_interval_s``; the last one equals the log's head and verifies it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from device.audit import AuditKind, ExpectedHead, read_head, read_records, verify
from device.events.outbox import Outbox
from device.gallery.records import NewFace, NewIdentity
from device.gallery.store import GalleryStore
from device.ops.localbroker import LocalBroker
from device.service.config import FacegateConfig
from device.service.pipeline import RecognitionService
from device.types import Embedding
from tests.integration.test_service_lifecycle import GatedDetector, TinyEmbedder, _config, _frames
from tests.support.events import Collector


def _with(config: FacegateConfig, **sections: dict[str, Any]) -> FacegateConfig:
    update = {name: getattr(config, name).model_copy(update=values)
              for name, values in sections.items()}
    return config.model_copy(update=update)


def _gallery(config: FacegateConfig, expires: dict[str, float | None]) -> None:
    """Identities whose only face is what TinyEmbedder returns for every face (id-*
    order decides nothing: they all score 1.0) or, for ``other-*``, another vector."""
    enrolled_at = time.time() - 3600  # the store refuses an expiry already past
    with GalleryStore(config.gallery_path, model_id="tiny", dim=8, create=True,
                      clock=lambda: enrolled_at) as store:
        for n, (identity_id, expires_at) in enumerate(expires.items()):
            axis = 1 if identity_id.startswith("id-") else 2 + n % 6
            vector = Embedding(np.eye(8, dtype=np.float32)[axis], "tiny")
            store.add_identity_with_faces(
                NewIdentity(label=f"Label of {identity_id}", id=identity_id,
                            expires_at=expires_at),
                [NewFace(vector, 1.0, f"{n:064x}")])


def test_an_identity_expired_while_off_is_purged_before_any_match(
    tmp_path: Path, broker: LocalBroker
) -> None:
    config = _config(tmp_path, broker.url, _frames(tmp_path / "frames", 40))
    config = _with(config, pipeline={"queue_policy": "block"})
    config.state_dir.mkdir(parents=True)
    _gallery(config, {"id-old": time.time() - 60, "other-1": None, "other-2": None,
                      "other-3": None, "other-4": None})
    with Outbox(config.mqtt.outbox_path) as outbox:  # left unsent by the previous run
        outbox.put("facegate/unit-1/front/match", b'{"label":"Label of id-old"}',
                   identity_id="id-old", event_id="evt-old")
    with Collector(broker.host, broker.port, ["facegate/unit-1/#"]) as collector:
        assert collector.wait_subscribed()
        with RecognitionService(config, detector=GatedDetector(blink=6),
                                embedder=TinyEmbedder()) as service:
            assert service.run() == "every camera ended"
            health = service.health()
        messages = list(collector.messages)
    assert not [m for m in messages if m.topic.endswith("/match")]
    assert health["pipeline"]["frames_processed"] == 40
    assert health["retention"]["status"] == "ok" and health["retention"]["purged"] == 1
    assert health["retention"]["outbox_erased"] == 1
    _, records = read_records(config.audit_path)
    kinds = [r.kind for r in records]
    assert kinds[:2] == ["service_start", "delete"]  # before anything else happened
    deleted = records[1].payload_obj()
    assert deleted["identity_id"] == "id-old" and deleted["reason"] == "expired"
    assert b"Label of id-old" not in config.audit_path.read_bytes()
    with GalleryStore(config.gallery_path) as store:
        assert [i.id for i in store.list_identities()] == [f"other-{n}" for n in range(1, 5)]


def test_periodic_purge_drops_the_identity_from_the_live_index(
    tmp_path: Path, broker: LocalBroker
) -> None:
    config = _config(tmp_path, broker.url, _frames(tmp_path / "frames", 1000))
    config = _with(config, retention={"purge_interval_s": 0.5})
    config.state_dir.mkdir(parents=True)
    _gallery(config, {"id-soon": time.time() + 1.5, "other-1": None, "other-2": None})
    with Collector(broker.host, broker.port, ["facegate/unit-1/#"]) as collector:
        assert collector.wait_subscribed()
        with RecognitionService(config, detector=GatedDetector(blink=6),
                                embedder=TinyEmbedder()) as service:
            assert service.gallery is not None
            assert collector.wait_for(
                lambda ms: any(m.topic.endswith("/match") for m in ms), 30)  # matched first
            assert collector.wait_for(lambda ms: any(
                m.topic.endswith("/health") and m.json().get("retention", {}).get("purged")
                for m in ms), 30)
            assert collector.wait_for(lambda _: "id-soon" not in service.gallery.current()
                                      .labels, 10)  # type: ignore[union-attr]
            service.request_stop("test over")
    _, records = read_records(config.audit_path)
    deletes = [r.payload_obj() for r in records if r.kind == AuditKind.DELETE.value]
    assert [d["identity_id"] for d in deletes] == ["id-soon"]
    assert verify(config.audit_path).ok


def test_audit_head_is_published_retained_at_the_interval(
    tmp_path: Path, broker: LocalBroker
) -> None:
    config = _config(tmp_path, broker.url, _frames(tmp_path / "frames", 1000))
    config = _with(config, audit={"head_interval_s": 0.5})
    topic = "facegate/unit-1/audit/head"
    with Collector(broker.host, broker.port, [topic]) as collector:
        assert collector.wait_subscribed()
        with RecognitionService(config, detector=GatedDetector(),
                                embedder=TinyEmbedder()):
            # The one at start, then at least two more at the interval.
            assert collector.wait_for(
                lambda ms: len({m.json()["at"] for m in ms}) >= 3, 30)
        # The one at stop carries the head after service_stop.
        head = read_head(config.audit_path)
        assert collector.wait_for(lambda ms: ms[-1].json()["seq"] == head.seq, 10)
    last = collector.on(topic)[-1].json()
    assert (last["seq"], last["hash"], last["log_id"]) == (head.seq, head.hash, head.log_id)
    assert verify(config.audit_path, [ExpectedHead(last["hash"], last["seq"])]).ok
    # Retained: a monitor connecting later gets the head.
    with Collector(broker.host, broker.port, [topic]) as late:
        assert late.wait_subscribed()
        assert late.wait_for(bool, 10)
        (message,) = late.on(topic)
    assert message.retain and json.loads(message.payload)["hash"] == head.hash


def _matches_over_tracks(tmp_path: Path, broker: LocalBroker, rate_limit_s: float
                         ) -> tuple[list[dict[str, Any]], list[dict[str, object]]]:
    """Run 5 tracks of the same person on one camera; the match events and audit
    decision records."""
    tmp_path.mkdir()
    config = _config(tmp_path, broker.url, _frames(tmp_path / "frames", 5 * 24))
    config = _with(config, pipeline={"queue_policy": "block"},
                   decision={"rate_limit_s": rate_limit_s})
    config.state_dir.mkdir(parents=True)
    _gallery(config, {"id-a": None})
    with Collector(broker.host, broker.port, ["facegate/unit-1/+/match"]) as collector:
        assert collector.wait_subscribed()
        with RecognitionService(config, detector=GatedDetector(blink=6),
                                embedder=TinyEmbedder()) as service:
            assert service.run() == "every camera ended"
            sent = service.health()["pipeline"]["matches"]
        assert collector.wait_for(lambda ms: len(ms) >= sent, 10)
        events = [m.json() for m in collector.messages]
    _, records = read_records(config.audit_path)
    return events, [r.payload_obj() for r in records
                    if r.kind == AuditKind.MATCH_DECISION.value]


def test_rate_limit_one_event_per_identity_per_camera_per_window(
    tmp_path: Path, broker: LocalBroker
) -> None:
    unlimited, _ = _matches_over_tracks(tmp_path / "off", broker, 0)
    assert len({e["track_id"] for e in unlimited}) >= 2  # a new track each time
    limited, decided = _matches_over_tracks(tmp_path / "on", broker, 3600)
    assert len(limited) == 1 and limited[0]["identity_id"] == "id-a"
    assert [d["event_id"] for d in decided] == [limited[0]["event_id"]]
