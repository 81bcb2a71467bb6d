"""Housekeeping: the health file, the one gallery reload path, retention, the audit head."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from device.audit import AuditConfig, AuditLog
from device.gallery.store import GalleryStore
from device.service.gallery import GalleryWatcher, open_gallery
from device.service.housekeeping import Housekeeping
from device.service.retention import RetentionConfig, RetentionJob
from tests.support.gallery import DIM, MODEL, T0, FaceMaker, enroll


class StateRecorder:
    """Receives retained state as the publisher would (no broker needed for this)."""

    def __init__(self) -> None:
        self.state: list[tuple[str, dict[str, Any]]] = []

    def publish_state(self, suffix: str, payload: Mapping[str, Any]) -> None:
        self.state.append((suffix, dict(payload)))

    def heads(self) -> list[int]:
        return [int(p["seq"]) for s, p in self.state if s == "audit/head"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _housekeeping(tmp_path: Path, audit: AuditLog, publisher: StateRecorder, clock: Clock,
                  **kwargs: Any) -> Housekeeping:
    return Housekeeping("unit-1", health_path=tmp_path / "health.json",
                        health=lambda: {"schema": "facegate/health/1", "n": clock.now},
                        interval_s=0.5, audit=audit, publisher=publisher,
                        head_interval_s=300.0, clock=clock, **kwargs)


def test_the_audit_head_is_published_at_start_when_it_moves_and_at_the_interval(
    tmp_path: Path,
) -> None:
    clock, publisher = Clock(), StateRecorder()
    with AuditLog(tmp_path / "audit.db") as audit:
        audit.record_service_start("test")
        hk = _housekeeping(tmp_path, audit, publisher, clock)
        hk.publish_audit_head()
        hk.tick()  # nothing moved, interval not due: nothing new
        assert publisher.heads() == [1]
        audit.record_match("evt-1", "id-a", 0.97, 0.94, 1, "front")  # what a match leaves
        hk.tick()
        assert publisher.heads() == [1, 2]
        clock.now += 301  # the interval: published again although unchanged
        hk.tick()
        assert publisher.heads() == [1, 2, 2]
    assert json.loads((tmp_path / "health.json").read_text())["n"] == clock.now


def test_every_gallery_reload_goes_through_one_path(tmp_path: Path) -> None:
    path = tmp_path / "gallery.db"
    with GalleryStore(path, model_id=MODEL, dim=DIM, create=True) as store:
        enroll(store, FaceMaker(seed=1), "Ada")
    live = open_gallery(path, model_id=MODEL, dim=DIM)
    reloads: list[int] = []
    clock, publisher = Clock(), StateRecorder()
    with AuditLog(tmp_path / "audit.db") as audit:
        hk = _housekeeping(tmp_path, audit, publisher, clock,
                           watcher=GalleryWatcher(live, path, model_id=MODEL, dim=DIM),
                           on_reloaded=lambda: reloads.append(live.current().version))
        assert hk.reload_gallery() is False  # unchanged
        with GalleryStore(path) as store:
            enroll(store, FaceMaker(seed=2), "Bob")
        hk.tick()  # the periodic check
        assert reloads == [live.current().version] and len(live.current().labels) == 2
        assert hk.reload_gallery() is False  # a second trigger (a sync hook) finds it loaded
    live.close()


def test_a_gallery_that_cannot_be_loaded_is_logged_once_per_condition(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gallery.db"
    with GalleryStore(path, model_id=MODEL, dim=DIM, create=True) as store:
        enroll(store, FaceMaker(seed=1), "Ada")
    live = open_gallery(path, model_id=MODEL, dim=DIM)
    clock, publisher = Clock(), StateRecorder()
    with AuditLog(tmp_path / "audit.db") as audit:
        hk = _housekeeping(tmp_path, audit, publisher, clock,
                           watcher=GalleryWatcher(live, path, model_id=MODEL, dim=DIM))
        for leftover in tmp_path.glob("gallery.db*"):
            leftover.unlink()
        with GalleryStore(path, model_id="other-model", dim=DIM, create=True):
            pass
        with caplog.at_level(logging.INFO, logger="device.service"):
            for _ in range(5):
                hk.tick()
        said = [r for r in caplog.records if "changed gallery not loaded" in r.getMessage()]
        assert [r.levelno for r in said] == [logging.WARNING]  # once per condition
        assert len(live.current().labels) == 1  # the old one stays
    live.close()


def test_a_retention_purge_reloads_the_gallery_at_once(tmp_path: Path) -> None:
    path = tmp_path / "gallery.db"
    with GalleryStore(path, model_id=MODEL, dim=DIM, create=True) as store:
        gone, _ = enroll(store, FaceMaker(seed=1), "Expired", expires_at=T0 - 10)
        for n in range(4):
            enroll(store, FaceMaker(seed=2 + n), f"Kept {n}")
    live = open_gallery(path, model_id=MODEL, dim=DIM)
    clock, publisher = Clock(), StateRecorder()
    with AuditLog(tmp_path / "audit.db") as audit:
        job = RetentionJob(RetentionConfig(), AuditConfig(), gallery_path=path, audit=audit,
                           outbox=None, clock=lambda: T0)
        hk = _housekeeping(tmp_path, audit, publisher, clock, retention=job,
                           watcher=GalleryWatcher(live, path, model_id=MODEL, dim=DIM))
        report = hk.run_retention()
        assert report is not None and report.purged == (gone,)
        assert gone not in live.current().labels and len(live.current().labels) == 4
    live.close()
