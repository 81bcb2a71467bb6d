"""Retention with an injected clock, on real SQLite files: expired identities are purged
and audited (and their outbox events erased), a clock jump that would purge too much of
the gallery is refused and changes nothing, the outbox and audit log are pruned by age."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from device.audit import AuditConfig, AuditKind, AuditLog, read_records, verify
from device.events.outbox import Outbox
from device.gallery.store import GalleryStore
from device.service.retention import RetentionConfig, RetentionJob, allowed_purge
from tests.support.gallery import DIM, MODEL, T0, Clock, FaceMaker, blob, enroll, raw_files

DAY = 86400.0


@dataclass
class Unit:
    clock: Clock
    gallery: Path
    audit: AuditLog
    outbox: Outbox
    ids: dict[str, str]  # label -> id
    blobs: dict[str, list[bytes]]  # label -> embedding bytes

    def job(self, **config: float) -> RetentionJob:
        return RetentionJob(RetentionConfig(**config), AuditConfig(retention_days=30),
                            gallery_path=self.gallery, audit=self.audit, outbox=self.outbox,
                            clock=self.clock)


@pytest.fixture()
def unit(tmp_path: Path) -> Iterator[Unit]:
    """Ten identities; 'Expiring Ada' and 'Expiring Bob' expire one day after T0, the
    others in a year (or never); one pending outbox event per identity."""
    clock = Clock(T0)
    path = tmp_path / "gallery.db"
    maker = FaceMaker(seed=8)
    ids: dict[str, str] = {}
    blobs: dict[str, list[bytes]] = {}
    with GalleryStore(path, model_id=MODEL, dim=DIM, create=True, clock=clock) as store:
        for index in range(10):
            label = ("Expiring Ada", "Expiring Bob")[index] if index < 2 else f"Person {index}"
            expires = T0 + DAY if index < 2 else (T0 + 365 * DAY if index % 2 else None)
            ids[label], faces = enroll(store, maker, label, n=2, expires_at=expires)
            blobs[label] = [blob(f) for f in faces]
    audit = AuditLog(tmp_path / "audit.db",
                     clock=lambda: datetime.fromtimestamp(clock.now, UTC))
    outbox = Outbox(tmp_path / "outbox.sqlite3", clock=clock)
    for label, identity_id in ids.items():
        outbox.put("facegate/u/front/match", f'{{"label":"{label}"}}'.encode(),
                   identity_id=identity_id)
    with audit, outbox:
        yield Unit(clock, path, audit, outbox, ids, blobs)


def _records(unit: Unit, kind: AuditKind) -> list[dict[str, object]]:
    _, records = read_records(unit.audit.path)
    return [r.payload_obj() for r in records if r.kind == kind.value]


def test_expired_identities_are_purged_and_audited_without_their_label(unit: Unit) -> None:
    assert not unit.job().run().purged  # nothing expired yet
    unit.clock.now = T0 + 2 * DAY
    report = unit.job().run()
    gone = {unit.ids["Expiring Ada"], unit.ids["Expiring Bob"]}
    assert set(report.purged) == gone and report.refused is None and not report.errors
    assert report.outbox_erased == 2
    with GalleryStore(unit.gallery) as store:
        assert {i.id for i in store.list_identities()} == set(unit.ids.values()) - gone
    assert {r.identity_id for r in unit.outbox.pending()} == set(unit.ids.values()) - gone
    deletes = _records(unit, AuditKind.DELETE)
    assert {d["identity_id"] for d in deletes} == gone
    assert all(d["reason"] == "expired" and d["samples_removed"] == 2 and d["erase"] is True
               and d["outbox_erased"] == 1 for d in deletes)
    assert verify(unit.audit.path).ok
    # Neither the embeddings nor the label are left in any database file or WAL.
    unit.audit.close()
    unit.outbox.close()
    files = {f"{db.name}:{name}": data for db in (unit.gallery, unit.audit.path,
                                                   unit.outbox.path)
             for name, data in raw_files(db).items()}
    for label in ("Expiring Ada", "Expiring Bob"):
        assert not [n for n, data in files.items() if label.encode() in data], label
        for needle in unit.blobs[label]:
            assert not [n for n, data in files.items() if needle in data]
    assert any(unit.blobs["Person 2"][0] in data for data in files.values())
    assert any(b"Person 2" in data for data in files.values())


def test_a_clock_jump_purge_is_refused_and_changes_nothing(
    unit: Unit, caplog: pytest.LogCaptureFixture
) -> None:
    unit.clock.now = T0 + 10 * 365 * DAY  # every expiring identity: 6 of 10 > 20 %
    before = raw_files(unit.gallery)
    head = unit.audit.head()
    report = unit.job().run()
    assert report.status == "refused" and not report.purged
    assert report.refused is not None
    assert "refused to purge 6 of 10 identities" in report.refused
    assert "max_purge_share 0.2" in report.refused and "check it" in report.refused
    assert "refused to purge 6 of 10" in caplog.text
    assert raw_files(unit.gallery) == before  # byte for byte
    assert unit.outbox.depth() == 10  # outbox events 10 years old: left alone (clock suspect)
    refusals = _records(unit, AuditKind.RETENTION_REFUSED)
    assert len(refusals) == 1 and refusals[0]["expired"] == 6
    assert refusals[0]["identities"] == 10 and refusals[0]["allowed"] == 2
    assert unit.audit.head().seq == head.seq + 1  # the refusal, and no pruning
    assert report.to_json()["status"] == "refused"
    # A job logs the same refusal at every run, but audits it once.
    job = unit.job()
    job.run()
    seq = unit.audit.head().seq
    job.run()
    assert unit.audit.head().seq == seq
    assert raw_files(unit.gallery) == before
    # A larger share lets the purge through.
    assert len(unit.job(max_purge_share=0.6).run().purged) == 6


def test_a_small_gallery_still_expires_one_identity_at_a_time(tmp_path: Path) -> None:
    clock = Clock(T0)
    maker = FaceMaker(seed=3)
    path = tmp_path / "gallery.db"
    with GalleryStore(path, model_id=MODEL, dim=DIM, create=True, clock=clock) as store:
        old, _ = enroll(store, maker, "Old", expires_at=T0 + 10)
        enroll(store, maker, "Kept")
        enroll(store, maker, "Kept too")
    clock.now = T0 + 20
    with AuditLog(tmp_path / "audit.db") as audit:
        job = RetentionJob(RetentionConfig(), AuditConfig(), gallery_path=path, audit=audit,
                           outbox=None, clock=clock)
        assert job.run().purged == (old,)  # 1 of 3 is 33 % > 20 %, but one is allowed
    assert allowed_purge(3, 0.2, 1) == 1
    assert allowed_purge(10, 0.2, 1) == 2
    assert allowed_purge(100, 0.2, 0) == 20


def test_outbox_and_audit_log_are_pruned_by_age(unit: Unit) -> None:
    unit.clock.now = T0 + 0.5 * DAY
    unit.audit.record_service_start("test")
    unit.clock.now = T0 + 40 * DAY  # audit window 30 days; outbox 7 days by default
    unit.outbox.put("facegate/u/front/match", b"{}", identity_id=unit.ids["Person 3"])
    with GalleryStore(unit.gallery) as store:
        assert len(store.expired(unit.clock.now)) == 2  # Ada and Bob
    report = unit.job(max_purge_share=1.0).run()
    assert len(report.purged) == 2
    assert report.outbox_purged == 8  # the 8 events left from T0; the new one stays
    assert unit.outbox.depth() == 1
    assert report.audit_pruned >= 1
    result = verify(unit.audit.path)
    assert result.ok and result.first_seq is not None and result.first_seq > 1
    purges = _records(unit, AuditKind.RETENTION_PURGE)
    assert {p["target"] for p in purges} == {"outbox", "audit"}


def test_retention_section_in_the_service_config() -> None:
    from device.config import validate_mapping
    from device.service.config import FacegateConfig

    config = validate_mapping({
        "unit_id": "u1", "cameras": [{"type": "image", "camera_id": "c", "path": "/x"}],
        "mqtt": {}, "retention": {"max_purge_share": 0.1, "purge_interval_s": 60},
        "decision": {"rate_limit_s": 30},
    }, FacegateConfig, "test")
    assert config.retention.max_purge_share == 0.1
    assert config.retention.purge_interval_s == 60
    assert config.retention.outbox_max_age_s == 7 * DAY
    assert config.decision.rate_limit_s == 30
